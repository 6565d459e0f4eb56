"""`tenseal`: CKKS through TenSEAL, client-aided refresh. The backend is `backend.py`, SEAL's engine
`seal.py`, its parameters `params.py`; the packing, op set and approximations are `backends.ckks`."""

from backends.tenseal.backend import BACKEND, TensealBackend, TensealConfig

__all__ = ["BACKEND", "TensealBackend", "TensealConfig"]

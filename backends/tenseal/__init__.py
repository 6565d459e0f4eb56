"""`tenseal`: CKKS through TenSEAL, client-aided refresh. The backend is `backend.py`; beside it the
engine (SEAL and a numpy dry twin), the packing, the op set, the parameters and the approximations."""

from backends.tenseal.backend import BACKEND, TensealBackend, TensealConfig

__all__ = ["BACKEND", "TensealBackend", "TensealConfig"]

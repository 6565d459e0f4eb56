"""`spu`: MPC through SecretFlow SPU (semi2k, aby3, cheetah). The backend is `backend.py`; beside it
the op set traced as jax (`jaxops`), one program per op (`lazy`) and the party processes
(`parties`). Importing this package does not import SPU or jax."""

from backends.spu.backend import BACKEND, SpuBackend, SpuConfig

__all__ = ["BACKEND", "SpuBackend", "SpuConfig"]

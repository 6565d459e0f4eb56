"""`lattigo`: non-interactive CKKS with bootstrapping. The backend is `backend.py`; beside it the
library's bindings (`library`), its engine, its parameter sets and the cost model; the packing,
op set and approximations are `backends.ckks`, shared with `tenseal`."""

from backends.lattigo.backend import BACKEND, LattigoBackend, LattigoConfig

__all__ = ["BACKEND", "LattigoBackend", "LattigoConfig"]

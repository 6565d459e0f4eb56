"""`crypten`: 2- or 3-party MPC through CrypTen. The backend is `backend.py`; beside it the op set on
secret shares (`ops`), the party processes (`parties`) and the import shim for torch 2.x (`compat`).
Importing this package does not import CrypTen."""

from backends.crypten.backend import BACKEND, CryptenBackend, CryptenConfig

__all__ = ["BACKEND", "CryptenBackend", "CryptenConfig"]

"""`concrete`: TFHE through Concrete-Python. The backend is `backend.py`; beside it the integer op set
(`quant`, `heads`, `blocks`), the two schemes (`fused`, `demo`), compilation and its cache
(`circuit`) and the cost model (`cost`)."""

from backends.concrete.backend import BACKEND, ConcreteBackend, ConcreteConfig, calibration_inputs

__all__ = ["BACKEND", "ConcreteBackend", "ConcreteConfig", "calibration_inputs"]

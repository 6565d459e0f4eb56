"""`plaintext`: the workloads in torch, unprotected: the floor every overhead is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import workloads
from backends.base import ALL, Backend, BackendConfig, Capabilities, map_values
from workloads.base import ConfigError
from workloads.ops import TorchOps

DTYPES = {"float64": (torch.float64, 1e-9), "float32": (torch.float32, 1e-4)}  # dtype, tolerance


@dataclass
class PlaintextConfig(BackendConfig):
    name: str = "plaintext"
    dtype: str = "float64"
    threads: int = 1  # torch intra-op threads; 1 keeps timings comparable with single-threaded HE/MPC


class PlaintextBackend(Backend):
    name = "plaintext"
    Config = PlaintextConfig
    capabilities = Capabilities(workloads={name: ALL for name in workloads.REGISTRY})
    default_tolerance = 1e-9
    threat_model = "none: inputs and weights in the clear (the floor for every overhead)"

    @classmethod
    def validate(cls, cfg):
        if cfg.dtype not in DTYPES:
            raise ConfigError(f"backend.dtype={cfg.dtype} is unknown; allowed: {', '.join(DTYPES)}")
        if cfg.threads < 1:
            raise ConfigError(f"backend.threads={cfg.threads} must be >= 1")

    def __init__(self, cfg: PlaintextConfig):
        self.dtype, self.default_tolerance = DTYPES[cfg.dtype]
        self.ops = TorchOps(self.dtype)
        torch.set_num_threads(cfg.threads)

    def setup(self, workload, weights):
        return {k: v.to(self.dtype) for k, v in weights.items()}

    def protect(self, inputs):
        return {k: v.to(self.dtype) for k, v in inputs.items()}

    def reveal(self, value):
        return map_values(torch.Tensor.double, value)


BACKEND = PlaintextBackend

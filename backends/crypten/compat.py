"""Import CrypTen 0.4.1 on torch 2.x.

Why: `crypten/nn/onnx_converter.py` (imported by `import crypten`) falls back to
`from torch.onnx._internal.registration import registry` when `torch.onnx.symbolic_registry` is
missing, and torch 2.x removed that module too, so `import crypten` raises ModuleNotFoundError.
Only CrypTen's ONNX model converter (`crypten.nn.from_pytorch` / `from_onnx`) uses `registry`;
MPC tensors never do. Registering a stub module holding `registry = None` before the import lets
CrypTen load; the converter stays broken (and is not used here). A real module of that name, if a
torch version has one, is left alone.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_MISSING = "torch.onnx._internal.registration"


def _stub_missing_registration() -> None:
    try:
        importlib.import_module(_MISSING)
    except ImportError:
        stub = types.ModuleType(_MISSING)
        stub.registry = None  # what onnx_converter imports; unused by MPC tensors
        sys.modules[_MISSING] = stub


def import_crypten() -> Any:
    """`import crypten`, with the torch-2.x stub in place first."""
    _stub_missing_registration()
    return importlib.import_module("crypten")

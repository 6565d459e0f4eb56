"""The Lattigo (v6) shared library that `orion-fhe` ships, through ctypes.

Only the exported C functions this backend uses are declared, with exact argument types. The
library keeps one scheme per process (a global in Go) and refers to ciphertexts and plaintexts by
integer handles; values cross as float32 arrays. A Go panic (bad parameters, a missing key) ends
the process: callers validate first, and the harness's worker turns a crash into a cell error.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

INT, ULONG, FLOAT, PTR = ctypes.c_int, ctypes.c_ulong, ctypes.c_float, ctypes.c_void_p


class FloatArray(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_float)), ("length", ctypes.c_ulong)]


class ULongArray(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_ulong)), ("length", ctypes.c_ulong)]


class ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_char)), ("length", ctypes.c_ulong)]


IPTR, FPTR, CPTR = ctypes.POINTER(INT), ctypes.POINTER(FLOAT), ctypes.c_char_p
SIGNATURES = {
    "NewScheme": ([INT, IPTR, INT, IPTR, INT, INT, INT, CPTR, CPTR, CPTR], None),
    "DeleteScheme": ([], None),
    "NewKeyGenerator": ([], None),
    "GenerateSecretKey": ([], None),
    "GeneratePublicKey": ([], None),
    "GenerateRelinearizationKey": ([], None),
    "GenerateEvaluationKeys": ([], None),
    "NewEncoder": ([], None),
    "NewEncryptor": ([], None),
    "NewDecryptor": ([], None),
    "NewEvaluator": ([], None),
    "NewBootstrapper": ([IPTR, INT, INT], None),
    "Encode": ([FPTR, INT, INT, ULONG], INT),
    "Decode": ([INT], FloatArray),
    "Encrypt": ([INT], INT),
    "Decrypt": ([INT], INT),
    "AddRotationKey": ([INT], None),
    "RotateNew": ([INT, INT], INT),
    "Rescale": ([INT], INT),
    "AddCiphertextNew": ([INT, INT], INT),
    "SubCiphertextNew": ([INT, INT], INT),
    "AddPlaintextNew": ([INT, INT], INT),
    "MulPlaintextNew": ([INT, INT], INT),
    "AddCiphertext": ([INT, INT], INT),
    "MulRelinCiphertextNew": ([INT, INT], INT),
    "Negate": ([INT], INT),
    "Bootstrap": ([INT, INT], INT),
    "DeletePlaintext": ([INT], None),
    "DeleteCiphertext": ([INT], None),
    "GetCiphertextScale": ([INT], ULONG),
    "SetCiphertextScale": ([INT, ULONG], None),
    "GetCiphertextLevel": ([ctypes.c_longlong], INT),
    "GetModuliChain": ([], ULongArray),
    "FreeCArray": ([PTR], None),
}


def library_path() -> Path | None:
    spec = importlib.util.find_spec("orion")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "backend" / "lattigo" / "lattigo-linux.so"
    return path if path.exists() else None


@functools.cache
def load() -> ctypes.CDLL:
    """The library, its Go runtime told to collect garbage before the heap nears 90% of this
    machine's memory (`GOMEMLIMIT`): by default Go lets garbage grow as large as the live heap,
    and the bootstrapping keys alone are ~19 GB at LogN 16."""
    path = library_path()
    if path is None:
        raise RuntimeError("orion-fhe's Lattigo library is missing: `pip install --no-deps orion-fhe==1.0.2`")
    os.environ.setdefault("GOMEMLIMIT", f"{int(0.9 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))}B")
    lib = ctypes.CDLL(str(path))
    for name, (args, result) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def ints(values) -> tuple:
    values = list(values)
    return (INT * len(values))(*values), len(values)


def floats(values: np.ndarray):
    array = np.ascontiguousarray(values, dtype=np.float32)
    return array.ctypes.data_as(FPTR), array.size, array  # the array keeps the buffer alive


def decoded(lib: ctypes.CDLL, result: FloatArray) -> np.ndarray:
    out = np.ctypeslib.as_array(result.data, shape=(result.length,)).astype(np.float64)
    lib.FreeCArray(ctypes.cast(result.data, PTR))
    return out


def moduli(lib: ctypes.CDLL) -> list[int]:
    result = lib.GetModuliChain()
    out = [int(result.data[i]) for i in range(result.length)]
    lib.FreeCArray(ctypes.cast(result.data, PTR))
    return out

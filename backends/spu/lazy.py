"""Ops recorded as a graph, run as one SPU program per harness op.

`LazyOps` computes nothing: each call returns a `Node`. When the harness's op ends, `Program.of`
turns the op's outputs into one jax function of the secret values it reads (`Private`, living in
the parties), with public tensors as constants and floats folded in; the backend compiles it once
per structure (cached by `Program.key`) and runs it on the parties. One program per op is what
an SPU user writes, and lets SPU's compiler fuse the op's steps.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from backends.base import map_values
from workloads.ops import Ops


@dataclass(eq=False)
class Private:
    """A secret-shared array held by the parties as variable `name`."""

    name: str
    shape: tuple[int, ...]


@dataclass(eq=False)
class Node:
    """One op call not yet run: `getattr(JaxOps, method)(*args)`; method `item` picks args[1]
    of the tuple args[0] evaluates to."""

    method: str
    args: tuple


@dataclass(frozen=True)
class Ref:
    """A reference, inside a program, to input `i<k>`, constant `c<k>` or step `n<k>`."""

    name: str


def _make(method: str) -> Callable:
    signature = inspect.signature(getattr(Ops, method))

    def op(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        return Node(method, bound.args[1:])

    op.__name__ = method
    return op


_Recorded = type("_Recorded", (Ops,), {m: _make(m) for m in Ops.__abstractmethods__})


class LazyOps(_Recorded):
    """Every op of `Ops` recorded as a `Node` (see the module docstring)."""

    def transpose(self, a):
        """A public tensor's transpose is made here: SPU 0.9.5 reads a transposed constant of a
        program as if it were reshaped (a wrong product, measured on `finetune`'s public base)."""
        if isinstance(a, torch.Tensor):
            return a.transpose(-2, -1).contiguous()
        return Node("transpose", (a,))

    def project(self, x, ws, bs):
        """One node for the product with every map (x opened once), one `item` per map."""
        whole = Node("project", (x, tuple(ws), tuple(bs)))
        return tuple(Node("item", (whole, i)) for i in range(len(ws)))


@dataclass
class Program:
    """The graph behind an op's outputs: its secret inputs, its structure key, and `fn`, the jax
    function of those inputs returning the outputs that are nodes."""

    inputs: list[Private] = field(default_factory=list)
    outputs: list[Node] = field(default_factory=list)
    constants: list[np.ndarray] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)  # (method, encoded args), topological
    _ids: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Any) -> Program:
        program = cls()
        map_values(program._output, value)
        return program

    @property
    def key(self) -> str:
        """Same key, same program: structure, input shapes, constants' values."""
        h = hashlib.sha1(repr((self.steps, [p.shape for p in self.inputs], len(self.outputs))).encode())
        for c in self.constants:
            h.update(c.tobytes())
        return h.hexdigest()

    def _output(self, leaf: Any) -> None:
        if isinstance(leaf, Node) and id(leaf) not in self._ids:
            self._encode(leaf)
            self.outputs.append(leaf)

    def _encode(self, value: Any) -> Any:
        """A hashable description of an argument; nodes and leaves get numbered references."""
        if isinstance(value, tuple | list):
            return tuple(self._encode(v) for v in value)
        if isinstance(value, int | float | str) or value is None:
            return value
        if id(value) in self._ids:
            return self._ids[id(value)]
        if isinstance(value, Node):
            args = tuple(self._encode(a) for a in value.args)
            self.steps.append((value.method, args))
            ref = Ref(f"n{len(self.steps) - 1}")
        elif isinstance(value, Private):
            self.inputs.append(value)
            ref = Ref(f"i{len(self.inputs) - 1}")
        elif isinstance(value, torch.Tensor):
            self.constants.append(np.ascontiguousarray(value.detach().numpy(), dtype=np.float32))
            ref = Ref(f"c{len(self.constants) - 1}")
        else:
            raise TypeError(f"an SPU op got a {type(value).__name__}; expected a value, tensor or number")
        self._ids[id(value)] = ref
        return ref

    def fn(self, ops: Ops) -> Callable:
        """The jax function: secret inputs in `inputs` order -> outputs in `outputs` order."""
        steps, constants, outs = self.steps, self.constants, [self._ids[id(n)] for n in self.outputs]

        def program(*secrets):
            env = {f"i{i}": s for i, s in enumerate(secrets)} | {f"c{i}": c for i, c in enumerate(constants)}

            def arg(a):
                if isinstance(a, tuple):
                    return [arg(v) for v in a]
                return env[a.name] if isinstance(a, Ref) else a

            for i, (method, args) in enumerate(steps):
                args = [arg(a) for a in args]
                env[f"n{i}"] = args[0][args[1]] if method == "item" else getattr(ops, method)(*args)
            return [env[o.name] for o in outs]

        return program

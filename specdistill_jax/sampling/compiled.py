"""Ahead-of-time compiled decoding programs, with compile time kept apart from run time.

`CompiledProgram(fn)` lowers and compiles `fn` once per argument signature
(tree structure, shapes, dtypes, shardings) and reports how long compilation
took, so `stats['wall_seconds']` measures decoding, not XLA.
"""

from __future__ import annotations

import time

import jax


def _signature(args):
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((getattr(x, "shape", ()), str(getattr(x, "dtype", type(x))),
                         str(getattr(x, "sharding", None))) for x in leaves)


class CompiledProgram:
  """fn(*arrays) compiled per signature; call -> (outputs, compile_seconds)."""

  def __init__(self, fn, **jit_kwargs):
    self._jit = jax.jit(fn, **jit_kwargs)
    self._executables = {}

  def __call__(self, *args):
    key = _signature(args)
    exe = self._executables.get(key)
    compile_seconds = 0.0
    if exe is None:
      t0 = time.perf_counter()
      exe = self._jit.lower(*args).compile()
      compile_seconds = time.perf_counter() - t0
      self._executables[key] = exe
    return exe(*args), compile_seconds

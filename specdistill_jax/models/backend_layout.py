"""The parameter layout a backend decodes fastest with, chosen at load.

Two layouts hold the same values:

* `standard`: q/k/v as [in, heads, head_dim], o as [heads, head_dim, D], gate/up/down as
  [in, out], an untied head as [D, V]: the layout every trainer, checkpoint and sharding
  rule uses, and what `save_hf` writes.
* `fused`: one q/k/v matrix [(H + 2 Hkv) head_dim, in], o as [D, H head_dim], one
  gate/up matrix [2 F, D], down as [D, F], the head as [V, D]: one dot per group with the
  weights as the left operand (`layers.mm_left`). XLA:CPU runs B=1 decoding's small-M
  dots much faster this way (the real target's bf16 one-token pass 40.7 -> 24.1 ms on the AMX
  machine: `python experiments/bench_target.py`, which times both); on GPU/TPU the standard
  layout stays.

`for_decoding(model)` returns the model in the layout for this backend (`layout='auto'`:
fused on CPU, standard elsewhere); `standard(model)` converts back. Both return a new model
object sharing nothing mutable with the argument (the weights are new arrays where they
moved). This module and `models/layers.py` are the only places that know about layouts.
"""

from __future__ import annotations

import jax
from flax import nnx

LAYOUTS = ("auto", "standard", "fused")


def resolve(layout: str = "auto") -> str:
  """'auto' -> 'fused' on CPU, 'standard' on GPU/TPU; ValueError for an unknown name."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
  if layout == "auto":
    return "fused" if jax.default_backend() == "cpu" else "standard"
  return layout


def _with_layout(model, fused: bool):
  if not isinstance(model, nnx.Module):  # a drafter without weights (prompt lookup)
    return model
  graphdef, state = nnx.split(model)
  model = nnx.merge(graphdef, state)  # a new graph over the same arrays
  for node in [node for _, node in nnx.iter_graph(model) if hasattr(node, "set_fused")]:
    node.set_fused(fused)  # each module converts its own weights (layers, heads, fc)
  return model


def for_decoding(model, layout: str = "auto"):
  """`model` (a target or any draft) in `layout` ('auto': this backend's fast one)."""
  return _with_layout(model, resolve(layout) == "fused")


def standard(model):
  """`model` in the standard layout (a no-op copy if it is in it already)."""
  return _with_layout(model, False)


def is_fused(model) -> bool:
  """True if any layer of `model` holds the fused layout."""
  return any(getattr(node, "fused", False) is True for _, node in nnx.iter_graph(model)
             if hasattr(node, "set_fused"))

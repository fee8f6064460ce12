"""The parameter layout a backend decodes fastest with, chosen at load.

Two layouts hold the same values (a third, `kernel`, is `fused` with its bf16 dots run by a C++ kernel):

* `standard`: q/k/v as [in, heads, head_dim], o as [heads, head_dim, D], gate/up/down as
  [in, out], an untied head as [D, V]: the layout every trainer, checkpoint and sharding
  rule uses, and what `save_hf` writes.
* `fused`: one q/k/v matrix [(H + 2 Hkv) head_dim, in], o as [D, H head_dim], one
  gate/up matrix [2 F, D], down as [D, F], the head as [V, D]: one dot per group with the
  weights as the left operand (`layers.mm_left`).
* `kernel`: the fused weights plus a packed copy of each (blocks of 64 rows, input pairs in turn:
  `cpu_gemv.pack` via `layers.set_packed`; the layout holds the weights twice) from which `models/cpu_gemv.py` runs
  their bf16 or fp32 dots (a decode step's few token rows and a prefill's, up to 4096), and its
  cached attention of up to 32 new tokens (AVX512-BF16, built on first use), instead of XLA's ops;
  a longer prefill's attention stays XLA's.

Which one is faster depends on the CPU's matrix unit, so `auto` decides per machine and dtype
(`python experiments/bench_target.py` times both layouts in one run; its 1-token bf16 pass):

* Intel Xeon with AMX (amx_bf16), bf16: standard 40.7 ms, fused 24.1 ms (fp32: 33.8 / 39.9);
* AMD EPYC without AMX (avx512_bf16), bf16: standard 30.5 ms, fused 32.9 ms, kernel 9.6 ms
  (fp32: standard 29.8 / fused 28.7 / kernel 18.4; experiments/results/target_benchmark.md, one run).

`auto` is therefore `kernel` for a bf16 or fp32 model on a CPU where the kernels build
(avx512_bf16 and a C++ compiler), else `fused` for a bf16 (or narrower) model on a CPU with AMX,
and `standard` everywhere else, GPU/TPU included: a fixed rule (never a timing taken at load), so
the same machine always decodes with the same layout and the same rounding.

`for_decoding(model)` returns the model in the layout `auto` picks for it (or the one asked
for); `standard(model)` converts back. Both return a new model object sharing nothing mutable
with the argument (the weights are new arrays where they moved). This module and
`models/layers.py` are the only places that know about layouts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from specdistill_jax.models import cpu_gemv
from specdistill_jax.models import layers

LAYOUTS = ("auto", "standard", "fused", "kernel")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
  """The first processor's fields of Linux /proc/cpuinfo (empty elsewhere)."""
  out = {}
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
  except OSError:
    pass
  return out


def cpu_flags() -> frozenset:
  """The CPU's feature flags (/proc/cpuinfo; empty elsewhere)."""
  return frozenset(_cpuinfo().get("flags", "").split())


def describe_cpu() -> str:
  """'<model name> (AMX)' or '<model name> (no AMX)': what the results headers print, since
  the layout `auto` picks depends on it."""
  name = _cpuinfo().get("model name", "unknown CPU")
  return f"{name} ({'AMX' if 'amx_bf16' in cpu_flags() else 'no AMX'})"


def resolve(layout: str = "auto", dtype=None) -> str:
  """The layout name decoding uses: 'auto' -> 'kernel' for a bf16 or fp32 compute dtype where
  cpu_gemv builds, else 'fused' for a bf16 (or narrower) one on a CPU with AMX, else 'standard'
  (see the module docstring); ValueError for an unknown name or a 'kernel' this machine cannot build."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
  if layout == "kernel" and not cpu_gemv.available():
    raise ValueError(f"layout='kernel' is unavailable here ({cpu_gemv.unavailable_reason()}): "
                     "use layout='fused' or 'standard'")
  if layout != "auto":
    return layout
  narrow = dtype is not None and jnp.dtype(dtype).itemsize <= 2
  if dtype is not None and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float32) and cpu_gemv.available():
    return "kernel"
  amx = jax.default_backend() == "cpu" and "amx_bf16" in cpu_flags()
  return "fused" if narrow and amx else "standard"


def _with_layout(model, layout: str):
  if not isinstance(model, nnx.Module):  # a drafter without weights (prompt lookup)
    return model
  graphdef, state = nnx.split(model)
  model = nnx.merge(graphdef, state)  # a new graph over the same arrays
  kernel = layout == "kernel"
  for node in [node for _, node in nnx.iter_graph(model) if hasattr(node, "set_fused")]:
    if not kernel:
      layers.set_packed(node, False)
    node.set_fused(layout != "standard")  # each module converts its own weights (layers, heads, fc)
    if kernel:
      layers.set_packed(node, True)  # cpu_gemv reads packed copies
    node.cpu_gemv = kernel  # static: read by layers.mm_left's callers at trace time
  for node in [node for _, node in nnx.iter_graph(model) if isinstance(node, layers.RMSNorm)]:
    node.cpu_gemv = kernel  # the norms sum in a fixed order with the kernels (layers.fixed_order_sum)
  return model


def compute_dtype(model):
  """The dtype `model` computes in (None for a drafter without weights, e.g. prompt lookup)."""
  config = getattr(model, "config", None)
  return getattr(config, "jnp_dtype", None)


def for_decoding(model, layout: str = "auto"):
  """`model` (a target or any draft) in `layout` ('auto': the fast one for this CPU and the
  model's dtype)."""
  return _with_layout(model, resolve(layout, compute_dtype(model)))


def standard(model):
  """`model` in the standard layout (a no-op copy if it is in it already)."""
  return _with_layout(model, "standard")


def is_fused(model) -> bool:
  """True if any layer of `model` holds the fused layout."""
  return any(getattr(node, "fused", False) is True for _, node in nnx.iter_graph(model)
             if hasattr(node, "set_fused"))

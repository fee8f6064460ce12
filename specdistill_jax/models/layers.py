"""The transformer's building blocks, public for every model in the package.

RMSNorm, grouped-query attention with RoPE (`Attention`: full-sequence, cached and
unrolled forwards), the SwiGLU `MLP`, the pre-norm residual `Block`, and the two
helpers every layer uses: `param` (a parameter with its logical sharding axes) and
`mm` (an einsum in the compute dtype with fp32 accumulation, forward and backward,
and the CPU's one-token trick: the backend-specific layout lives here only).
Models (transformer.py, feature_draft.py, block_draft.py) compose these.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from specdistill_jax.models import cpu_gemv
from specdistill_jax.models import kv_cache as kvc
from specdistill_jax.models import rope
from specdistill_jax.models.config import ModelConfig

_NEG_INF = jnp.finfo(jnp.float32).min


def param(rngs: nnx.Rngs, shape, axes, config: ModelConfig, scale: Optional[float] = None,
          zeros: bool = False, ones: bool = False) -> nnx.Param:
  dtype = config.jnp_param_dtype
  if ones:
    value = jnp.ones(shape, dtype)
  elif zeros:
    value = jnp.zeros(shape, dtype)
  else:
    value = (jax.random.normal(rngs.params(), shape, jnp.float32) * scale).astype(dtype)
  return nnx.Param(value, logical_axes=axes)


def embedding_rows(module, table, tokens, dtype):
  """table [V, D] rows at token ids [...] -> [..., D] in `dtype` (a model's token embedding).

  In the `kernel` layout a bf16 table is read by cpu_gemv.rows: XLA:CPU runs a bf16 gather in
  fp32, converting the whole table first, and hoists that convert out of the decode loop, so
  every decode call converted the 49k x 576 embedding (113 MB, ~27 ms on 2 cores) once per
  table (the target's, and a feature draft's frozen copy).
  """
  if uses_kernel(module) and cpu_gemv.rows_applies(table):
    rows = cpu_gemv.rows(table, tokens)
  else:
    rows = jnp.take(table, tokens, axis=0)
  return rows.astype(dtype)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * weight, computed in fp32."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dim: Optional[int] = None):
    """dim: the normalised width (default d_model; a per-head q/k norm uses head_dim)."""
    self.eps = config.rms_norm_eps
    self.weight = param(rngs, (dim or config.d_model,), ("norm",), config, ones=True)

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    if uses_kernel(self):  # decoding in the kernel layout: every row summed alike, whatever the row count
      mean_square = fixed_order_sum(xf * xf) / xf.shape[-1]
    else:
      mean_square = jnp.mean(xf * xf, axis=-1, keepdims=True)
    xf = xf * jax.lax.rsqrt(mean_square + self.eps)
    return (xf * self.weight[...].astype(jnp.float32)).astype(x.dtype)


def fixed_order_sum(x):
  """Sum over the last axis (kept, size 1) as a balanced tree of elementwise adds: halves added
  until one column is left (an odd width padded with a zero, which adds exactly).

  Elementwise adds are computed alike however XLA fuses and vectorises them, so every row gets
  the same sum whatever the number of rows. A reduce does not: XLA:CPU emits a reduction over
  8 or more rows another way than over fewer, in another order, so a norm's sum (and then some
  bf16 roundings) would differ between a one-token decode step and an 8-token verification
  (tests/models/test_cpu_gemv.py). The kernel layout's norms use it, where the dots and the
  attention are row-invariant too; training keeps jnp.mean (fewer ops to compile and differentiate).
  """
  while x.shape[-1] > 1:
    if x.shape[-1] % 2:
      x = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
    half = x.shape[-1] // 2
    x = x[..., :half] + x[..., half:]
  # the barrier keeps the tree out of its consumers' fusions: computed once per row, whatever XLA fuses
  return jax.lax.optimization_barrier(x)


def _low_precision_einsum(spec: str, out_dtype=None):
  """einsum(spec) on low-precision inputs with fp32 accumulation, forward *and* backward.

  JAX's own transpose of a dot with preferred_element_type=fp32 feeds fp32
  cotangents into the backward matmuls, which then run at fp32 speed; here the
  cotangent is cast to the input dtype so both backward matmuls also run as
  bf16 x bf16 -> fp32 (AMX on CPU, tensor cores on GPU/TPU).
  """
  inputs, out = spec.split("->")
  a, b = inputs.split(",")
  spec_da, spec_db = f"{out},{b}->{a}", f"{a},{out}->{b}"

  @jax.custom_vjp
  def f(x, w):
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(out_dtype or x.dtype)

  def fwd(x, w):
    return f(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = jnp.einsum(spec_da, g, w, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.einsum(spec_db, x, g, preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw

  f.defvjp(fwd, bwd)
  return f


_LOW_PRECISION = {}


def mm(spec: str, x, w, dtype, out_dtype=None):
  """einsum in the compute dtype with fp32 accumulation; inputs cast from their storage dtype.

  The result has `out_dtype` (default: the compute dtype).
  """
  x, w = x.astype(dtype), w.astype(dtype)
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(out_dtype or dtype)
  key = (spec, jnp.dtype(out_dtype or dtype).name)
  if key not in _LOW_PRECISION:
    _LOW_PRECISION[key] = _low_precision_einsum(spec, out_dtype)
  rows = _token_axis(spec)
  if rows is not None and x.shape[rows] == 1 and math.prod(x.shape[:rows]) == 1:
    # One token (B=1 decode): XLA:CPU runs a low-precision matrix-vector dot ~10x slower
    # than a two-row matmul (../shared/bench/xla_cpu_dots.py: bf16 head 32.3 ms at k=1, 4.0 at k=2), so run two rows
    # (the token twice) and keep one.
    out = _LOW_PRECISION[key](jnp.concatenate([x, x], axis=rows), w)
    return jax.lax.slice_in_dim(out, 0, 1, axis=rows)
  return _LOW_PRECISION[key](x, w)


def mm_left(x, w_t, dtype, out_dtype=None, packed=None):
  """x [..., in] @ w_t[out, in]^T -> [..., out], run with the weights as the left operand.

  The fused decode layout's matmul (models/backend_layout.py): on a CPU with AMX, XLA:CPU
  runs bf16 small-M dots much faster as W[out, in] . x^T than as x . W (on one without AMX
  it is the other way round; `python experiments/bench_target.py` times both layouts). One
  row runs as two (the matrix-vector dot is ~10x slower), as in `mm`. packed: w_t packed for
  models/cpu_gemv.py (the `kernel` layout's copy, `kernel_weight`): products of up to
  cpu_gemv.MAX_ROWS rows (a decode step's or a prefill's) run in its kernel; longer ones are
  XLA's dot of w_t.
  """
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1]).astype(dtype)
  rows = x2.shape[0]
  packed = None if packed is None else packed.astype(dtype)
  if packed is not None and cpu_gemv.applies(rows, x2.dtype, packed):
    out = cpu_gemv.matmul(x2, packed).astype(out_dtype or dtype)
    return out.reshape(lead + (out.shape[-1],))
  w_t = w_t.astype(dtype)
  if rows == 1:
    x2 = jnp.concatenate([x2, x2], axis=0)
  out = jax.lax.dot_general(w_t, x2, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32).astype(out_dtype or dtype)
  return out[:, :rows].T.reshape(lead + (w_t.shape[0],))


def uses_kernel(module) -> bool:
  """True if backend_layout put `module` in the `kernel` layout (its attention and packed weights
  run in models/cpu_gemv.py)."""
  return getattr(module, "cpu_gemv", False) is True


def kernel_weight(module, name: str):
  """The `kernel` layout's packed copy of the module's weight `name` (`set_packed`), or None."""
  if not uses_kernel(module) or not hasattr(module, f"{name}_p"):
    return None
  return getattr(module, f"{name}_p")[...]


def dense(module, name: str, x, dtype, out_dtype=None):
  """x [..., in] times the module's weight `name` ([in, out]), or `name`_t ([out, in]) once the
  fused decode layout transposed it (`set_transposed`)."""
  if hasattr(module, f"{name}_t"):
    return mm_left(x, getattr(module, f"{name}_t")[...], dtype, out_dtype, kernel_weight(module, name))
  w = getattr(module, name)[...]
  if x.ndim == 3:  # [B, T, in]: the training path, batch axis (and its sharding) kept
    return mm("btd,df->btf", x, w, dtype, out_dtype)
  y = mm("btd,df->btf", x.reshape((1, -1, x.shape[-1])), w, dtype, out_dtype)
  return y.reshape(x.shape[:-1] + (w.shape[-1],))


def weight(module, name: str):
  """The module's weight `name` as [in, out], whichever layout holds it (`name` or `name`_t)."""
  if hasattr(module, f"{name}_t"):
    return getattr(module, f"{name}_t")[...].T
  return getattr(module, name)[...]


def set_packed(module, packed: bool) -> None:
  """Add (or drop) the `kernel` layout's packed copies `name`_p of the module's [out, in] weights
  (`name`_t, and a tied embedding the head reads), which models/cpu_gemv.py reads as one stream;
  the [out, in] weights stay for XLA's longer dots (a prefill), so the layout holds the weights
  twice. A weight whose shape the kernel cannot take gets no copy (XLA's dot computes with it)."""
  if not packed:
    for name in [n for n in vars(module) if n.endswith("_p")]:
      delattr(module, name)
    return
  names = [n[:-2] for n, v in vars(module).items() if n.endswith("_t") and isinstance(v, nnx.Param)]
  if getattr(module, "head_is_embedding", False):
    names.append("embed")
  for name in names:
    value = getattr(module, name if name == "embed" else f"{name}_t")[...]
    if cpu_gemv.packable(value):
      setattr(module, f"{name}_p", nnx.Param(cpu_gemv.pack(value)))


def set_transposed(module, name: str, fused: bool) -> None:
  """Store the [in, out] weight `name` as `name`_t [out, in] (fused) or back; same values."""
  src, dst = (name, f"{name}_t") if fused else (f"{name}_t", name)
  if not hasattr(module, src):
    return
  w = getattr(module, src)
  axes = w.get_metadata().get("logical_axes")
  setattr(module, dst, nnx.Param(w[...].T, logical_axes=None if axes is None else tuple(reversed(axes))))
  delattr(module, src)


def _token_axis(spec: str):
  """Axis of the token dimension in a weight matmul's activations ('bt...' or 't...'), else None."""
  lhs, out = spec.split(",")[0], spec.split("->")[1]
  if lhs.startswith("bt") and out.startswith("bt"):
    return 1
  if lhs.startswith("t") and out.startswith("t"):
    return 0
  return None


def attend(q, k, v, mask):
  """Grouped-query attention. q [B,T,H,D], k/v [B,S,Hkv,D], mask [B,T,S] -> [B,T,H,D]."""
  b, t, h, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, t, hkv, h // hkv, d)
  scores = mm("btkgd,bskd->bkgts", q, k, q.dtype, jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = mm("bkgts,bskd->btkgd", probs, v, v.dtype)
  return out.reshape(b, t, h, d)


def slot_buckets(size: int, smallest: int = 128) -> tuple[int, ...]:
  """The cache prefixes a cached attention may read: 128, 256, ... (doubling), and `size`."""
  widths, w = [], smallest
  while w < size:
    widths.append(w)
    w *= 2
  return tuple(widths) + (size,)


def attend_cache(q, keys, values, mask, used):
  """`attend` over the cache's first w slots only, w the smallest `slot_buckets` width >= used.

  used: a traced int, one past the last slot any row writes or may see (the slots past it
  are masked out for every query, so the result is the full attention's). The cache is
  static-shaped and sized for the longest prompt plus the whole decode, but a decode step
  only needs the filled prefix; XLA:CPU's batched attention dots transpose the whole
  cache each step, which made attention the largest cost outside the weights at long caches
  (experiments/results/target_benchmark.md: the one-token pass by cache size). One
  `lax.switch` per layer picks the prefix; each branch is the same attention on a static slice.
  """
  widths = slot_buckets(keys.shape[1])
  if len(widths) == 1:
    return attend(q, keys, values, mask)
  branches = [lambda q, k, v, m, w=w: attend(q, k[:, :w], v[:, :w], m[..., :w]) for w in widths]
  index = jnp.searchsorted(jnp.asarray(widths, jnp.int32), used.astype(jnp.int32))
  return jax.lax.switch(jnp.minimum(index, len(widths) - 1), branches, q, keys, values, mask)


class Attention(nnx.Module):
  """Multi-head attention with grouped key/value heads, RoPE and optional q/k/v bias."""

  def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs, in_dim: Optional[int] = None):
    """in_dim: width of the input (default d_model; an EAGLE-3 first layer reads 2 d_model)."""
    c = config
    self.config = c
    self.window = c.window_for_layer(layer)
    d_in = in_dim or c.d_model
    s_in = d_in ** -0.5
    s_out = (c.num_heads * c.head_dim) ** -0.5
    self.q = param(rngs, (d_in, c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), c, s_in)
    self.k = param(rngs, (d_in, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), c, s_in)
    self.v = param(rngs, (d_in, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), c, s_in)
    self.o = param(rngs, (c.num_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"), c, s_out)
    if c.qkv_bias:
      self.q_bias = param(rngs, (c.num_heads, c.head_dim), ("heads", "head_dim"), c, zeros=True)
      self.k_bias = param(rngs, (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), c, zeros=True)
      self.v_bias = param(rngs, (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), c, zeros=True)

  @property
  def fused(self) -> bool:
    """True in the fused decode layout (models/backend_layout.py): one [(H + 2 Hkv) hd, in]
    q/k/v matrix and o as [D, H hd], weights as the left operand."""
    return hasattr(self, "qkv_t")

  def project_heads(self, x, names=("q", "k", "v")):
    """The named projections of x [B,T,in] ('q' [B,T,H,hd], 'k'/'v' [B,T,Hkv,hd]), bias added."""
    c, dt = self.config, self.config.jnp_dtype
    sizes = {"q": c.num_heads, "k": c.num_kv_heads, "v": c.num_kv_heads}
    if self.fused:
      heads = self._project_all(x)
      starts = {"q": 0, "k": c.num_heads, "v": c.num_heads + c.num_kv_heads}
      return [heads[..., starts[n]:starts[n] + sizes[n], :] for n in names]
    out = [mm("btd,dhk->bthk", x, getattr(self, n)[...], dt) for n in names]
    if c.qkv_bias:
      out = [y + getattr(self, f"{n}_bias")[...].astype(dt) for y, n in zip(out, names)]
    return out

  def _project_all(self, x):
    """The fused layout's q, k and v heads of x [B,T,in] as one [B, T, H + 2 Hkv, hd] array, bias
    added, before the rotary embedding."""
    c = self.config
    heads = mm_left(x, self.qkv_t[...], c.jnp_dtype, packed=kernel_weight(self, "qkv"))
    heads = heads.reshape(x.shape[:-1] + (c.num_heads + 2 * c.num_kv_heads, c.head_dim))
    if c.qkv_bias:
      heads = heads + jnp.concatenate([getattr(self, f"{n}_bias")[...] for n in ("q", "k", "v")]).astype(heads.dtype)
    return heads

  def _project(self, x, positions):
    q, k, v = self.project_heads(x)
    cos, sin = rope.rotary_tables(self.config, positions)
    return rope.apply_rotary(q, cos, sin), rope.apply_rotary(k, cos, sin), v

  def _output(self, out):
    if self.fused:
      return mm_left(out.reshape(out.shape[:-2] + (-1,)), self.o_t[...], self.config.jnp_dtype,
                     packed=kernel_weight(self, "o"))
    return mm("bthk,hkd->btd", out, self.o[...], self.config.jnp_dtype)

  def set_fused(self, fused: bool) -> None:
    """Convert the parameters between the standard and the fused layout (same values)."""
    if fused == self.fused:
      return
    c = self.config
    if fused:
      d_in = self.q.shape[0]
      w = jnp.concatenate([getattr(self, n)[...].reshape(d_in, -1) for n in ("q", "k", "v")], axis=1)
      self.qkv_t = nnx.Param(w.T, logical_axes=("heads", "embed"))
      self.o_t = nnx.Param(self.o[...].reshape(-1, c.d_model).T, logical_axes=("embed", "heads"))
      del self.q, self.k, self.v, self.o
    else:
      w, d_in = self.qkv_t[...].T, self.qkv_t.shape[1]
      bounds = [0, c.num_heads, c.num_heads + c.num_kv_heads, c.num_heads + 2 * c.num_kv_heads]
      for n, a, b, axes in zip(("q", "k", "v"), bounds, bounds[1:],
                               (("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim"),
                                ("embed", "kv_heads", "head_dim"))):
        block = w[:, a * c.head_dim:b * c.head_dim].reshape(d_in, b - a, c.head_dim)
        setattr(self, n, nnx.Param(block, logical_axes=axes))
      self.o = nnx.Param(self.o_t[...].T.reshape(c.num_heads, c.head_dim, c.d_model),
                         logical_axes=("heads", "head_dim", "embed"))
      del self.qkv_t, self.o_t

  def __call__(self, x, positions, segment_ids=None):
    q, k, v = self._project(x, positions)
    mask = kvc.sequence_attention_mask(positions, segment_ids, self.window)
    return self._output(attend(q, k, v, mask))

  def cached(self, x, positions, keys, values, slots=None, mask=None):
    """x [B,T,D] at rotary positions [B,T], written at cache slots [B,T] (default: the positions).

    mask [B,T,S] (default: causal over slots) lets a tree of tokens see only its ancestors.
    Returns (out, keys', values').
    """
    slots = positions if slots is None else slots
    if mask is None:
      mask = kvc.cached_attention_mask(positions, keys.shape[1], self.window)
    if uses_kernel(self):
      heads = self._project_all(x)
      if cpu_gemv.attention_applies(heads, keys):  # rotary embedding, cache write and attention in one call
        cos, sin = rope.rotary_tables(self.config, positions)
        out, keys, values = cpu_gemv.cached_attention_qkv(heads, keys, values, slots, mask, cos, sin,
                                                          self.config.num_heads)
        return self._output(out), keys, values
    q, k, v = self._project(x, positions)
    keys = kvc.scatter_rows(keys, k, slots)
    values = kvc.scatter_rows(values, v, slots)
    used = jnp.max(slots) + 1  # every slot a query may see was written at or before this call's slots
    return self._output(attend_cache(q, keys, values, mask, used)), keys, values


  def unrolled(self, x, positions, keys, values, mask):
    """Attend over [keys; this call's keys] (a training-time-test unroll, feature_draft.py).

    keys/values [B, S0, Hkv, D] (S0 may be 0); mask [B, T, S0 + T]. Returns (out, keys', values').
    """
    q, k, v = self._project(x, positions)
    keys = jnp.concatenate([keys, k.astype(keys.dtype)], axis=1)
    values = jnp.concatenate([values, v.astype(values.dtype)], axis=1)
    return self._output(attend(q, keys, values, mask)), keys, values


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.dtype = c.jnp_dtype
    self.gate = param(rngs, (c.d_model, c.mlp_dim), ("embed", "mlp"), c, c.d_model ** -0.5)
    self.up = param(rngs, (c.d_model, c.mlp_dim), ("embed", "mlp"), c, c.d_model ** -0.5)
    self.down = param(rngs, (c.mlp_dim, c.d_model), ("mlp", "embed"), c, c.mlp_dim ** -0.5)

  @property
  def fused(self) -> bool:
    """True in the fused decode layout: gate and up as one [2F, D] matrix, down as [D, F]."""
    return hasattr(self, "gate_up_t")

  def __call__(self, x):
    dt = self.dtype
    if self.fused:
      gu = mm_left(x, self.gate_up_t[...], dt, packed=kernel_weight(self, "gate_up"))
      f = gu.shape[-1] // 2
      return mm_left(jax.nn.silu(gu[..., :f]) * gu[..., f:], self.down_t[...], dt, packed=kernel_weight(self, "down"))
    h = jax.nn.silu(mm("btd,df->btf", x, self.gate[...], dt)) * mm("btd,df->btf", x, self.up[...], dt)
    return mm("btf,fd->btd", h, self.down[...], dt)

  def set_fused(self, fused: bool) -> None:
    """Convert the parameters between the standard and the fused layout (same values)."""
    if fused == self.fused:
      return
    if fused:
      self.gate_up_t = nnx.Param(jnp.concatenate([self.gate[...], self.up[...]], axis=1).T,
                                 logical_axes=("mlp", "embed"))
      self.down_t = nnx.Param(self.down[...].T, logical_axes=("embed", "mlp"))
      del self.gate, self.up, self.down
    else:
      w = self.gate_up_t[...].T
      f = w.shape[1] // 2
      self.gate = nnx.Param(w[:, :f], logical_axes=("embed", "mlp"))
      self.up = nnx.Param(w[:, f:], logical_axes=("embed", "mlp"))
      self.down = nnx.Param(self.down_t[...].T, logical_axes=("mlp", "embed"))
      del self.gate_up_t, self.down_t


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(config, rngs=rngs)
    self.attn = Attention(config, layer, rngs=rngs)
    self.mlp_norm = RMSNorm(config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, positions, segment_ids=None):
    x = x + self.attn(self.attn_norm(x), positions, segment_ids)
    return x + self.mlp(self.mlp_norm(x))

  def cached(self, x, positions, keys, values, slots=None, mask=None):
    h, keys, values = self.attn.cached(self.attn_norm(x), positions, keys, values, slots, mask)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), keys, values

  def unrolled(self, x, positions, keys, values, mask):
    h, keys, values = self.attn.unrolled(self.attn_norm(x), positions, keys, values, mask)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), keys, values

"""The decoder-only transformer (Llama / Mistral / Qwen2 family) in Flax NNX.

Owns the layers (RMSNorm, grouped-query attention with RoPE, SwiGLU MLP) and
the two forwards every other module uses:

* `model(tokens)` -> logits [B, T, V]: the full-sequence forward for training
  (optional `segment_ids` for packed or padded rows, `positions` per token);
* `model.forward_cached(tokens, cache, num_valid)` -> (logits, cache): k new
  tokens per row written at each row's own offset `cache.lengths[b]`. Prefill,
  one-token decode and (gamma+1)-token verification are all this one call.

Both forwards can also return the target *features* a feature drafter reads
(models/feature_draft.py): `feature_layers=(l, ...)` adds the residual stream
at the input of each layer l (l = num_layers: the final-normed hidden state,
the convention of HF's `hidden_states` and of EAGLE-3 / speculators).

Every parameter carries `logical_axes` metadata (e.g. ('embed', 'mlp')) that
`sharding.py` maps onto the device mesh.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax.models import kv_cache as kvc
from specdistill_jax.models import rope
from specdistill_jax.models.config import ModelConfig

_NEG_INF = jnp.finfo(jnp.float32).min


def _param(rngs: nnx.Rngs, shape, axes, config: ModelConfig, scale: Optional[float] = None,
           zeros: bool = False, ones: bool = False) -> nnx.Param:
  dtype = config.jnp_param_dtype
  if ones:
    value = jnp.ones(shape, dtype)
  elif zeros:
    value = jnp.zeros(shape, dtype)
  else:
    value = (jax.random.normal(rngs.params(), shape, jnp.float32) * scale).astype(dtype)
  return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * weight, computed in fp32."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dim: Optional[int] = None):
    """dim: the normalised width (default d_model; a per-head q/k norm uses head_dim)."""
    self.eps = config.rms_norm_eps
    self.weight = _param(rngs, (dim or config.d_model,), ("norm",), config, ones=True)

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (xf * self.weight[...].astype(jnp.float32)).astype(x.dtype)


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


def _mm(spec: str, x, w, dtype, out_dtype=None):
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
    # than a two-row matmul (experiments/results/target_benchmark.md), so run two rows
    # (the token twice) and keep one.
    out = _LOW_PRECISION[key](jnp.concatenate([x, x], axis=rows), w)
    return jax.lax.slice_in_dim(out, 0, 1, axis=rows)
  return _LOW_PRECISION[key](x, w)


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
  scores = _mm("btkgd,bskd->bkgts", q, k, q.dtype, jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = _mm("bkgts,bskd->btkgd", probs, v, v.dtype)
  return out.reshape(b, t, h, d)


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
    self.q = _param(rngs, (d_in, c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), c, s_in)
    self.k = _param(rngs, (d_in, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), c, s_in)
    self.v = _param(rngs, (d_in, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), c, s_in)
    self.o = _param(rngs, (c.num_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"), c, s_out)
    if c.qkv_bias:
      self.q_bias = _param(rngs, (c.num_heads, c.head_dim), ("heads", "head_dim"), c, zeros=True)
      self.k_bias = _param(rngs, (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), c, zeros=True)
      self.v_bias = _param(rngs, (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), c, zeros=True)

  def _project(self, x, positions):
    dt = self.config.jnp_dtype
    q = _mm("btd,dhk->bthk", x, self.q[...], dt)
    k = _mm("btd,dhk->bthk", x, self.k[...], dt)
    v = _mm("btd,dhk->bthk", x, self.v[...], dt)
    if self.config.qkv_bias:
      q = q + self.q_bias[...].astype(dt)
      k = k + self.k_bias[...].astype(dt)
      v = v + self.v_bias[...].astype(dt)
    cos, sin = rope.rotary_tables(self.config, positions)
    return rope.apply_rotary(q, cos, sin), rope.apply_rotary(k, cos, sin), v

  def _output(self, out):
    return _mm("bthk,hkd->btd", out, self.o[...], self.config.jnp_dtype)

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
    q, k, v = self._project(x, positions)
    keys = kvc.scatter_rows(keys, k, slots)
    values = kvc.scatter_rows(values, v, slots)
    if mask is None:
      mask = kvc.cached_attention_mask(positions, keys.shape[1], self.window)
    return self._output(attend(q, keys, values, mask)), keys, values


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
    self.gate = _param(rngs, (c.d_model, c.mlp_dim), ("embed", "mlp"), c, c.d_model ** -0.5)
    self.up = _param(rngs, (c.d_model, c.mlp_dim), ("embed", "mlp"), c, c.d_model ** -0.5)
    self.down = _param(rngs, (c.mlp_dim, c.d_model), ("mlp", "embed"), c, c.mlp_dim ** -0.5)

  def __call__(self, x):
    dt = self.dtype
    h = jax.nn.silu(_mm("btd,df->btf", x, self.gate[...], dt)) * _mm("btd,df->btf", x, self.up[...], dt)
    return _mm("btf,fd->btd", h, self.down[...], dt)


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


class Transformer(nnx.Module):
  """Token ids [B, T] -> logits [B, T, V] (fp32)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    # tied: the embedding is also the output head, so logits start at unit scale
    scale = c.d_model ** -0.5 if c.tie_embeddings else 1.0
    self.embed = _param(rngs, (c.vocab_size, c.d_model), ("vocab", "embed"), c, scale)
    self.layers = nnx.List([Block(c, i, rngs=rngs) for i in range(c.num_layers)])
    self.final_norm = RMSNorm(c, rngs=rngs)
    if not c.tie_embeddings:
      self.lm_head = _param(rngs, (c.d_model, c.vocab_size), ("embed", "vocab"), c, c.d_model ** -0.5)

  def embed_tokens(self, tokens):
    """Token ids [B, T] -> input embeddings [B, T, D] in the compute dtype."""
    return jnp.take(self.embed[...], tokens, axis=0).astype(self.config.jnp_dtype)

  def project(self, h, vocab_ids=None):
    """Final hidden states [..., D] (after the final norm) -> fp32 logits [..., V].

    vocab_ids: only these columns of the head ([..., len(vocab_ids)]), computed from the
    gathered rows, equal to `project(h)[..., vocab_ids]` at a fraction of the cost (the
    teacher of a draft with a reduced vocabulary).
    """
    dt = self.config.jnp_dtype
    h2 = h.reshape(-1, h.shape[-1])
    ids = None if vocab_ids is None else jnp.asarray(np.asarray(vocab_ids, np.int32))
    if self.config.tie_embeddings:
      table = self.embed[...] if ids is None else jnp.take(self.embed[...], ids, axis=0)
      logits = _mm("td,vd->tv", h2, table, dt, jnp.float32)
    else:
      head = self.lm_head[...] if ids is None else jnp.take(self.lm_head[...], ids, axis=1)
      logits = _mm("td,dv->tv", h2, head, dt, jnp.float32)
    return logits.reshape(h.shape[:-1] + (logits.shape[-1],))

  def hidden(self, tokens, *, positions=None, segment_ids=None, feature_layers=()):
    """Final-normed hidden states [B, T, D]; `project` turns them into logits.

    Losses over large vocabularies project chunk by chunk instead of
    materialising [B, T, V] (see distill/step.py). With `feature_layers`
    returns (hidden, features [B, T, len(feature_layers) * D]).
    """
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    x = self.embed_tokens(tokens)
    taps = {}
    if self.config.scan_layers:
      x, _, taps = self._scan(lambda block, x, _: (block(x, positions, segment_ids), None), x,
                              keep_inputs=bool(feature_layers))
    else:
      for i, block in enumerate(self.layers):
        taps[i] = x
        x = block(x, positions, segment_ids)
    h = self.final_norm(x)
    if not feature_layers:
      return h
    return h, self._features(taps, h, feature_layers)

  def _scan(self, step, x, per_layer=None, keep_inputs: bool = False):
    """lax.scan of step(block, x, per_layer[i]) -> (x, y_i) over the layers (config.scan_layers).

    The blocks' parameters are stacked along a new leading axis inside the traced program,
    so the parameters and checkpoints stay per layer. XLA then compiles one layer instead of
    num_layers copies. The stack is a copy of the weights: a standalone jitted step pays it
    every call (200 ms for the real target on 2 CPU cores), a decode loop (`generate`,
    `speculative_generate`: one while loop) once, as XLA hoists it out of the loop
    (experiments/results/scan_layers.md). Returns (x, stacked y, taps): taps[i] is layer i's
    input when keep_inputs (the features a feature draft reads), else {}.
    """
    graphdef = nnx.graphdef(self.layers[0])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(b) for b in self.layers])

    def body(x, inp):
      y, out = step(nnx.merge(graphdef, inp[0]), x, inp[1])
      return y, (out, x if keep_inputs else None)

    x, (outs, inputs) = jax.lax.scan(body, x, (stacked, per_layer))
    return x, outs, ({i: inputs[i] for i in range(len(self.layers))} if keep_inputs else {})

  def _features(self, taps: dict, final, feature_layers):
    check_feature_layers(feature_layers, self.config.num_layers)
    return jnp.concatenate([final if l == self.config.num_layers else taps[l] for l in feature_layers], -1)

  def __call__(self, tokens, *, positions=None, segment_ids=None):
    """Full-sequence forward. tokens [B,T] int; segment_ids [B,T] (0 = padding) -> logits [B,T,V]."""
    return self.project(self.hidden(tokens, positions=positions, segment_ids=segment_ids))

  def forward_cached(self, tokens, cache: kvc.KVCache, num_valid=None, *, positions=None, mask=None,
                     feature_layers=()):
    """Feed tokens [B,T] at each row's offset; the first num_valid[b] of them are real.

    Returns logits [B,T,V] (positions past num_valid are junk) and the cache with
    lengths advanced by num_valid (default: all T). A token tree (sampling/tree.py)
    passes its rotary `positions` [B,T] (prefix length + depth) and its attention
    `mask` [B,T,S]; the tokens are still written at slots lengths .. lengths+T-1.
    With `feature_layers` returns (logits, cache, features [B, T, len * D]).
    """
    b, t = tokens.shape
    if num_valid is None:
      num_valid = jnp.full((b,), t, jnp.int32)
    slots = kvc.write_positions(cache.lengths, t)
    if mask is not None and self.config.sliding_window is not None:
      raise ValueError("tree attention masks do not support sliding-window attention "
                       f"(sliding_window={self.config.sliding_window}); decode with a chain (tree=None)")
    positions = slots if positions is None else positions
    x = self.embed_tokens(tokens)
    keys, values, taps = [], [], {}
    if self.config.scan_layers:
      def step(block, x, kv):
        y, k, v = block.cached(x, positions, kv[0], kv[1], slots, mask)
        return y, (k, v)
      x, (ks, vs), taps = self._scan(step, x, (jnp.stack(cache.keys), jnp.stack(cache.values)),
                                     keep_inputs=bool(feature_layers))
      keys, values = list(ks), list(vs)
    else:
      for i, (block, k, v) in enumerate(zip(self.layers, cache.keys, cache.values)):
        taps[i] = x
        x, k, v = block.cached(x, positions, k, v, slots, mask)
        keys.append(k)
        values.append(v)
    new_cache = kvc.KVCache(tuple(keys), tuple(values), cache.lengths + num_valid.astype(jnp.int32))
    h = self.final_norm(x)
    if not feature_layers:
      return self.project(h), new_cache
    return self.project(h), new_cache, self._features(taps, h, feature_layers)

  def init_cache(self, batch: int, size: int) -> kvc.KVCache:
    return init_cache(self.config, batch, size)


def check_feature_layers(feature_layers, num_layers: int) -> None:
  """Layer ids of target features: distinct, in [0, num_layers] (num_layers = the final hidden state)."""
  ids = list(feature_layers)
  if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) > num_layers:
    raise ValueError(f"feature_layers={tuple(ids)} must be distinct layer ids in [0, {num_layers}] for a "
                     f"{num_layers}-layer target (id {num_layers} = its final hidden state)")


def init_cache(config: ModelConfig, batch: int, size: int) -> kvc.KVCache:
  """An empty cache of `size` slots per row for this model config."""
  return kvc.KVCache.create(config.num_layers, batch, size, config.num_kv_heads,
                            config.head_dim, config.jnp_dtype)

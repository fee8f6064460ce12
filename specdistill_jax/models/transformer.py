"""The decoder-only transformer (Llama / Mistral / Qwen2 family) in Flax NNX.

Composes the layers of models/layers.py (RMSNorm, grouped-query attention with RoPE,
SwiGLU MLP) and owns the two forwards every other module uses:

* `model(tokens)` -> logits [B, T, V]: the full-sequence forward for training
  (optional `segment_ids` for packed or padded rows, `positions` per token);
* `model.forward_cached(tokens, cache, num_valid)` -> CachedForward(logits, cache,
  features=None) (models/kv_cache.py): k new
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


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax.models import kv_cache as kvc
from specdistill_jax.models.config import ModelConfig
from specdistill_jax.models.layers import (Block, RMSNorm, embedding_rows, kernel_weight, mm, mm_left, param,
                                           set_transposed)


class Transformer(nnx.Module):
  """Token ids [B, T] -> logits [B, T, V] (fp32)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    # tied: the embedding is also the output head, so logits start at unit scale
    scale = c.d_model ** -0.5 if c.tie_embeddings else 1.0
    self.embed = param(rngs, (c.vocab_size, c.d_model), ("vocab", "embed"), c, scale)
    self.layers = nnx.List([Block(c, i, rngs=rngs) for i in range(c.num_layers)])
    self.final_norm = RMSNorm(c, rngs=rngs)
    if not c.tie_embeddings:
      self.lm_head = param(rngs, (c.d_model, c.vocab_size), ("embed", "vocab"), c, c.d_model ** -0.5)

  def embed_tokens(self, tokens):
    """Token ids [B, T] -> input embeddings [B, T, D] in the compute dtype."""
    return embedding_rows(self, self.embed[...], tokens, self.config.jnp_dtype)

  def project(self, h, vocab_ids=None):
    """Final hidden states [..., D] (after the final norm) -> fp32 logits [..., V].

    vocab_ids: only these columns of the head ([..., len(vocab_ids)]), computed from the
    gathered rows, equal to `project(h)[..., vocab_ids]` at a fraction of the cost (the
    teacher of a draft with a reduced vocabulary).
    """
    dt = self.config.jnp_dtype
    h2 = h.reshape(-1, h.shape[-1])
    ids = None if vocab_ids is None else jnp.asarray(np.asarray(vocab_ids, np.int32))
    if self.fused:  # the fused decode layout (models/backend_layout.py): head rows [V, D] on the left
      tied = self.config.tie_embeddings
      table = self.embed if tied else self.lm_head_t
      table = table[...] if ids is None else jnp.take(table[...], ids, axis=0)
      packed = kernel_weight(self, "embed" if tied else "lm_head") if ids is None else None
      logits = mm_left(h2, table, dt, jnp.float32, packed)
    elif self.config.tie_embeddings:
      table = self.embed[...] if ids is None else jnp.take(self.embed[...], ids, axis=0)
      logits = mm("td,vd->tv", h2, table, dt, jnp.float32)
    else:
      head = self.lm_head[...] if ids is None else jnp.take(self.lm_head[...], ids, axis=1)
      logits = mm("td,dv->tv", h2, head, dt, jnp.float32)
    return logits.reshape(h.shape[:-1] + (logits.shape[-1],))

  @property
  def head_is_embedding(self) -> bool:
    """The output head is the (tied) embedding table (layers.set_packed packs it with the heads)."""
    return self.config.tie_embeddings

  @property
  def fused(self) -> bool:
    """True in the fused decode layout (models/backend_layout.py)."""
    return self.layers[0].attn.fused if len(self.layers) else False

  def set_fused(self, fused: bool) -> None:
    """An untied head to the fused (True) or the standard layout (a tied one is the embedding
    [V, D] already); backend_layout converts the layers' attention and MLP itself."""
    set_transposed(self, "lm_head", fused)

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
                     feature_layers=(), logits_at=None):
    """Feed tokens [B,T] at each row's offset; the first num_valid[b] of them are real.

    Returns `CachedForward(logits, cache, features)`: logits [B,T,V] (positions past
    num_valid are junk), the cache with lengths advanced by num_valid (default: all T),
    and with `feature_layers` the features [B, T, len * D] (else None). A token tree
    (sampling/tree.py) passes its rotary `positions` [B,T] (prefix length + depth) and its
    attention `mask` [B,T,S]; the tokens are still written at slots lengths .. lengths+T-1.
    `logits_at` [B,K] (indices into the T tokens): logits only there, [B,K,V] (`kvc.rows_at`).
    """
    num_valid, slots = kvc.cached_slots(cache, tokens.shape[1], num_valid)
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
    new_cache = kvc.KVCache(tuple(keys), tuple(values), cache.lengths + num_valid)
    h = self.final_norm(x)
    return kvc.CachedForward(self.project(kvc.rows_at(h, logits_at)), new_cache,
                             self._features(taps, h, feature_layers) if feature_layers else None)

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

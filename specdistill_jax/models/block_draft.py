"""DFlash-style block drafters: one forward pass drafts a whole block of tokens.

Architecture (DFlash; the layout of speculators' `dflash` model, which
`models/dflash_io.py` writes and reads):

* the target's residual stream at a few layers (`feature_layers`, EAGLE-3's low /
  middle / high by default), concatenated [.., F], projected by `fc` (no bias) and
  normed (`hidden_norm`): the context c_j of every verified position j;
* a block of `block_size` tokens at positions p .. p+block_size-1: the anchor (the
  last verified token, at position p) and block_size-1 mask tokens
  (`mask_token_id`), embedded by the target's frozen embedding;
* each decoder layer (Qwen3-style attention: an RMSNorm on every query and key
  head before RoPE) lets the block attend to keys/values projected from the
  context by that layer's own k/v projections (positions < p: causal to the
  context) and from the block itself (bidirectional inside the block). The
  context is not transformed by the layers, so its keys/values are a cache;
* final norm and LM head (over the draft vocabulary, models/draft_vocab.py):
  block slot i >= 1 is the draft's distribution of the token at position p + i.

All block_size - 1 distributions come from one pass and none depends on the
tokens drafted before it, so a chain of gamma <= block_size - 1 drafts costs one
draft forward; independent draws keep exact rejection sampling exact.

Cache bookkeeping (the engine's feature-draft convention, sampling/proposer.py):
`forward_cached(tokens, cache, num_valid, hidden=c)` writes the context keys /
values of `hidden` (the projected target feature of the position *before* each
token: EAGLE's pairing, so the prompt prefill is shared), and `draft_block` drafts
from the anchor at the cache's end. The block itself is never cached.

Training (`block_logits`): anchors are sampled inside each training sequence;
the block at anchor a sees the context of positions < a in a's own sequence and
predicts tokens a+1 .. a+block_size-1 (distill/block_loss.py).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
from flax import nnx

from specdistill_jax.models import kv_cache as kvc
from specdistill_jax.models import rope
from specdistill_jax.models.config import ModelConfig
from specdistill_jax.models.draft_vocab import DraftVocab, check_draft_ids, draft_ids_for, start_from_target
from specdistill_jax.models.feature_draft import draft_decoder_config
from specdistill_jax.models.layers import MLP, Attention, RMSNorm, attend, dense, param, set_transposed
from specdistill_jax.models.transformer import check_feature_layers


class BlockLayer(nnx.Module):
  """A DFlash decoder layer: pre-norm attention over [context; block], then a SwiGLU MLP."""

  def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    self.config = config
    self.attn_norm = RMSNorm(config, rngs=rngs)
    self.attn = Attention(config, layer, rngs=rngs)
    self.q_norm = RMSNorm(config, rngs=rngs, dim=config.head_dim)
    self.k_norm = RMSNorm(config, rngs=rngs, dim=config.head_dim)
    self.mlp_norm = RMSNorm(config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def context_kv(self, x, positions):
    """Keys and values [B, T, Hkv, hd] of inputs x [B, T, D] at rotary positions [B, T]."""
    cos, sin = rope.rotary_tables(self.config, positions)
    k, v = self.attn.project_heads(x, ("k", "v"))
    return rope.apply_rotary(self.k_norm(k), cos, sin), v

  def __call__(self, x, positions, ctx_keys, ctx_values, mask):
    """Block x [B, Q, D] at positions [B, Q]; context keys/values [B, S, Hkv, hd];
    mask [B, Q, S + Q] over [context; block]. -> [B, Q, D]."""
    h = self.attn_norm(x)
    cos, sin = rope.rotary_tables(self.config, positions)
    (q,) = self.attn.project_heads(h, ("q",))
    q = rope.apply_rotary(self.q_norm(q), cos, sin)
    k, v = self.context_kv(h, positions)
    keys = jnp.concatenate([ctx_keys, k.astype(ctx_keys.dtype)], axis=1)
    values = jnp.concatenate([ctx_values, v.astype(ctx_values.dtype)], axis=1)
    x = x + self.attn._output(attend(q, keys, values, mask))
    return x + self.mlp(self.mlp_norm(x))


class BlockDraft(DraftVocab, nnx.Module):
  """A DFlash block drafter. `config` describes its decoder layers (vocab_size = the target's).

  The head is the target's own (its draft-vocabulary rows) and stays frozen, as in
  speculators' dflash, which rebuilds a full-vocabulary head from its verifier.
  """

  reads_target_features = True

  def __init__(self, config: ModelConfig, *, feature_layers: Sequence[int], target_layers: int,
               block_size: int = 8, mask_token_id: int = 0, draft_ids: Optional[Sequence[int]] = None,
               rngs: nnx.Rngs):
    c = config
    check_feature_layers(feature_layers, target_layers)
    if int(block_size) != block_size or block_size < 2:
      raise ValueError(f"block_size={block_size} must be an integer >= 2 (the anchor and at least one "
                       "drafted token)")
    if not 0 <= int(mask_token_id) < c.vocab_size:
      raise ValueError(f"mask_token_id={mask_token_id} is not a token id of the {c.vocab_size}-token vocabulary")
    self.config = c
    self.feature_layers = tuple(int(l) for l in feature_layers)
    self.target_layers = int(target_layers)
    self.block_size = int(block_size)
    self.mask_token_id = int(mask_token_id)
    self.draft_ids = check_draft_ids(draft_ids, c.vocab_size)
    f = len(self.feature_layers) * c.d_model
    self.frozen_embed = param(rngs, (c.vocab_size, c.d_model), ("vocab", "embed"), c, 1.0)
    self.fc = param(rngs, (f, c.d_model), ("mlp", "embed"), c, f ** -0.5)
    self.hidden_norm = RMSNorm(c, rngs=rngs)
    self.layers = nnx.List([BlockLayer(c, i, rngs=rngs) for i in range(c.num_layers)])
    self.final_norm = RMSNorm(c, rngs=rngs)
    self.frozen_lm_head = param(rngs, (c.d_model, self.draft_vocab_size), ("embed", "vocab"), c,
                                 c.d_model ** -0.5)

  @property
  def default_gamma(self) -> int:
    return self.block_size - 1

  def set_fused(self, fused: bool) -> None:
    """fc and the head to the fused decode layout (models/backend_layout.py) or back; the layers
    convert themselves."""
    set_transposed(self, "fc", fused)
    set_transposed(self, "frozen_lm_head", fused)

  @property
  def feature_dim(self) -> int:
    return len(self.feature_layers) * self.config.d_model

  def project_features(self, features):
    """Target features [..., F] -> the context c [..., D] (fc, then hidden_norm)."""
    return self.hidden_norm(dense(self, "fc", features, self.config.jnp_dtype))

  def draft_logits(self, states):
    """Layer outputs [B, T, D] -> fp32 logits over the draft vocabulary [B, T, Vd]."""
    return dense(self, "frozen_lm_head", self.final_norm(states), self.config.jnp_dtype, jnp.float32)

  def _block_inputs(self, anchors):
    """Anchor ids [...] -> block ids [..., block_size] (the anchor, then mask tokens)."""
    masks = jnp.full(anchors.shape + (self.block_size - 1,), self.mask_token_id, jnp.int32)
    return jnp.concatenate([anchors[..., None].astype(jnp.int32), masks], axis=-1)

  def _run(self, x, positions, ctx, mask):
    """The layers over block inputs x [B, Q, D]; ctx: per layer (keys, values) [B, S, Hkv, hd]."""
    for layer, (k, v) in zip(self.layers, ctx):
      x = layer(x, positions, k, v, mask)
    return self.draft_logits(x)

  def forward_cached(self, tokens, cache: kvc.KVCache, num_valid=None, *, hidden, positions=None, mask=None,
                     logits_at=None):
    """Write the context keys/values of `hidden` [B, T, D] (projected target features) at each
    row's cache offset; `tokens` [B, T] are not read (the block is never cached; no logits, so
    `logits_at` changes nothing).

    Returns `CachedForward(None, cache, hidden)`: a block drafter predicts only from `draft_block`.
    """
    if mask is not None:
      raise ValueError("a block drafter drafts chains only: it has no per-node distributions to grow a "
                       "tree from; decode it with tree=None")
    num_valid, slots = kvc.cached_slots(cache, tokens.shape[1], num_valid)
    positions = slots if positions is None else positions
    keys, values = [], []
    for layer, kc, vc in zip(self.layers, cache.keys, cache.values):
      k, v = layer.context_kv(hidden.astype(self.config.jnp_dtype), positions)
      keys.append(kvc.scatter_rows(kc, k, slots))
      values.append(kvc.scatter_rows(vc, v, slots))
    return kvc.CachedForward(None, kvc.KVCache(tuple(keys), tuple(values), cache.lengths + num_valid), hidden)

  def draft_block(self, anchor, cache: kvc.KVCache):
    """One block pass from anchor ids [B] at position cache.lengths (the context is the cache).

    Returns fp32 logits [B, block_size - 1, V] over the target vocabulary: slot i is the
    distribution of the token i + 1 places after the anchor.
    """
    b = anchor.shape[0]
    start = cache.lengths
    positions = kvc.write_positions(start, self.block_size)  # [B, bs]
    ctx_mask = jnp.arange(cache.size)[None, None, :] < start[:, None, None]
    mask = jnp.concatenate([jnp.broadcast_to(ctx_mask, (b, self.block_size, cache.size)),
                            jnp.ones((b, self.block_size, self.block_size), jnp.bool_)], axis=2)
    x = self.frozen_embeddings(self._block_inputs(anchor))
    logits = self._run(x, positions, zip(cache.keys, cache.values), mask)
    return self.to_target_vocab(logits[:, 1:])

  def block_logits(self, tokens, features, anchors, segment_ids=None):
    """Training forward: the blocks at `anchors` [B, A] of sequences tokens [B, T] whose target
    features are features [B, T, F]; segment_ids [B, T] (0 = padding; packed rows never mix).

    Block j of row b starts at anchor a = anchors[b, j] and sees the context of positions < a
    in a's own sequence. Returns draft-vocabulary logits [B, A, block_size - 1, Vd] (slot i
    predicts tokens[b, a + 1 + i]) and their mask [B, A, block_size - 1]: the predicted position
    exists and lies in the anchor's sequence.
    """
    b, t = tokens.shape
    a, bs = anchors.shape[1], self.block_size
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    ctx_pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    ctx = self.project_features(features)
    anchor_seg = jnp.take_along_axis(segment_ids, anchors, axis=1)  # [B, A]
    sees = ((ctx_pos[:, None, :] < anchors[:, :, None]) & (segment_ids[:, None, :] == anchor_seg[:, :, None])
            & (anchor_seg[:, :, None] != 0))  # [B, A, T]
    own = jnp.eye(a, dtype=jnp.bool_)  # block j sees block j
    mask = jnp.concatenate([jnp.repeat(sees, bs, axis=1),
                            jnp.repeat(jnp.repeat(own, bs, axis=0), bs, axis=1)[None].repeat(b, 0)], axis=2)
    positions = (anchors[:, :, None] + jnp.arange(bs)[None, None, :]).reshape(b, a * bs)
    x = self.frozen_embeddings(self._block_inputs(jnp.take_along_axis(tokens, anchors, axis=1)).reshape(b, a * bs))
    kv = [layer.context_kv(ctx, ctx_pos) for layer in self.layers]
    logits = self._run(x, positions, kv, mask).reshape(b, a, bs, -1)[:, :, 1:]
    target_pos = anchors[:, :, None] + jnp.arange(1, bs)[None, None, :]  # [B, A, bs-1]
    inside = target_pos < t
    target_seg = jnp.take_along_axis(segment_ids, jnp.minimum(target_pos, t - 1).reshape(b, -1), axis=1)
    valid = inside & (target_seg.reshape(b, a, bs - 1) == anchor_seg[:, :, None]) & (anchor_seg[:, :, None] != 0)
    return logits, valid

  def init_cache(self, batch: int, size: int) -> kvc.KVCache:
    c = self.config
    return kvc.KVCache.create(c.num_layers, batch, size, c.num_kv_heads, c.head_dim, c.jnp_dtype)


def create_block_draft(target_config: ModelConfig, *, num_layers: int = 1, block_size: int = 8,
                       feature_layers: Optional[Sequence[int]] = None, draft_vocab_size: Optional[int] = None,
                       seed: int = 0, target=None, token_counts=None, mask_token_id: Optional[int] = None,
                       dtype: Optional[str] = None, param_dtype: Optional[str] = None) -> BlockDraft:
  """A randomly initialised DFlash block drafter for a target with `target_config`.

  num_layers: decoder layers. block_size: the anchor plus block_size - 1 drafted tokens per
  pass. feature_layers: target layer ids it reads (default: EAGLE-3's low / middle / high).
  draft_vocab_size: None = the full vocabulary, else the most frequent ids of `token_counts` [V].
  target: copy its embedding and head (both stay frozen) and its final norm; a draft without it
  has random ones, and its dflash export (which takes them from the verifier) refuses it.
  mask_token_id: the id embedded at the block's drafted slots (default: the pad id).
  """
  tc = target_config
  config, feature_layers = draft_decoder_config(tc, num_layers, feature_layers, dtype, param_dtype)
  draft = BlockDraft(config, feature_layers=feature_layers, target_layers=tc.num_layers, block_size=block_size,
                     mask_token_id=tc.pad_token_id if mask_token_id is None else mask_token_id,
                     draft_ids=draft_ids_for(tc, draft_vocab_size, token_counts), rngs=nnx.Rngs(seed))
  if target is not None:
    start_from_target(draft, target, tc, "frozen_lm_head")
  return draft

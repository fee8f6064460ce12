"""EAGLE-3 feature drafters: a small decoder that reads the target's hidden states.

Architecture (EAGLE-3; the tensor layout of speculators' `eagle3` model, which
vLLM and SGLang load; `models/eagle3_io.py` writes and reads it):

* the target's residual stream at three layers (low / middle / high:
  (2, L/2, L-3) as EAGLE-3 and speculators pick them), concatenated
  [.., 3 D] and projected by `fc` (no bias) to D;
* the first decoder layer reads 2 D: q/k/v see cat(input_norm(embed(token)),
  hidden_norm(h)); its residual stream starts from h. Further layers are plain
  pre-norm blocks. The draft's own layer output (before the final norm) is
  the `state` a later token reads in place of target features;
* final norm, then an LM head over a reduced draft vocabulary (`draft_ids`,
  the most frequent tokens of the training data; None = the full vocabulary).
  Logits come back over the *target* vocabulary with q = 0 outside the draft
  vocabulary, so speculative decoding with it stays exact.

Sequence bookkeeping. The draft's entry j pairs the target feature of
position j with the token at position j+1 and predicts token j+2: the target
feature that predicted a token travels with it. At inference a proposed token
has no target feature yet and reads the state of the draft entry that
proposed it (EAGLE's inference rule); after verification the accepted tokens
are fed again with the target's own features (sampling/proposer.py).

Training-time test (`unroll`, EAGLE-3 / HASS): the draft is unrolled `steps`
positions ahead on a training sequence. Step 0 at entry i reads (f_i, x_{i+1});
step s reads (g^{s-1}_i, x_{i+1+s}) where g^{s-1}_i is step s-1's state at the
same entry, and predicts x_{i+2+s}. Its queries see step 0's keys of entries
<= i (real features) and the keys of steps 1..s at entry i itself: exactly
what the draft sees at inference after proposing s tokens from entry i
(tests/models/test_feature_draft.py checks the two agree).

The embedding is the target's, shared and frozen: it is stored as
`frozen_embed`, which the optimiser never updates (distill/state.py).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from specdistill_jax.models import kv_cache as kvc
from specdistill_jax.models.config import ModelConfig
from specdistill_jax.models.draft_vocab import (DraftVocab, check_draft_ids, draft_ids_for, select_draft_vocab,
                                                start_from_target)
from specdistill_jax.models.layers import MLP, Attention, Block, RMSNorm, dense, param, set_transposed
from specdistill_jax.models.transformer import check_feature_layers

__all__ = ["FeatureDraft", "create_feature_draft", "default_feature_layers", "select_draft_vocab"]


def default_feature_layers(num_layers: int) -> tuple[int, ...]:
  """EAGLE-3's low / middle / high layers: (2, L//2, L-3); small targets: {0, L//2, L}."""
  if num_layers >= 6:
    return (2, num_layers // 2, num_layers - 3)
  return tuple(sorted({0, num_layers // 2, num_layers}))


class FirstLayer(nnx.Module):
  """EAGLE-3's first layer: attention over cat(norm(embeds), norm(h)) [2 D], residual from h."""

  def __init__(self, config: ModelConfig, norm_before_residual: bool, *, rngs: nnx.Rngs):
    self.norm_before_residual = norm_before_residual
    self.attn_norm = RMSNorm(config, rngs=rngs)  # speculators: input_layernorm (on the embeddings)
    self.hidden_norm = RMSNorm(config, rngs=rngs)
    self.attn = Attention(config, 0, rngs=rngs, in_dim=2 * config.d_model)
    self.mlp_norm = RMSNorm(config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def _split(self, x):
    d = x.shape[-1] // 2
    embeds, hidden = x[..., :d], x[..., d:]
    normed = self.hidden_norm(hidden)
    residual = normed if self.norm_before_residual else hidden
    return jnp.concatenate([self.attn_norm(embeds), normed], -1), residual

  def _finish(self, residual, h):
    x = residual + h
    return x + self.mlp(self.mlp_norm(x))

  def cached(self, x, positions, keys, values, slots=None, mask=None):
    inp, residual = self._split(x)
    h, keys, values = self.attn.cached(inp, positions, keys, values, slots, mask)
    return self._finish(residual, h), keys, values

  def unrolled(self, x, positions, keys, values, mask):
    inp, residual = self._split(x)
    h, keys, values = self.attn.unrolled(inp, positions, keys, values, mask)
    return self._finish(residual, h), keys, values


class FeatureDraft(DraftVocab, nnx.Module):
  """An EAGLE-3 draft head. `config` describes its decoder layers (vocab_size = the target's)."""

  reads_target_features = True

  def __init__(self, config: ModelConfig, *, feature_layers: Sequence[int], target_layers: int,
               draft_ids: Optional[Sequence[int]] = None, norm_before_residual: bool = False,
               rngs: nnx.Rngs):
    c = config
    check_feature_layers(feature_layers, target_layers)
    self.config = c
    self.feature_layers = tuple(int(l) for l in feature_layers)
    self.target_layers = int(target_layers)
    self.draft_ids = check_draft_ids(draft_ids, c.vocab_size)
    self.norm_before_residual = bool(norm_before_residual)
    f = len(self.feature_layers) * c.d_model
    self.frozen_embed = param(rngs, (c.vocab_size, c.d_model), ("vocab", "embed"), c, 1.0)
    self.fc = param(rngs, (f, c.d_model), ("mlp", "embed"), c, f ** -0.5)
    self.layers = nnx.List([FirstLayer(c, self.norm_before_residual, rngs=rngs)]
                           + [Block(c, i, rngs=rngs) for i in range(1, c.num_layers)])
    self.final_norm = RMSNorm(c, rngs=rngs)
    self.lm_head = param(rngs, (c.d_model, self.draft_vocab_size), ("embed", "vocab"), c, c.d_model ** -0.5)

  def set_fused(self, fused: bool) -> None:
    """fc and the head to the fused decode layout (models/backend_layout.py) or back; the layers
    convert themselves."""
    set_transposed(self, "fc", fused)
    set_transposed(self, "lm_head", fused)

  @property
  def feature_dim(self) -> int:
    return len(self.feature_layers) * self.config.d_model

  def project_features(self, features):
    """Target features [..., len(feature_layers) * D] -> the first layer's hidden input [..., D]."""
    return dense(self, "fc", features, self.config.jnp_dtype)

  def draft_logits(self, states):
    """Layer outputs [B, T, D] -> fp32 logits over the draft vocabulary [B, T, draft_vocab_size]."""
    return dense(self, "lm_head", self.final_norm(states), self.config.jnp_dtype, jnp.float32)

  def _inputs(self, tokens, hidden):
    return jnp.concatenate([self.frozen_embeddings(tokens), hidden.astype(self.config.jnp_dtype)], -1)

  def forward_cached(self, tokens, cache: kvc.KVCache, num_valid=None, *, hidden, positions=None, mask=None,
                     logits_at=None):
    """Feed tokens [B, T] with their hidden inputs [B, T, D] (projected target features or draft
    states) at each row's cache offset, as `Transformer.forward_cached` does.

    Returns `CachedForward(logits [B, T, V] over the target vocabulary, cache, states [B, T, D])`;
    with `logits_at` [B, K] the logits of those tokens only ([B, K, V]; states stay [B, T, D]).
    """
    num_valid, slots = kvc.cached_slots(cache, tokens.shape[1], num_valid)
    positions = slots if positions is None else positions
    x = self._inputs(tokens, hidden)
    keys, values = [], []
    for layer, k, v in zip(self.layers, cache.keys, cache.values):
      x, k, v = layer.cached(x, positions, k, v, slots, mask)
      keys.append(k)
      values.append(v)
    new_cache = kvc.KVCache(tuple(keys), tuple(values), cache.lengths + num_valid)
    return kvc.CachedForward(self.to_target_vocab(self.draft_logits(kvc.rows_at(x, logits_at))), new_cache, x)

  def unroll(self, tokens, features, steps: int, segment_ids=None, *, key=None, temperature: float = 1.0):
    """Training-time test over full sequences (see the module docstring).

    tokens [B, T], features [B, T, F] (the target's, position by position),
    segment_ids [B, T] (0 = padding; packed rows never mix). Step s >= 1 reads the data's
    token i+1+s (teacher forcing), or with `key` the draft's own sample from step s-1's
    distribution at `temperature` (0: its argmax), without gradient (on-policy, Draft-OPD).
    Returns draft-vocabulary logits [steps, B, T-1, Vd] (step s at entry i predicts the
    token after the s-th input), the mask [steps, B, T-1] of entries whose chain lies
    inside one sequence, and the step-input tokens [steps, B, T-1] (target ids).
    """
    b, t = tokens.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    n = t - 1
    idx = jnp.arange(n)
    seg = segment_ids
    pair_ok = (seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1])  # f_i and x_{i+1} in one sequence
    same = (seg[:, :-1][:, :, None] == seg[:, :-1][:, None, :]) & pair_ok[:, None, :]
    causal = same & (idx[None, :, None] >= idx[None, None, :])
    diagonal = jnp.broadcast_to(jnp.eye(n, dtype=jnp.bool_), (b, n, n))
    h = self.project_features(features[:, :-1])
    cache = [(jnp.zeros((b, 0) + k_shape, self.config.jnp_dtype),) * 2 for k_shape in self._kv_shapes()]
    logits, masks, inputs = [], [], []
    mask = causal
    keys = None if key is None else jax.random.split(key, steps)
    for s in range(steps):
      if s == 0 or key is None:
        tok = jnp.pad(tokens[:, 1 + s:], ((0, 0), (0, s)))
      else:
        tok = self._sample(keys[s], jax.lax.stop_gradient(logits[-1]), temperature)
      inputs.append(tok)
      positions = jnp.broadcast_to(idx + 1 + s, (b, n))
      x = self._inputs(tok, h)
      new_cache = []
      for layer, (k, v) in zip(self.layers, cache):
        x, k, v = layer.unrolled(x, positions, k, v, mask)
        new_cache.append((k, v))
      cache, h = new_cache, x
      logits.append(self.draft_logits(x))
      # the chain from entry i reaches position i+1+s: it must exist and stay in entry i's sequence
      reach = jnp.pad(seg[:, 1 + s:], ((0, 0), (0, s)))
      masks.append(pair_ok & (reach == seg[:, 1:]))
      mask = jnp.concatenate([mask, diagonal], axis=2)
    return jnp.stack(logits), jnp.stack(masks), jnp.stack(inputs)

  def _sample(self, key, logits, temperature: float):
    """Target ids of draws from draft-vocabulary logits [B, N, Vd] (temperature 0: argmax)."""
    if temperature == 0:
      draft_tok = jnp.argmax(logits, -1)
    else:
      draft_tok = jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1)
    return self.to_target_ids(draft_tok)

  def _kv_shapes(self):
    c = self.config
    return [(c.num_kv_heads, c.head_dim)] * c.num_layers

  def init_cache(self, batch: int, size: int) -> kvc.KVCache:
    c = self.config
    return kvc.KVCache.create(c.num_layers, batch, size, c.num_kv_heads, c.head_dim, c.jnp_dtype)


def draft_decoder_config(target_config: ModelConfig, num_layers: int, feature_layers, dtype, param_dtype):
  """(the decoder-layer config of a draft that reads `target_config`'s features, its feature
  layers: the given ones, checked, or `default_feature_layers`)."""
  if int(num_layers) != num_layers or num_layers < 1:
    raise ValueError(f"num_layers={num_layers} must be an integer >= 1")
  tc = target_config
  feature_layers = tuple(feature_layers) if feature_layers is not None else default_feature_layers(tc.num_layers)
  check_feature_layers(feature_layers, tc.num_layers)
  config = tc.replace(num_layers=int(num_layers), dtype=dtype or tc.dtype, param_dtype=param_dtype or tc.param_dtype,
                      tie_embeddings=False, sliding_window=None, sliding_window_layers=None, scan_layers=False)
  return config, feature_layers


def create_feature_draft(target_config: ModelConfig, *, num_layers: int = 1,
                         feature_layers: Optional[Sequence[int]] = None, draft_vocab_size: Optional[int] = None,
                         seed: int = 0, target=None, token_counts=None, norm_before_residual: bool = False,
                         dtype: Optional[str] = None, param_dtype: Optional[str] = None,
                         head_from_target: bool = True) -> FeatureDraft:
  """A randomly initialised EAGLE-3 draft for a target with `target_config`.

  num_layers: decoder layers (the first reads 2 D). feature_layers: target layer ids
  (default `default_feature_layers`). draft_vocab_size: None = the full vocabulary, else
  the most frequent ids of `token_counts` [V] (plus the eos ids); without counts, the
  first ids. target: copy its embedding (the draft reads the target's token embedding) and,
  with head_from_target, start the LM head and final norm from the target's own (the head
  restricted to the draft vocabulary's rows), as speculators initialises an eagle3 draft
  from its verifier: the head then starts in the target's output space instead of at random.
  """
  tc = target_config
  config, feature_layers = draft_decoder_config(tc, num_layers, feature_layers, dtype, param_dtype)
  draft_ids = draft_ids_for(tc, draft_vocab_size, token_counts)
  draft = FeatureDraft(config, feature_layers=feature_layers, target_layers=tc.num_layers, draft_ids=draft_ids,
                       norm_before_residual=norm_before_residual, rngs=nnx.Rngs(seed))
  if target is not None:
    start_from_target(draft, target, tc, "lm_head" if head_from_target else None)
  return draft

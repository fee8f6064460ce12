"""The two kinds of drafter behind one interface: token drafts and feature drafts.

A token draft (`models.Transformer`) reads only tokens. A feature draft
(`models.FeatureDraft`, EAGLE-3) also reads a hidden input per token: the
target's features for tokens the target has verified, its own output state
for tokens it proposes. The loops in speculative.py and tree.py call `feed`
for both and carry `hidden` (None for a token draft) next to the tokens:

* prefill (`prefill`): the draft reads the prompt; a feature draft pairs each
  prompt token with the target feature of the position before it;
* proposing: `feed` returns the states that the next proposed tokens read;
* after verification (`feature_pending`): a feature draft keeps none of this
  round's entries (they read draft states, not target features) and re-feeds
  the realised tokens with the target features of the verification pass.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from specdistill_jax import models


def reads_features(model) -> bool:
  return bool(getattr(model, "reads_target_features", False))


def feature_layers(drafts) -> tuple[int, ...]:
  """The target layers any of `drafts` reads (sorted; () when none is a feature draft)."""
  return tuple(sorted({l for d in drafts if reads_features(d) for l in d.feature_layers}))


def select(features, layers: tuple, wanted: tuple):
  """Target features [.., len(layers) * D] laid out by `layers` -> the `wanted` layers' [.., len * D]."""
  if layers == wanted:
    return features
  d = features.shape[-1] // len(layers)
  return jnp.concatenate([features[..., layers.index(l) * d:(layers.index(l) + 1) * d] for l in wanted], -1)


def feed(model, tokens, cache, num_valid=None, *, hidden=None, positions=None, mask=None):
  """Cached forward of either kind -> (logits [B, T, V], cache, states [B, T, D] or None)."""
  if reads_features(model):
    return model.forward_cached(tokens, cache, num_valid, hidden=hidden, positions=positions, mask=mask)
  logits, cache = model.forward_cached(tokens, cache, num_valid, positions=positions, mask=mask)
  return logits, cache, None


def prefill(draft, tokens, prefix, cache_size: int, features=None, layers: tuple = ()):
  """The draft's cache after reading the prompt but its last token, and that token's hidden input.

  tokens [B, P] (row b's prompt is tokens[b, :prefix[b] + 1]); features [B, P, F]: the
  target's at prompt positions (valid below prefix). Returns (cache, hidden [B, 1, D] or None).
  """
  b = tokens.shape[0]
  cache = draft.init_cache(b, cache_size)
  if not reads_features(draft):
    return draft.forward_cached(tokens, cache, prefix)[1], None
  h = draft.project_features(select(features, layers, draft.feature_layers))  # [B, P, D]
  # entry j pairs feature j with token j+1: the prompt's tokens 1..prefix-1
  _, cache, _ = draft.forward_cached(tokens[:, 1:], cache, jnp.maximum(prefix - 1, 0), hidden=h[:, :-1])
  last = jnp.take_along_axis(h, jnp.maximum(prefix - 1, 0)[:, None, None], axis=1)
  return cache, jnp.where((prefix > 0)[:, None, None], last, 0.0)  # a 1-token prompt has no feature


def feature_pending(draft, features, layers: tuple, index, width: int):
  """Hidden inputs [B, width, D] of the pending tokens: the target features at `index` [B, width]
  (positions of the verification pass: the root, then the accepted nodes)."""
  f = jnp.take_along_axis(features, index[:, :width, None], axis=1)
  return draft.project_features(select(f, layers, draft.feature_layers))


def for_target(draft, target):
  """The draft as used with `target`: a drafter with no weights of its own (prompt lookup) binds
  to the target's vocabulary here; a model is returned as is."""
  bind = getattr(draft, "for_target", None)
  return draft if bind is None else bind(target)


def check_feature_draft(target, draft) -> Optional[str]:
  """A message if `draft` reads features that `target` cannot give, else None."""
  if not reads_features(draft):
    return None
  if draft.target_layers != target.config.num_layers or draft.config.d_model != target.config.d_model:
    return (f"the feature draft was built for a {draft.target_layers}-layer target with d_model="
            f"{draft.config.d_model}, but the target has {target.config.num_layers} layers and d_model="
            f"{target.config.d_model}; build the draft with models.create_feature_draft(target.config, ...)")
  return None

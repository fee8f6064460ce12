"""Every kind of drafter behind one interface: prefill, propose, and re-feed after verification.

A token draft (`models.Transformer`, `sampling.prompt_lookup`) reads only tokens. A
feature draft (`models.FeatureDraft`, EAGLE-3; `models.BlockDraft`, DFlash) also
reads a hidden input per token: the target's features for tokens the target has
verified (an EAGLE-3 head: its own output state for tokens it proposes). The loops
in speculative.py and tree.py call `propose` / `feed` for every kind and carry
`hidden` (None for a token draft) next to the tokens:

* prefill (`prefill`): the draft reads the prompt; a feature draft pairs each
  prompt token with the target feature of the position before it;
* proposing (`propose`): gamma tokens and their q, one cached step per token
  (`feed` returns the states that the next proposed tokens read), or one pass for
  a drafter that drafts a whole block at once (it has `draft_block`);
* after verification (`feature_pending`): a feature draft keeps none of this
  round's entries (they read draft states, not target features) and re-feeds
  the realised tokens with the target features of the verification pass.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from specdistill_jax.sampling import acceptance
from specdistill_jax.sampling import distributions as dist
from specdistill_jax.sampling.autoregressive import last_valid

DEFAULT_GAMMA = 4


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


def feed(model, tokens, cache, num_valid=None, *, hidden=None, positions=None, mask=None, logits_at=None):
  """Cached forward of either kind -> CachedForward(logits [B, T, V] (or [B, K, V] at `logits_at`
  [B, K]), cache, states [B, T, D] or None)."""
  extra = {"hidden": hidden} if reads_features(model) else {}
  return model.forward_cached(tokens, cache, num_valid, positions=positions, mask=mask, logits_at=logits_at,
                              **extra)


def drafts_blocks(draft) -> bool:
  """Whether the draft drafts a whole block in one pass (it has `draft_block`)."""
  return hasattr(draft, "draft_block")


class Proposal(NamedTuple):
  """A drafter's chain: tokens [B, G], their logits [B, G, V], its cache after proposing, and
  lengths [B]: how many leading drafts are proposals (None: all G; see `proposal_lengths`)."""
  tokens: jax.Array
  logits: jax.Array
  cache: Any
  lengths: Optional[jax.Array] = None


def proposes_partial(draft) -> bool:
  """Whether the draft may propose fewer than gamma tokens in a round (it has `proposal_lengths`:
  prompt lookup, whose n-gram may not match)."""
  return hasattr(draft, "proposal_lengths")


def propose(model, cache, pending, n_pending, hidden, key, gamma: int, greedy: bool, temperature) -> Proposal:
  """Feed the pending tokens, then draft gamma tokens."""
  if drafts_blocks(model):  # all gamma distributions from one pass, independent draws
    cache = feed(model, pending, cache, n_pending, hidden=hidden).cache
    logits = model.draft_block(last_valid(pending[..., None], n_pending)[:, 0], cache)[:, :gamma]
    return Proposal(dist.sample(key, logits, greedy, temperature), logits, cache)
  logits, cache, states = feed(model, pending, cache, n_pending, hidden=hidden,
                               logits_at=(n_pending - 1)[:, None])  # only the last pending token's logits
  first = logits[:, 0]
  state = None if states is None else last_valid(states, n_pending)[:, None]
  keys = jax.random.split(key, gamma)

  def step(carry, k):
    cache, logits, state = carry
    tok = dist.sample(k, logits, greedy, temperature)
    nxt, cache, out = feed(model, tok[:, None], cache, hidden=state)
    return (cache, nxt[:, 0], out), (tok, logits, out)

  (cache, last, _), (toks, seen, outs) = jax.lax.scan(step, (cache, first, state), keys[: gamma - 1])
  tok_last = dist.sample(keys[-1], last, greedy, temperature)
  tokens = jnp.concatenate([toks.T, tok_last[:, None]], axis=1)
  logits = jnp.concatenate([jnp.moveaxis(seen, 0, 1), last[:, None]], axis=1)
  lengths = None
  if proposes_partial(model):  # the states that came with each draft's logits: [B, G, ...]
    lengths = model.proposal_lengths(jnp.concatenate([state, jnp.moveaxis(outs[:, :, 0], 0, 1)], axis=1))
  return Proposal(tokens, logits, cache, lengths)


def blank_pending(draft, batch: int, width: int = 1):
  """(pending [B, W], n_pending [B], hidden [B, W, D] or None): W zero tokens (one of them
  pending) with zero hidden inputs, the state a cost measurement proposes from."""
  hidden = (jnp.zeros((batch, width, draft.config.d_model), draft.config.jnp_dtype)
            if reads_features(draft) else None)
  return jnp.zeros((batch, width), jnp.int32), jnp.ones((batch,), jnp.int32), hidden


def passes_per_round(draft, gamma: int) -> int:
  """Draft forwards per chain round: 1 for a block drafter, else gamma."""
  return 1 if drafts_blocks(draft) else int(gamma)


def default_gamma(draft) -> int:
  """The draft's own chain length (a block drafter: block_size - 1), else DEFAULT_GAMMA."""
  return int(getattr(draft, "default_gamma", DEFAULT_GAMMA))


def check_gamma(draft, gamma: int) -> Optional[str]:
  """A message if the draft cannot draft gamma tokens per round (a block drafter: block_size - 1)."""
  most = draft.default_gamma if drafts_blocks(draft) else None
  if most is not None and gamma > most:
    return (f"gamma={gamma} exceeds what this block drafter drafts in one pass (block_size - 1 = {most}); "
            f"pass gamma <= {most} or build the draft with a larger block_size")
  return None


def check_tree(draft) -> Optional[str]:
  """A message if the draft cannot grow a draft tree."""
  if drafts_blocks(draft):
    return ("a block drafter drafts chains only: its block's distributions are per position, not per "
            "tree node; decode it with tree=None (a chain of gamma <= block_size - 1 drafts)")
  return None


def prefill(draft, tokens, prefix, cache_size: int, features=None, layers: tuple = ()):
  """The draft's cache after reading the prompt but its last token, and that token's hidden input.

  tokens [B, P] (row b's prompt is tokens[b, :prefix[b] + 1]); features [B, P, F]: the
  target's at prompt positions (valid below prefix). Returns (cache, hidden [B, 1, D] or None).
  """
  b = tokens.shape[0]
  cache = draft.init_cache(b, cache_size)
  if not reads_features(draft):
    return draft.forward_cached(tokens, cache, prefix).cache, None
  h = draft.project_features(select(features, layers, draft.feature_layers))  # [B, P, D]
  # entry j pairs feature j with token j+1: the prompt's tokens 1..prefix-1
  cache = draft.forward_cached(tokens[:, 1:], cache, jnp.maximum(prefix - 1, 0), hidden=h[:, :-1]).cache
  last = jnp.take_along_axis(h, jnp.maximum(prefix - 1, 0)[:, None, None], axis=1)
  return cache, jnp.where((prefix > 0)[:, None, None], last, 0.0)  # a 1-token prompt has no feature


def pending_width(drafts, gamma: int, tree: bool) -> int:
  """Pending tokens a drafter may re-feed after a round: 2 for one token draft's chain (d_G and
  the bonus token), else gamma + 1 (routing, trees, feature drafts re-feed the realised tokens)."""
  return 2 if len(drafts) == 1 and not tree and not reads_features(drafts[0]) else gamma + 1


def advance_chain(draft, cache, old_lengths, n_pending, proposed, realised, n, active, features, layers: tuple,
                  width: int, gamma: int):
  """A drafter after a chain round: its cache rolled back to what it keeps and its pending tokens.

  cache: after its proposal (from old_lengths, n_pending fed); proposed [B, G] its drafts;
  realised [B, G+1] the round's tokens (n accepted drafts, then the next token).
  A token draft keeps the K/V of its leading proposals that were realised; a feature draft
  keeps none (they read draft states) and re-feeds every realised token with the target
  features of the verification pass. -> (cache, pending [B, W], n_pending [B], hidden or None)
  """
  b = n.shape[0]
  pos = jnp.arange(gamma - 1)[None, :]
  keep = kept_proposals(draft, acceptance.accepted_prefix(
      (proposed[:, : gamma - 1] == realised[:, : gamma - 1]) & (pos < n[:, None])))
  hidden = None
  if reads_features(draft):
    hidden = feature_pending(draft, features, layers, jnp.broadcast_to(jnp.arange(width), (b, width)), width)
  cache = cache.with_lengths(jnp.where(active, old_lengths + n_pending + keep, old_lengths))
  idx = jnp.minimum(keep[:, None] + jnp.arange(width)[None, :], gamma)
  return cache, jnp.take_along_axis(realised, idx, axis=1), n + 1 - keep, hidden


def kept_proposals(draft, fed_and_realised):
  """How many leading proposals [B] a drafter keeps in its cache after a round: those it fed that
  were realised (a token draft), or none (a feature draft: their entries read its own states,
  and every realised token is re-fed with the target's features)."""
  return jnp.zeros_like(fed_and_realised) if reads_features(draft) else fed_and_realised


def tree_pending_hidden(draft, features, layers: tuple, path, width: int):
  """A feature draft's hidden inputs after a tree round: the root's, then the accepted path's
  nodes' target features in the verification pass (None for a token draft)."""
  if not reads_features(draft):
    return None
  b = path.shape[0]
  index = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), 1 + jnp.maximum(path, 0)], axis=1)
  return feature_pending(draft, features, layers, index, width)


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

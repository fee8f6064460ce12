"""One round of speculative decoding as four named steps: propose, verify, accept, advance.

The loop (speculative.py) runs `round_steps(ctx)` every iteration; chains and trees
share the loop, the emission of realised tokens and the statistics, and differ
only in these steps (their candidate layout):

* propose: every drafter drafts (a chain of gamma tokens, or a dynamic tree;
  with several drafters, routing picks one chain per row, trees are merged);
* verify: the target scores [last token, candidates] in one cached forward and
  returns the features its feature drafters read;
* accept: the acceptance rule gives n accepted drafts and the next token
  (`Verdict`), with the per-position TVD (chains), routing scores and which
  drafter supplied the accepted path;
* advance: the target cache keeps last_token and the accepted drafts, every
  drafter keeps what it fed of them and gets its pending tokens
  (sampling/proposer.py).

Every step takes the `RoundContext` (what no round changes) and the loop's state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from specdistill_jax.sampling import acceptance
from specdistill_jax.sampling import distributions as dist
from specdistill_jax.sampling import proposer
from specdistill_jax.sampling import tree as tree_lib


@dataclasses.dataclass(frozen=True)
class RoundContext:
  target: Any
  drafts: tuple
  layers: tuple  # target layers the feature drafts read
  width: int  # pending tokens a drafter may re-feed
  gamma: int  # drafts on the longest path (a tree's depth)
  greedy: bool
  temperature: Any
  eps: Any  # lenience (lossy SD)
  lenience_kind: Optional[str]
  score_fn: Optional[Callable]  # routing among several drafters
  route_on_current: bool
  spec: Optional[tree_lib.TreeSpec]
  cache_size: int
  pad_id: int

  @property
  def num_drafts(self) -> int:
    return len(self.drafts)


@dataclasses.dataclass
class Verification:
  logits: jax.Array  # [B, T, V]
  cache: Any  # the target cache after the pass (lengths not yet rolled back)
  features: Optional[jax.Array]  # [B, T, F] for the feature drafts, else None


@dataclasses.dataclass
class Verdict:
  n: jax.Array  # [B] accepted drafts
  next_token: jax.Array  # [B]
  drafts: jax.Array  # [B, G] the accepted path's tokens (chain: the chosen drafts)
  tvd: jax.Array  # [B, G] per-position TVD(p, q) (zeros in a tree)
  scores: jax.Array  # [B, K] routing scores kept for the next round
  supplied: jax.Array  # [B, K] int: drafter k supplied the accepted path
  nodes: jax.Array  # [B] draft tokens verified
  proposed: jax.Array  # [B] drafts on the row's longest path (gamma, or fewer from a partial proposal)
  path: Optional[jax.Array] = None  # [B, depth] a tree's accepted nodes (None for a chain)


@dataclasses.dataclass
class Advanced:
  target_cache: Any
  caches: list
  pending: list
  n_pending: list
  hidden: list


class RoundSteps(NamedTuple):
  propose: Callable
  verify: Callable
  accept: Callable
  advance: Callable


def _per_drafter(ctx: RoundContext, s, key):
  return zip(ctx.drafts, s.draft_caches, s.pending, s.n_pending, s.pending_hidden,
             jax.random.split(key, ctx.num_drafts))


def _pick(stacked: jax.Array, choice: jax.Array) -> jax.Array:
  """stacked [K, B, ...] at per-row drafter choice [B] -> [B, ...]."""
  return jnp.take_along_axis(stacked, choice.reshape((1, -1) + (1,) * (stacked.ndim - 2)), axis=0)[0]


def _verify(ctx: RoundContext, s, tokens, **kw) -> Verification:
  with jax.named_scope("target_verify"):
    out = ctx.target.forward_cached(tokens, s.target_cache, feature_layers=ctx.layers, **kw)
  return Verification(*out)


# ---------------------------------------------------------------------------------------------
# chains: gamma drafts from one drafter per row (routed among several)

@dataclasses.dataclass
class ChainProposal:
  tokens: jax.Array  # [K, B, G] every drafter's drafts
  logits: jax.Array  # [K, B, G, V]
  caches: list  # per drafter, after proposing
  choice: jax.Array  # [B] the drafter each row verifies
  scores: jax.Array  # [B, K]
  lengths: Optional[jax.Array] = None  # [B] proposals of the chosen drafter (None: all gamma)

  def chosen(self):
    return _pick(self.tokens, self.choice), _pick(self.logits, self.choice)


def propose_chain(ctx: RoundContext, s, key) -> ChainProposal:
  with jax.named_scope("draft_propose"):
    props = [proposer.propose(d, c, p, n, h, k, ctx.gamma, ctx.greedy, ctx.temperature)
             for d, c, p, n, h, k in _per_drafter(ctx, s, key)]
  tokens, logits = jnp.stack([p.tokens for p in props]), jnp.stack([p.logits for p in props])
  b = tokens.shape[1]
  if ctx.num_drafts == 1:
    choice, scores = jnp.zeros((b,), jnp.int32), s.prev_scores
  else:
    scores = jnp.stack([ctx.score_fn(p.logits, p.tokens, p.lengths) for p in props], axis=1)
    choice = jnp.argmax(scores if ctx.route_on_current else s.prev_scores, axis=1).astype(jnp.int32)
  lengths = None
  if any(p.lengths is not None for p in props):  # a drafter that may propose fewer than gamma
    full = jnp.full((b,), ctx.gamma, jnp.int32)
    lengths = _pick(jnp.stack([full if p.lengths is None else p.lengths for p in props]), choice)
  return ChainProposal(tokens, logits, [p.cache for p in props], choice, scores, lengths)


def verify_chain(ctx: RoundContext, s, prop: ChainProposal) -> Verification:
  """The target's pass over [last token, drafts]; a round in which no row proposes anything
  (prop.lengths all 0) is a one-token pass instead (lax.cond: only one branch runs), its
  logits and features padded to the chain's width (the padding is never read: n = 0)."""
  tokens = jnp.concatenate([s.last_token[:, None], prop.chosen()[0]], axis=1)
  if prop.lengths is None:
    return _verify(ctx, s, tokens)

  def one_token(_):
    ver = _verify(ctx, s, tokens[:, :1])
    pad = lambda x: None if x is None else jnp.pad(x, ((0, 0), (0, ctx.gamma), (0, 0)))  # noqa: E731
    return pad(ver.logits), ver.cache, pad(ver.features)

  def chain(_):
    ver = _verify(ctx, s, tokens)
    return ver.logits, ver.cache, ver.features

  return Verification(*jax.lax.cond(jnp.any(prop.lengths > 0), chain, one_token, None))


def accept_chain(ctx: RoundContext, prop: ChainProposal, ver: Verification, key) -> Verdict:
  d_tokens, d_logits = prop.chosen()
  if ctx.greedy:
    # one argmax of the target's logits (a 49k-entry reduction per position); a greedy draft's
    # tokens are its argmax, so the one-hot TVD is whether they match the target's
    target_tokens = dist.argmax(ver.logits)
    n, t_next = acceptance.greedy_tokens(d_tokens, target_tokens, prop.lengths)
    tvd = 1.0 - (d_tokens == target_tokens[:, :ctx.gamma]).astype(jnp.float32)
  else:
    log_p = dist.scaled_log_probs(ver.logits, ctx.temperature)
    log_q = dist.scaled_log_probs(d_logits, ctx.temperature)
    n, t_next, tvd = acceptance.stochastic(key, d_tokens, log_q, log_p, ctx.lenience_kind, ctx.eps,
                                           prop.lengths)
  supplied = jax.nn.one_hot(prop.choice, ctx.num_drafts, dtype=jnp.int32)
  proposed = jnp.full(n.shape, ctx.gamma, jnp.int32) if prop.lengths is None else prop.lengths
  return Verdict(n, t_next, d_tokens, tvd, prop.scores, supplied, proposed, proposed)


def advance_chain(ctx: RoundContext, s, prop: ChainProposal, ver: Verification, v: Verdict, realised,
                  active) -> Advanced:
  old = s.target_cache.lengths  # keep last_token and the n accepted drafts
  t_cache = ver.cache.with_lengths(jnp.where(active, old + 1 + v.n, old))
  rows = [proposer.advance_chain(ctx.drafts[k], prop.caches[k], s.draft_caches[k].lengths, s.n_pending[k],
                                 prop.tokens[k], realised, v.n, active, ver.features, ctx.layers, ctx.width,
                                 ctx.gamma) for k in range(ctx.num_drafts)]
  return Advanced(t_cache, *(list(x) for x in zip(*rows)))


# ---------------------------------------------------------------------------------------------
# trees: one dynamic tree per drafter, merged, verified in one target pass (sampling/tree.py)

@dataclasses.dataclass
class TreeProposal:
  grown: list  # per drafter (tree, cache)
  forest: Any


def propose_tree(ctx: RoundContext, s, key) -> TreeProposal:
  with jax.named_scope("draft_propose"):
    grown = [tree_lib.draft_tree(d, c, p, n, h, k, ctx.spec, ctx.greedy, ctx.temperature)
             for d, c, p, n, h, k in _per_drafter(ctx, s, key)]
  return TreeProposal(grown, tree_lib.merge([g[0] for g in grown], ctx.spec))


def verify_tree(ctx: RoundContext, s, prop: TreeProposal) -> Verification:
  tokens, positions, mask = tree_lib.verify_inputs(prop.forest, s.last_token, s.target_cache.lengths,
                                                   ctx.cache_size, ctx.spec.depth)
  return _verify(ctx, s, tokens, positions=positions, mask=mask)


def accept_tree(ctx: RoundContext, prop: TreeProposal, ver: Verification, key) -> Verdict:
  forest = prop.forest
  n, path, t_next = tree_lib.accept(key, forest, ver.logits, ctx.spec, ctx.greedy, ctx.temperature,
                                    ctx.num_drafts)
  d_tokens = jnp.where(path >= 0, jnp.take_along_axis(forest.tokens, jnp.maximum(path, 0), axis=1), ctx.pad_id)
  supplied = jnp.stack([tree_lib.holds_path(forest, k, path) & (n > 0) for k in range(ctx.num_drafts)], axis=1)
  nodes = jnp.sum(forest.valid & (forest.canon == jnp.arange(forest.tokens.shape[1])), axis=1)
  tvd = jnp.zeros(d_tokens.shape, jnp.float32)  # no single q per depth in a tree
  return Verdict(n, t_next, d_tokens, tvd, jnp.zeros((n.shape[0], ctx.num_drafts)), supplied.astype(jnp.int32),
                 nodes, jnp.full(n.shape, ctx.spec.depth, jnp.int32), path)


def advance_tree(ctx: RoundContext, s, prop: TreeProposal, ver: Verification, v: Verdict, realised,
                 active) -> Advanced:
  old, n = s.target_cache.lengths, jnp.where(active, v.n, 0)
  t_cache = tree_lib.compact_target(ver.cache, old, v.path, n).with_lengths(jnp.where(active, old + 1 + v.n, old))
  out = Advanced(t_cache, [], [], [], [])
  start = 0
  for k, (tree, cache) in enumerate(prop.grown):
    cache, pend, n_pend = tree_lib.advance_drafter(ctx.drafts[k], cache, prop.forest, tree, k, start, v.path, n,
                                                   realised)
    out.caches.append(cache.with_lengths(jnp.where(active, cache.lengths, s.draft_caches[k].lengths)))
    out.pending.append(pend)
    out.n_pending.append(n_pend)
    out.hidden.append(proposer.tree_pending_hidden(ctx.drafts[k], ver.features, ctx.layers, v.path, ctx.width))
    start += tree.tokens.shape[1]
  return out


def round_steps(ctx: RoundContext) -> RoundSteps:
  """The four steps of a chain round, or of a tree round when ctx.spec is set."""
  if ctx.spec is None:
    return RoundSteps(propose_chain, verify_chain, accept_chain, advance_chain)
  return RoundSteps(propose_tree, verify_tree, accept_tree, advance_tree)

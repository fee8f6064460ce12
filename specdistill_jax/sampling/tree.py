"""Token trees for speculative decoding: `TreeSpec`, dynamic draft trees, merged trees, exact verification.

One round with a tree (the loop itself is speculative.py's; a chain of gamma
drafts is the tree TreeSpec(gamma, 1, gamma)):

1. Drafting (`draft_tree`, EAGLE-2's dynamic tree). The root is the last
   verified token. Every expanded node draws `top_k` children from the draft's
   distribution q at that node *without replacement* (greedy: its top_k
   tokens). A child's score is its parent's score plus the log of the r-th
   largest probability of q at the parent, r = its rank in the drawing order
   (greedy: exactly its cumulative log-probability, as in EAGLE-2). Level by
   level, the `top_k` best-scoring nodes of a level are expanded (fed to the
   draft in one cached forward with a tree mask), up to `depth` levels; then
   the `num_nodes` best-scoring nodes are kept. Scores fall strictly along a
   path, so the kept set contains the ancestors of each kept node, and it
   keeps a prefix (in drawing order) of every node's children.
2. Merging (`merge`): the trees of several drafters are concatenated and a node
   whose path equals an earlier drafter's node is an alias of it (TAPS'
   merged tree): it shares that node's target distribution and children.
3. Verification: one cached target forward over [root, nodes], positions =
   prefix length + depth, each node attending to the prefix and its ancestors.
4. Acceptance (`accept`), walking down from the root. Greedy: move to the
   child whose token is the target's argmax; stop when none is; the next token
   is the argmax where the walk stopped. Output == greedy target decoding.
   Sampling: recursive rejection sampling over the children, drafter by
   drafter, each drafter's children in drawing order. With target residual r
   (initially p at the node) and the drafter's remaining proposal q_i (q with
   the drafter's earlier children removed, renormalised), child x_i is
   accepted with probability min(1, r(x_i) / q_i(x_i)); on rejection
   r <- norm(max(0, r - q_i)). A drafter change restarts q_i at that
   drafter's q. If every child is rejected the next token is drawn from r; at
   an accepted leaf, from p at the leaf.

Why the output is exactly the target's distribution (temperature > 0).
(a) One test: if x ~ q_i, accepting with min(1, r/q_i) and otherwise drawing
from any process whose output is distributed as r' = norm(max(0, r - q_i))
gives output distributed as r (the standard speculative-sampling identity; it
holds for whatever proposal q_i is, as long as x was drawn from it).
(b) Given everything drawn before it, the i-th child a drafter draws without
replacement is distributed as q_i (q without the earlier draws, renormalised),
and children of different drafters are drawn independently of each other. By
induction from the last child, the sequence of tests at a node returns a token
distributed as p at that node, provided which children are tested depends
neither on the target nor on the identities of the children not yet tested.
(c) Which children are kept satisfies that: a child's score depends on its rank
and on its ancestors (tokens already drawn), not on its own identity; the only
nodes whose scores depend on a child's identity are its own descendants
(always below it) and those of its later siblings (below those siblings, hence
below it). So the kept children of a node are a prefix of its drawing order
whose length is fixed before their identities matter. Which nodes are expanded
(and thus how many children a node has) may depend on the node itself.
(d) After an accepted child the walk repeats at that child with the target's p
there; tokens are thus drawn from p one after another: the target's law.
EAGLE-2's rule (deterministic top-k children, pruned by their own
probabilities, plain rejection) fails (b) and (c); the tests show its bias
at T > 0, and it is not offered.

After acceptance the accepted path's K/V are moved to consecutive slots
(`KVCache.compact`) in the target cache and in each drafter's cache (for the
path nodes that drafter fed); the rest is dropped by lengths as in the chain.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from specdistill_jax.sampling import acceptance
from specdistill_jax.sampling import distributions as dist
from specdistill_jax.sampling import proposer
from specdistill_jax.sampling.autoregressive import last_valid

_TIE = 1e-6
_MIN_REST = 1e-6  # less of q's mass left than this: no further child (fp32 rounds 1 - drawn at ~1e-7)


@dataclasses.dataclass(frozen=True)
class TreeSpec:
  """depth: levels of drafts; top_k: children per expanded node and nodes expanded per level;
  num_nodes: draft nodes verified per round (per drafter in a merged tree)."""

  depth: int
  top_k: int
  num_nodes: int

  def __post_init__(self):
    for name in ("depth", "top_k", "num_nodes"):
      value = getattr(self, name)
      if int(value) != value or value < 1:
        raise ValueError(f"TreeSpec.{name}={value} must be an integer >= 1")
    if self.num_nodes > self.max_nodes:
      raise ValueError(f"TreeSpec.num_nodes={self.num_nodes} exceeds the {self.max_nodes} nodes that "
                       f"depth={self.depth}, top_k={self.top_k} can draft; lower num_nodes or raise depth/top_k")

  @property
  def max_nodes(self) -> int:
    return self.top_k + (self.depth - 1) * self.top_k ** 2

  @classmethod
  def chain(cls, gamma: int) -> "TreeSpec":
    return cls(depth=gamma, top_k=1, num_nodes=gamma)


@flax.struct.dataclass
class DraftTree:
  """The nodes one drafter proposes this round, per row (N = num_nodes, E = 1 + (depth-1) top_k)."""

  tokens: jax.Array  # [B, N]
  parent: jax.Array  # [B, N] index of the parent node, -1: the root (last verified token)
  depth: jax.Array  # [B, N] 1..depth
  valid: jax.Array  # [B, N]
  rank: jax.Array  # [B, N] position in the parent's drawing order
  q_index: jax.Array  # [B, N] row of q_logp the node was drawn from (its parent's distribution)
  q_logp: jax.Array  # [B, E, V] the draft's log-probs at the root and at each expanded node
  fed: jax.Array  # [B, N] the node's slot in the draft cache, as an offset from `base`; -1: not fed
  base: jax.Array  # [B] the draft cache's length after this round's pending tokens


def window_mask(base: jax.Array, visible: jax.Array, size: int) -> jax.Array:
  """[B, T, S]: slots below base[b] are visible; slot base+w iff visible[b, t, w] (w < W)."""
  slots = jnp.arange(size, dtype=jnp.int32)[None, :] - base[:, None]  # [B, S]
  w = visible.shape[-1]
  inside = (slots >= 0) & (slots < w)
  picked = jnp.take_along_axis(visible, jnp.clip(slots, 0, w - 1)[:, None, :].repeat(visible.shape[1], 1),
                               axis=2)
  return (slots < 0)[:, None, :] | (inside[:, None, :] & picked)


def _children(key, logq, k: int, greedy: bool):
  """k children per row of logq [B, P, V]: tokens [B,P,k] in drawing order, rank scores, ok.

  Sampled children are k draws without replacement, drawn at once by Gumbel-top-k: the order of
  log q + Gumbel noise is distributed as sequential draws without replacement (Plackett-Luce;
  Kool et al. 2019), so the i-th child ~ q with the earlier children removed, renormalised, as
  the walk's tests assume. One perturbed top_k over the vocabulary: the sequential loop it
  replaces (draw, zero the drawn entry, draw again) cost 13.7 ms for one row of the real
  target's 49k vocabulary on 2 cores (XLA:CPU fused it badly), this 0.7 ms.
  """
  est, top = jax.lax.top_k(logq, k)
  ok = est > dist.NEG_INF / 2
  if greedy:
    return top.astype(jnp.int32), est, ok
  probs = jnp.exp(logq)
  # a token of zero fp32 mass is never drawn: its key is -inf, behind every token of mass > 0
  keys = jnp.where(probs > 0, logq + jax.random.gumbel(key, logq.shape, jnp.float32), -jnp.inf)
  tokens = jax.lax.top_k(keys, k)[1].astype(jnp.int32)
  # once the support is used up (a sharp q: fewer than k tokens of non-zero fp32 mass, or less
  # than _MIN_REST of q's mass left, within fp32's rounding of 1 - the drawn mass) there is no
  # child to draw: the slot is invalid (its id is still inside the vocabulary). Which slots are
  # valid depends only on the earlier children, so the kept children stay a prefix of the order.
  drawn = jnp.take_along_axis(probs, tokens, axis=-1)  # [B, P, k]
  rest = 1.0 - (jnp.cumsum(drawn, axis=-1) - drawn)  # q's mass not yet drawn before each child
  ok = (rest > _MIN_REST) & (drawn > 0)
  return tokens, est, ok


def _child_scores(parent_score, est):
  """Scores of children in drawing order: parent's score + log of the r-th largest q, with
  ties broken so a child scores below its parent and below its earlier siblings."""
  k = est.shape[-1]
  return parent_score + est - _TIE * (1 + jnp.arange(k) / k)


def _take(x, idx):
  """x [B, C, ...] at idx [B, M] -> [B, M, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def draft_tree(model, cache, pending, n_pending, hidden, key, spec: TreeSpec, greedy: bool, temperature):
  """Feed the pending tokens, then draft a dynamic tree. -> (DraftTree, cache rolled back to base).

  hidden: the pending tokens' hidden inputs (a feature draft) or None; a feature draft's
  node reads its parent's output state (sampling/proposer.py).
  """
  logits, cache, states = proposer.feed(model, pending, cache, n_pending, hidden=hidden)
  base = cache.lengths
  logq = _log_probs(last_valid(logits, n_pending)[:, None], greedy, temperature)  # [B, 1, V]
  b, k, depth = pending.shape[0], spec.top_k, spec.depth
  window = (depth - 1) * k
  keys = jax.random.split(key, depth)
  tok, est, ok = _children(keys[0], logq, k, greedy)
  tok, score, ok = tok[:, 0], _child_scores(0.0, est[:, 0]), ok[:, 0]
  parts = dict(tokens=[tok], parent=[jnp.full((b, k), -1, jnp.int32)], depth=[jnp.ones((b, k), jnp.int32)],
               score=[score], valid=[ok], rank=[jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))],
               q_index=[jnp.zeros((b, k), jnp.int32)])
  q_rows = [logq]
  anc = jnp.zeros((b, k, window), jnp.bool_)  # fed ancestors of the current level's nodes
  fed = jnp.full((b, spec.max_nodes), -1, jnp.int32)
  offset = 0  # index of the current level's first node
  for level in range(1, depth):
    f_score, f_local = jax.lax.top_k(jnp.where(ok, score, -jnp.inf), k)  # the frontier: best k of the level
    f_tok, f_ok = _take(tok, f_local), _take(ok, f_local) & (f_score > -jnp.inf)
    slot = (level - 1) * k + jnp.arange(k)
    f_anc = _take(anc, f_local) | jax.nn.one_hot(slot, window, dtype=jnp.bool_)[None]
    fed = fed.at[jnp.arange(b)[:, None], offset + f_local].set(jnp.where(f_ok, slot[None], -1))
    positions = jnp.broadcast_to((base - 1 + level)[:, None], (b, k))
    if states is None:
      f_hidden = None
    elif level == 1:  # children of the root read the state of the last pending token
      f_hidden = jnp.broadcast_to(last_valid(states, n_pending)[:, None], (b, k, states.shape[-1]))
    else:  # a node of this level is a child of node f_local // k of the previous frontier
      f_hidden = _take(states, f_local // k)
    lg, cache, states = proposer.feed(model, f_tok, cache.with_lengths(base + (level - 1) * k),
                                      hidden=f_hidden, positions=positions,
                                      mask=window_mask(base, f_anc, cache.size))
    logq = _log_probs(lg, greedy, temperature)  # [B, k, V]
    q_rows.append(logq)
    c_tok, c_est, c_ok = _children(keys[level], logq, k, greedy)  # [B, k, k]
    tok = c_tok.reshape(b, k * k)
    score = _child_scores(f_score[:, :, None], c_est).reshape(b, k * k)
    ok = (f_ok[:, :, None] & c_ok).reshape(b, k * k)
    anc = jnp.repeat(f_anc, k, axis=1)
    parts["tokens"].append(tok)
    parts["parent"].append(jnp.repeat(offset + f_local, k, axis=1).astype(jnp.int32))
    parts["depth"].append(jnp.full((b, k * k), level + 1, jnp.int32))
    parts["score"].append(score)
    parts["valid"].append(ok)
    parts["rank"].append(jnp.tile(jnp.arange(k, dtype=jnp.int32), (b, k)))
    parts["q_index"].append(jnp.broadcast_to(jnp.repeat(1 + (level - 1) * k + jnp.arange(k, dtype=jnp.int32), k),
                                             (b, k * k)))
    offset += k if level == 1 else k * k
  cand = {name: jnp.concatenate(v, axis=1) for name, v in parts.items()}
  top, sel = jax.lax.top_k(jnp.where(cand["valid"], cand["score"], -jnp.inf), spec.num_nodes)
  rows = jnp.arange(b)[:, None]
  inverse = jnp.full(cand["tokens"].shape, -1, jnp.int32).at[rows, sel].set(
      jnp.arange(spec.num_nodes, dtype=jnp.int32)[None])
  parent = _take(cand["parent"], sel)
  tree = DraftTree(tokens=_take(cand["tokens"], sel), depth=_take(cand["depth"], sel),
                   parent=jnp.where(parent >= 0, _take(inverse, jnp.maximum(parent, 0)), -1),
                   valid=top > -jnp.inf, rank=_take(cand["rank"], sel), q_index=_take(cand["q_index"], sel),
                   q_logp=jnp.concatenate(q_rows, axis=1), fed=_take(fed, sel), base=base)
  return tree, cache.with_lengths(base)


def _log_probs(logits, greedy: bool, temperature):
  return jax.nn.log_softmax(logits.astype(jnp.float32), -1) if greedy else \
      dist.scaled_log_probs(logits, temperature)


@flax.struct.dataclass
class Forest:
  """All drafters' trees side by side (M = sum of their num_nodes), with merged shared prefixes."""

  tokens: jax.Array  # [B, M]
  parent: jax.Array  # [B, M] index into the forest, -1: the root
  depth: jax.Array
  valid: jax.Array
  order: jax.Array  # [B, M] testing order among siblings: drafter, then rank
  drafter: jax.Array  # [B, M]
  q_index: jax.Array  # [B, M] into q_logp
  q_logp: jax.Array  # [B, sum E, V]
  canon: jax.Array  # [B, M] the first node with the same path (itself unless merged)


def merge(trees: Sequence[DraftTree], spec: TreeSpec) -> Forest:
  """Concatenate the drafters' trees; a node repeating an earlier drafter's path becomes its alias."""
  cat = lambda name: jnp.concatenate([getattr(t, name) for t in trees], axis=1)  # noqa: E731
  n_off, e_off, parents, q_index, drafter = 0, 0, [], [], []
  for i, t in enumerate(trees):
    parents.append(jnp.where(t.parent >= 0, t.parent + n_off, -1))
    q_index.append(t.q_index + e_off)
    drafter.append(jnp.full(t.tokens.shape, i, jnp.int32))
    n_off += t.tokens.shape[1]
    e_off += t.q_logp.shape[1]
  tokens, valid = cat("tokens"), cat("valid")
  parent, drafter = jnp.concatenate(parents, 1), jnp.concatenate(drafter, 1)
  own = jnp.broadcast_to(jnp.arange(n_off, dtype=jnp.int32), tokens.shape)
  canon = own
  if len(trees) > 1:
    match = ((drafter[:, None, :] < drafter[:, :, None]) & valid[:, None, :] & valid[:, :, None]
             & (tokens[:, None, :] == tokens[:, :, None]))  # [B, node, earlier candidate]
    for _ in range(spec.depth):  # each pass settles one more level
      cp = jnp.where(parent >= 0, jnp.take_along_axis(canon, jnp.maximum(parent, 0), axis=1), -1)
      same = match & (cp[:, None, :] == cp[:, :, None])
      first = jnp.argmax(same, axis=2).astype(jnp.int32)
      canon = jnp.where(same.any(2), jnp.take_along_axis(canon, first, axis=1), own)
  return Forest(tokens=tokens, parent=parent, depth=cat("depth"), valid=valid,
                order=drafter * spec.top_k + cat("rank"), drafter=drafter,
                q_index=jnp.concatenate(q_index, 1), q_logp=cat("q_logp"), canon=canon)


def verify_inputs(forest: Forest, last_token: jax.Array, lengths: jax.Array, size: int, depth: int):
  """(tokens [B, 1+M], positions, mask [B, 1+M, S]) of the target's pass over [root, nodes]."""
  b, m = forest.tokens.shape
  tokens = jnp.concatenate([last_token[:, None], forest.tokens], axis=1)
  positions = lengths[:, None] + jnp.concatenate([jnp.zeros((b, 1), jnp.int32), forest.depth], axis=1)
  up = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), forest.parent + 1], axis=1)  # root is its own parent
  eye = jnp.broadcast_to(jnp.eye(m + 1, dtype=jnp.bool_), (b, m + 1, m + 1))
  anc = eye
  for _ in range(depth):
    anc = eye | jnp.take_along_axis(anc, up[:, :, None].repeat(m + 1, 2), axis=1)
  return tokens, positions, window_mask(lengths, anc, size)


def accept(key, forest: Forest, target_logits, spec: TreeSpec, greedy: bool, temperature, num_drafters: int):
  """Walk the forest from the root. -> (n [B], path [B, depth] canonical nodes (-1 pad), t [B]).

  Greedy: the walk reads only the target's argmax at each node (one reduction per node, as the
  chain's acceptance and plain decoding take it: the same token on ties), no softmax."""
  keys = jax.random.split(key, target_logits.shape[0])
  walk = jax.vmap(functools.partial(_walk, spec=spec, num_drafters=num_drafters))  # kwargs map over rows too
  if greedy:
    return walk(keys, forest, top=dist.argmax(target_logits))
  return walk(keys, forest, log_p=dist.scaled_log_probs(target_logits, temperature))  # [B, 1+M, V]


def _walk(key, f: Forest, *, spec: TreeSpec, num_drafters: int, log_p=None, top=None):
  """One row: (n, path [depth], t). Greedy (top [1+M]: the target's argmax at the root and at
  each node) or sampled (log_p [1+M, V]: the target's log-probs at temperature)."""
  siblings = min(f.tokens.shape[0], num_drafters * spec.top_k)  # children of one node, all drafters
  greedy = top is not None
  p_all = None if greedy else jnp.exp(log_p)
  canon_parent = jnp.where(f.parent >= 0, f.canon[jnp.maximum(f.parent, 0)], -1)
  cur, n = jnp.int32(-1), jnp.int32(0)
  r = None if greedy else p_all[0]
  stopped = jnp.bool_(False)
  path = jnp.full((spec.depth,), -1, jnp.int32)
  level_keys = jax.random.split(key, spec.depth + 1)
  for level in range(spec.depth):
    is_child = f.valid & (canon_parent == cur) & ~stopped
    cand = jnp.argsort(jnp.where(is_child, f.order, jnp.iinfo(jnp.int32).max))[:siblings]
    cand_ok = is_child[cand]
    if greedy:
      match = cand_ok & (f.tokens[cand] == top[1 + cur])  # the root's argmax is top[0]
      chosen = jnp.where(match.any(), cand[jnp.argmax(match)], -1)
    else:
      def test(carry, inputs):
        r, q, drafter, chosen = carry
        node, ok, k = inputs
        active = ok & (chosen < 0)
        q = jnp.where(active & (f.drafter[node] != drafter), jnp.exp(f.q_logp[f.q_index[node]]), q)
        x = f.tokens[node]
        hit = active & (jax.random.uniform(k) * q[x] < r[x])
        miss = active & ~hit
        r = jnp.where(miss, acceptance.correction(r, q), r)
        q_rest = q.at[x].set(0.0)
        q = jnp.where(miss, q_rest / jnp.maximum(q_rest.sum(), 1e-30), q)
        return (r, q, jnp.where(active, f.drafter[node], drafter), jnp.where(hit, node, chosen)), None
      init = (r, jnp.zeros_like(r), jnp.int32(-1), jnp.int32(-1))
      (r, _, _, chosen), _ = jax.lax.scan(test, init, (cand, cand_ok, jax.random.split(level_keys[level], siblings)))
    hit = chosen >= 0
    node = f.canon[jnp.maximum(chosen, 0)]
    path = path.at[level].set(jnp.where(hit, node, -1))
    n = n + hit.astype(jnp.int32)
    if not greedy:
      r = jnp.where(hit, p_all[1 + node], r)
    cur = jnp.where(hit, node, cur)
    stopped = stopped | ~hit
  t = top[1 + cur] if greedy else dist.sample_from_probs(level_keys[-1], r)
  return n, path, t


def compact_target(cache, lengths, path, n):
  """Target cache: root at slot lengths, node i at lengths+1+i; path moves to lengths+1.. ."""
  return cache.compact(lengths[:, None] + 1 + jnp.maximum(path, 0), lengths + 1, n).with_lengths(lengths + 1 + n)


def advance_drafter(draft, cache, forest: Forest, tree: DraftTree, drafter: int, start: int, path, n, realised):
  """A drafter's cache after the round, and its pending tokens.

  The leading path nodes that this drafter fed (its own node with the same path
  was expanded) keep their K/V, moved to consecutive slots; the rest of the path
  and the next token become pending. A feature draft keeps none (its nodes read
  draft states; the path is re-fed with target features).
  -> (cache, pending [B, depth+1], n_pending)
  """
  mine = forest.drafter == drafter  # [B, M]
  depth = path.shape[1]
  # this drafter's node with each path node's canonical id
  same = mine[:, None, :] & (forest.canon[:, None, :] == path[:, :, None]) & (path[:, :, None] >= 0)
  local = jnp.argmax(same, axis=2) - start  # [B, depth]
  fed = jnp.where(same.any(2), jnp.take_along_axis(tree.fed, jnp.clip(local, 0, tree.fed.shape[1] - 1), 1), -1)
  keep = proposer.kept_proposals(
      draft, jnp.sum(jnp.cumprod((fed >= 0) & (jnp.arange(depth)[None] < n[:, None]), axis=1), axis=1))
  cache = cache.compact(tree.base[:, None] + jnp.maximum(fed, 0), tree.base, keep).with_lengths(tree.base + keep)
  idx = jnp.minimum(keep[:, None] + jnp.arange(depth + 1)[None], depth)
  return cache, jnp.take_along_axis(realised, idx, axis=1), n + 1 - keep


def holds_path(forest: Forest, drafter: int, path) -> jax.Array:
  """[B] bool: drafter's own tree contains every node of the accepted path."""
  mine = forest.valid & (forest.drafter == drafter)
  found = (mine[:, None, :] & (forest.canon[:, None, :] == path[:, :, None])).any(2)
  return jnp.all(found | (path < 0), axis=1)

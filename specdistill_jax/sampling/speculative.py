"""Speculative decoding: `speculative_generate(target, draft, prompts, ...) -> (out, stats)`.

The whole decode is one jitted `lax.while_loop`. Each round, per row:
  1. the draft feeds its pending tokens, then proposes G = gamma tokens
     (`lax.scan` over cached one-token steps);
  2. the target scores [last token, d_1..d_G] in one cached forward;
  3. `acceptance` decides n accepted drafts and the next token t;
  4. both caches roll back by moving lengths: rows advance by different amounts.

Invariant between rounds: the target cache holds the sequence except its last
token (`last_token`, fed at the next verification); each draft cache holds a
prefix of it and keeps the rest as `pending` tokens (1 or 2 for one drafter:
when all G drafts are accepted, d_G was never fed to the draft). With several
drafters (routing.py) an unchosen drafter re-feeds up to G+1 pending tokens.
A feature draft (EAGLE-3, sampling/proposer.py) also keeps each pending
token's hidden input (`pending_hidden`, the target features that the
verification pass returned) and re-feeds every realised token each round.

stats (see `_summarise`): alpha = accepted / tested draft tokens, counting only
proposals that could be used (none after a rejection, past the token budget or
after an accepted eos), so a draft identical to the target gives exactly 1;
tau = tokens per target verification; per-position acceptance; a histogram of
accepted drafts per round; forward counts; wall seconds (compilation apart).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax import models
from specdistill_jax.sampling import acceptance
from specdistill_jax.sampling import distributions as dist
from specdistill_jax.sampling import placement
from specdistill_jax.sampling import proposer
from specdistill_jax.sampling import tree as tree_lib
from specdistill_jax.sampling.checks import as_key, check_temperature
from specdistill_jax.sampling.compiled import CompiledProgram
from specdistill_jax.sampling.prompts import check_cache, pad_prompts, unpad


@flax.struct.dataclass
class _Counters:
  rounds: jax.Array  # scalar: verification forwards of the batch
  active_rounds: jax.Array  # [B] rounds in which the row was still decoding
  emitted: jax.Array  # [B]
  accepted: jax.Array  # [B] usable draft tokens accepted
  tested: jax.Array  # [B] usable draft tokens tested
  pos_accepted: jax.Array  # [G]
  pos_tested: jax.Array  # [G]
  histogram: jax.Array  # [G+1] raw accepted count per active row-round
  tvd_sum: jax.Array  # scalar: sum of TVD(p_i, q_i) over tested positions
  routed: jax.Array  # [K] row-rounds each drafter was chosen (tree: supplied the accepted path)
  nodes: jax.Array  # scalar: draft tokens verified, summed over active row-rounds


@flax.struct.dataclass
class _State:
  target_cache: models.KVCache
  draft_caches: tuple
  pending: tuple  # per drafter [B, W]
  n_pending: tuple  # per drafter [B]
  pending_hidden: tuple  # per drafter [B, W, D] (feature drafts) or None
  last_token: jax.Array  # [B]
  out: jax.Array  # [B, N + G + 1]
  n_out: jax.Array
  done: jax.Array
  rng: jax.Array
  prev_scores: jax.Array  # [B, K] routing scores of the previous round
  counters: _Counters


def _pick(stacked: jax.Array, choice: jax.Array) -> jax.Array:
  """stacked [K, B, ...] at per-row drafter choice [B] -> [B, ...]."""
  return jnp.take_along_axis(stacked, choice.reshape((1, -1) + (1,) * (stacked.ndim - 2)), axis=0)[0]


@functools.lru_cache(maxsize=64)
def _program(target_def, draft_defs: tuple, max_new: int, gamma: int, cache_size: int, greedy: bool,
             lenience_kind: Optional[str], eos_ids: tuple, pad_id: int,
             score_fn: Optional[Callable], route_on_current: bool, spec: Optional[tree_lib.TreeSpec]):
  """gamma: drafts on the longest path of a round (a tree's depth when `spec` is set)."""
  num_drafts = len(draft_defs)

  def run(target_state, draft_states, tokens, lengths, rng, temperature, eps):
    target = nnx.merge(target_def, target_state)
    drafts = [nnx.merge(d, s) for d, s in zip(draft_defs, draft_states)]
    layers = proposer.feature_layers(drafts)  # target features the feature drafts read
    width = proposer.pending_width(drafts, gamma, spec is not None)  # pending tokens a drafter may re-feed
    b = tokens.shape[0]
    prefix = lengths - 1
    last_token = jnp.take_along_axis(tokens, prefix[:, None], axis=1)[:, 0]
    t_out = target.forward_cached(tokens, models.init_cache(target.config, b, cache_size), prefix,
                                  feature_layers=layers)
    t_cache, t_feats = t_out[1], (t_out[2] if layers else None)
    prefilled = [proposer.prefill(d, tokens, prefix, cache_size, t_feats, layers) for d in drafts]
    d_caches = tuple(p[0] for p in prefilled)
    hiddens = tuple(None if h is None else jnp.pad(h, ((0, 0), (0, width - 1), (0, 0))) for _, h in prefilled)
    pending = jnp.zeros((b, width), jnp.int32).at[:, 0].set(last_token)
    zeros_b = jnp.zeros((b,), jnp.int32)
    init = _State(
        target_cache=t_cache, draft_caches=d_caches, pending=(pending,) * num_drafts,
        n_pending=(jnp.ones((b,), jnp.int32),) * num_drafts, pending_hidden=hiddens, last_token=last_token,
        out=jnp.full((b, max_new + gamma + 1), pad_id, jnp.int32), n_out=zeros_b,
        done=jnp.zeros((b,), jnp.bool_), rng=rng, prev_scores=jnp.zeros((b, num_drafts)),
        counters=_Counters(jnp.int32(0), zeros_b, zeros_b, zeros_b, zeros_b,
                           jnp.zeros((gamma,), jnp.int32), jnp.zeros((gamma,), jnp.int32),
                           jnp.zeros((gamma + 1,), jnp.int32), jnp.float32(0.0),
                           jnp.zeros((num_drafts,), jnp.int32), jnp.int32(0)))

    def cond(s):
      return ~jnp.all(s.done) & (s.counters.rounds < max_new)

    def chain_round(s, k_draft, k_accept):
      """gamma drafts from one drafter (routed per row among several); verified as a chain."""
      with jax.named_scope("draft_propose"):
        props = [proposer.propose(d, c, p, n, h, k, gamma, greedy, temperature) for d, c, p, n, h, k in zip(
            drafts, s.draft_caches, s.pending, s.n_pending, s.pending_hidden,
            jax.random.split(k_draft, num_drafts))]
      all_tokens = jnp.stack([p[0] for p in props])  # [K, B, G]
      all_logits = jnp.stack([p[1] for p in props])  # [K, B, G, V]
      if num_drafts == 1:
        choice, scores = jnp.zeros((b,), jnp.int32), s.prev_scores
      else:
        scores = jnp.stack([score_fn(props[k][1], props[k][0]) for k in range(num_drafts)], axis=1)
        choice = jnp.argmax(scores if route_on_current else s.prev_scores, axis=1).astype(jnp.int32)
      d_tokens, d_logits = _pick(all_tokens, choice), _pick(all_logits, choice)
      verify_in = jnp.concatenate([s.last_token[:, None], d_tokens], axis=1)
      with jax.named_scope("target_verify"):
        t_logits, t_cache, *feats = target.forward_cached(verify_in, s.target_cache, feature_layers=layers)
      with jax.named_scope("accept_and_advance"):
        if greedy:
          n, t_next = acceptance.greedy(d_tokens, t_logits)
          same = jnp.argmax(d_logits, -1) == jnp.argmax(t_logits[:, :gamma], -1)
          tvd = 1.0 - same.astype(jnp.float32)
        else:
          log_p = dist.scaled_log_probs(t_logits, temperature)
          log_q = dist.scaled_log_probs(d_logits, temperature)
          n, t_next, tvd = acceptance.stochastic(k_accept, d_tokens, log_q, log_p, lenience_kind, eps)

      def advance_target(n, active):  # roll back: keep last_token and the n accepted drafts
        old = s.target_cache.lengths
        return t_cache.with_lengths(jnp.where(active, old + 1 + n, old))

      def advance_drafts(realised, n, active):
        rows = [proposer.advance_chain(drafts[k], props[k][2], s.draft_caches[k].lengths, s.n_pending[k],
                                       all_tokens[k], realised, n, active, feats[0] if feats else None, layers,
                                       width, gamma) for k in range(num_drafts)]
        return tuple(list(x) for x in zip(*rows))

      supplied = jax.nn.one_hot(choice, num_drafts, dtype=jnp.int32)
      nodes = jnp.full((b,), gamma, jnp.int32)
      return n, t_next, d_tokens, tvd, scores, supplied, nodes, advance_target, advance_drafts

    def tree_round(s, k_draft, k_accept):
      """One dynamic tree per drafter, merged, verified in one target pass (sampling/tree.py)."""
      with jax.named_scope("draft_propose"):
        grown = [tree_lib.draft_tree(d, c, p, n, h, k, spec, greedy, temperature) for d, c, p, n, h, k in zip(
            drafts, s.draft_caches, s.pending, s.n_pending, s.pending_hidden,
            jax.random.split(k_draft, num_drafts))]
        trees = [g[0] for g in grown]
        forest = tree_lib.merge(trees, spec)
      with jax.named_scope("target_verify"):
        verify_in, positions, mask = tree_lib.verify_inputs(forest, s.last_token, s.target_cache.lengths,
                                                            cache_size, spec.depth)
        t_logits, t_cache, *feats = target.forward_cached(verify_in, s.target_cache, positions=positions,
                                                          mask=mask, feature_layers=layers)
      with jax.named_scope("accept_and_advance"):
        n, path, t_next = tree_lib.accept(k_accept, forest, t_logits, spec, greedy, temperature, num_drafts)
      d_tokens = jnp.where(path >= 0, jnp.take_along_axis(forest.tokens, jnp.maximum(path, 0), axis=1), pad_id)

      def advance_target(n, active):
        old = s.target_cache.lengths
        moved = tree_lib.compact_target(t_cache, old, path, jnp.where(active, n, 0))
        return moved.with_lengths(jnp.where(active, old + 1 + n, old))

      def advance_drafts(realised, n, active):
        caches, pendings, n_pendings, hiddens = [], [], [], []
        start = 0
        for k in range(num_drafts):
          cache, pend, n_pend = tree_lib.advance_drafter(drafts[k], grown[k][1], forest, trees[k], k, start, path,
                                                         jnp.where(active, n, 0), realised)
          hiddens.append(proposer.tree_pending_hidden(drafts[k], feats[0] if feats else None, layers, path, width))
          old = s.draft_caches[k].lengths
          caches.append(cache.with_lengths(jnp.where(active, cache.lengths, old)))
          pendings.append(pend)
          n_pendings.append(n_pend)
          start += trees[k].tokens.shape[1]
        return caches, pendings, n_pendings, hiddens

      supplied = jnp.stack([tree_lib.holds_path(forest, k, path) & (n > 0) for k in range(num_drafts)], axis=1)
      nodes = jnp.sum(forest.valid & (forest.canon == jnp.arange(forest.tokens.shape[1])), axis=1)
      tvd = jnp.zeros((b, gamma), jnp.float32)  # no single q per depth in a tree
      return (n, t_next, d_tokens, tvd, s.prev_scores, supplied.astype(jnp.int32), nodes, advance_target,
              advance_drafts)

    def body(s):
      rng, k_draft, k_accept = jax.random.split(s.rng, 3)
      n, t_next, d_tokens, tvd, scores, supplied, nodes, advance_target, advance_drafts = (
          chain_round if spec is None else tree_round)(s, k_draft, k_accept)

      # realised tokens this round: d_1..d_n, t  (positions past n are padding)
      pos = jnp.arange(gamma + 1)[None, :]
      realised = jnp.concatenate([d_tokens, jnp.full((b, 1), pad_id, jnp.int32)], axis=1)
      realised = jnp.where(pos < n[:, None], realised, pad_id)
      realised = jnp.where(pos == n[:, None], t_next[:, None], realised)
      active = ~s.done
      budget = max_new - s.n_out
      eos_here = dist.is_eos(realised, eos_ids) & (pos <= n[:, None])
      eos_len = jnp.where(eos_here.any(1), jnp.argmax(eos_here, axis=1) + 1, gamma + 2)
      emitted = jnp.where(active, jnp.minimum(jnp.minimum(n + 1, budget), eos_len), 0)
      write_at = jnp.where(active[:, None], s.n_out[:, None] + pos, s.out.shape[1])
      out = s.out.at[jnp.arange(b)[:, None], write_at].set(realised, mode="drop")
      n_out = s.n_out + emitted
      done = s.done | (active & ((eos_len <= emitted) | (n_out >= max_new)))

      t_cache = advance_target(n, active)
      last_token = jnp.where(active, t_next, s.last_token)
      caches, pendings, n_pendings, hiddens = advance_drafts(realised, n, active)
      pendings = [jnp.where(active[:, None], p, old) for p, old in zip(pendings, s.pending)]
      n_pendings = [jnp.where(active, p, old) for p, old in zip(n_pendings, s.n_pending)]
      hiddens = [None if h is None else jnp.where(active[:, None, None], h, old)
                 for h, old in zip(hiddens, s.pending_hidden)]

      # statistics over usable proposals
      acc_eos = dist.is_eos(d_tokens, eos_ids) & (pos[:, :gamma] < n[:, None])
      usable = jnp.minimum(budget, jnp.where(acc_eos.any(1), jnp.argmax(acc_eos, 1) + 1, gamma))
      tested = jnp.where(active, jnp.minimum(jnp.where(n < gamma, n + 1, gamma), usable), 0)
      accepted = jnp.where(active, jnp.minimum(n, usable), 0)
      gpos = pos[:, :gamma]
      c = s.counters
      counters = _Counters(
          rounds=c.rounds + 1, active_rounds=c.active_rounds + active.astype(jnp.int32),
          emitted=c.emitted + emitted, accepted=c.accepted + accepted, tested=c.tested + tested,
          pos_accepted=c.pos_accepted + jnp.sum(gpos < accepted[:, None], 0).astype(jnp.int32),
          pos_tested=c.pos_tested + jnp.sum(gpos < tested[:, None], 0).astype(jnp.int32),
          histogram=c.histogram.at[n].add(active.astype(jnp.int32)),
          tvd_sum=c.tvd_sum + jnp.sum(jnp.where(gpos < tested[:, None], tvd, 0.0)),
          routed=c.routed + jnp.sum(jnp.where(active[:, None], supplied, 0), axis=0),
          nodes=c.nodes + jnp.sum(jnp.where(active, nodes, 0)))
      return _State(t_cache, tuple(caches), tuple(pendings), tuple(n_pendings), tuple(hiddens), last_token,
                    out, n_out, done, rng, scores, counters)

    final = jax.lax.while_loop(cond, body, init)
    return final.out[:, :max_new], final.n_out, final.counters

  return CompiledProgram(run)


def _summarise(c: _Counters, gamma: int, wall: float, compile_s: float, num_drafts: int,
               spec: Optional[tree_lib.TreeSpec], draft_passes: int) -> dict:
  """draft_passes: draft forwards per round, summed over the drafters."""
  c = jax.tree.map(lambda x: placement.to_host(x)[0], c)  # per-row counters may span hosts
  tested, accepted = int(c.tested.sum()), int(c.accepted.sum())
  tokens, row_rounds = int(c.emitted.sum()), int(c.active_rounds.sum())
  rounds = int(c.rounds)
  stats = {
      "alpha": accepted / max(tested, 1),
      "alpha_tvd": None if spec else 1.0 - float(c.tvd_sum) / max(tested, 1),
      "tau": tokens / max(row_rounds, 1),
      "tokens": tokens,
      "accepted": accepted,
      "tested": tested,
      "rounds": rounds,
      "target_calls": rounds,
      "draft_calls": rounds * draft_passes,
      "prefill_calls": 1 + num_drafts,
      "accepted_per_round": c.histogram.tolist(),
      "position_acceptance": (c.pos_accepted / np.maximum(c.pos_tested, 1)).tolist(),
      "position_accepted": c.pos_accepted.tolist(),
      "position_tested": c.pos_tested.tolist(),
      "row_rounds": row_rounds,
      "tau_per_row": (c.emitted / np.maximum(c.active_rounds, 1)).tolist(),
      "nodes_per_round": int(c.nodes) / max(row_rounds, 1),
      "wall_seconds": wall,
      "compile_seconds": compile_s,
      "tokens_per_second": tokens / max(wall, 1e-9),
      "gamma": gamma,
      "tree": dataclasses.asdict(spec) if spec else None,
  }
  if num_drafts > 1 and spec is None:
    stats["drafter_share"] = (c.routed / max(int(c.routed.sum()), 1)).tolist()
  if num_drafts > 1 and spec is not None:
    # per drafter: fraction of row-rounds with an accepted draft whose whole path its own tree held
    stats["merged_share"] = (c.routed / max(int(c.histogram[1:].sum()), 1)).tolist()
  return stats


def check_pair(target, draft, gamma: int) -> None:
  if int(gamma) != gamma or gamma < 1:
    raise ValueError(f"gamma={gamma} must be an integer >= 1 (draft tokens per round)")
  problem = proposer.check_gamma(draft, gamma)
  if problem:
    raise ValueError(problem)
  tv, dv = target.config.vocab_size, draft.config.vocab_size
  if tv != dv:
    raise ValueError(f"draft vocab_size={dv} != target vocab_size={tv}: speculative decoding needs "
                     "draft and target to share one tokenizer/vocabulary")
  problem = proposer.check_feature_draft(target, draft)
  if problem:
    raise ValueError(problem)


def run_speculative(target, drafts, prompts, max_new_tokens: int, gamma: int, temperature: float,
                    lenience, rng, lengths, cache_size, score_fn=None, route_on_current=True, tree=None):
  """Engine behind `speculative_generate` and `routing.routed_speculative_generate`."""
  temperature = check_temperature(temperature)
  drafts = [proposer.for_target(d, target) for d in drafts]
  if tree is not None:
    if not isinstance(tree, tree_lib.TreeSpec):
      raise ValueError(f"tree={tree!r} must be a sampling.TreeSpec(depth, top_k, num_nodes) or None (a chain)")
    if lenience is not None:
      raise ValueError("lenience (lossy SD) is implemented for chains only; pass tree=None or lenience=None")
    if tree.top_k > target.config.vocab_size:
      raise ValueError(f"TreeSpec.top_k={tree.top_k} exceeds the vocabulary ({target.config.vocab_size} tokens)")
    gamma = tree.depth
    for d in drafts:
      problem = proposer.check_tree(d)
      if problem:
        raise ValueError(problem)
  if gamma is None:
    gamma = min(proposer.default_gamma(d) for d in drafts)
  for d in drafts:
    check_pair(target, d, gamma)
  len_ = acceptance.check_lenience(lenience, temperature)
  cfg = target.config
  tokens, lens = pad_prompts(prompts, lengths, pad_id=cfg.pad_token_id, vocab_size=cfg.vocab_size)
  key = as_key(rng)
  max_len = min([cfg.max_seq_len] + [d.config.max_seq_len for d in drafts])
  extra = gamma + 1 if tree is None else max(1 + len(drafts) * tree.num_nodes,
                                             tree.depth + 1 + (tree.depth - 1) * tree.top_k)
  size = check_cache(tokens.shape[1], max_new_tokens, extra, max_len, cache_size, "verification")
  t_def, t_state = nnx.split(target)
  splits = [nnx.split(d) for d in drafts]
  program = _program(t_def, tuple(s[0] for s in splits), int(max_new_tokens), int(gamma), size,
                     temperature == 0.0, len_[0] if len_ else None, cfg.eos_token_ids,
                     cfg.pad_token_id, score_fn, route_on_current, tree)
  args = placement.place_inputs(t_state, tokens, lens, key,
                                jnp.float32(max(temperature, 1e-6)), jnp.float32(len_[1] if len_ else 1.0))
  t0 = time.perf_counter()
  (out, n_out, counters), compile_s = program(t_state, tuple(s[1] for s in splits), *args)
  jax.block_until_ready(out)
  wall = time.perf_counter() - t0 - compile_s
  out, n_out = placement.to_host(out, n_out)
  passes = sum(proposer.passes_per_round(d, int(gamma)) for d in drafts)
  stats = _summarise(counters, int(gamma), wall, compile_s, len(drafts), tree, passes)
  stats["temperature"] = temperature
  return unpad(out, n_out), stats


def speculative_generate(target, draft, prompts, max_new_tokens: int, gamma: Optional[int] = None,
                         temperature: float = 0.0, lenience=None, rng=None, lengths=None,
                         cache_size: Optional[int] = None, tree: Optional[tree_lib.TreeSpec] = None):
  """Decode `prompts` with `target`, drafting gamma tokens per round with `draft`.

  prompts: list of token-id lists (ragged) or a padded [B, P] array with `lengths`.
  gamma: drafts per round; None: the draft's default (4; a block drafter's block_size - 1).
  temperature 0: greedy (output == greedy target decoding); > 0: exact sampling.
  lenience: None (lossless) or (kind, eps), kind in {'lin', 'sq', 'exp'}, eps in (0, 1].
  tree: None (a chain of gamma drafts) or a `TreeSpec`: a dynamic draft tree verified in one
  target pass (sampling/tree.py); gamma is then ignored (the tree's depth bounds a round).
  Returns (out, stats): out[i] is row i's generated ids (prompt excluded, stops at eos).
  """
  return run_speculative(target, [draft], prompts, max_new_tokens, gamma, temperature, lenience,
                         rng, lengths, cache_size, tree=tree)

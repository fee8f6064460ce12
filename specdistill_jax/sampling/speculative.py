"""Speculative decoding: `speculative_generate(target, draft, prompts, ...) -> (out, stats)`.

A decode is two compiled programs: the prefill (`_prefill_program`, per prompt width,
shared by every method of a target and its drafters) and one `lax.while_loop` over
rounds (`_program`, per method and cache size, whatever the prompt's width), so a
prompt set of many widths compiles the loop once. Each round, per row, runs the four
named steps of sampling/rounds.py (a chain's or a tree's):
  1. propose: the draft feeds its pending tokens, then proposes G = gamma tokens
     (`lax.scan` over cached one-token steps, or one pass of a block drafter);
  2. verify: the target scores [last token, d_1..d_G] in one cached forward;
  3. accept: `acceptance` decides n accepted drafts and the next token t;
  4. advance: both caches roll back by moving lengths: rows advance by different amounts.
Here live what chains and trees share: the prefill, the emission of realised tokens
and the statistics.

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
from specdistill_jax.sampling import rounds
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


@flax.struct.dataclass
class _Prefilled:
  """The prompt read by the target and every drafter: what the round loop starts from."""

  target_cache: models.KVCache
  draft_caches: tuple
  hidden: tuple  # per drafter: the pending token's hidden input [B, 1, D] (feature drafts) or None
  last_token: jax.Array  # [B]: each prompt's last token, fed at the first verification


@functools.lru_cache(maxsize=64)
def _prefill_program(target_def, draft_defs: tuple, cache_size: int):
  """Prefill: the target and every drafter read the prompt but its last token. Compiled per prompt
  width (a 16-token bucket) and shared by every gamma, tree and temperature; the round loop
  (`_program`) does not depend on the prompt's width, so it compiles once per method."""

  def run(target_state, draft_states, tokens, lengths):
    target = nnx.merge(target_def, target_state)
    drafts = tuple(nnx.merge(d, s) for d, s in zip(draft_defs, draft_states))
    layers = proposer.feature_layers(drafts)
    prefix = lengths - 1
    cache = models.init_cache(target.config, tokens.shape[0], cache_size)
    t_out = target.forward_cached(tokens, cache, prefix, feature_layers=layers)
    read = [proposer.prefill(d, tokens, prefix, cache_size, t_out.features, layers) for d in drafts]
    return _Prefilled(t_out.cache, tuple(c for c, _ in read), tuple(h for _, h in read),
                      jnp.take_along_axis(tokens, prefix[:, None], axis=1)[:, 0])

  return CompiledProgram(run)


@functools.lru_cache(maxsize=64)
def _program(target_def, draft_defs: tuple, max_new: int, gamma: int, cache_size: int, greedy: bool,
             lenience_kind: Optional[str], eos_ids: tuple, pad_id: int,
             score_fn: Optional[Callable], route_on_current: bool, spec: Optional[tree_lib.TreeSpec]):
  """The round loop from a `_Prefilled` state. gamma: drafts on the longest path of a round (a
  tree's depth when `spec` is set)."""

  def run(target_state, draft_states, prefilled, rng, temperature, eps):
    drafts = tuple(nnx.merge(d, s) for d, s in zip(draft_defs, draft_states))
    ctx = rounds.RoundContext(nnx.merge(target_def, target_state), drafts, proposer.feature_layers(drafts),
                              proposer.pending_width(drafts, gamma, spec is not None), gamma, greedy, temperature,
                              eps, lenience_kind, score_fn, route_on_current, spec, cache_size, pad_id)
    steps = rounds.round_steps(ctx)

    def body(s):
      rng, k_draft, k_accept = jax.random.split(s.rng, 3)
      proposal = steps.propose(ctx, s, k_draft)
      verification = steps.verify(ctx, s, proposal)
      with jax.named_scope("accept_and_advance"):
        verdict = steps.accept(ctx, proposal, verification, k_accept)
        active = ~s.done
        realised, out, n_out, emitted, done = _emit(s, verdict, active, max_new, eos_ids, pad_id)
        adv = steps.advance(ctx, s, proposal, verification, verdict, realised, active)
      keep = lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
      return _State(adv.target_cache, tuple(adv.caches), tuple(map(keep, adv.pending, s.pending)),
                    tuple(map(keep, adv.n_pending, s.n_pending)),
                    tuple(None if h is None else keep(h, o) for h, o in zip(adv.hidden, s.pending_hidden)),
                    jnp.where(active, verdict.next_token, s.last_token), out, n_out, done, rng, verdict.scores,
                    _count(s.counters, verdict, emitted, active, max_new - s.n_out, eos_ids))

    final = jax.lax.while_loop(lambda s: ~jnp.all(s.done) & (s.counters.rounds < max_new), body,
                               _initial_state(ctx, prefilled, rng, max_new))
    return final.out[:, :max_new], final.n_out, final.counters

  return CompiledProgram(run)


def clear_programs() -> None:
  """Drop the compiled prefill and round-loop programs (a test that patches a round helper; a
  benchmark releasing a finished set's executables)."""
  _prefill_program.cache_clear()
  _program.cache_clear()


def _initial_state(ctx: rounds.RoundContext, p: _Prefilled, rng, max_new: int) -> _State:
  """The loop's state before the first round: every drafter's pending token is the prompt's last."""
  b, k, gamma = p.last_token.shape[0], ctx.num_drafts, ctx.gamma
  hiddens = tuple(None if h is None else jnp.pad(h, ((0, 0), (0, ctx.width - 1), (0, 0))) for h in p.hidden)
  zeros_b = jnp.zeros((b,), jnp.int32)
  counters = _Counters(jnp.int32(0), zeros_b, zeros_b, zeros_b, zeros_b, jnp.zeros((gamma,), jnp.int32),
                       jnp.zeros((gamma,), jnp.int32), jnp.zeros((gamma + 1,), jnp.int32), jnp.float32(0.0),
                       jnp.zeros((k,), jnp.int32), jnp.int32(0))
  pending = jnp.zeros((b, ctx.width), jnp.int32).at[:, 0].set(p.last_token)
  return _State(p.target_cache, p.draft_caches, (pending,) * k, (jnp.ones((b,), jnp.int32),) * k,
                hiddens, p.last_token, jnp.full((b, max_new + gamma + 1), ctx.pad_id, jnp.int32), zeros_b,
                jnp.zeros((b,), jnp.bool_), rng, jnp.zeros((b, k)), counters)


def _emit(s: _State, v: rounds.Verdict, active, max_new: int, eos_ids: tuple, pad_id: int):
  """The round's realised tokens d_1..d_n, t (padding past n) written to the output, up to the
  token budget and the first eos. -> (realised [B, G+1], out, n_out, emitted [B], done)"""
  b, gamma = v.drafts.shape
  pos = jnp.arange(gamma + 1)[None, :]
  realised = jnp.concatenate([v.drafts, jnp.full((b, 1), pad_id, jnp.int32)], axis=1)
  realised = jnp.where(pos < v.n[:, None], realised, pad_id)
  realised = jnp.where(pos == v.n[:, None], v.next_token[:, None], realised)
  eos_here = dist.is_eos(realised, eos_ids) & (pos <= v.n[:, None])
  eos_len = jnp.where(eos_here.any(1), jnp.argmax(eos_here, axis=1) + 1, gamma + 2)
  emitted = jnp.where(active, jnp.minimum(jnp.minimum(v.n + 1, max_new - s.n_out), eos_len), 0)
  write_at = jnp.where(active[:, None], s.n_out[:, None] + pos, s.out.shape[1])
  out = s.out.at[jnp.arange(b)[:, None], write_at].set(realised, mode="drop")
  n_out = s.n_out + emitted
  return realised, out, n_out, emitted, s.done | (active & ((eos_len <= emitted) | (n_out >= max_new)))


def _count(c: _Counters, v: rounds.Verdict, emitted, active, budget, eos_ids: tuple) -> _Counters:
  """The statistics after a round, over usable proposals (none after a rejection, past the
  token budget or after an accepted eos)."""
  gamma = v.drafts.shape[1]
  gpos = jnp.arange(gamma)[None, :]
  acc_eos = dist.is_eos(v.drafts, eos_ids) & (gpos < v.n[:, None])
  usable = jnp.minimum(budget, jnp.where(acc_eos.any(1), jnp.argmax(acc_eos, 1) + 1, gamma))
  tested = jnp.where(active, jnp.minimum(jnp.where(v.n < v.proposed, v.n + 1, v.proposed), usable), 0)
  accepted = jnp.where(active, jnp.minimum(v.n, usable), 0)
  return _Counters(
      rounds=c.rounds + 1, active_rounds=c.active_rounds + active.astype(jnp.int32),
      emitted=c.emitted + emitted, accepted=c.accepted + accepted, tested=c.tested + tested,
      pos_accepted=c.pos_accepted + jnp.sum(gpos < accepted[:, None], 0).astype(jnp.int32),
      pos_tested=c.pos_tested + jnp.sum(gpos < tested[:, None], 0).astype(jnp.int32),
      histogram=c.histogram.at[v.n].add(active.astype(jnp.int32)),
      tvd_sum=c.tvd_sum + jnp.sum(jnp.where(gpos < tested[:, None], v.tvd, 0.0)),
      routed=c.routed + jnp.sum(jnp.where(active[:, None], v.supplied, 0), axis=0),
      nodes=c.nodes + jnp.sum(jnp.where(active, v.nodes, 0)))


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
  d_defs, d_states = zip(*(nnx.split(d) for d in drafts))
  prefill = _prefill_program(t_def, d_defs, size)
  program = _program(t_def, d_defs, int(max_new_tokens), int(gamma), size,
                     temperature == 0.0, len_[0] if len_ else None, cfg.eos_token_ids,
                     cfg.pad_token_id, score_fn, route_on_current, tree)
  tokens, lens, *rest = placement.place_inputs(t_state, tokens, lens, key, jnp.float32(max(temperature, 1e-6)),
                                               jnp.float32(len_[1] if len_ else 1.0))
  t0 = time.perf_counter()
  prefilled, compile_prefill = prefill(t_state, d_states, tokens, lens)
  (out, n_out, counters), compile_loop = program(t_state, d_states, prefilled, *rest)
  jax.block_until_ready(out)
  compile_s = compile_prefill + compile_loop
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

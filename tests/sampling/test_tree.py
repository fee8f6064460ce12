"""Tree verification: greedy == target greedy, exact sampling, tree attention and cache compaction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import sampling
from specdistill_jax.sampling import speculative
from specdistill_jax.sampling import tree as tree_lib
from tests.sampling.helpers import (FALSE_ALARM, after_first_token, chi_square_pvalue, exact_joint, next_logits, tiny,
                                    with_bug)
from tests.tolerances import fp32_atol

PROMPTS = [[1, 2, 3], [4], [7, 8, 9, 10, 11, 12, 13], [20, 21]]


def test_greedy_tree_equals_greedy_target_batched_ragged():
  spec = sampling.TreeSpec(4, 3, 10)
  target, draft = tiny(eos=(5,)), tiny(preset="micro", seed=1, eos=(5,))
  want = sampling.generate(target, PROMPTS, 17)
  out, stats = sampling.speculative_generate(target, draft, PROMPTS, 17, tree=spec)
  assert out == want
  assert stats["nodes_per_round"] == spec.num_nodes
  assert len(stats["position_acceptance"]) == len(stats["accepted_per_round"]) - 1 == spec.depth
  # the target as its own drafter: its best root child is the target's argmax, accepted every round
  out, stats = sampling.speculative_generate(target, target, PROMPTS, 17, tree=spec)
  assert out == want and stats["accepted_per_round"][0] == 0


def test_merged_tree_greedy_equals_target_and_reports_who_supplied_the_path():
  target = tiny(eos=(5,))
  other = tiny(preset="micro", seed=3, eos=(5,))
  want = sampling.generate(target, PROMPTS, 17)
  out, stats = sampling.routed_speculative_generate(target, [other, target], PROMPTS, 17,
                                                    tree=sampling.TreeSpec(3, 2, 5))
  assert out == want
  assert stats["merged_share"][1] == 1.0  # the target's own tree always holds the accepted path
  assert stats["merged_share"][0] < 0.5


def test_chain_shaped_tree_reproduces_the_chain():
  target, draft = tiny(eos=(5,)), tiny(preset="micro", seed=1, eos=(5,))
  chain, chain_stats = sampling.speculative_generate(target, draft, PROMPTS, 17, gamma=3)
  tree, tree_stats = sampling.speculative_generate(target, draft, PROMPTS, 17,
                                                   tree=sampling.TreeSpec.chain(3))
  assert tree == chain
  for key in ("tau", "alpha", "accepted_per_round", "position_acceptance", "rounds"):
    assert tree_stats[key] == chain_stats[key], key


def _first_two(target, drafts, spec, n=3000):
  prompts = [[1, 2, 3]] * n
  if len(drafts) == 1:
    out, stats = sampling.speculative_generate(target, drafts[0], prompts, 2, temperature=1.0, rng=11,
                                               tree=spec)
  else:
    out, stats = sampling.routed_speculative_generate(target, drafts, prompts, 2, temperature=1.0, rng=11,
                                                      tree=spec)
  return np.asarray([o[:2] for o in out]), stats


def _vocab8():
  return (tiny(vocab=8, preset="micro", seed=2), tiny(vocab=8, preset="micro", seed=7),
          tiny(vocab=8, preset="micro", seed=8))


@pytest.mark.parametrize("merged", [False, True])
def test_sampled_tree_has_target_distribution(merged):
  """Chi-square on the joint of the first two tokens, 3000 rows (false-alarm rate 1e-3)."""
  target, a, b = _vocab8()
  drafts = [a, b] if merged else [a]
  samples, stats = _first_two(target, drafts, sampling.TreeSpec(2, 3, 5))
  assert 1.2 < stats["tau"] < 2.9  # the drafts really differ from the target and from each other
  assert chi_square_pvalue(samples, exact_joint(target, [1, 2, 3])) > FALSE_ALARM
  assert chi_square_pvalue(samples, exact_joint(a, [1, 2, 3])) < FALSE_ALARM


def test_deterministic_top_k_children_are_not_exact(monkeypatch):
  """Power: EAGLE-2's rule (top-k children tested as if sampled) fails the same test."""
  target, a, _ = _vocab8()
  top_k_children = tree_lib._children
  monkeypatch.setattr(tree_lib, "_children", lambda key, logq, k, greedy: top_k_children(key, logq, k, True))
  speculative.clear_programs()
  try:
    samples, _ = _first_two(target, [a], sampling.TreeSpec(2, 3, 5))
  finally:
    speculative.clear_programs()
  assert chi_square_pvalue(samples, exact_joint(target, [1, 2, 3])) < FALSE_ALARM


def test_sampled_children_are_draws_without_replacement():
  """_children's first two sampled children follow sequential draws without replacement,
  P(a, b) = q(a) q(b) / (1 - q(a)), 20000 rows (false-alarm rate 1e-3). Power: the law of two
  independent draws (given a != b) is rejected. Past q's support a slot is invalid, not a token."""
  q = np.asarray([0.4, 0.3, 0.15, 0.1, 0.05])
  n = 20000
  logq = jnp.broadcast_to(jnp.log(jnp.asarray(q, jnp.float32)), (n, 1, q.size))
  tokens, _, ok = tree_lib._children(jax.random.PRNGKey(0), logq, 3, greedy=False)
  assert bool(ok.all())
  samples = np.asarray(tokens)[:, 0, :2]
  pairs = [(a, b) for a in range(q.size) for b in range(q.size) if a != b]
  without = {(a, b): q[a] * q[b] / (1 - q[a]) for a, b in pairs}
  independent = {(a, b): q[a] * q[b] / (1 - (q ** 2).sum()) for a, b in pairs}
  assert chi_square_pvalue(samples, without) > FALSE_ALARM
  assert chi_square_pvalue(samples, independent) < FALSE_ALARM
  sharp = jnp.log(jnp.asarray([[[0.0, 1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0]]], jnp.float32))
  tokens, _, ok = tree_lib._children(jax.random.PRNGKey(1), jnp.maximum(sharp, -1e30), 3, greedy=False)
  assert np.asarray(ok).tolist() == [[[True, False, False], [True, True, False]]]
  assert int(tokens[0, 0, 0]) == 1 and sorted(np.asarray(tokens)[0, 1, :2].tolist()) == [0, 1]
  assert 0 <= int(tokens.min()) and int(tokens.max()) < 5


def test_tree_attention_and_compaction_equal_feeding_the_path():
  """Logits of every tree node == a plain forward of its path; the compacted cache == the path fed."""
  model = tiny(vocab=61)
  prompt = jnp.asarray([[3, 14, 15, 9, 2]], jnp.int32)
  # root r (the last prompt token is fed with the tree), then nodes 0..4:
  # 0 <- r, 1 <- r, 2 <- 0, 3 <- 1, 4 <- 3
  tokens = jnp.asarray([[7, 8, 11, 12, 13]], jnp.int32)
  parent = jnp.asarray([[-1, -1, 0, 1, 3]], jnp.int32)
  depth = jnp.asarray([[1, 1, 2, 2, 3]], jnp.int32)
  forest = tree_lib.Forest(tokens=tokens, parent=parent, depth=depth, valid=jnp.ones_like(tokens, bool),
                           order=jnp.zeros_like(tokens), drafter=jnp.zeros_like(tokens),
                           q_index=jnp.zeros_like(tokens), q_logp=jnp.zeros((1, 1, 61)),
                           canon=jnp.arange(5)[None])
  size = 16
  cache = model.forward_cached(prompt[:, :-1], model.init_cache(1, size)).cache
  lengths = cache.lengths
  inputs, positions, mask = tree_lib.verify_inputs(forest, prompt[:, -1], lengths, size, depth=3)
  logits, cache, _ = model.forward_cached(inputs, cache, positions=positions, mask=mask)
  paths = [[], [7], [8], [7, 11], [8, 12], [8, 12, 13]]  # root, then nodes 0..4
  want = next_logits(model, width=8)([[3, 14, 15, 9, 2] + p for p in paths])
  np.testing.assert_allclose(np.asarray(logits)[0], want, rtol=0,
                             atol=fp32_atol(want, model.config.d_model, model.config.num_layers))
  # accept the path 1 -> 3 -> 4 and compact; then compare with feeding the path as a chain
  path, n = jnp.asarray([[1, 3, 4]], jnp.int32), jnp.asarray([3], jnp.int32)
  compacted = tree_lib.compact_target(cache, lengths, path, n)
  chain = model.forward_cached(jnp.asarray([[3, 14, 15, 9, 2, 8, 12, 13]], jnp.int32),
                               model.init_cache(1, size)).cache
  assert int(compacted.lengths[0]) == int(chain.lengths[0]) == 8
  for got, want in zip(compacted.keys + compacted.values, chain.keys + chain.values):
    want = np.asarray(want)[:, :8]
    np.testing.assert_allclose(np.asarray(got)[:, :8], want, rtol=0,
                               atol=fp32_atol(want, model.config.d_model, model.config.num_layers))


def test_bad_tree_arguments_are_named():
  target, draft = tiny(), tiny(preset="micro")
  with pytest.raises(ValueError, match="num_nodes=50 exceeds"):
    sampling.TreeSpec(3, 2, 50)
  with pytest.raises(ValueError, match="top_k=0"):
    sampling.TreeSpec(3, 0, 2)
  with pytest.raises(ValueError, match="must be a sampling.TreeSpec"):
    sampling.speculative_generate(target, draft, PROMPTS, 4, tree=(3, 2, 4))
  with pytest.raises(ValueError, match="lenience"):
    sampling.speculative_generate(target, draft, PROMPTS, 4, temperature=1.0, lenience=("lin", 0.5),
                                  tree=sampling.TreeSpec(2, 2, 4))


def _sharpened(model, factor):
  """The model with its lm_head scaled: logits * factor."""
  from flax import nnx
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x, state)
  state["lm_head"].set_value(state["lm_head"][...] * factor)
  return nnx.merge(graphdef, state)


def test_low_temperature_tree_draws_children_only_from_the_support():
  """T=0.05 with a sharp 11-token draft: fewer than top_k tokens have non-zero fp32 probability
  under q at most nodes. Children past the support are absent (not an id outside the vocabulary
  fed on), and the output keeps the target's distribution at that temperature (the target's
  head is flattened so that its T=0.05 distribution is not a point mass)."""
  temp, vocab = 0.05, 11
  target = _sharpened(tiny(vocab=vocab, preset="micro", seed=2), 0.1)
  draft = _sharpened(tiny(vocab=vocab, preset="micro", seed=7), 10.0)
  spec = sampling.TreeSpec(depth=3, top_k=4, num_nodes=9)
  prompts = [[1, 2, 3]] * 2000
  out, stats = sampling.speculative_generate(target, draft, prompts, 3, temperature=temp, rng=5, tree=spec)
  flat = np.concatenate([np.asarray(o) for o in out])
  assert flat.min() >= 0 and flat.max() < vocab and all(len(o) == 3 for o in out)
  samples = np.asarray([o[:2] for o in out])
  exact = exact_joint(_sharpened(target, 1.0 / temp), [1, 2, 3])  # T=1 of logits / T
  assert max(exact.values()) < 0.9  # not a point mass: the test can see a wrong distribution
  assert chi_square_pvalue(samples, exact) > FALSE_ALARM
  # the chain on the same pair, for comparison, is exact too
  chain, _ = sampling.speculative_generate(target, draft, prompts, 3, gamma=3, temperature=temp, rng=5)
  assert chi_square_pvalue(np.asarray([o[:2] for o in chain]), exact) > FALSE_ALARM


@pytest.mark.parametrize("bug", [False, True])
def test_tree_bonus_token_and_second_round_keep_the_target_distribution(monkeypatch, bug):
  """A one-level tree of two sampled children, 3 new tokens: tokens 2-3 given token 1 (bonus tokens,
  the second round). Power: drawing the sibling's residual as p instead of norm(max(0, r - q))
  is rejected by the same test."""
  from specdistill_jax.sampling import acceptance
  target, a, _ = _vocab8()
  done = with_bug(monkeypatch, acceptance, "correction", lambda p, q: p) if bug else (lambda: None)
  try:
    out, stats = sampling.speculative_generate(target, a, [[1, 2, 3]] * 6000, 3, temperature=1.0, rng=3,
                                               tree=sampling.TreeSpec(1, 2, 2))
  finally:
    done()
  rows, exact = after_first_token(out, [1, 2, 3], target)
  p = chi_square_pvalue(rows, exact)
  assert (p < FALSE_ALARM) if bug else (p > FALSE_ALARM), p

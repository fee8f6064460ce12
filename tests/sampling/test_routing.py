"""Routing among drafters: exact at temperature 0 and 1; prefers the better drafter."""

import numpy as np
import pytest

from specdistill_jax import sampling
from tests.sampling.helpers import FALSE_ALARM, after_first_token, chi_square_pvalue, exact_joint, tiny, uniform_draft

PROMPTS = [[1, 2, 3], [4], [7, 8, 9, 10, 11, 12, 13]]


@pytest.mark.parametrize("signal", ["confidence", "entropy"])
def test_greedy_routing_equals_greedy_target(signal):
  target = tiny(eos=(5,))
  drafts = [tiny(preset="micro", seed=1, eos=(5,)), tiny(preset="micro", seed=2, eos=(5,))]
  out, stats = sampling.routed_speculative_generate(target, drafts, PROMPTS, 15, gamma=3, signal=signal)
  assert out == sampling.generate(target, PROMPTS, 15)
  assert abs(sum(stats["drafter_share"]) - 1.0) < 1e-9


def test_routing_picks_the_confident_right_drafter():
  target = tiny(vocab=61)
  bad = uniform_draft(61)  # all logits 0: confidence (1/61)^k
  out, stats = sampling.routed_speculative_generate(target, [bad, target], PROMPTS, 12, gamma=3)
  assert out == sampling.generate(target, PROMPTS, 12)
  assert stats["drafter_share"][1] > 0.9 and stats["alpha"] > 0.9


def test_sampled_routing_has_target_distribution():
  target = tiny(vocab=8, preset="micro", seed=2)
  drafts = [tiny(vocab=8, preset="micro", seed=7), tiny(vocab=8, preset="micro", seed=8)]
  out, stats = sampling.routed_speculative_generate(target, drafts, [[1, 2, 3]] * 3000, 2,
                                                    gamma=3, temperature=1.0, rng=4)
  samples = np.asarray([o[:2] for o in out])
  assert min(stats["drafter_share"]) > 0.05  # both drafters really get used
  assert chi_square_pvalue(samples, exact_joint(target, [1, 2, 3])) > FALSE_ALARM


def test_parameter_average_of_copies_is_the_copy_and_mismatch_is_an_error():
  d = tiny(preset="micro", seed=1)
  avg = sampling.average_params([d, tiny(preset="micro", seed=1)])
  assert sampling.generate(avg, PROMPTS, 5) == sampling.generate(d, PROMPTS, 5)
  with pytest.raises(ValueError, match="different ModelConfig"):
    sampling.average_params([d, tiny()])


def test_bad_routing_arguments():
  t, d = tiny(), tiny(preset="micro")
  with pytest.raises(ValueError, match="at least 2 drafters"):
    sampling.routed_speculative_generate(t, [d], PROMPTS, 4)
  with pytest.raises(ValueError, match="signal 'votes'"):
    sampling.routed_speculative_generate(t, [d, d], PROMPTS, 4, signal="votes")
  with pytest.raises(ValueError, match="a tree is not routed"):  # not silently ignored
    sampling.routed_speculative_generate(t, [d, d], PROMPTS, 4, signal="entropy", tree=sampling.TreeSpec(2, 2, 4))


@pytest.mark.parametrize("route_on", ["auto", "current"])
def test_routing_bonus_token_and_second_round_keep_the_target_distribution(route_on):
  """gamma 1, 3 new tokens: tokens 2-3 given token 1 (bonus tokens, second rounds, whose route
  the first round's scores chose). Power: routing a sampled round on its own proposals' scores
  (TAPS' same-round routing, route_on='current') is rejected by the same test."""
  target = tiny(vocab=8, preset="micro", seed=2)
  drafts = [tiny(vocab=8, preset="micro", seed=7), tiny(vocab=8, preset="micro", seed=8)]
  out, stats = sampling.routed_speculative_generate(target, drafts, [[1, 2, 3]] * 6000, 3, gamma=1,
                                                    temperature=1.0, rng=3, route_on=route_on)
  assert min(stats["drafter_share"]) > 0.05
  rows, exact = after_first_token(out, [1, 2, 3], target)
  p = chi_square_pvalue(rows, exact)
  assert (p < FALSE_ALARM) if route_on == "current" else (p > FALSE_ALARM), p

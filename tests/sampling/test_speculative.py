"""speculative_generate: greedy == target greedy; sampled == target distribution; honest stats."""

import math

import numpy as np
import pytest

from specdistill_jax import sampling
from tests.sampling.helpers import (FALSE_ALARM, after_first_token, chi_square_pvalue, exact_joint, never_right_draft,
                                    tiny, with_bug)

PROMPTS = [[1, 2, 3], [4], [7, 8, 9, 10, 11, 12, 13], [20, 21]]


@pytest.mark.parametrize("gamma", [1, 3, 7])
def test_greedy_equals_greedy_target_batched_ragged(gamma):
  target, draft = tiny(eos=(5,)), tiny(preset="micro", seed=1, eos=(5,))
  want = sampling.generate(target, PROMPTS, 17)
  out, stats = sampling.speculative_generate(target, draft, PROMPTS, 17, gamma=gamma)
  assert out == want
  assert stats["tokens"] == sum(map(len, want))
  assert 0.0 <= stats["alpha"] <= 1.0 and stats["tau"] >= 1.0
  # the histogram counts active row-rounds: tau is tokens per row-round
  row_rounds = sum(stats["accepted_per_round"])
  assert stats["rounds"] <= row_rounds <= stats["rounds"] * len(PROMPTS)
  assert abs(stats["tau"] - stats["tokens"] / row_rounds) < 1e-12
  assert len(stats["position_acceptance"]) == gamma


def test_never_right_draft_still_exact_and_alpha_zero():
  target = tiny(vocab=61)
  draft = never_right_draft(target)
  want = sampling.generate(target, PROMPTS, 12)
  out, stats = sampling.speculative_generate(target, draft, PROMPTS, 12, gamma=3)
  assert out == want
  assert stats["alpha"] == 0.0 and stats["tau"] == 1.0
  assert stats["accepted_per_round"][0] == stats["rounds"] * len(PROMPTS)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_draft_equal_to_target_accepts_everything(temperature):
  target = tiny(eos=(5,))
  out, stats = sampling.speculative_generate(target, target, PROMPTS, 13, gamma=4,
                                             temperature=temperature, rng=0)
  assert stats["alpha"] == 1.0
  assert stats["position_acceptance"] == [1.0] * 4
  if temperature == 0.0:
    assert out == sampling.generate(target, PROMPTS, 13)
  # every row-round emits gamma+1 tokens except a row's last (budget or eos)
  assert stats["tau"] > 3.0


def test_rows_stop_independently_at_eos():
  free = sampling.generate(tiny(), PROMPTS, 10)
  eos = free[2][3]
  target, draft = tiny(eos=(eos,)), tiny(preset="micro", seed=1, eos=(eos,))
  out, _ = sampling.speculative_generate(target, draft, PROMPTS, 10, gamma=4)
  assert out == sampling.generate(target, PROMPTS, 10)
  assert out[2][-1] == eos and len(out[2]) == 4


def _first_tokens(target, draft, n=3000, **kw):
  gen = kw.pop("generate", sampling.speculative_generate)
  out, stats = gen(target, draft, [[1, 2, 3]] * n, 2, temperature=1.0, rng=11, **kw)
  return np.asarray([o[:2] for o in out]), stats


def _vocab8():
  return tiny(vocab=8, preset="micro", seed=2), tiny(vocab=8, preset="micro", seed=7)


@pytest.mark.parametrize("lenience", [None, ("lin", 1.0)])
def test_sampled_output_has_target_distribution(lenience):
  """Chi-square on the joint of the first two tokens, 3000 rows (false-alarm rate 1e-3)."""
  target, draft = _vocab8()
  samples, stats = _first_tokens(target, draft, gamma=3, lenience=lenience)
  assert 0.05 < stats["alpha"] < 0.95  # the draft really differs from the target
  exact = exact_joint(target, [1, 2, 3])
  assert chi_square_pvalue(samples, exact) > FALSE_ALARM
  # power: the draft's own distribution is clearly rejected by the same test
  assert chi_square_pvalue(samples, exact_joint(draft, [1, 2, 3])) < FALSE_ALARM


def test_lossy_acceptance_accepts_more_and_moves_away_from_target():
  target, draft = _vocab8()
  _, exact_stats = _first_tokens(target, draft, gamma=3)
  samples, lossy_stats = _first_tokens(target, draft, gamma=3, lenience=("lin", 0.1))
  assert lossy_stats["alpha"] > exact_stats["alpha"] + 0.1
  assert chi_square_pvalue(samples, exact_joint(target, [1, 2, 3])) < FALSE_ALARM


@pytest.mark.parametrize("kind", ["lin", "sq", "exp"])
def test_every_lenience_kind_is_lossless_at_eps_one(kind):
  target, draft = _vocab8()
  a, _ = _first_tokens(target, draft, n=256, gamma=2)
  b, _ = _first_tokens(target, draft, n=256, gamma=2, lenience=(kind, 1.0))
  np.testing.assert_array_equal(a, b)  # same rng, f(p, 1) == p: identical decisions


def test_alpha_agrees_with_one_minus_tvd_along_the_path():
  target, draft = _vocab8()
  out, stats = sampling.speculative_generate(target, draft, [[1, 2, 3]] * 400, 8, gamma=4,
                                             temperature=1.0, rng=5)
  a, n = stats["alpha"], stats["tested"]
  se = math.sqrt(a * (1 - a) / n)
  assert n > 2000
  assert abs(stats["alpha"] - stats["alpha_tvd"]) < 4 * se + 0.01


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=0), "gamma=0"),
    (dict(temperature=-1.0), "temperature=-1.0"),
    (dict(prompts=[[1], []]), "prompt 1 is empty"),
    (dict(max_new_tokens=2040), "max_seq_len=2048"),
    (dict(cache_size=20), "cache_size=20"),
    (dict(lenience=("cubic", 0.5), temperature=1.0), "cubic"),
    (dict(lenience=("lin", 0.0), temperature=1.0), "eps=0.0"),
    (dict(lenience=("lin", 1.5), temperature=1.0), "eps=1.5"),
    (dict(lenience=("lin", 0.5)), "temperature > 0"),
])
def test_bad_input_is_named(kwargs, match):
  args = dict(prompts=PROMPTS, max_new_tokens=8)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.speculative_generate(tiny(), tiny(preset="micro"), **args)


def test_vocabulary_mismatch_is_named():
  with pytest.raises(ValueError, match="vocab_size=50 != target vocab_size=97"):
    sampling.speculative_generate(tiny(), tiny(vocab=50, preset="micro"), PROMPTS, 4)


@pytest.mark.parametrize("bug", [False, True])
def test_bonus_token_and_second_round_keep_the_target_distribution(monkeypatch, bug):
  """gamma 1, 3 new tokens: tokens 2-3 given token 1 come from bonus tokens and second rounds.
  Power: the same test rejects the classic bug of drawing a rejected draft's replacement from p
  instead of the residual norm(max(0, p - q))."""
  from specdistill_jax.sampling import acceptance
  target, draft = _vocab8()
  done = with_bug(monkeypatch, acceptance, "correction", lambda p, q: p) if bug else (lambda: None)
  try:
    out, stats = sampling.speculative_generate(target, draft, [[1, 2, 3]] * 6000, 3, gamma=1,
                                               temperature=1.0, rng=3)
  finally:
    done()
  assert 0.1 < stats["alpha"] < 0.9 and stats["rounds"] >= 2
  rows, exact = after_first_token(out, [1, 2, 3], target)
  p = chi_square_pvalue(rows, exact)
  assert (p < FALSE_ALARM) if bug else (p > FALSE_ALARM), p

"""generate: greedy equals a step-by-step argmax loop; sampling follows softmax(logits / T)."""

import numpy as np
import pytest

from specdistill_jax import sampling
from tests.sampling.helpers import FALSE_ALARM, chi_square_pvalue, exact_joint, reference_greedy, tiny

PROMPTS = [[1, 2, 3], [4], [7, 8, 9, 10, 11, 12, 13]]


def test_greedy_matches_reference_loop_ragged_batch_with_eos():
  model = tiny(eos=(5,))
  out = sampling.generate(model, PROMPTS, 12)
  assert out == [reference_greedy(model, p, 12, (5,)) for p in PROMPTS]


def test_padded_array_input_equals_ragged_input():
  model = tiny()
  tokens = np.zeros((3, 7), np.int32)
  for i, p in enumerate(PROMPTS):
    tokens[i, : len(p)] = p
  assert sampling.generate(model, tokens, 6, lengths=[3, 1, 7]) == sampling.generate(model, PROMPTS, 6)


def test_eos_row_stops_and_others_continue():
  model = tiny()
  free = sampling.generate(model, PROMPTS, 8)
  eos = free[0][2]  # make row 0's third token an eos
  model2 = tiny(eos=(eos,))
  out = sampling.generate(model2, PROMPTS, 8)
  assert out[0] == free[0][: free[0].index(eos) + 1]
  for got, want in zip(out[1:], free[1:]):
    assert got == (want[: want.index(eos) + 1] if eos in want else want)


def test_top_k_one_and_tiny_top_p_are_greedy():
  model = tiny()
  greedy = sampling.generate(model, PROMPTS, 6)
  assert sampling.generate(model, PROMPTS, 6, temperature=1.0, rng=3, top_k=1) == greedy
  assert sampling.generate(model, PROMPTS, 6, temperature=1.0, rng=3, top_p=1e-6) == greedy


def test_sampling_matches_target_distribution():
  """Chi-square of the first two sampled tokens against exact probabilities (false alarm 1e-3)."""
  model = tiny(vocab=8, preset="micro", seed=2)
  prompt = [1, 2, 3]
  gen = sampling.generate_batch(model, [prompt] * 3000, 2, temperature=1.0, rng=0)
  samples = np.asarray(gen.tokens)
  assert chi_square_pvalue(samples, exact_joint(model, prompt)) > FALSE_ALARM
  # and the test has power: another model's samples are rejected
  other = tiny(vocab=8, preset="micro", seed=9)
  assert chi_square_pvalue(samples, exact_joint(other, prompt)) < FALSE_ALARM


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(max_new_tokens=5000), "max_seq_len=2048"),
    (dict(cache_size=8), "cache_size=8"),
    (dict(top_p=1.5), "top_p=1.5"),
])
def test_bad_input_is_named(kwargs, match):
  args = dict(prompts=PROMPTS, max_new_tokens=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.generate(tiny(), **args)

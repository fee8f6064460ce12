"""Quality metrics: cross-entropy under a reference model, answer accuracy."""

import jax
import numpy as np
import pytest

from specdistill_jax import evaluate
from tests.sampling.helpers import tiny
from tests.tolerances import fp32_atol


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_reference_cross_entropy_is_entropy_plus_kl_per_row():
  reference, model = tiny(61, seed=0), tiny(61, seed=3, preset="micro")
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 61, n)) for n in (3, 6, 2)]
  responses = [list(rng.integers(1, 61, n)) for n in (5, 2, 7)]
  got = evaluate.reference_cross_entropy(reference, model, prompts, responses, batch_size=2)
  own = evaluate.reference_cross_entropy(reference, reference, prompts, responses)
  for r, (p, o) in enumerate(zip(prompts, responses)):
    seq = np.asarray([p + o])
    log_p = _log_softmax(np.asarray(reference(jax.numpy.asarray(seq)), np.float64))[0]
    log_q = _log_softmax(np.asarray(model(jax.numpy.asarray(seq)), np.float64))[0]
    steps = range(len(p) - 1, len(p) + len(o) - 1)  # positions that predict the response tokens
    want = np.mean([-(np.exp(log_p[t]) * log_q[t]).sum() for t in steps])
    entropy = np.mean([-(np.exp(log_p[t]) * log_p[t]).sum() for t in steps])
    tol = fp32_atol(want, 61, depth=4)
    assert got[r] == pytest.approx(want, abs=tol)
    assert own[r] == pytest.approx(entropy, abs=tol)
    assert got[r] > own[r]  # Gibbs: another model pays a positive KL
  with pytest.raises(ValueError, match="vocabulary mismatch"):
    evaluate.reference_cross_entropy(reference, tiny(62), prompts, responses)


def test_answer_accuracy_reads_the_final_answer():
  outputs = ["2 * 3 = 6\n#### 6", "#### 7", "no answer", "1 + 1 = 2\n#### 1,000"]
  assert evaluate.answer_accuracy(outputs, [6, 6, 3, "1000"]) == 0.5


def test_round_seconds_measures_a_proposal_round_of_every_kind_of_draft():
  """One jitted proposal round per kind (token LM, EAGLE-3 head, prompt lookup, block drafter):
  the cost the benchmark's r(gamma) reports; a block drafter's round is one pass at any gamma."""
  from specdistill_jax import models, sampling
  from specdistill_jax.sampling import proposer
  from tests.sampling.helpers import tiny
  target = tiny()
  drafts = [tiny(preset="micro", seed=1), models.create_feature_draft(target.config, target=target),
            sampling.prompt_lookup().for_target(target), models.create_block_draft(target.config, block_size=4)]
  for d in drafts:
    for gamma in (1, 3):
      assert 0 < evaluate.round_seconds(d, gamma, 64, rounds=2, repeats=1) < 60
  assert [proposer.passes_per_round(d, 3) for d in drafts] == [3, 3, 3, 1]


def test_step_seconds_by_tokens_times_every_count_and_fits_the_cache():
  """Interleaved timing of several pass widths (v(k) = seconds[k] / seconds[1]): one entry per
  distinct count, each a positive time per pass, including a width that fits the cache's free
  slots only once (the step count is capped, not run past the cache)."""
  model = tiny()
  times = evaluate.step_seconds_by_tokens(model, 1, 64, (1, 4, 4, 48), steps=8, repeats=2)
  assert sorted(times) == [1, 4, 48]
  assert all(0 < t < 60 for t in times.values())
  assert 0 < evaluate.step_seconds(model, 1, 64, steps=4, repeats=1, tokens=2) < 60

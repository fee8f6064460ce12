"""Speculative decoding with a block drafter (DFlash): greedy == target, exact sampling, one
draft pass per round, and the cached block pass equal to the training forward."""

import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import models, sampling
from specdistill_jax.sampling import acceptance
from tests.sampling.helpers import FALSE_ALARM, after_first_token, chi_square_pvalue, tiny, with_bug

PROMPTS = [[1, 2, 3], [4], [7, 8, 9, 10, 11, 12, 13], [20, 21]]


def _block_draft(target, block_size=4, draft_vocab=None, seed=3, layers=1):
  counts = np.random.RandomState(seed).rand(target.config.vocab_size)
  return models.create_block_draft(target.config, num_layers=layers, block_size=block_size,
                                   draft_vocab_size=draft_vocab, target=target, token_counts=counts, seed=seed)


@pytest.mark.parametrize("gamma", [None, 2])
def test_greedy_block_draft_equals_greedy_target_batched_ragged(gamma):
  target = tiny(eos=(5,))
  draft = _block_draft(target, block_size=4, draft_vocab=60)
  want = sampling.generate(target, PROMPTS, 17)
  out, stats = sampling.speculative_generate(target, draft, PROMPTS, 17, gamma=gamma)
  assert out == want
  assert stats["gamma"] == (3 if gamma is None else gamma)  # default: block_size - 1
  assert stats["draft_calls"] == stats["rounds"]  # one block pass per round
  same, stats = sampling.speculative_generate(target, draft, [PROMPTS[2]] * 4, 17, gamma=gamma)
  assert same == [want[2]] * 4 and len(set(stats["tau_per_row"])) == 1


def test_block_draft_routed_with_a_token_draft_equals_greedy_target():
  target = tiny(eos=(5,))
  drafts = [_block_draft(target), tiny(preset="micro", seed=1, eos=(5,))]
  want = sampling.generate(target, PROMPTS, 12)
  routed, stats = sampling.routed_speculative_generate(target, drafts, PROMPTS, 12, gamma=3)
  assert routed == want and len(stats["drafter_share"]) == 2


def test_cached_block_pass_equals_the_training_forward():
  """After the prompt prefill, the engine's block pass from the last prompt token equals
  `block_logits` at that anchor over the same sequence: the context is paired and placed right."""
  target = tiny(vocab=50, seed=1)
  draft = _block_draft(target, block_size=5, draft_vocab=40, layers=2)
  seq = [3, 9, 4, 17, 22, 8, 31]
  tokens = jnp.asarray([seq], jnp.int32)
  _, feats = target.hidden(tokens, feature_layers=draft.feature_layers)
  want, valid = draft.block_logits(tokens, feats, jnp.asarray([[len(seq) - 1, 2]], jnp.int32))
  assert valid[0, 0].tolist() == [False] * 4 and valid[0, 1].tolist() == [True] * 4

  from specdistill_jax.sampling import proposer
  prefix = jnp.asarray([len(seq) - 1], jnp.int32)
  cache, hidden = proposer.prefill(draft, tokens, prefix, 16, feats, draft.feature_layers)
  pending = jnp.asarray([[seq[-1]]], jnp.int32)
  _, cache, _ = draft.forward_cached(pending, cache, jnp.ones((1,), jnp.int32), hidden=hidden)
  got = draft.draft_block(pending[:, 0], cache)  # [1, 4, V] target vocabulary
  got = np.asarray(got)[..., np.asarray(draft.draft_ids)]
  np.testing.assert_allclose(got[0], np.asarray(want[0, 0]), atol=1e-5, rtol=0)
  # and a block from an earlier anchor sees only the context before it
  cut = proposer.prefill(draft, tokens[:, :3], jnp.asarray([2], jnp.int32), 16, feats[:, :3],
                         draft.feature_layers)
  _, cut_cache, _ = draft.forward_cached(tokens[:, 2:3], cut[0], jnp.ones((1,), jnp.int32), hidden=cut[1])
  early = np.asarray(draft.draft_block(tokens[:, 2], cut_cache))[..., np.asarray(draft.draft_ids)]
  np.testing.assert_allclose(early[0], np.asarray(want[0, 1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bug", [False, True])
def test_sampled_block_draft_has_target_distribution(monkeypatch, bug):
  """T=1, gamma 2 from a 3-token block, 6000 rows: tokens 2-3 given token 1 against the exact law
  (the draft vocabulary leaves out two of the eight tokens). The same test rejects a rejection's
  replacement drawn from p instead of the residual."""
  target = tiny(vocab=8, preset="micro", seed=2)
  draft = _block_draft(target, block_size=3, draft_vocab=6, seed=7)
  done = with_bug(monkeypatch, acceptance, "correction", lambda p, q: p) if bug else (lambda: None)
  prompt = [1, 2, 3]
  try:
    out, stats = sampling.speculative_generate(target, draft, [prompt] * 6000, 3, temperature=1.0, rng=11)
  finally:
    done()
  samples, probs = after_first_token(out, prompt, target)
  assert stats["gamma"] == 2 and 1.05 < stats["tau"] < 2.95
  p = chi_square_pvalue(samples, probs)
  assert (p < 1e-6) if bug else (p > FALSE_ALARM)


def test_block_drafter_limits_are_named():
  target = tiny()
  draft = _block_draft(target, block_size=4)
  with pytest.raises(ValueError, match=r"gamma=4 exceeds .*\(block_size - 1 = 3\)"):
    sampling.speculative_generate(target, draft, PROMPTS, 4, gamma=4)
  with pytest.raises(ValueError, match="block drafter drafts chains only"):
    sampling.speculative_generate(target, draft, PROMPTS, 4, tree=sampling.TreeSpec(2, 2, 4))
  with pytest.raises(ValueError, match="block_size=1 must be an integer >= 2"):
    models.create_block_draft(target.config, block_size=1)
  with pytest.raises(ValueError, match="mask_token_id=500 is not a token id"):
    models.create_block_draft(target.config, mask_token_id=500)
  with pytest.raises(ValueError, match="feature draft was built for a"):
    sampling.speculative_generate(target, _block_draft(tiny(preset="micro")), PROMPTS, 4)

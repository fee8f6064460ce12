"""EAGLE-3 feature drafts: target features, the training-time-test unroll == inference, vocab maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import models
from specdistill_jax.distill import proposal_teacher
from tests.sampling.helpers import tiny
from tests.tolerances import fp32_atol


def _pair(vocab=50, draft_vocab=30, layers=2):
  target = tiny(vocab=vocab, seed=0)
  counts = np.random.RandomState(0).rand(vocab)
  draft = models.create_feature_draft(target.config, num_layers=layers, draft_vocab_size=draft_vocab,
                                      target=target, token_counts=counts, seed=3)
  return target, draft


def test_target_features_from_full_and_cached_forward_agree_and_leave_logits_unchanged():
  target = tiny(vocab=50)
  tokens = jnp.asarray(np.random.RandomState(1).randint(0, 50, (2, 9)), jnp.int32)
  layers = (0, 1, 2)
  h, feats = target.hidden(tokens, feature_layers=layers)
  assert feats.shape == (2, 9, 3 * target.config.d_model)
  np.testing.assert_array_equal(feats[..., -target.config.d_model:], h)  # id num_layers: final hidden
  np.testing.assert_array_equal(target(tokens), target.project(h))
  cache = target.init_cache(2, 16)
  logits, _, cached = target.forward_cached(tokens, cache, feature_layers=layers)
  plain, _, none = target.forward_cached(tokens, cache)
  assert none is None
  np.testing.assert_array_equal(logits, plain)
  np.testing.assert_allclose(cached, feats, atol=fp32_atol(feats, target.config.d_model, 3))


def test_training_time_test_unroll_equals_cached_inference_chain():
  """Step s of `unroll` at entry i == feeding entries 0..i with target features, then s
  tokens that each read the previous token's draft state (EAGLE's inference rule)."""
  target, draft = _pair()
  rng = np.random.RandomState(2)
  tokens = jnp.asarray(rng.randint(0, 50, (1, 12)), jnp.int32)
  _, feats = target.hidden(tokens, feature_layers=draft.feature_layers)
  steps = 3
  unrolled, mask, _ = draft.unroll(tokens, feats, steps)
  assert unrolled.shape == (steps, 1, 11, draft.draft_vocab_size)
  ids = np.asarray(draft.draft_ids)
  h = draft.project_features(feats)
  for i in (0, 7):
    cache = draft.init_cache(1, 32)
    logits, cache, states = draft.forward_cached(tokens[:, 1:i + 2], cache, hidden=h[:, :i + 1])
    got = [logits[:, -1]]
    state = states[:, -1:]
    for s in range(1, steps):
      logits, cache, state = draft.forward_cached(tokens[:, i + 1 + s:i + 2 + s], cache, hidden=state)
      got.append(logits[:, -1])
    for s in range(steps):
      want = unrolled[s, 0, i]
      assert bool(mask[s, 0, i])
      np.testing.assert_allclose(got[s][0, ids], want, atol=fp32_atol(want, 2 * target.config.d_model, 4))
      outside = np.setdiff1d(np.arange(50), ids)
      assert float(jnp.max(got[s][0, outside])) < -1e29  # q = 0 outside the draft vocabulary
  assert not bool(mask[2, 0, 9])  # step 2 from entry 9 would predict token 13 of 12


def test_unroll_keeps_packed_sequences_apart():
  target, draft = _pair()
  rng = np.random.RandomState(3)
  a, b = rng.randint(0, 50, (1, 6)), rng.randint(0, 50, (1, 5))
  packed = jnp.asarray(np.concatenate([a, b], 1), jnp.int32)
  seg = jnp.asarray([[1] * 6 + [2] * 5], jnp.int32)
  _, feats = target.hidden(packed, segment_ids=seg, feature_layers=draft.feature_layers)
  out, mask, _ = draft.unroll(packed, feats, 2, segment_ids=seg)
  alone, _, _ = draft.unroll(jnp.asarray(b, jnp.int32), feats[:, 6:], 2)
  # the second sequence's entries see nothing of the first
  np.testing.assert_allclose(out[0, 0, 6:], alone[0, 0], atol=fp32_atol(alone, 2 * target.config.d_model, 4))
  assert not bool(mask[0, 0, 5])  # entry 5 pairs a's last feature with b's first token
  assert not bool(mask[1, 0, 4])  # step 1 from entry 4 would reach into b


def test_draft_vocabulary_is_the_most_frequent_tokens_plus_eos():
  counts = np.array([5, 0, 9, 9, 1, 7])
  assert models.select_draft_vocab(counts, 3, always=(1,)) == (1, 2, 3)
  assert models.select_draft_vocab(counts, 4) == (0, 2, 3, 5)
  with pytest.raises(ValueError, match="draft_vocab_size=7"):
    models.select_draft_vocab(counts, 7)


def test_bad_feature_draft_arguments_are_named():
  cfg = tiny(vocab=50).config
  with pytest.raises(ValueError, match="feature_layers=\\(0, 5\\)"):
    models.create_feature_draft(cfg, feature_layers=(0, 5))
  with pytest.raises(ValueError, match="num_layers=0"):
    models.create_feature_draft(cfg, num_layers=0)
  with pytest.raises(ValueError, match="token_counts has shape"):
    models.create_feature_draft(cfg, draft_vocab_size=10, token_counts=np.ones(7))


def test_target_over_proposal_blocks_equals_forwarding_each_proposed_continuation():
  """On-policy TTT's teacher: block s at entry i == the target after x_0..x_{i+1}, y_1..y_s."""
  target = tiny(vocab=50)
  rng = np.random.RandomState(4)
  tokens = jnp.asarray(rng.randint(0, 50, (1, 9)), jnp.int32)
  blocks = [jnp.asarray(rng.randint(0, 50, (1, 8)), jnp.int32) for _ in range(2)]
  hidden = proposal_teacher.target_over_proposals(target, tokens, blocks)
  for i in (0, 7):
    for s in (1, 2):
      seq = jnp.concatenate([tokens[:, :i + 2]] + [b[:, i:i + 1] for b in blocks[:s]], axis=1)
      want = target.hidden(seq)[:, -1]
      np.testing.assert_allclose(hidden[s - 1][:, i], want, atol=fp32_atol(want, target.config.d_model, 3))


def test_on_policy_unroll_feeds_the_drafts_own_samples():
  target, draft = _pair()
  tokens = jnp.asarray(np.random.RandomState(5).randint(0, 50, (2, 10)), jnp.int32)
  _, feats = target.hidden(tokens, feature_layers=draft.feature_layers)
  logits, _, inputs = draft.unroll(tokens, feats, 3, key=jax.random.PRNGKey(0), temperature=0.0)
  ids = np.asarray(draft.draft_ids)
  np.testing.assert_array_equal(inputs[0], tokens[:, 1:])
  for s in (1, 2):  # greedy on-policy: step s reads step s-1's argmax
    np.testing.assert_array_equal(inputs[s], ids[np.argmax(np.asarray(logits[s - 1]), -1)])


@pytest.mark.parametrize("tie", [False, True])
def test_head_starts_as_the_targets_head_on_the_draft_vocabulary(tie):
  """head_from_target (speculators' init): draft_logits(x) == the target's logits on the draft ids."""
  target = models.create(models.preset("tiny", vocab_size=50, tie_embeddings=tie), seed=0)
  target.final_norm.weight.value = jax.random.uniform(jax.random.PRNGKey(2), (target.config.d_model,)) + 0.5
  counts = np.random.RandomState(0).rand(50)
  draft = models.create_feature_draft(target.config, draft_vocab_size=30, target=target, token_counts=counts)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, target.config.d_model))
  want = target.project(target.final_norm(x), vocab_ids=draft.draft_ids)
  np.testing.assert_allclose(np.asarray(draft.draft_logits(x)), np.asarray(want),
                             atol=fp32_atol(want, reduction=target.config.d_model), rtol=0)
  scratch = models.create_feature_draft(target.config, draft_vocab_size=30, target=target, token_counts=counts,
                                        head_from_target=False)
  assert not np.allclose(np.asarray(scratch.draft_logits(x)), np.asarray(want), atol=1e-2)

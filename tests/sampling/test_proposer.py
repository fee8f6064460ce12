"""The drafter interface: every kind's cached forward returns one structure, read the same way."""

import jax.numpy as jnp
import numpy as np

from specdistill_jax import models
from specdistill_jax.sampling import prompt_lookup, proposer
from tests.sampling.helpers import tiny


def _drafters(target):
  return {
      "token": tiny(preset="micro", seed=1),
      "eagle3": models.create_feature_draft(target.config, num_layers=1, seed=2),
      "block": models.create_block_draft(target.config, num_layers=1, block_size=4, seed=3),
      "lookup": proposer.for_target(prompt_lookup(), target),
  }


def test_every_kind_returns_one_cached_forward_structure():
  """logits [B, T, V] (None for a block drafter), the cache advanced by num_valid per row, and
  features only where the call produces them (a feature draft's states, prompt lookup's match
  flags); the same fields for every kind."""
  target = tiny()
  tokens = jnp.asarray([[3, 4, 5], [6, 7, 8]], jnp.int32)
  num_valid = jnp.asarray([3, 1], jnp.int32)
  for kind, draft in _drafters(target).items():
    hidden = (jnp.ones((2, 3, draft.config.d_model), draft.config.jnp_dtype)
              if proposer.reads_features(draft) else None)
    out = proposer.feed(draft, tokens, draft.init_cache(2, 8), num_valid, hidden=hidden)
    assert isinstance(out, models.CachedForward), kind
    assert np.asarray(out.cache.lengths).tolist() == [3, 1], kind
    if kind == "block":
      assert out.logits is None
    else:
      assert out.logits.shape == (2, 3, target.config.vocab_size), kind
    if proposer.proposes_partial(draft):  # prompt lookup's states: 1.0 where its n-gram matched
      assert out.features.shape == (2, 3, 1), kind
    else:
      assert (out.features is None) == (hidden is None), kind

  plain = target.forward_cached(tokens, target.init_cache(2, 8), num_valid)
  assert isinstance(plain, models.CachedForward) and plain.features is None
  tapped = target.forward_cached(tokens, target.init_cache(2, 8), num_valid, feature_layers=(0, 2))
  assert tapped.features.shape == (2, 3, 2 * target.config.d_model)
  np.testing.assert_array_equal(tapped.logits, plain.logits)  # asking for features changes nothing else


def test_logits_at_equals_the_gathered_full_logits_for_every_kind():
  """forward_cached(..., logits_at=[B, K]) is the full call's logits at those tokens, with the same
  cache and states (the prefill and a round's pending tokens ask for one row; a wrong gather, e.g.
  the first token instead of the last valid one, would differ)."""
  target = tiny()
  tokens = jnp.asarray([[3, 4, 5], [6, 7, 8]], jnp.int32)
  num_valid = jnp.asarray([3, 1], jnp.int32)
  at = (num_valid - 1)[:, None]
  for kind, model in {"target": target, **_drafters(target)}.items():
    hidden = (jnp.ones((2, 3, model.config.d_model), model.config.jnp_dtype)
              if proposer.reads_features(model) else None)
    full = proposer.feed(model, tokens, model.init_cache(2, 8), num_valid, hidden=hidden)
    some = proposer.feed(model, tokens, model.init_cache(2, 8), num_valid, hidden=hidden, logits_at=at)
    if full.logits is None:
      assert some.logits is None, kind
    else:
      assert some.logits.shape == (2, 1, full.logits.shape[-1]), kind
      want = np.take_along_axis(np.asarray(full.logits), np.asarray(at)[:, :, None], axis=1)
      np.testing.assert_allclose(some.logits, want, rtol=1e-5, atol=1e-5, err_msg=kind)
      if kind != "lookup":  # (n-gram fallbacks may coincide) row 1's last valid token is its first, not its third
        assert not np.allclose(some.logits[1, 0], full.logits[1, 2]), kind
    np.testing.assert_array_equal(some.cache.lengths, full.cache.lengths)
    if full.features is not None:
      np.testing.assert_array_equal(some.features, full.features)

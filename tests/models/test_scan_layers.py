"""ModelConfig.scan_layers: the layers as one lax.scan give the unrolled loop's numbers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from specdistill_jax import models, sampling


def _pair(**kw):
  """The same parameters as an unrolled and as a scanned model (fp32)."""
  config = models.preset("tiny", 97, **kw)
  unrolled = models.create(config, seed=3)
  graphdef, state = nnx.split(unrolled)
  scanned = models.create(dataclasses.replace(config, scan_layers=True), seed=0)
  nnx.update(scanned, state)
  return unrolled, scanned


def _close(a, b):
  # fp32, the same ops in the same order per layer: only XLA's fusion choices may differ
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 12)), jnp.int32)


def test_full_forward_and_features_equal():
  unrolled, scanned = _pair()
  _close(unrolled(TOKENS), scanned(TOKENS))
  layers = (0, 1, unrolled.config.num_layers)
  (h1, f1), (h2, f2) = unrolled.hidden(TOKENS, feature_layers=layers), scanned.hidden(TOKENS, feature_layers=layers)
  _close(h1, h2)
  _close(f1, f2)


def test_gradients_equal():
  unrolled, scanned = _pair()

  def grads(model):
    graphdef, state = nnx.split(model)

    def loss(state):
      logits = nnx.merge(graphdef, state)(TOKENS[:, :-1])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), TOKENS[:, 1:, None], -1))

    return jax.grad(loss)(state)

  g1, g2 = grads(unrolled), grads(scanned)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    _close(a, b)


def test_cached_forward_and_decoding_equal():
  unrolled, scanned = _pair()
  outs = []
  for model in (unrolled, scanned):
    cache = model.init_cache(2, 32)
    logits, cache, feats = model.forward_cached(TOKENS, cache, jnp.asarray([12, 7]), feature_layers=(1,))
    step, cache, _ = model.forward_cached(TOKENS[:, :3], cache)
    outs.append((logits, feats, step, cache.keys, cache.lengths))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    _close(a, b)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  assert sampling.generate(unrolled, prompts, 10) == sampling.generate(scanned, prompts, 10)
  draft = models.create(models.preset("micro", 97), seed=1)
  assert sampling.speculative_generate(scanned, draft, prompts, 10, gamma=3)[0] == sampling.generate(unrolled, prompts, 10)


def test_a_per_layer_window_is_refused():
  with pytest.raises(ValueError, match="scan_layers=True needs one attention window"):
    models.preset("tiny", 97, sliding_window=4, sliding_window_layers=(0,), scan_layers=True)

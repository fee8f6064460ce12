"""A draft cut from its target computes exactly the target's first layers, then its norm and head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import models
from tests.tolerances import fp32_atol


def test_first_layers_is_the_targets_early_exit():
  target = models.create(models.preset("tiny", 97, num_layers=4, tie_embeddings=True), seed=3)
  draft = models.first_layers(target, 2)
  assert draft.config.num_layers == 2 and draft.config.vocab_size == 97
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 97)
  positions = jnp.broadcast_to(jnp.arange(9), tokens.shape)
  x = target.embed_tokens(tokens)
  for block in list(target.layers)[:2]:
    x = block(x, positions)
  want = np.asarray(target.project(target.final_norm(x)))
  np.testing.assert_allclose(np.asarray(draft(tokens)), want, atol=fp32_atol(want, 128, 3), rtol=0)
  # a copy: training the draft never touches the target
  assert draft.embed[...] is not target.embed[...]


def test_first_layers_dtype_and_range():
  target = models.create(models.preset("tiny", 97, num_layers=3))
  draft = models.first_layers(target, 1, dtype="bfloat16", param_dtype="float32")
  assert draft.config.dtype == "bfloat16" and draft.embed[...].dtype == jnp.float32
  for bad in (0, 3):
    with pytest.raises(ValueError, match=f"num_layers={bad} must be in \\[1, 2\\]"):
      models.first_layers(target, bad)

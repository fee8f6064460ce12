"""The transformer's cached forward is the full forward, for ragged rows and after rollback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from specdistill_jax import models
from tests.tolerances import fp32_atol


def _assert_close(got, want):
  """Same function, another reduction order: 'tiny' reduces over <= 128 terms, 2 layers + head."""
  np.testing.assert_allclose(got, want, atol=fp32_atol(want, reduction=128, depth=3), rtol=0)


@nnx.jit
def _full(model, tokens, positions=None, segment_ids=None):
  return model(tokens, positions=positions, segment_ids=segment_ids)


@nnx.jit
def _cached(model, tokens, cache, num_valid=None):
  logits, cache, features = model.forward_cached(tokens, cache, num_valid)
  assert features is None  # one structure: no features unless asked for
  return logits, cache


def _model(**overrides):
  return models.create(models.preset("tiny", vocab_size=97, **overrides), seed=0)


def _tokens(batch, length, vocab=97, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, vocab)


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 1}, {"num_kv_heads": 4},
                                       {"qkv_bias": True, "tie_embeddings": True},
                                       {"sliding_window": 3}])
def test_token_by_token_decode_matches_full_forward_with_ragged_prompts(overrides):
  model = _model(**overrides)
  tokens = _tokens(3, 12)
  full = _full(model, tokens)
  lengths = jnp.array([5, 1, 8])
  width = int(lengths.max())
  cache = model.init_cache(3, 16)
  logits, cache = _cached(model, tokens[:, :width], cache, lengths)
  np.testing.assert_array_equal(cache.lengths, lengths)
  for b in range(3):
    _assert_close(logits[b, : lengths[b]], full[b, : lengths[b]])
  # one token per step, each row at its own offset
  for _ in range(12 - width):
    nxt = jnp.take_along_axis(tokens, cache.lengths[:, None], axis=1)
    pos = cache.lengths
    logits, cache = _cached(model, nxt, cache)
    want = jnp.take_along_axis(full, pos[:, None, None], axis=1)
    _assert_close(logits, want)


def test_rollback_only_moves_lengths():
  """Feed junk (rejected drafts), roll back, feed the real tokens: logits as the full forward."""
  model = _model()
  tokens = _tokens(2, 10)
  full = _full(model, tokens)
  cache = model.init_cache(2, 16)
  _, cache = _cached(model, tokens[:, :4], cache)
  junk = _tokens(2, 4, seed=1)
  _, junk_cache = _cached(model, junk, cache)
  np.testing.assert_array_equal(junk_cache.lengths, [8, 8])
  rolled = junk_cache.with_lengths(jnp.array([4, 6]))  # row 1 keeps 2 junk tokens as "accepted"
  # row 0: real tokens 4..7; row 1: its accepted junk then nothing else to check
  logits, _ = _cached(model, tokens[:, 4:8], rolled.with_lengths(jnp.array([4, 4])))
  _assert_close(logits, full[:, 4:8])
  # row 1 continuing after 2 accepted junk tokens equals a fresh forward of that sequence
  seq = jnp.concatenate([tokens[1, :4], junk[1, :2], tokens[1, 6:8]])[None]
  want = _full(model, seq)[0, 6:8]
  logits, _ = _cached(model, tokens[:, 6:8], rolled)
  _assert_close(logits[1], want)


def test_attention_over_a_filled_prefix_of_a_long_cache_is_the_full_attention():
  """A 512-slot cache: each cached attention reads only the smallest slot bucket (128, 256, 512)
  that holds every slot written so far (layers.attend_cache). Calls whose last slot sits on
  each side of a bucket edge (127 / 128, 255 / 256), with stale junk past the lengths inside
  the bucket read, give the full forward's logits; reading one slot too few (a bucket chosen
  from the last slot instead of one past it) would drop the token's own key."""
  model = _model()
  tokens = _tokens(2, 300)
  full = _full(model, tokens)
  cache = model.init_cache(2, 512)
  lengths = jnp.array([100, 127])
  logits, cache = _cached(model, tokens[:, :127], cache, lengths)  # last slot 126: bucket 128
  for b in range(2):
    _assert_close(logits[b, : lengths[b]], full[b, : lengths[b]])
  # junk written up to slot 199, then rolled back: stale entries inside the buckets read below
  _, junk = _cached(model, _tokens(2, 73, seed=3), cache.with_lengths(jnp.array([127, 127])))
  cache = junk.with_lengths(lengths)
  for step in range(30):  # row 1 crosses 128 at its first step; row 0 crosses 128 later
    pos = cache.lengths
    logits, cache = _cached(model, jnp.take_along_axis(tokens, pos[:, None], axis=1), cache)
    _assert_close(logits, jnp.take_along_axis(full, pos[:, None, None], axis=1))
  # a 16-token chunk per call up to slot 255, then one over the 256 edge
  while int(cache.lengths.max()) + 16 <= 256:
    pos = cache.lengths[:, None] + jnp.arange(16)[None]
    logits, cache = _cached(model, jnp.take_along_axis(tokens, pos, axis=1), cache)
    _assert_close(logits, jnp.take_along_axis(full, pos[..., None], axis=1))
  pos = cache.lengths[:, None] + jnp.arange(4)[None]
  assert int(pos.max()) >= 256 > int(cache.lengths.max())
  logits, _ = _cached(model, jnp.take_along_axis(tokens, pos, axis=1), cache)
  _assert_close(logits, jnp.take_along_axis(full, pos[..., None], axis=1))


def test_slot_buckets_double_from_128_to_the_cache_size():
  from specdistill_jax.models import layers
  assert layers.slot_buckets(100) == (100,)
  assert layers.slot_buckets(128) == (128,)
  assert layers.slot_buckets(600) == (128, 256, 512, 600)


def test_segment_ids_isolate_packed_sequences():
  model = _model()
  a, b = _tokens(1, 5), _tokens(1, 4, seed=2)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
  pos = jnp.array([list(range(5)) + list(range(4)) + [0] * 3])
  out = _full(model, packed, pos, seg)
  _assert_close(out[:, :5], _full(model, a))
  _assert_close(out[:, 5:9], _full(model, b))


def test_bf16_params_and_compute_run_and_stay_close():
  f32 = _model()
  bf = models.Transformer(f32.config.replace(dtype="bfloat16", param_dtype="bfloat16"),
                          rngs=nnx.Rngs(0))
  tokens = _tokens(2, 8)
  out = _full(bf, tokens)
  assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
  # same init seed: bf16 logits stay near the fp32 ones
  assert float(jnp.abs(out - _full(f32, tokens)).max()) < 0.15


@pytest.mark.parametrize("kw,match", [({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
                                      ({"architecture": "gpt2"}, "architecture"),
                                      ({"dtype": "float8"}, "dtype")])
def test_bad_model_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    models.preset("tiny", 97, **kw)


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match="tiny"):
    models.preset("huge", 97)


def test_num_params_matches_the_model():
  for overrides in ({}, {"qkv_bias": True, "tie_embeddings": True}):
    model = _model(**overrides)
    counted = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert counted == model.config.num_params()


def test_bf16_mixed_precision_gradients_match_fp32():
  """bf16 compute (custom VJP: bf16 x bf16 -> fp32 in both passes) keeps the fp32 gradient."""
  f32 = _model()
  bf = models.Transformer(f32.config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))  # fp32 params
  tokens = _tokens(2, 12)

  def grads(model):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, p)(tokens))[..., 3])  # noqa: E731
    return jax.tree.leaves(jax.jit(jax.grad(loss))(params))

  for a, b in zip(grads(f32), grads(bf)):
    a, b = np.ravel(np.asarray(a)), np.ravel(np.asarray(b, np.float32))
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
    assert cos > 0.99, cos


@pytest.mark.parametrize("tie", [False, True])
def test_project_onto_a_vocabulary_subset_equals_the_full_head_columns(tie):
  """A reduced-vocabulary draft's teacher: project(h, vocab_ids) == project(h)[..., vocab_ids]."""
  model = _model(tie_embeddings=tie)
  h = model.hidden(_tokens(2, 6))
  ids = np.array([5, 0, 96, 41, 17], np.int32)  # unsorted, with both ends of the vocabulary
  full, part = model.project(h), model.project(h, vocab_ids=ids)
  assert part.shape == h.shape[:-1] + (len(ids),)
  _assert_close(np.asarray(part), np.asarray(full)[..., ids])
  assert not np.allclose(np.asarray(part), np.asarray(full)[..., ids[::-1]])  # column order matters

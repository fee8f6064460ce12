"""Divergences against a float64 NumPy reference; sparse top-k teacher; finite gradients; AdaSPEC."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax.distill import divergences as div


def _softmax64(x, t=1.0):
  x = np.asarray(x, np.float64) / t
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _kl64(a, b):
  return np.sum(np.where(a > 0, a * (np.log(np.maximum(a, 1e-300)) - np.log(np.maximum(b, 1e-300))), 0), -1)


def _ref(name, p, q, beta=0.5):
  if name == "fkl":
    return _kl64(p, q)
  if name == "rkl":
    return _kl64(q, p)
  if name == "tvd":
    return 0.5 * np.abs(p - q).sum(-1)
  if beta == 0:
    return _kl64(p, q)
  if beta == 1:
    return _kl64(q, p)
  m = beta * p + (1 - beta) * q
  return beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)


RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(3, 5, 11)) * 2
TEACHER = RNG.normal(size=(3, 5, 11)) * 3
MASK = (RNG.random((3, 5)) > 0.3).astype(np.float32)


@pytest.mark.parametrize("name,beta", [("fkl", 0.5), ("rkl", 0.5), ("tvd", 0.5), ("jsd", 0.5),
                                       ("jsd", 0.1), ("jsd", 0.9), ("jsd", 0.0), ("jsd", 1.0)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_float64_reference(name, beta, temperature):
  fn = div.get_divergence(name, beta)
  loss, metrics = fn(jnp.asarray(STUDENT, jnp.float32), jnp.asarray(TEACHER, jnp.float32),
                     jnp.asarray(MASK), temperature=temperature)
  p, q = _softmax64(TEACHER, temperature), _softmax64(STUDENT, temperature)
  want = (_ref(name, p, q, beta) * MASK).sum() / MASK.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["tvd"]), (0.5 * np.abs(p - q).sum(-1) * MASK).sum() / MASK.sum(),
                             rtol=1e-5)


def test_jsd_half_is_symmetric_and_bounded():
  s, t, m = jnp.asarray(STUDENT), jnp.asarray(TEACHER), jnp.asarray(MASK)
  a, _ = div.generalized_jsd(s, t, m, beta=0.5)
  b, _ = div.generalized_jsd(t, s, m, beta=0.5)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  assert 0 < float(a) <= np.log(2)


def test_cross_entropy_matches_reference():
  targets = RNG.integers(0, 11, size=(3, 5))
  loss, _ = div.cross_entropy(jnp.asarray(STUDENT), jnp.asarray(targets), jnp.asarray(MASK))
  q = _softmax64(STUDENT)
  nll = -np.log(np.take_along_axis(q, targets[..., None], -1)[..., 0])
  np.testing.assert_allclose(float(loss), (nll * MASK).sum() / MASK.sum(), rtol=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd", "jsd"])
def test_top_k_teacher_equals_bucketed_reference(name):
  k = 4
  order = np.argsort(-TEACHER, -1)[..., :k]
  vals = np.take_along_axis(TEACHER, order, -1)
  lse = np.log(np.exp(TEACHER).sum(-1))
  sparse = div.TopKTeacher(jnp.asarray(vals, jnp.float32), jnp.asarray(order), jnp.asarray(lse, jnp.float32))
  loss, _ = div.get_divergence(name)(jnp.asarray(STUDENT, jnp.float32), sparse, jnp.asarray(MASK))
  p, q = _softmax64(TEACHER), _softmax64(STUDENT)
  bucket = lambda d: np.concatenate([np.take_along_axis(d, order, -1),  # noqa: E731
                                     1 - np.take_along_axis(d, order, -1).sum(-1, keepdims=True)], -1)
  want = (_ref(name, bucket(p), bucket(q)) * MASK).sum() / MASK.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)
  # with k = V the sparse teacher is the full one
  full = np.argsort(-TEACHER, -1)
  sparse_full = div.TopKTeacher(jnp.asarray(np.take_along_axis(TEACHER, full, -1), jnp.float32),
                                jnp.asarray(full), jnp.asarray(lse, jnp.float32))
  a, _ = div.get_divergence(name)(jnp.asarray(STUDENT, jnp.float32), sparse_full, jnp.asarray(MASK))
  b, _ = div.get_divergence(name)(jnp.asarray(STUDENT, jnp.float32), jnp.asarray(TEACHER, jnp.float32),
                                  jnp.asarray(MASK))
  np.testing.assert_allclose(float(a), float(b), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd", "jsd"])
def test_gradients_are_finite_for_extreme_logits(name):
  s = jnp.asarray(STUDENT * 1e4, jnp.float32)
  t = jnp.asarray(-TEACHER * 1e4, jnp.float32)
  g = jax.grad(lambda x: div.get_divergence(name)(x, t, jnp.asarray(MASK))[0])(s)
  assert bool(jnp.isfinite(g).all())
  ce_grad = jax.grad(lambda x: div.cross_entropy(x, jnp.zeros((3, 5), jnp.int32), jnp.asarray(MASK))[0])(s)
  assert bool(jnp.isfinite(ce_grad).all())


def test_adaspec_trains_only_on_the_top_fraction_by_delta():
  ref = STUDENT + RNG.normal(size=STUDENT.shape)
  p, q, r = _softmax64(TEACHER), _softmax64(STUDENT), _softmax64(ref)
  delta = _kl64(p, q) - _kl64(p, r)
  valid = MASK > 0
  k = int(np.ceil(0.4 * valid.sum()))
  chosen = np.zeros_like(MASK)
  flat = np.where(valid, delta, -np.inf).ravel()
  chosen.ravel()[np.argsort(-flat)[:k]] = 1
  want = (_kl64(p, q) * chosen).sum() / chosen.sum()
  loss, metrics = div.selective_forward_kl(jnp.asarray(STUDENT, jnp.float32), jnp.asarray(TEACHER, jnp.float32),
                                           jnp.asarray(MASK), reference_logits=jnp.asarray(ref, jnp.float32),
                                           fraction=0.4)
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["selected_fraction"]), k / valid.sum(), rtol=1e-6)
  # gradient only flows through the selected tokens
  g = jax.grad(lambda x: div.selective_forward_kl(x, jnp.asarray(TEACHER, jnp.float32), jnp.asarray(MASK),
                                                  reference_logits=jnp.asarray(ref, jnp.float32),
                                                  fraction=0.4)[0])(jnp.asarray(STUDENT, jnp.float32))
  touched = np.abs(np.asarray(g)).sum(-1) > 0
  np.testing.assert_array_equal(touched, chosen > 0)


def test_bad_names_and_ranges():
  with pytest.raises(ValueError, match="unknown divergence 'kl2'"):
    div.get_divergence("kl2")
  with pytest.raises(ValueError, match="beta=1.5"):
    div.get_divergence("jsd", 1.5)
  with pytest.raises(ValueError, match="fraction=0.0"):
    div.selective_forward_kl(STUDENT, TEACHER, MASK, reference_logits=STUDENT, fraction=0.0)

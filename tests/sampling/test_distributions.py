"""The sampler: one uniform per row, inverse CDF in two levels, distributed exactly as asked."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as sps

from specdistill_jax.sampling import distributions as dist
from tests.sampling.helpers import FALSE_ALARM


def _probs(v, seed=0, zeros=()):
  p = np.random.RandomState(seed).dirichlet(np.full(v, 0.3)).astype(np.float32)
  p[list(zeros)] = 0.0
  return p / p.sum()


def _draw(p, n, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), n)
  return np.asarray(jax.jit(jax.vmap(lambda k: dist.sample_from_probs(k, jnp.asarray(p)[None])[0]))(keys))


def test_inverse_cdf_matches_the_distribution_by_chi_square():
  v, n = 1000, 40_000  # four blocks of 256, the last one partly padding
  zeros = (0, 3, 255, 256, 700, 999)
  p = _probs(v, zeros=zeros)
  counts = np.bincount(_draw(p, n), minlength=v)
  assert counts[list(zeros)].sum() == 0  # probability 0 is never drawn
  # pool rare categories so every expected count is >= 5
  order = np.argsort(p)
  expected, observed, acc_e, acc_o = [], [], 0.0, 0
  for i in order:
    acc_e, acc_o = acc_e + p[i] * n, acc_o + counts[i]
    if acc_e >= 5:
      expected.append(acc_e)
      observed.append(acc_o)
      acc_e, acc_o = 0.0, 0
  expected[-1] += acc_e
  observed[-1] += acc_o
  expected = np.asarray(expected, np.float64) * n / np.sum(expected, dtype=np.float64)
  assert sps.chisquare(observed, expected).pvalue > FALSE_ALARM
  # power: the same counts are rejected against a slightly different distribution
  q = (0.9 * p + 0.1 * _probs(v, seed=1, zeros=zeros)).astype(np.float64)
  keep = q > 0
  assert sps.chisquare(counts[keep], q[keep] * n / q[keep].sum()).pvalue < FALSE_ALARM


def test_unnormalised_rows_and_batch_shapes():
  p = np.asarray([[0.0, 2.0, 0.0, 6.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
  draws = np.stack([np.asarray(dist.sample_from_probs(jax.random.PRNGKey(s), jnp.asarray(p)))
                    for s in range(400)])
  assert draws.shape == (400, 2) and set(draws[:, 1]) == {0}
  assert set(draws[:, 0]) <= {1, 3} and 0.65 < np.mean(draws[:, 0] == 3) < 0.85  # 0.75 expected


def test_argmax_equals_jnp_argmax_with_ties_and_infinities():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 3, 49152))
  x = x.at[0, 0, 7].set(9.0).at[0, 0, 4000].set(9.0)  # a tie: the first index wins
  x = x.at[1].set(-jnp.inf)  # rows with no finite entry
  x = x.at[2, 1, 49151].set(50.0)  # the last entry
  x = x.astype(jnp.bfloat16).at[3].set(jnp.bfloat16(1.0))  # all equal in a low-precision dtype
  got, want = dist.argmax(x), jnp.argmax(x, axis=-1)
  assert got.dtype == jnp.int32 and got.shape == (4, 3)
  np.testing.assert_array_equal(got, want)
  assert int(got[0, 0]) == 7 and int(got[2, 1]) == 49151

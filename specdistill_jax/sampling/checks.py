"""Host-side checks of decoding arguments, run before anything is traced or compiled.

A wrong argument must fail here with a `ValueError` that names the value and
the fix, never reach jit (where JAX would clamp an out-of-range token id in a
gather and return plausible garbage, or fail inside tracing).
"""

from __future__ import annotations

import math

import jax
import numpy as np


def check_temperature(temperature) -> float:
  """A finite temperature >= 0 as a float (0 = greedy)."""
  try:
    value = float(temperature)
  except (TypeError, ValueError):
    raise ValueError(f"temperature={temperature!r} must be a number >= 0 (0 = greedy)") from None
  if not math.isfinite(value) or value < 0.0:
    raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy "
                     "decoding, 1 = sample from the model's distribution)")
  return value


def as_key(rng) -> jax.Array:
  """A PRNG key from None (seed 0), an int seed, or a key made by jax.random.PRNGKey / key."""
  if rng is None:
    return jax.random.PRNGKey(0)
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
    return jax.random.PRNGKey(int(rng))
  if isinstance(rng, (jax.Array, np.ndarray)):
    dtype = rng.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and rng.shape == ():
      return rng
    if dtype == np.uint32 and rng.shape == (2,):
      return rng
  raise ValueError(f"rng={rng!r} must be an int seed or a key from jax.random.PRNGKey(seed) / "
                   "jax.random.key(seed) (one key, not a batch of keys), e.g. rng=0")


def check_token_ids(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> None:
  """Every real prompt token (first lengths[b] of row b) is an id in [0, vocab_size)."""
  valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  bad = valid & ((tokens < 0) | (tokens >= vocab_size))
  if bad.any():
    rows, cols = np.nonzero(bad)
    raise ValueError(
        f"prompt {int(rows[0])} has token id {int(tokens[rows[0], cols[0]])} at position {int(cols[0])}, "
        f"outside [0, vocab_size={vocab_size}) ({int(bad.sum())} such ids in all): encode the prompts "
        "with the model's own tokenizer")

"""Next-token distributions from logits: temperature, top-k / top-p filtering, sampling.

Pure functions used inside the jitted decoding loops. `greedy` is a static
flag (temperature 0 means argmax); otherwise the temperature is a traced scalar
so changing it does not recompile.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def scaled_log_probs(logits: jax.Array, temperature, top_k: Optional[int] = None,
                     top_p: Optional[float] = None) -> jax.Array:
  """log softmax(logits / T) [..., V], with filtered tokens at ~-inf."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p is not None and top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always the top token)
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(keep, logits, NEG_INF)
  return jax.nn.log_softmax(logits, axis=-1)


def sample(key: jax.Array, logits: jax.Array, greedy: bool, temperature,
           top_k: Optional[int] = None, top_p: Optional[float] = None) -> jax.Array:
  """One token per row: argmax when greedy, else a draw from the filtered, scaled distribution."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, scaled_log_probs(logits, temperature, top_k, top_p)).astype(jnp.int32)


def one_hot_log_probs(logits: jax.Array) -> jax.Array:
  """The temperature-0 distribution: all mass on the argmax (log 1 = 0, else ~-inf)."""
  hot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.bool_)
  return jnp.where(hot, 0.0, NEG_INF)


def is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
  """Bool mask of tokens that end a sequence (never, when eos_ids is empty)."""
  out = jnp.zeros(tokens.shape, jnp.bool_)
  for e in eos_ids:
    out |= tokens == e
  return out

"""The static-shape KV cache, what a cached forward returns, and the attention masks.

Per layer the cache holds keys and values of shape [B, S, kv_heads, head_dim];
`lengths` [B] counts the valid entries of each row. Writing k new tokens puts
them at positions lengths[b] .. lengths[b]+k-1 of each row; rolling back
rejected draft tokens only moves `lengths` (stale entries past it are masked
out and later overwritten), so nothing inside jit changes shape.

Every model and drafter's `forward_cached(tokens, cache, num_valid, ...)` returns one
`CachedForward(logits, cache, features)`, whatever it was asked for: `features` is None
unless the call produces them (the target's taps with `feature_layers`, a feature
drafter's output states, prompt lookup's match flags).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  """keys/values: one [B, S, kv_heads, head_dim] array per layer; lengths: [B] int32."""

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  lengths: jax.Array

  @property
  def size(self) -> int:
    return self.keys[0].shape[1]

  @property
  def batch_size(self) -> int:
    return self.keys[0].shape[0]

  @classmethod
  def create(cls, num_layers: int, batch: int, size: int, kv_heads: int, head_dim: int,
             dtype=jnp.float32) -> "KVCache":
    shape = (batch, size, kv_heads, head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    return cls(keys=zeros, values=zeros, lengths=jnp.zeros((batch,), jnp.int32))

  def compact(self, source: jax.Array, start: jax.Array, count: jax.Array) -> "KVCache":
    """Move entries: slot start[b] + j gets slot source[b, j] for j < count[b] (source [B, M]).

    After tree verification this puts the accepted path's K/V on consecutive
    slots (a gather, then a scatter: static shapes). `lengths` is unchanged.
    """
    rows = jnp.arange(self.batch_size)[:, None]
    j = jnp.arange(source.shape[1], dtype=jnp.int32)[None, :]
    dest = jnp.where(j < count[:, None], start[:, None] + j, self.size)  # past the end: dropped
    src = jnp.clip(source, 0, self.size - 1)
    move = lambda buf: buf.at[rows, dest].set(buf[rows, src], mode="drop")  # noqa: E731
    return self.replace(keys=tuple(map(move, self.keys)), values=tuple(map(move, self.values)))

  def with_lengths(self, lengths: jax.Array) -> "KVCache":
    """Roll back (or forward) every row to `lengths` [B]; the buffers are untouched."""
    return self.replace(lengths=lengths.astype(jnp.int32))


class CachedForward(NamedTuple):
  """The output of every `forward_cached` (a pytree: it passes through jit and scan)."""

  logits: Optional[jax.Array]  # [B, T, V] fp32, or [B, K, V] with logits_at (None: a block drafter)
  cache: KVCache  # lengths advanced by num_valid
  features: Optional[jax.Array] = None  # [B, T, F]: target features asked for, a drafter's states; else None


def rows_at(x: jax.Array, logits_at=None) -> jax.Array:
  """x [B, T, ...] at the token indices logits_at [B, K] -> [B, K, ...] (None: x unchanged).

  Every `forward_cached(..., logits_at=)` gathers the head's inputs with it: a prefill or a
  round's pending tokens need the logits of one token per row, and XLA does not push a
  later gather through the head's matmul (a 49k-row head over every token of a prompt).
  """
  if logits_at is None:
    return x
  idx = logits_at.reshape(logits_at.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def cached_slots(cache: KVCache, num_tokens: int, num_valid=None):
  """(num_valid [B] int32, slots [B, T]) of a cached write of T tokens per row (default: all valid)."""
  if num_valid is None:
    num_valid = jnp.full((cache.batch_size,), num_tokens, jnp.int32)
  return num_valid.astype(jnp.int32), write_positions(cache.lengths, num_tokens)


def write_positions(lengths: jax.Array, num_tokens: int) -> jax.Array:
  """[B, T] absolute positions at which T new tokens of each row are written."""
  return lengths[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)[None, :]


def scatter_rows(buffer: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
  """buffer [B, S, ...] with new [B, T, ...] written at positions [B, T].

  Positions past S are dropped (never clamped onto valid entries).
  """
  rows = jnp.arange(buffer.shape[0])[:, None]
  return buffer.at[rows, positions].set(new.astype(buffer.dtype), mode="drop")


def cached_attention_mask(query_positions: jax.Array, cache_size: int,
                          window: Optional[int] = None) -> jax.Array:
  """[B, T, S] bool: query at absolute position p sees cache slots j <= p (and p - j < window)."""
  slots = jnp.arange(cache_size, dtype=jnp.int32)[None, None, :]
  q = query_positions[:, :, None]
  mask = slots <= q
  if window is not None:
    mask &= (q - slots) < window
  return mask


def sequence_attention_mask(positions: jax.Array, segment_ids: Optional[jax.Array] = None,
                            window: Optional[int] = None) -> jax.Array:
  """[B, T, T] causal mask for a full-sequence forward (packed segments never mix)."""
  t = positions.shape[1]
  idx = jnp.arange(t)
  mask = jnp.broadcast_to(idx[None, :, None] >= idx[None, None, :], (positions.shape[0], t, t))
  if segment_ids is not None:
    mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    mask &= (segment_ids != 0)[:, None, :]
  if window is not None:
    mask &= (positions[:, :, None] - positions[:, None, :]) < window
  return mask

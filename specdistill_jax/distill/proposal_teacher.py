"""The target over a sequence and a draft's proposals in one pass: the on-policy teacher of the
training-time test (distill/feature_loss.py).

What a verification pass computes, for every position of a training sequence at once: block
s holds the tokens a draft proposed s steps ahead, each seeing the sequence up to its root
and its own earlier proposals (a block-diagonal mask), so the target's next-token
distributions at the proposals come from one forward over [sequence; blocks].
"""

from __future__ import annotations

import jax.numpy as jnp

from specdistill_jax.models import kv_cache as kvc


def target_over_proposals(target, tokens, blocks, *, segment_ids=None):
  """The target over a sequence and blocks of a draft's proposals (on-policy training-time test).

  tokens [B, T]; blocks: list of [B, T-1] token arrays. Block s (1-based) holds, per entry
  i, a token at position i+1+s that sees the sequence up to position i+1 and blocks 1..s at
  entry i: the continuation a draft proposed after x_0..x_{i+1}. Returns the final-normed
  hidden states of each block [B, T-1, D] (`project` gives the target's next-token logits).
  """
  b, t = tokens.shape
  n = t - 1
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  seq_mask = kvc.sequence_attention_mask(positions, segment_ids)
  c = target.config
  empty = jnp.zeros((b, 0, c.num_kv_heads, c.head_dim), c.jnp_dtype)
  x = target.embed_tokens(tokens)
  kv = []
  for block in target.layers:
    x, k, v = block.unrolled(x, positions, empty, empty, seq_mask)
    kv.append((k, v))
  idx = jnp.arange(n)
  seg_q = segment_ids[:, 1:]  # entry i continues x_{i+1}'s sequence
  sees = (idx[None, :, None] + 1 >= jnp.arange(t)[None, None, :]) & (seg_q[:, :, None] == segment_ids[:, None, :])
  diagonal = jnp.broadcast_to(jnp.eye(n, dtype=jnp.bool_), (b, n, n))
  out = []
  for s, block_tokens in enumerate(blocks, start=1):
    mask = jnp.concatenate([sees] + [diagonal] * s, axis=2)
    x = target.embed_tokens(block_tokens)
    pos = jnp.broadcast_to(idx + 1 + s, (b, n))
    for i, block in enumerate(target.layers):
      x, k, v = block.unrolled(x, pos, *kv[i], mask)
      kv[i] = (k, v)
    out.append(target.final_norm(x))
  return out

"""The training loss of a block drafter (DFlash), with any divergence.

One target forward (frozen) gives the features the draft reads and the
teacher's next-token logits. `num_anchors` anchors are drawn per row among the
positions a whose next token is a response token of a's own sequence (uniformly,
without replacement, fresh every step; the eval step uses a fixed draw). The
block at a (`BlockDraft.block_logits`) predicts tokens a+1 .. a+block_size-1 from
the context of positions < a; slot i (0-based) is compared with the target's
distribution at position a+i (what predicts token a+1+i), restricted to the
draft vocabulary and renormalised there, as for an EAGLE-3 head.

Per-position weights (DFlash's fixed exponential decay, speculators'
`dflash_loss_decay`): slot i weighs exp(-i / block_decay), normalised to mean 1
over the block, so an early slot (on which every later acceptance depends)
counts most. A slot counts if its token exists in the anchor's sequence and is a
response token (loss_mask).

Losses: fkl / rkl / jsd / tvd against the target (divergences.py) and 'ce' on the
data's tokens mapped into the draft vocabulary (tokens outside it are skipped).
AdaSPEC and on-policy training are refused (step.Objective): a block's drafted
slots read mask tokens, never the draft's own samples, so there is no on-policy
input to train on; regenerated data (data.source='teacher_online' /
'teacher_offline') is the way to train on the target's own outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specdistill_jax.distill import feature_loss


def slot_weights(block_size: int, decay: float) -> np.ndarray:
  """Weights of the block's block_size - 1 drafted slots: exp(-i / decay), normalised to mean 1."""
  if not decay > 0:
    raise ValueError(f"block_decay={decay} must be > 0 (slot i weighs exp(-i / block_decay))")
  w = np.exp(-np.arange(block_size - 1, dtype=np.float64) / decay)
  return (w * (block_size - 1) / w.sum()).astype(np.float32)


def sample_anchors(key, tokens, segment_ids, loss_mask, num_anchors: int):
  """Anchors [B, A] (sorted) and whether each is real [B, A]: positions a with a + 1 in a's
  sequence and a response token there, drawn uniformly without replacement."""
  b, t = tokens.shape
  nxt = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  ok = (segment_ids != 0) & (nxt == segment_ids) & (jnp.pad(loss_mask[:, 1:], ((0, 0), (0, 1))) > 0)
  scores = jnp.where(ok, jax.random.uniform(key, (b, t)), -1.0)
  top, idx = jax.lax.top_k(scores, min(num_anchors, t))
  order = jnp.argsort(idx, axis=1)
  return jnp.take_along_axis(idx, order, 1).astype(jnp.int32), jnp.take_along_axis(top, order, 1) >= 0


def block_token_values(objective, graphdef, params, batch, target, with_nll: bool = False,
                       key=None) -> tuple[dict, jax.Array]:
  """Per-(anchor, slot) values [B * A * (block_size - 1)] and their mask, like step.token_values."""
  draft, t_model, t_h, feats = feature_loss.target_pass(graphdef, params, batch, target)
  tokens, seg = batch["tokens"], batch["segment_ids"]
  bs = draft.block_size
  num = objective.num_anchors or max(1, tokens.shape[1] // bs)
  anchors, real = sample_anchors(jax.random.PRNGKey(0) if key is None else key, tokens, seg,
                                 batch["loss_mask"], num)
  logits, valid = draft.block_logits(tokens, feats, anchors, seg)  # [B, A, bs-1, Vd]
  b, a = anchors.shape
  slot = anchors[:, :, None] + jnp.arange(bs - 1)[None, None, :]  # teacher position of each slot
  flat = jnp.minimum(slot, tokens.shape[1] - 1).reshape(b, -1)
  teacher_h = jnp.take_along_axis(t_h, flat[..., None], axis=1)  # [B, A*(bs-1), D]
  teacher = t_model.project(teacher_h, vocab_ids=draft.draft_ids).reshape(logits.shape)
  nxt = jnp.minimum(flat + 1, tokens.shape[1] - 1)
  answer = jnp.take_along_axis(tokens, nxt, axis=1).reshape(b, a, bs - 1)
  response = jnp.take_along_axis(batch["loss_mask"], nxt, axis=1).reshape(b, a, bs - 1) > 0
  mask = valid & real[:, :, None] & response
  d_target = draft.to_draft_ids(answer)
  values, mask = feature_loss.head_values(objective, logits, teacher, d_target, mask, with_nll)
  values["loss"] = values["loss"] * jnp.asarray(slot_weights(bs, objective.block_decay))
  return {k: v.reshape(-1) for k, v in values.items()}, mask.reshape(-1).astype(jnp.float32)

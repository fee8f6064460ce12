"""What every draft model that reads target features shares: its reduced vocabulary and its start.

A draft head may predict over a *draft vocabulary* (`draft_ids`: the most frequent
target ids of the training data, EAGLE-3 / DFlash / speculators' `d2t` / `t2d`)
instead of the target's. `DraftVocab` maps between the two: logits come back over
the target vocabulary with q = 0 (logit -1e30) outside the draft vocabulary, so
speculative decoding with the draft stays exact.

`draft_ids_for` picks the draft vocabulary from token counts and `start_from_target`
copies the target's frozen embedding (and optionally its head and final norm) into a
new draft, as speculators initialises an eagle3 or dflash draft from its verifier.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from specdistill_jax.models import layers

NEG = -1e30  # logit of a target token outside the draft vocabulary (q = 0)


def select_draft_vocab(token_counts, size: int, always: Sequence[int] = ()) -> tuple[int, ...]:
  """The `size` most frequent token ids (ties: lower id first), always including `always`; sorted."""
  counts = np.asarray(token_counts, np.float64)
  vocab = counts.shape[0]
  if int(size) != size or not 1 <= size <= vocab:
    raise ValueError(f"draft_vocab_size={size} must be an integer in [1, {vocab}] (the target vocabulary)")
  forced = [int(t) for t in always if 0 <= int(t) < vocab]
  order = np.lexsort((np.arange(vocab), -counts))
  chosen = list(dict.fromkeys(forced + [int(t) for t in order]))[: max(size, len(forced))]
  return tuple(sorted(chosen))


def draft_ids_for(target_config, draft_vocab_size: Optional[int], token_counts=None) -> Optional[tuple]:
  """The draft vocabulary of a new draft: None (the full one), else the most frequent ids of
  `token_counts` [V] plus the eos ids (without counts: the first ids)."""
  tc = target_config
  if draft_vocab_size is None or draft_vocab_size == tc.vocab_size:
    return None
  counts = token_counts if token_counts is not None else np.arange(tc.vocab_size, 0, -1)
  if np.asarray(counts).shape != (tc.vocab_size,):
    raise ValueError(f"token_counts has shape {np.asarray(counts).shape}; expected ({tc.vocab_size},), "
                     "one count per target token id")
  return select_draft_vocab(counts, draft_vocab_size, tc.eos_token_ids)


def check_draft_ids(draft_ids, vocab_size: int) -> Optional[tuple]:
  if draft_ids is None:
    return None
  ids = tuple(int(t) for t in draft_ids)
  if min(ids) < 0 or max(ids) >= vocab_size or len(set(ids)) != len(ids):
    raise ValueError(f"draft_ids must be distinct target token ids in [0, {vocab_size})")
  return ids


def target_head(target, draft_ids=None):
  """The target's output head [D, V] (or its draft-vocabulary columns [D, Vd])."""
  head = target.embed[...].T if target.config.tie_embeddings else layers.weight(target, "lm_head")
  if draft_ids is not None:
    head = jnp.take(head, jnp.asarray(np.asarray(draft_ids, np.int32)), axis=1)
  return head


def start_from_target(draft, target, target_config, head: Optional[str] = "lm_head") -> None:
  """Copy `target`'s embedding into draft.frozen_embed and, unless head is None, its output head
  (restricted to the draft vocabulary) into draft.<head> and its final norm into draft.final_norm."""
  if target.config.vocab_size != target_config.vocab_size or target.config.d_model != target_config.d_model:
    raise ValueError("target does not match target_config (vocab_size / d_model)")
  dtype = draft.config.jnp_param_dtype
  draft.frozen_embed.value = jnp.array(target.embed[...], dtype, copy=True)
  if head is not None:
    getattr(draft, head).value = jnp.array(target_head(target, draft.draft_ids), dtype, copy=True)
    draft.final_norm.weight.value = jnp.array(target.final_norm.weight[...], dtype, copy=True)


class DraftVocab:
  """Mixin for a draft with `config.vocab_size` (the target's) and `draft_ids` (None = all)."""

  @property
  def draft_vocab_size(self) -> int:
    return self.config.vocab_size if self.draft_ids is None else len(self.draft_ids)

  def to_target_vocab(self, logits):
    """Draft-vocabulary logits [..., Vd] -> target-vocabulary logits [..., V] (-1e30 outside)."""
    if self.draft_ids is None:
      return logits
    full = jnp.full(logits.shape[:-1] + (self.config.vocab_size,), NEG, logits.dtype)
    return full.at[..., np.asarray(self.draft_ids)].set(logits)

  def to_draft_ids(self, tokens):
    """Target token ids -> draft-vocabulary ids (-1 where the draft vocabulary lacks the token)."""
    if self.draft_ids is None:
      return tokens
    t2d = np.full((self.config.vocab_size,), -1, np.int32)
    t2d[np.asarray(self.draft_ids)] = np.arange(len(self.draft_ids), dtype=np.int32)
    return jnp.asarray(t2d)[tokens]

  def to_target_ids(self, draft_tokens):
    """Draft-vocabulary ids -> target token ids."""
    if self.draft_ids is None:
      return draft_tokens.astype(jnp.int32)
    return jnp.asarray(np.asarray(self.draft_ids, np.int32))[draft_tokens]

  def frozen_embeddings(self, tokens):
    """Token ids [B, T] -> the target's embeddings [B, T, D] in the compute dtype."""
    return layers.embedding_rows(self, self.frozen_embed[...], tokens, self.config.jnp_dtype)

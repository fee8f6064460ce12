"""Token batches from text sources: tokenise, pad or pack, shuffle with a seed, split by process.

`BatchPipeline.batch(step)` is a pure function of the step: the global stream
is a seeded permutation of the examples per epoch, and global batch `step`
takes the next `batch_size` stream positions (pad mode) or packs the next
`batch_size * pack_factor` examples (pack mode). A resumed run therefore sees
exactly the batch an uninterrupted run would. In a multi-process run each
process builds only its own rows (`process_index` of `process_count`).

Batch fields (numpy, host-local rows, length T = max_len):
  tokens [B, T] int32      loss_mask [B, T] float32 (1 on tokens to predict)
  segment_ids [B, T] int32 (0 = padding)   positions [B, T] int32
  prompt_lengths [B] int32 (pad mode: tokens before the response)   lengths [B] int32
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from specdistill_jax.data.corpora import TextSource
from specdistill_jax.data.tokenizer import ChatFormat

BATCH_FIELDS = ("tokens", "loss_mask", "segment_ids", "positions", "prompt_lengths", "lengths")


class BatchPipeline:
  """Deterministic, resumable batches of one or more text sources."""

  def __init__(self, source: TextSource, chat: ChatFormat, batch_size: int, max_len: int,
               seed: int = 0, mode: str = "pad", max_prompt_len: Optional[int] = None,
               loss_on_prompt: bool = False, pack_factor: int = 4,
               process_index: int = 0, process_count: int = 1):
    if mode not in ("pad", "pack"):
      raise ValueError(f"mode={mode!r} must be 'pad' or 'pack'")
    if len(source) == 0:
      raise ValueError(f"text source {source.name!r} is empty")
    if batch_size % process_count:
      raise ValueError(f"global batch_size={batch_size} is not divisible by "
                       f"process_count={process_count}")
    self.source, self.chat = source, chat
    self.batch_size, self.max_len, self.seed, self.mode = batch_size, max_len, seed, mode
    self.max_prompt_len, self.loss_on_prompt, self.pack_factor = max_prompt_len, loss_on_prompt, pack_factor
    self.process_index, self.process_count = process_index, process_count
    self._encoded: dict[int, tuple] = {}
    self._perms: dict[int, np.ndarray] = {}

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def example_index(self, position: int) -> int:
    """Source index at a position of the infinite shuffled stream."""
    n = len(self.source)
    epoch, offset = divmod(position, n)
    if epoch not in self._perms:
      if len(self._perms) >= 2:  # a batch spans at most two epochs
        del self._perms[min(self._perms)]
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
    return int(self._perms[epoch][offset])

  def encode(self, index: int):
    if index not in self._encoded:
      if self.source.conversations:
        tokens, mask, plen = self.chat.conversation_example(self.source[index], self.max_len)
      else:
        prompt, response = self.source[index]
        tokens, mask, plen = self.chat.example(prompt, response, self.max_len, self.max_prompt_len)
      if self.loss_on_prompt:
        mask = np.ones_like(mask)
        mask[0] = 0.0
      self._encoded[index] = (tokens, mask, plen)
    return self._encoded[index]

  def _empty(self, rows: int) -> dict:
    t = self.max_len
    return dict(tokens=np.full((rows, t), self.chat.pad, np.int32), loss_mask=np.zeros((rows, t), np.float32),
                segment_ids=np.zeros((rows, t), np.int32), positions=np.zeros((rows, t), np.int32),
                prompt_lengths=np.zeros((rows,), np.int32), lengths=np.zeros((rows,), np.int32))

  def batch(self, step: int) -> dict:
    """This process's rows of global batch `step`."""
    rows = self.local_batch_size
    first_row = self.process_index * rows
    out = self._empty(rows)
    if self.mode == "pad":
      for r in range(rows):
        tokens, mask, plen = self.encode(self.example_index(step * self.batch_size + first_row + r))
        n = len(tokens)
        out["tokens"][r, :n], out["loss_mask"][r, :n] = tokens, mask
        out["segment_ids"][r, :n], out["positions"][r, :n] = 1, np.arange(n)
        out["prompt_lengths"][r], out["lengths"][r] = plen, n
      return out
    for r, placements in enumerate(self._pack_plan(step)[first_row:first_row + rows]):
      for index, a, segment in placements:
        tokens, mask, _ = self.encode(index)
        n = len(tokens)
        out["tokens"][r, a:a + n], out["loss_mask"][r, a:a + n] = tokens, mask
        out["segment_ids"][r, a:a + n], out["positions"][r, a:a + n] = segment, np.arange(n)
        out["lengths"][r] = a + n
    return out

  def _pack_plan(self, step: int) -> list:
    """Per global row of batch `step`: [(example index, offset, segment id)], first fit over the
    next `batch_size * pack_factor` stream positions (computed over the global batch, so every
    process agrees; examples that fit nowhere are skipped)."""
    window = self.batch_size * self.pack_factor
    fill = np.zeros(self.batch_size, np.int32)
    plan: list = [[] for _ in range(self.batch_size)]
    for j in range(window):
      index = self.example_index(step * window + j)
      n = len(self.encode(index)[0])
      fits = np.nonzero(fill + n <= self.max_len)[0]
      if not len(fits):
        continue
      g = int(fits[0])
      plan[g].append((index, int(fill[g]), len(plan[g]) + 1))
      fill[g] += n
    return plan

  def placed(self, step: int) -> list[int]:
    """Source indices of the examples global batch `step` trains on (all processes' rows)."""
    if self.mode == "pad":
      return [self.example_index(step * self.batch_size + r) for r in range(self.batch_size)]
    return [index for row in self._pack_plan(step) for index, _, _ in row]

  def unique_loss_tokens(self, steps: int) -> tuple[int, int]:
    """(distinct examples, their loss tokens) that batches 0..steps-1 train on: the unique data a
    run of `steps` steps saw (repeats and examples packing skipped are not counted)."""
    seen = set()
    for step in range(steps):
      seen.update(self.placed(step))
    return len(seen), int(sum(float(self.encode(i)[1].sum()) for i in seen))

  def __iter__(self) -> Iterator[dict]:
    return self.iterate(0)

  def iterate(self, start_step: int) -> Iterator[dict]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1

"""Prompt batches: ragged token lists -> a padded [B, P] array + lengths, with checks.

Both `generate` and `speculative_generate` accept either a list of token-id
lists (ragged) or a padded int array plus `lengths`. The padded width is
rounded up to a multiple of `bucket` so that batches of similar prompts reuse
one compiled program.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from specdistill_jax.sampling.checks import check_token_ids


def _int_row(row, i: int) -> list[int]:
  """One prompt as a list of Python ints; floats, bools and strings are errors, not truncated."""
  arr = np.asarray(row)
  if arr.size == 0:
    return []
  if arr.ndim != 1 or arr.dtype.kind not in "iu":
    example = arr.reshape(-1)[0] if arr.size else None
    raise ValueError(f"prompt {i} must be a list of integer token ids; got {arr.dtype} values "
                     f"(e.g. {example!r}): encode text with the tokenizer first")
  return arr.tolist()


def round_up(n: int, multiple: int) -> int:
  return ((n + multiple - 1) // multiple) * multiple


def pad_prompts(prompts, lengths: Optional[Sequence[int]] = None, pad_id: int = 0,
                bucket: int = 16, vocab_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, P] int32, lengths [B] int32); every prompt must hold at least one token.

  Token ids must be integers (and, given vocab_size, in [0, vocab_size)); anything
  else is a ValueError naming the prompt and the value.
  """
  if isinstance(prompts, (str, bytes)):
    raise ValueError("prompts must be token ids (a list of id lists or a [batch, length] array), not "
                     "text: encode them with the tokenizer first")
  if lengths is None and hasattr(prompts, "ndim") and prompts.ndim == 2:
    lengths = [prompts.shape[1]] * prompts.shape[0]
  if lengths is None:
    rows = [_int_row(p, i) for i, p in enumerate(prompts)]
    lengths = [len(r) for r in rows]
  else:
    arr = np.asarray(prompts)
    if arr.ndim != 2:
      raise ValueError(f"padded prompts must be [batch, length]; got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
      raise ValueError(f"padded prompts must hold integer token ids; got dtype {arr.dtype}: "
                       "encode text with the tokenizer first")
    lengths = [int(n) for n in np.asarray(lengths)]
    if len(lengths) != arr.shape[0]:
      raise ValueError(f"{len(lengths)} lengths for {arr.shape[0]} prompt rows")
    rows = [arr[i, :n].tolist() for i, n in enumerate(lengths)]
  if not rows:
    raise ValueError("no prompts given: pass at least one prompt")
  for i, n in enumerate(lengths):
    if n < 1:
      raise ValueError(f"prompt {i} is empty: every prompt needs at least one token "
                       "(e.g. the tokenizer's BOS token)")
  width = round_up(max(lengths), bucket)
  tokens = np.full((len(rows), width), pad_id, np.int64)
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
  lens = np.asarray(lengths, np.int32)
  if vocab_size is not None:
    check_token_ids(tokens, lens, vocab_size)
  return tokens.astype(np.int32), lens


def check_cache(prompt_width: int, max_new_tokens: int, extra: int, max_seq_len: int,
                cache_size: Optional[int], what: str) -> int:
  """The cache size to allocate; raises when prompt + new tokens do not fit."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  needed = prompt_width + max_new_tokens + extra
  if cache_size is None:
    cache_size = needed
  if needed > cache_size:
    raise ValueError(
        f"prompt ({prompt_width} padded tokens) + max_new_tokens ({max_new_tokens}) + {extra} "
        f"{what} slots = {needed} exceeds cache_size={cache_size}: shorten the prompts, lower "
        "max_new_tokens, or pass a larger cache_size")
  if prompt_width + max_new_tokens > max_seq_len:
    raise ValueError(
        f"prompt ({prompt_width} padded tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
        f"model's max_seq_len={max_seq_len}: shorten the prompts or lower max_new_tokens")
  return cache_size


def unpad(tokens: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
  return [tokens[i, : int(n)].tolist() for i, n in enumerate(lengths)]

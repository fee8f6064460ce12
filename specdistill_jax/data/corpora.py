"""Which fields of each corpus are prompts, responses and documents; random-access text sources.

`load(name, split)` opens a prepared TFDS corpus with `tfds.data_source` and
returns a `TextSource`: `source[i] -> (prompt or None, response)`. As
documents (`documents=True`) every example is (None, text): the domain's
curated text without prompts. The public TFDS datasets the papers used are
mapped too, so a config can name them on a machine that has them prepared.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import tensorflow_datasets as tfds

from specdistill_jax.data.builder import DataSourceError


@dataclasses.dataclass(frozen=True)
class Fields:
  prompt: Optional[str]
  response: Optional[str]
  document: str


FIELDS = {
    "sharegpt_chat": Fields("prompt", "response", "response"),
    "sharegpt_code": Fields("prompt", "response", "response"),
    "python_code": Fields(None, None, "code"),
    "function_calling": Fields("prompt", "response", "documentation"),
    "math_word_problems": Fields("question", "solution", "solution"),
    # public TFDS datasets of the papers (need a machine that can download and prepare them)
    "lm1b": Fields(None, None, "text"),
    "xsum": Fields("document", "summary", "document"),
    "cnn_dailymail": Fields("article", "highlights", "article"),
    "gsm8k": Fields("question", "answer", "answer"),
    "wmt14_translate/de-en": Fields("en", "de", "de"),
}
BUNDLED = ("sharegpt_chat", "sharegpt_code", "python_code", "function_calling", "math_word_problems")


def default_data_dir() -> str:
  return os.environ.get("SPECDISTILL_DATA_DIR", os.path.join(os.getcwd(), "workdir", "data"))


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TextSource:
  """Random access to (prompt or None, response) pairs, or to whole conversations.

  conversations=True: `source[i]` is a tuple of (user turn, assistant turn) pairs in
  conversation order (`load_conversations`), which `ChatFormat.conversation_example` encodes.
  """

  def __init__(self, get, length: int, name: str = "", conversations: bool = False):
    self._get, self._len, self.name, self.conversations = get, length, name, conversations

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int):
    return self._get(int(i))

  @classmethod
  def from_pairs(cls, pairs: Sequence[tuple[Optional[str], str]], name: str = "memory") -> "TextSource":
    pairs = list(pairs)
    return cls(lambda i: pairs[i], len(pairs), name)

  @classmethod
  def from_conversations(cls, conversations: Sequence[Sequence[tuple[str, str]]],
                         name: str = "memory") -> "TextSource":
    conversations = [tuple(c) for c in conversations]
    return cls(lambda i: conversations[i], len(conversations), name, conversations=True)

  def take(self, n: int) -> "TextSource":
    return TextSource(self._get, min(n, self._len), self.name, self.conversations)


def load(name: str, split: str, data_dir: Optional[str] = None, config: str = "full",
         documents: bool = False, dedupe_documents: bool = True) -> TextSource:
  """A TextSource over a prepared corpus split (see `specdistill_jax.data.prepare`)."""
  import specdistill_jax.data  # noqa: F401 - registers the bundled builders

  if name not in FIELDS:
    raise ValueError(f"unknown corpus {name!r}; known: {sorted(FIELDS)}")
  fields = FIELDS[name]
  data_dir = data_dir or default_data_dir()
  full_name = f"{name}/{config}" if name in BUNDLED else name
  try:
    ds = tfds.data_source(full_name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises several kinds here
    raise DataSourceError(
        f"corpus {full_name!r} split {split!r} is not prepared in {data_dir!r} ({type(e).__name__}); "
        f"run: python -m specdistill_jax.data.prepare --data_dir={data_dir}") from e
  if documents or fields.prompt is None:
    if dedupe_documents and fields.document != fields.response and name in BUNDLED:
      seen, keep = set(), []
      for i in range(len(ds)):
        t = _text(ds[i][fields.document])
        if t not in seen:
          seen.add(t)
          keep.append(t)
      return TextSource.from_pairs([(None, t) for t in keep], f"{name}:{split}:documents")
    return TextSource(lambda i: (None, _text(ds[i][fields.document])), len(ds), f"{name}:{split}:documents")
  return TextSource(lambda i: (_text(ds[i][fields.prompt]), _text(ds[i][fields.response])), len(ds),
                    f"{name}:{split}")


CONVERSATION_CORPORA = ("sharegpt_chat", "sharegpt_code")


def load_conversations(name: str, split: str, data_dir: Optional[str] = None, config: str = "full") -> TextSource:
  """Whole conversations of a prepared ShareGPT corpus: `source[i]` = ((prompt, response), ...).

  The corpus stores one example per answered user turn with its conversation id and turn
  index; this groups them back, in turn order (conversations in order of first appearance).
  """
  if name not in CONVERSATION_CORPORA:
    raise ValueError(f"corpus {name!r} has no conversations: data.unit='conversation' needs one of "
                     f"{CONVERSATION_CORPORA} (use data.unit='turn' for it)")
  import specdistill_jax.data  # noqa: F401 - registers the bundled builders

  data_dir = data_dir or default_data_dir()
  try:
    ds = tfds.data_source(f"{name}/{config}", split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises several kinds here
    raise DataSourceError(
        f"corpus '{name}/{config}' split {split!r} is not prepared in {data_dir!r} ({type(e).__name__}); "
        f"run: python -m specdistill_jax.data.prepare --data_dir={data_dir}") from e
  groups: dict[str, list] = {}
  for i in range(len(ds)):
    ex = ds[i]
    groups.setdefault(_text(ex["conversation_id"]), []).append(
        (int(ex["turn"]), _text(ex["prompt"]), _text(ex["response"])))
  convs = [tuple((p, r) for _, p, r in sorted(turns)) for turns in groups.values()]
  return TextSource(lambda i: convs[i], len(convs), f"{name}:{split}:conversations", conversations=True)

"""Shared machinery of the bundled TFDS builders: seeded splits, configs, errors.

Each corpus is a `tfds.core.GeneratorBasedBuilder` written as array_record
files and read back with `tfds.data_source` (TensorFlow is not needed).
Examples are assigned to train / validation / test by hashing a grouping key
(a conversation id, a module name) with a fixed seed, so a split never shares
a group with another and the assignment is the same on every machine.
Two builder configs: `full` and `small` (the first examples only, for tests
and smoke runs).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import tensorflow_datasets as tfds

SPLIT_SEED = "specdistill-v1"
SPLITS = ("train", "validation", "test")
HELD_OUT_FRACTION = 0.02  # each of validation and test


class DataSourceError(RuntimeError):
  """A corpus source that is missing, unreadable or corrupt."""


def split_of(key: str, held_out: float = HELD_OUT_FRACTION, seed: str = SPLIT_SEED) -> str:
  """'train', 'validation' or 'test' for a grouping key, by a seeded hash."""
  h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2 ** 64
  if h < held_out:
    return "validation"
  if h < 2 * held_out:
    return "test"
  return "train"


class CorpusConfig(tfds.core.BuilderConfig):
  """limit: at most this many source records (None = all)."""

  def __init__(self, *, limit=None, **kwargs):
    super().__init__(**kwargs)
    self.limit = limit


FULL = CorpusConfig(name="full", description="the whole corpus", limit=None)
SMALL = CorpusConfig(name="small", description="the first records only (tests, smoke runs)",
                     limit=1000)


class CorpusBuilder(tfds.core.GeneratorBasedBuilder):
  """Base: subclasses define FEATURES, `records()` -> (key, group, example) and docs."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [FULL, SMALL]
  FEATURES: dict = {}

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)  # no TensorFlow needed

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(self.FEATURES))

  def records(self, limit) -> Iterable[tuple[str, str, dict]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager
    buckets = {s: [] for s in SPLITS}
    for key, group, example in self.records(self.builder_config.limit):
      buckets[split_of(group)].append((key, example))
    return {s: self._generate_examples(items=buckets[s]) for s in SPLITS}

  def _generate_examples(self, items=()) -> Iterator[tuple[str, dict]]:
    yield from items

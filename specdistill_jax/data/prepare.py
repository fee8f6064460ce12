"""`python -m specdistill_jax.data.prepare`: build the bundled corpora and the tokenizer.

    python -m specdistill_jax.data.prepare --data_dir=DIR [--corpora=sharegpt_chat,python_code]
        [--config=full|small] [--vocab_size=8192]

Writes the TFDS array_record datasets under DIR, trains a byte-level BPE on a
mix of their train splits into DIR/tokenizer, and prints examples and tokens
per split (also saved as DIR/stats.json and DIR/stats.md). Rerunning reuses
whatever already exists.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow_datasets as tfds
from absl import flags, logging
from tqdm import tqdm

from specdistill_jax import cli, data
from specdistill_jax.data import corpora
from specdistill_jax.data.builder import SPLITS

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "where datasets and the tokenizer go (default: ./workdir/data)")
flags.DEFINE_list("corpora", list(corpora.BUNDLED), "corpora to build")
flags.DEFINE_enum("config", "full", ["full", "small"], "full corpora, or the first records only")
flags.DEFINE_integer("vocab_size", 8192, "BPE vocabulary size")
flags.DEFINE_string("tokenizer_dir", None, "default: DATA_DIR/tokenizer")
flags.DEFINE_integer("tokenizer_chars", 3_000_000, "characters per corpus used to train the BPE")
flags.DEFINE_bool("stats", True, "count examples and tokens per split")


def build_corpus(name: str, config: str, data_dir: str) -> None:
  builder = tfds.builder(f"{name}/{config}", data_dir=data_dir)
  builder.download_and_prepare()


def tokenizer_texts(names, config, data_dir, chars_per_corpus):
  for name in names:
    source = corpora.load(name, "train", data_dir, config)
    budget = chars_per_corpus
    for i in np.random.default_rng(0).permutation(len(source)):
      prompt, response = source[int(i)]
      text = response if prompt is None else prompt + "\n" + response
      yield text
      budget -= len(text)
      if budget <= 0:
        break


def ensure_tokenizer(names, config, data_dir, tokenizer_dir, vocab_size, chars):
  from specdistill_jax import loading
  if loading.has_tokenizer(tokenizer_dir):
    tok = loading.load_tokenizer(tokenizer_dir)
    if len(tok) != vocab_size:
      logging.warning("reusing the tokenizer in %s (vocab %d, not %d): delete it to retrain",
                      tokenizer_dir, len(tok), vocab_size)
    return tok
  logging.info("training a %d-token byte-level BPE on %s", vocab_size, names)
  return data.train_bpe(tokenizer_texts(names, config, data_dir, chars), vocab_size, tokenizer_dir)


def corpus_stats(names, config, data_dir, chat) -> dict:
  stats = {}
  for name in names:
    for split in SPLITS:
      source = corpora.load(name, split, data_dir, config)
      tokens = 0
      batch = []
      for i in tqdm(range(len(source)), desc=f"tokens {name}/{split}", leave=False):
        prompt, response = source[i]
        batch.append(response if prompt is None else prompt + response)
        if len(batch) == 512 or i == len(source) - 1:
          tokens += sum(len(x) for x in chat.tokenizer(batch, add_special_tokens=False)["input_ids"])
          batch = []
      stats[f"{name}/{split}"] = {"examples": len(source), "tokens": tokens}
  return stats


def stats_markdown(stats: dict, seconds: float, vocab: int) -> str:
  lines = ["| corpus/split | examples | tokens |", "|---|---:|---:|"]
  lines += [f"| {k} | {v['examples']:,} | {v['tokens']:,} |" for k, v in stats.items()]
  return "\n".join(lines) + f"\n\nTokenizer vocabulary: {vocab}. Prepared in {seconds:.0f} s.\n"


def prepare(data_dir: str, names, config: str = "full", vocab_size: int = 8192,
            tokenizer_dir: str = None, tokenizer_chars: int = 3_000_000, with_stats: bool = True,
            with_tokenizer: bool = True):
  """Build corpora + tokenizer; returns (ChatFormat, stats dict, seconds). with_tokenizer=False
  (a real target brings its own tokenizer): corpora only, ChatFormat None, no stats."""
  t0 = time.time()
  unknown = [n for n in names if n not in corpora.BUNDLED]
  if unknown:
    raise ValueError(f"unknown corpora {unknown}; bundled: {list(corpora.BUNDLED)}")
  os.makedirs(data_dir, exist_ok=True)
  for name in tqdm(names, desc="corpora"):
    build_corpus(name, config, data_dir)
  if not with_tokenizer:
    return None, {}, time.time() - t0
  tokenizer_dir = tokenizer_dir or os.path.join(data_dir, "tokenizer")
  tok = ensure_tokenizer(names, config, data_dir, tokenizer_dir, vocab_size, tokenizer_chars)
  chat = data.ChatFormat(tok)
  stats = corpus_stats(names, config, data_dir, chat) if with_stats else {}
  seconds = time.time() - t0
  if stats:
    with open(os.path.join(data_dir, "stats.json"), "w") as fh:
      json.dump({"stats": stats, "seconds": seconds, "vocab_size": len(tok), "config": config}, fh, indent=1)
    with open(os.path.join(data_dir, "stats.md"), "w") as fh:
      fh.write(stats_markdown(stats, seconds, len(tok)))
  return chat, stats, seconds


def main(argv):
  del argv
  data_dir = FLAGS.data_dir or corpora.default_data_dir()
  chat, stats, seconds = prepare(data_dir, FLAGS.corpora, FLAGS.config, FLAGS.vocab_size,
                                 FLAGS.tokenizer_dir, FLAGS.tokenizer_chars, FLAGS.stats)
  if stats:
    print(stats_markdown(stats, seconds, chat.vocab_size))
  print(f"data ready in {data_dir} ({seconds:.0f} s)")


if __name__ == "__main__":
  cli.run(main)

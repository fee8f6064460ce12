"""`python -m specdistill_jax.decode`: speculative decoding from the command line.

    python -m specdistill_jax.decode --target DIR --draft DIR [--draft DIR2] \
        --prompts FILE --gamma 4 --temperature 0 [--max_new_tokens 64] [--lenience lin:0.5]

DIRs are HF checkpoints or orbax model checkpoints. FILE holds one prompt per
line: plain text (encoded with the target directory's tokenizer, or
--tokenizer, and wrapped in its chat template with --chat) or a JSON list of
token ids. Two or more --draft flags route among the drafters per round
(TAPS confidence); --average instead decodes with their parameter average.
Prints each generation and a table of alpha, tau, tokens/s and the speedup
over autoregressive decoding of the same prompts.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from specdistill_jax import cli, distributed, loading, sampling
from specdistill_jax.models import backend_layout

FLAGS = flags.FLAGS
flags.DEFINE_string("target", None, "target model directory", required=True)
flags.DEFINE_multi_string("draft", [], "draft model directory, or prompt_lookup[:max_ngram[:min_ngram]] "
                          "(repeat for routing)")
flags.DEFINE_string("prompts", None, "file with one prompt per line", required=True)
flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: the target directory)")
flags.DEFINE_integer("gamma", 4, "draft tokens per round")
flags.DEFINE_float("temperature", 0.0, "0 = greedy, > 0 samples")
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt")
flags.DEFINE_string("lenience", None, "lossy SD as kind:eps, kind in lin|sq|exp")
flags.DEFINE_string("tree", None, "verify a dynamic draft tree depth:top_k:num_nodes (several drafts: "
                    "their merged tree) instead of a chain of --gamma drafts")
flags.DEFINE_string("signal", "confidence", "routing signal with several drafts: confidence|entropy")
flags.DEFINE_bool("average", False, "with several drafts: decode with their parameter average")
flags.DEFINE_bool("chat", False, "wrap text prompts in the tokenizer's chat template")
flags.DEFINE_bool("baseline", True, "also decode autoregressively and report the speedup")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_string("out", None, "write generations and stats as JSON to this file")


def read_prompts(path: str, tokenizer, chat: bool) -> list[list[int]]:
  """One prompt per non-empty line: text, or a JSON list of token ids. Errors name the line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompts file {path!r} does not exist")
  if os.path.isdir(path):
    raise IsADirectoryError(f"prompts file {path!r} is a directory: pass a text file, one prompt per line")
  try:
    with open(path, encoding="utf-8") as fh:
      lines = fh.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"prompts file {path!r} is not UTF-8 text (undecodable byte at offset {e.start}): "
                     "write one prompt per line, as text or as a JSON list of token ids") from None
  prompts = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    if line.lstrip().startswith("["):
      try:
        ids = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"line {i + 1} of {path} starts with '[' but is not a JSON list ({e.msg}): "
                         "write token ids as [1, 2, 3]") from None
      if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"line {i + 1} of {path} must list integer token ids; got {line.strip()[:60]}")
      prompts.append(ids)
      continue
    if tokenizer is None:
      raise ValueError(f"line {i + 1} of {path} is text but no tokenizer was found: pass "
                       "--tokenizer or write prompts as JSON lists of token ids")
    if chat:
      ids = tokenizer.apply_chat_template([{"role": "user", "content": line}],
                                          add_generation_prompt=True, tokenize=True)
      ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    else:
      ids = tokenizer.encode(line, add_special_tokens=False)
    prompts.append(list(ids))
  if not prompts:
    raise ValueError(f"no prompts in {path}: the file is empty (write one prompt per line)")
  return prompts


def parse_tree(text):
  """'depth:top_k:num_nodes' -> TreeSpec (None: a chain)."""
  if not text:
    return None
  parts = text.split(":")
  if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
    raise ValueError(f"--tree={text!r} must be depth:top_k:num_nodes, e.g. --tree=4:2:8")
  return sampling.TreeSpec(*map(int, parts))


def format_stats(rows: list[tuple[str, str]]) -> str:
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv):
  del argv
  distributed.initialize()
  if not FLAGS.draft:
    raise app.UsageError("pass at least one --draft")
  tok_dir = FLAGS.tokenizer or FLAGS.target
  tokenizer = loading.load_tokenizer(tok_dir) if loading.has_tokenizer(tok_dir) else None
  prompts = read_prompts(FLAGS.prompts, tokenizer, FLAGS.chat)
  target = loading.load_model(FLAGS.target)
  drafts = [backend_layout.for_decoding(loading.load_draft(d, target)) for d in FLAGS.draft]
  target = backend_layout.for_decoding(target)  # the layout this backend decodes fastest with
  lenience = None
  if FLAGS.lenience:
    kind, _, eps = FLAGS.lenience.partition(":")
    lenience = (kind, float(eps or 1.0))
  kw = dict(max_new_tokens=FLAGS.max_new_tokens, gamma=FLAGS.gamma, temperature=FLAGS.temperature,
            lenience=lenience, rng=FLAGS.seed, tree=parse_tree(FLAGS.tree))
  if len(drafts) == 1 or FLAGS.average:
    draft = drafts[0] if len(drafts) == 1 else sampling.average_params(drafts)
    out, stats = sampling.speculative_generate(target, draft, prompts, **kw)
  else:
    out, stats = sampling.routed_speculative_generate(target, drafts, prompts, signal=FLAGS.signal, **kw)
  for i, ids in enumerate(out):
    text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ids
    print(f"--- [{i}] {text}")
  rows = [("alpha", f"{stats['alpha']:.3f}"), ("tau (tokens / target call)", f"{stats['tau']:.2f}"),
          ("tokens", str(stats["tokens"])), ("target calls", str(stats["target_calls"])),
          ("draft calls", str(stats["draft_calls"])),
          ("accepted per round", str(stats["accepted_per_round"])),
          ("position acceptance", " ".join(f"{a:.2f}" for a in stats["position_acceptance"])),
          ("speculative tokens/s", f"{stats['tokens_per_second']:.1f}"),
          ("wall seconds (compile)", f"{stats['wall_seconds']:.2f} ({stats['compile_seconds']:.1f})")]
  if "drafter_share" in stats:
    rows.append(("drafter share", " ".join(f"{s:.2f}" for s in stats["drafter_share"])))
  if stats["tree"]:
    rows.append(("tree nodes verified per round", f"{stats['nodes_per_round']:.1f}"))
  if "merged_share" in stats:
    rows.append(("merged: drafter held the accepted path", " ".join(f"{s:.2f}" for s in stats["merged_share"])))
  if FLAGS.baseline:
    gen = sampling.generate_batch(target, prompts, FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.seed)
    ar_tps = float(gen.lengths.sum()) / max(gen.wall_seconds, 1e-9)
    stats["autoregressive_tokens_per_second"] = ar_tps
    stats["speedup"] = stats["tokens_per_second"] / ar_tps
    rows += [("autoregressive tokens/s", f"{ar_tps:.1f}"), ("speedup", f"{stats['speedup']:.2f}x")]
  print(format_stats(rows))
  if FLAGS.out:
    with open(FLAGS.out, "w") as fh:
      json.dump({"generations": out, "stats": stats}, fh, indent=1)


if __name__ == "__main__":
  cli.run(main)

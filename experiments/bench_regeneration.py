"""Throughput of response regeneration (the teacher cache's batched generation) on the real target.

The `regenerated` recipe (configs/eagle3.py) has SmolLM2-135M-Instruct answer ShareGPT chat
prompts (first turns, at most 96 tokens) by sampling (T=1) up to --max_new_tokens tokens;
`distill.teacher_cache.build_teacher_cache` runs it. This times `sampling.generate_batch` on
the same prompts for: the old setting (fp32 target, batches of 32 in dataset order) and the
new one (bf16 target, prompts sorted by length) at several batch sizes. Generated tokens/s
count the tokens actually produced (rows stop at eos), compilation excluded (reported apart).

    python experiments/bench_regeneration.py [--batches 2] [--max_new_tokens 128]
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from specdistill_jax import loading  # noqa: E402
from specdistill_jax.data import BatchPipeline, ChatFormat, corpora  # noqa: E402
from specdistill_jax.distill.sources import pipeline_prompts  # noqa: E402
from specdistill_jax.models import import_gguf  # noqa: E402
from specdistill_jax.sampling import generate_batch  # noqa: E402
from bench_matmul_peak import cpu_extensions  # noqa: E402
from studylib import write_text  # noqa: E402

SETTINGS = (("float32", 32, False), ("bfloat16", 32, True), ("bfloat16", 64, True), ("bfloat16", 128, True),
            ("bfloat16", 256, True))


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target_dir", default=import_gguf.default_out_dir())
  p.add_argument("--data_dir", default=corpora.default_data_dir())
  p.add_argument("--batches", type=int, default=2, help="timed batches per setting (after a compiling one)")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "regeneration.md"))
  args = p.parse_args(argv)
  chat = ChatFormat(loading.load_tokenizer(args.target_dir))
  most = max(b for _, b, _ in SETTINGS) * (args.batches + 1)
  pipe = BatchPipeline(corpora.load("sharegpt_chat", "train", args.data_dir), chat, most, 96 + args.max_new_tokens,
                       seed=0, max_prompt_len=96)
  pool = pipeline_prompts(pipe)(0)
  rows = []
  for dtype, batch, sort in SETTINGS:
    target = loading.load_model(args.target_dir, dtype=dtype)
    prompts = pool[: batch * (args.batches + 1)]
    if sort:
      prompts = sorted(prompts, key=len)
    chunks = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
    order = [chunks[len(chunks) // 2]] + chunks  # compile on a middle-width batch, then time every batch
    tokens = seconds = compile_s = 0.0
    for i, chunk in enumerate(order):
      g = generate_batch(target, chunk, args.max_new_tokens, temperature=1.0, rng=jax.random.PRNGKey(i))
      compile_s += g.compile_seconds
      if i:
        tokens += float(np.sum(np.asarray(g.lengths)))
        seconds += g.wall_seconds
    rows.append((dtype, batch, sort, tokens / seconds, tokens, compile_s))
    print(rows[-1], flush=True)
  base = rows[0][3]
  command = (f"python experiments/bench_regeneration.py --batches {args.batches} --max_new_tokens "
             f"{args.max_new_tokens} --out {os.path.relpath(args.out, ROOT)}")
  lines = ["# Regeneration throughput: the real target answering ShareGPT prompts (T=1)", "",
           f"Command: `{command}`", "",
           f"Written whole by that command. {os.cpu_count()} cores ({cpu_extensions()}), jax {jax.__version__}. SmolLM2-135M-Instruct, "
           f"`sampling.generate_batch` (one jitted prefill + while-loop program per batch shape), prompts: the first "
           f"{len(pool)} sharegpt_chat training prompts (<= 96 tokens), up to {args.max_new_tokens} new tokens "
           f"(rows stop at eos); {args.batches + 1} batches per setting, the first timed as well after a "
           "compiling one (the tokens below are all timed batches); compile time apart.", "",
           "| target | batch | prompts sorted by length | generated tokens/s | vs first row | tokens timed | compile s |",
           "|---|---:|---|---:|---:|---:|---:|"]
  lines += [f"| {d} | {b} | {'yes' if s else 'no'} | {t:.0f} | {t / base:.1f}x | {n:.0f} | {c:.0f} |"
            for d, b, s, t, n, c in rows]
  lines.append("")
  write_text(args.out, "\n".join(lines))
  return args.out


if __name__ == "__main__":
  main()

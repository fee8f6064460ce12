"""Train-step throughput: online white-box vs offline top-k distillation, against a large matmul.

    python experiments/bench_train.py [--vocab 8192] [--batch 16] [--seq 128] [--top_k 16]

A ~1.5M-parameter draft ('draft-2m') distilled from a ~16M target ('target-20m'),
forward KL. For each regime: train-step tokens/s and achieved FLOP/s (model
FLOPs: target forward 2N + draft forward/backward 6N per token, plus
attention) as a fraction of a 2048^3 fp32 matmul measured in the same run; and
the bytes per token of the offline top-k cache against storing full logits.
Writes experiments/results/train_benchmark.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import models  # noqa: E402
from specdistill_jax.distill import state as state_lib, step as step_lib  # noqa: E402
from specdistill_jax.distill.teacher_cache import teacher_topk  # noqa: E402
from studylib import matmul_flops, write_text  # noqa: E402


def train_flops_per_token(target, draft, seq: int, online: bool) -> float:
  ctx = (seq + 1) / 2
  f = 3 * draft.config.flops_per_token(ctx)  # forward + backward (2x)
  return f + (target.config.flops_per_token(ctx) if online else 0.0)


def bench(objective, draft, target, batch, steps: int) -> float:
  tx = state_lib.make_optimizer(1e-4, 10, 1000)
  graphdef, state = state_lib.create(draft, tx)
  state = jax.tree.map(jnp.copy, state)  # the step donates its state: keep `draft` intact
  t_graphdef, t_params = nnx.split(target, nnx.Param)
  online = objective.teacher == "online"
  step = step_lib.make_train_step(objective, graphdef, tx, t_graphdef if online else None)
  args = (t_params if online else None, None)
  state, m = step(state, batch, *args)
  jax.block_until_ready(m)
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch, *args)
    jax.block_until_ready(m)
    best = min(best, (time.perf_counter() - t0) / steps)
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--top_k", type=int, default=16)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--target", default="target-20m")
  p.add_argument("--draft", default="draft-2m")
  p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (params stay fp32)")
  p.add_argument("--out", default="experiments/results/train_benchmark.md")
  args = p.parse_args(argv)

  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq
  batch = dict(tokens=jnp.asarray(rng.integers(0, args.vocab, (b, t)), jnp.int32),
               loss_mask=jnp.ones((b, t), jnp.float32), segment_ids=jnp.ones((b, t), jnp.int32),
               positions=jnp.tile(jnp.arange(t, dtype=jnp.int32), (b, 1)))
  rows, peaks = [], {}
  for dtype in args.dtypes.split(","):
    target = models.create(models.preset(args.target, args.vocab, dtype=dtype), seed=0)
    draft = models.create(models.preset(args.draft, args.vocab, dtype=dtype), seed=1)
    teacher = teacher_topk(target, batch, args.top_k)
    offline_batch = dict(batch, topk_values=teacher.values, topk_indices=teacher.indices,
                         log_normalizer=teacher.log_normalizer)
    peak = peaks[dtype] = matmul_flops(dtype)
    for name, objective, data, online in (
        ("online white-box (target forward in the step)", step_lib.Objective("fkl", "online"), batch, True),
        (f"offline top-{args.top_k} (cached teacher)", step_lib.Objective("fkl", "topk"), offline_batch, False)):
      sec = bench(objective, draft, target, data, args.steps)
      tokens = b * (t - 1)
      flops = tokens * train_flops_per_token(target, draft, t, online) / sec
      rows.append(f"| {name} | {dtype} | {tokens / sec:,.0f} | {flops / 1e9:.1f} | {flops / peak:.2f} |")
      print(rows[-1], flush=True)
  idx_bytes = 2 if args.vocab <= 32767 else 4
  cache = 5 + args.top_k * (4 + idx_bytes) + 4
  full = 4 * args.vocab
  text = "\n".join([
      "# Train-step benchmark: online vs offline distillation", "",
      f"Command: `python experiments/bench_train.py --vocab {args.vocab} --batch {b} --seq {t} "
      f"--top_k {args.top_k}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
      f"({jax.devices()[0].platform}). Draft `{args.draft}` {draft.config.num_params() / 1e6:.2f}M params, "
      f"target `{args.target}` {target.config.num_params() / 1e6:.1f}M params, fp32 parameters, "
      f"compute in {args.dtypes.replace(',', ' / ')} (bf16 = bf16 matmuls with fp32 accumulation), forward KL, "
      f"batch {b} x {t} tokens; best of 3 x {args.steps} steps after compilation.", "",
      "Reference: a 2048^3 matmul with fp32 accumulation in the same dtype, measured in this run: "
      + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()) + ".", "",
      "| regime | compute | tokens/s | model GFLOP/s | fraction of that dtype's matmul |",
      "|---|---|---:|---:|---:|", *rows, "",
      "## Offline cache size", "",
      "| storage per token | bytes |", "|---|---:|",
      f"| top-{args.top_k} cache (token int32 + mask uint8 + {args.top_k} fp32 logits + "
      f"{args.top_k} int{8 * idx_bytes} ids + fp32 log-normaliser) | {cache} |",
      f"| full fp32 logits (vocab {args.vocab}) | {full:,} |",
      f"| ratio | {full / cache:.0f}x smaller |", ""])
  write_text(args.out, text)


if __name__ == "__main__":
  main()

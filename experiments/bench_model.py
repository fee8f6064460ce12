"""Forward throughput of a ~20M-parameter model on this machine.

Measures, in one run: a large matmul's FLOP/s (the machine's practical peak,
per compute dtype), the full-sequence forward (training shape) and cached
one-token decode at batch 1 and 8, as tokens/s and achieved FLOP/s as a
fraction of the matmul.

    python experiments/bench_model.py [--vocab 8192] [--preset target-20m] [--out experiments/results/model_benchmark.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import models  # noqa: E402
from specdistill_jax.evaluate import step_seconds  # noqa: E402
from studylib import best_seconds, matmul_flops, write_text  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="target-20m")
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--cache", type=int, default=512)
  p.add_argument("--decode_steps", type=int, default=64)
  p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (params stay fp32)")
  p.add_argument("--out", default="experiments/results/model_benchmark.md")
  args = p.parse_args(argv)

  rows, peaks = [], {}
  for dtype in args.dtypes.split(","):
    cfg = models.preset(args.preset, args.vocab, dtype=dtype)
    model = models.create(cfg)
    graphdef, state = nnx.split(model)
    peak = peaks[dtype] = matmul_flops(dtype)

    @jax.jit
    def forward(state, tokens):
      return nnx.merge(graphdef, state)(tokens)

    for batch in (1, 8):
      tokens = jnp.zeros((batch, args.seq), jnp.int32)
      sec = best_seconds(lambda: forward(state, tokens))
      toks = batch * args.seq
      flops = toks * cfg.flops_per_token(context=(args.seq + 1) / 2)
      rows.append((f"full forward, B={batch}, T={args.seq}", dtype, toks / sec, flops / sec, flops / sec / peak))

    for batch in (1, 8):
      sec = step_seconds(model, batch, args.cache, args.decode_steps)
      # the step attends over all cache slots (static shape): count those FLOPs as done
      flops = batch * cfg.flops_per_token(context=args.cache)
      rows.append((f"cached 1-token decode, B={batch}, S={args.cache}", dtype, batch / sec, flops / sec,
                   flops / sec / peak))

  lines = [
      "# Model forward benchmark", "",
      f"Command: `python experiments/bench_model.py --preset {args.preset} --vocab {args.vocab}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
      f"{jax.devices()[0].platform}; model `{args.preset}` ({cfg.num_params() / 1e6:.1f}M params, "
      f"vocab {cfg.vocab_size}, fp32 parameters; bf16 = bf16 matmuls with fp32 accumulation).", "",
      "Reference: a 2048^3 matmul with fp32 accumulation in the same dtype, measured in this run: "
      + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()) + ".", "",
      "| workload | compute | tokens/s | GFLOP/s | fraction of that dtype's matmul |",
      "|---|---|---:|---:|---:|",
  ]
  for name, dtype, tps, fl, frac in rows:
    lines.append(f"| {name} | {dtype} | {tps:,.0f} | {fl / 1e9:.1f} | {frac:.2f} |")
  text = "\n".join(lines) + "\n"
  write_text(args.out, text)


if __name__ == "__main__":
  main()

"""Forward throughput of a ~20M-parameter model on this machine.

Measures, in one run: a large fp32 matmul's FLOP/s (the machine's practical
peak), the full-sequence forward (training shape) and cached one-token decode
at batch 1 and 8, as tokens/s and achieved FLOP/s as a fraction of the matmul.

    python experiments/bench_model.py [--vocab 8192] [--preset target-20m] [--out experiments/results/model_benchmark.md]
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
from flax import nnx  # noqa: E402

from specdistill_jax import models  # noqa: E402


def timed(fn, *args, repeats: int = 5) -> float:
  """Best-of-`repeats` seconds of fn(*args) after one compile/warm-up call."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_flops(n: int = 2048) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  return 2 * n ** 3 / timed(f, a, b)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="target-20m")
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--cache", type=int, default=512)
  p.add_argument("--decode_steps", type=int, default=64)
  p.add_argument("--out", default="experiments/results/model_benchmark.md")
  args = p.parse_args(argv)

  cfg = models.preset(args.preset, args.vocab)
  model = models.create(cfg)
  graphdef, state = nnx.split(model)
  peak = matmul_flops()
  rows = []

  @jax.jit
  def forward(state, tokens):
    return nnx.merge(graphdef, state)(tokens)

  for batch in (1, 8):
    tokens = jnp.zeros((batch, args.seq), jnp.int32)
    sec = timed(forward, state, tokens)
    toks = batch * args.seq
    flops = toks * cfg.flops_per_token(context=(args.seq + 1) / 2)
    rows.append((f"full forward, B={batch}, T={args.seq}", toks / sec, flops / sec))

  prompt = args.cache // 4

  def decode(state, cache, token, steps):
    model = nnx.merge(graphdef, state)

    def body(_, carry):
      cache, token = carry
      logits, cache = model.forward_cached(token, cache)
      return cache, jnp.argmax(logits, -1).astype(jnp.int32)

    return jax.lax.fori_loop(0, steps, body, (cache, token))

  decode = jax.jit(decode, static_argnums=3)
  for batch in (1, 8):
    cache = models.init_cache(cfg, batch, args.cache).with_lengths(jnp.full((batch,), prompt))
    token = jnp.zeros((batch, 1), jnp.int32)
    sec = timed(decode, state, cache, token, args.decode_steps)
    toks = batch * args.decode_steps
    # the step attends over all cache slots (static shape): count those FLOPs as done
    flops = toks * cfg.flops_per_token(context=args.cache)
    rows.append((f"cached 1-token decode, B={batch}, S={args.cache}", toks / sec, flops / sec))

  lines = [
      "# Model forward benchmark", "",
      f"Command: `python experiments/bench_model.py --preset {args.preset} --vocab {args.vocab}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
      f"{jax.devices()[0].platform}; model `{args.preset}` ({cfg.num_params() / 1e6:.1f}M params, "
      f"vocab {cfg.vocab_size}, fp32).", "",
      f"Reference: 2048^3 fp32 matmul at {peak / 1e9:.1f} GFLOP/s.", "",
      "| workload | tokens/s | GFLOP/s | fraction of matmul |",
      "|---|---:|---:|---:|",
  ]
  for name, tps, fl in rows:
    lines.append(f"| {name} | {tps:,.0f} | {fl / 1e9:.1f} | {fl / peak:.2f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
      fh.write(text)


if __name__ == "__main__":
  main()

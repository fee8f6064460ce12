"""This CPU's matmul peak under XLA, fp32 and bf16: the denominator of every MFU we quote.

For each dtype it times square matmuls (n = 1024 .. 4096) and the shapes of one EAGLE-3 /
target training step on SmolLM2-135M (M = tokens per step, K/N = 576 / 1536 / 8192 / 49152),
best of several runs, and prints TFLOP/s; bf16 runs bf16 x bf16 with fp32 accumulation, as
the train step does. The CPU's matrix extensions (AMX tiles, AVX-512 BF16) are read from
/proc/cpuinfo and printed with the result, since machines of this pool differ.

    python experiments/bench_matmul_peak.py [--out experiments/results/matmul_peak.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
from studylib import write_text  # noqa: E402
SQUARE = (1024, 2048, 4096)
# (M, K, N): 4096 tokens a step; attention/MLP projections, the draft head, the target head
TRAIN = ((4096, 576, 576), (4096, 576, 1536), (4096, 1536, 576), (4096, 576, 8192), (4096, 576, 49152))


def cpu_extensions() -> str:
  try:
    with open("/proc/cpuinfo") as fh:
      flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
  except OSError:
    return "unknown"
  want = [f for f in ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2") if f in flags]
  return ", ".join(want) or "none of amx/avx512/avx2"


def best_seconds(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  out = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out = min(out, time.perf_counter() - t)
  return out


def tflops(m: int, k: int, n: int, dtype) -> float:
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((m, k), np.float32)).astype(dtype)
  b = jnp.asarray(rng.standard_normal((k, n), np.float32)).astype(dtype)
  fn = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  return 2.0 * m * k * n / best_seconds(fn, a, b) / 1e12


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "matmul_peak.md"))
  args = p.parse_args(argv)
  rows = []
  for shape in [(n, n, n) for n in SQUARE] + list(TRAIN):
    f32, bf16 = tflops(*shape, jnp.float32), tflops(*shape, jnp.bfloat16)
    rows.append((shape, f32, bf16))
    print(f"{shape}: fp32 {f32:.3f} TFLOP/s, bf16 {bf16:.3f} TFLOP/s", flush=True)
  peak32, peak16 = max(r[1] for r in rows), max(r[2] for r in rows)
  lines = ["# Matmul peak of this CPU under XLA (fp32 and bf16 with fp32 accumulation)", "",
           f"Command: `python experiments/bench_matmul_peak.py --out {os.path.relpath(args.out, ROOT)}`", "",
           f"Written whole by that command. {os.cpu_count()} cores, jax {jax.__version__}; matrix extensions: "
           f"{cpu_extensions()}. Best of 5 runs after a warm-up.", "",
           "| M x K x N | fp32 TFLOP/s | bf16 TFLOP/s | bf16 / fp32 |", "|---|---:|---:|---:|"]
  lines += [f"| {m} x {k} x {n} | {a:.3f} | {b:.3f} | {b / a:.2f} |" for (m, k, n), a, b in rows]
  lines += ["", f"Peak: fp32 {peak32:.3f} TFLOP/s, bf16 {peak16:.3f} TFLOP/s (the MFU denominators of "
            "experiments/bench_eagle3_step.py).", ""]
  write_text(args.out, "\n".join(lines))
  return args.out


if __name__ == "__main__":
  sys.exit(0 if main() else 1)

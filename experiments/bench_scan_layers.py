"""Compile time and step time of the real target with its layers unrolled vs as one lax.scan.

    python experiments/bench_scan_layers.py [--model DIR] [--dtype bfloat16] [--out FILE]

The same 30-layer SmolLM2-135M-Instruct parameters (converted by models.import_gguf),
loaded twice (`load_hf(..., scan_layers=False / True)`). For each, in one run:
* a decode step: `forward_cached` of 1 token (B=1, a 512-slot cache a quarter full);
* a verification pass: `forward_cached` of 5 tokens;
* a training step: value and gradient of the next-token loss on [1, 256] tokens;
compile seconds (`jit(...).lower(...).compile()`) and the best step time of several,
plus the largest difference of the logits between the two layouts; and
* `sampling.generate` of --new_tokens tokens from a 40-token prompt (one jitted while loop):
the first call (compile + run) and the best steady-state call, as tokens/s.
Writes --out (default experiments/results/scan_layers.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import models, sampling  # noqa: E402
from specdistill_jax.models import import_gguf  # noqa: E402
from studylib import best_seconds, write_text  # noqa: E402


def programs(model, cache_size: int, train_len: int):
  """(name, jitted fn, args) for the decode step, the verification pass and the training step."""
  graphdef, state = nnx.split(model)

  def cached(state, tokens, cache):
    logits, cache, _ = nnx.merge(graphdef, state).forward_cached(tokens, cache)
    return logits, cache.lengths

  def loss(state, tokens):
    logits = nnx.merge(graphdef, state)(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

  cache = model.init_cache(1, cache_size).with_lengths(jnp.full((1,), cache_size // 4, jnp.int32))
  rng = np.random.default_rng(0)
  ids = lambda n: jnp.asarray(rng.integers(0, model.config.vocab_size, (1, n)), jnp.int32)
  return [("decode step (1 token)", jax.jit(cached), (state, ids(1), cache)),
          ("verification (5 tokens)", jax.jit(cached), (state, ids(5), cache)),
          (f"training step ([1, {train_len}] tokens, value and grad)", jax.jit(jax.value_and_grad(loss)),
           (state, ids(train_len + 1)))]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=import_gguf.default_out_dir())
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--cache", type=int, default=512)
  p.add_argument("--train_len", type=int, default=256)
  p.add_argument("--new_tokens", type=int, default=48)
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "scan_layers.md"))
  args = p.parse_args(argv)
  if not os.path.exists(os.path.join(args.model, "config.json")):
    import_gguf.import_gguf(args.model)
  rows, outputs, decode = {}, {}, {}
  for scan in (False, True):
    model = models.load_hf(args.model, dtype=jnp.dtype(args.dtype), scan_layers=scan)
    for name, fn, fargs in programs(model, args.cache, args.train_len):
      t0 = time.perf_counter()
      compiled = fn.lower(*fargs).compile()
      compile_s = time.perf_counter() - t0
      out = jax.block_until_ready(compiled(*fargs))
      step = best_seconds(lambda: compiled(*fargs), repeats=5)
      rows.setdefault(name, {})[scan] = (compile_s, step)
      outputs.setdefault(name, []).append(np.asarray(jax.tree.leaves(out)[0], np.float32))
      print(f"scan_layers={scan} {name}: compile {compile_s:.1f} s, step {step * 1e3:.1f} ms", flush=True)
    prompt = [list(range(100, 140))]
    t0 = time.perf_counter()
    ids = sampling.generate(model, prompt, args.new_tokens)
    first = time.perf_counter() - t0
    again = best_seconds(lambda: sampling.generate(model, prompt, args.new_tokens), repeats=3)
    decode[scan] = (first, args.new_tokens / again, ids)
    print(f"scan_layers={scan} generate: first call {first:.1f} s, then {args.new_tokens / again:.1f} tok/s", flush=True)
    del model
  lines = []
  for name, by in rows.items():
    (cu, su), (cs, ss) = by[False], by[True]
    diff = float(np.max(np.abs(outputs[name][0] - outputs[name][1])))
    lines.append(f"| {name} | {cu:.1f} | {cs:.1f} | {su * 1e3:.1f} | {ss * 1e3:.1f} | {diff:.2g} |")
  (fu, ru, iu), (fs, rs, is_) = decode[False], decode[True]
  lines.append(f"| generate {args.new_tokens} tokens (one while loop): first call s / steady tok/s | {fu:.1f} | "
               f"{fs:.1f} | {ru:.1f} tok/s | {rs:.1f} tok/s | ids {'equal' if iu == is_ else 'differ'} |")
  text = "\n".join([
      "# Layers unrolled vs one lax.scan (ModelConfig.scan_layers) on the real target", "",
      f"Command: `python experiments/bench_scan_layers.py --dtype {args.dtype} --cache {args.cache} "
      f"--train_len {args.train_len} --new_tokens {args.new_tokens}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
      f"({jax.devices()[0].platform}). Model: {import_gguf.DEFAULT_NAME}, 30 layers, {args.dtype}, B=1, "
      f"cache {args.cache} slots a quarter full. Compile = `jit(f).lower(...).compile()`; step = best of 5 "
      "after compilation; max |diff| = the largest difference between the two layouts' first output "
      "(logits, or the loss for the training step). The standalone steps pay the stacking of the "
      "weights (a copy) in every call; the generate row is the decode loop, where XLA hoists it out of "
      "the loop (first call = compile + one decode; steady = best of 3).", "",
      "| program | compile s, unrolled | compile s, scan | step ms, unrolled | step ms, scan | max abs diff |",
      "|---|---:|---:|---:|---:|---:|", *lines, ""])
  write_text(args.out, text)


if __name__ == "__main__":
  main()

"""What exposing target features costs: cached forwards with and without `feature_layers`.

    python experiments/bench_features.py [--model DIR] [--dtypes float32,bfloat16] [--tokens 1,5]

For the real target (default: workdir/models/smollm2-135m-instruct), B=1, a 512-slot cache
a quarter full: ms per cached forward of k tokens returning logits only, and returning
logits plus the hidden states of EAGLE-3's three layers (what a feature drafter's
verification pass needs). Best of 5 timed loops of 16 forwards each. Writes
experiments/results/feature_overhead.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import loading, models  # noqa: E402
from specdistill_jax.models import import_gguf  # noqa: E402
from specdistill_jax.models.feature_draft import default_feature_layers  # noqa: E402
from studylib import best_seconds, write_text  # noqa: E402


@functools.lru_cache(maxsize=8)
def _program(graphdef, steps: int, layers: tuple):
  @jax.jit
  def run(state, cache, tokens):
    model = nnx.merge(graphdef, state)

    def body(_, carry):
      c, acc = carry
      out = model.forward_cached(tokens, c.with_lengths(cache.lengths), feature_layers=layers)
      acc = acc + out.logits[0, 0, 0] + (out.features[0, 0, 0].astype(jnp.float32) if layers else 0.0)
      return out.cache, acc

    return jax.lax.fori_loop(0, steps, body, (cache, jnp.float32(0)))
  return run


def ms_per_forward(model, tokens: int, layers: tuple, steps: int = 16, repeats: int = 5) -> float:
  graphdef, state = nnx.split(model)
  cache = models.init_cache(model.config, 1, 512).with_lengths(jnp.full((1,), 128, jnp.int32))
  run = _program(graphdef, steps, layers)
  x = jnp.zeros((1, tokens), jnp.int32)
  return 1e3 * best_seconds(lambda: run(state, cache, x), repeats) / steps


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=import_gguf.default_out_dir())
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--tokens", default="1,5")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "feature_overhead.md"))
  args = p.parse_args(argv)
  rows = []
  for dtype in args.dtypes.split(","):
    model = loading.load_model(args.model, dtype=jnp.dtype(dtype))
    layers = default_feature_layers(model.config.num_layers)
    for k in map(int, args.tokens.split(",")):
      plain, feats = ms_per_forward(model, k, ()), ms_per_forward(model, k, layers)
      rows.append(f"| {dtype} | {k} | {plain:.2f} | {feats:.2f} | {100 * (feats / plain - 1):+.1f}% |")
      print(rows[-1], flush=True)
  write_text(args.out, "\n".join([
      "# Target features: the cost of exposing them", "",
      f"Command: `python experiments/bench_features.py --dtypes {args.dtypes} --tokens {args.tokens}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}. Model "
      f"{os.path.basename(os.path.normpath(args.model))}, B=1, cache 512 slots a quarter full, best of 5 loops "
      f"of 16 cached forwards. 'features': the same forward also returning the residual stream at layers "
      f"{layers} (EAGLE-3's low / middle / high), as the verification pass of a feature drafter does.", "",
      "| dtype | tokens | logits only ms | logits + features ms | overhead |", "|---|---:|---:|---:|---:|", *rows, "",
      "With `feature_layers=()` (the default) the forward is the plain one: nothing is gathered or returned."]) + "\n")


if __name__ == "__main__":
  main()

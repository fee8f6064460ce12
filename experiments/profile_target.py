"""Where a B=1 decode step of the real target spends its time, by subtraction, in one run.

    python experiments/profile_target.py [--model DIR]

Times (fp32, B=1, a 512-slot cache a quarter full, best of several loops):
* the real target's cached forward for k = 1 and 8 tokens;
* its LM head alone (the tied 49k x 576 embedding as a matmul);
* a model of the same depth and heads but tiny widths (d_model 64, mlp 64, vocab 256):
  the work that does not scale with the weights (attention over the cache, norms,
  rotary, cache writes, per-op overhead), with a 512- and a 64-slot cache, and with
  attention removed;
* sampling one token at T=1 from the 49k vocabulary: jax.random.categorical
  (Gumbel-max) vs the project's inverse CDF (sampling/distributions.py).
Writes experiments/results/target_profile.md.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from specdistill_jax import models  # noqa: E402
from specdistill_jax.evaluate import _step_program, step_seconds  # noqa: E402
from specdistill_jax.models import import_gguf  # noqa: E402
from specdistill_jax.models import transformer  # noqa: E402
from specdistill_jax.sampling import distributions as dist  # noqa: E402
from studylib import best_seconds, write_text  # noqa: E402


def best_ms(fn, repeats: int = 9) -> float:
  return best_seconds(fn, repeats) * 1e3


def sampler_us(sample, vocab: int, n: int = 100) -> float:
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, vocab)) * 3

  @jax.jit
  def loop(key):
    def body(i, acc):
      return acc + sample(jax.random.fold_in(key, i), logits + acc[:, None] * 1e-9)
    return jax.lax.fori_loop(0, n, body, jnp.zeros((1,), jnp.int32))
  return best_ms(lambda: loop(jax.random.PRNGKey(1)), 5) / n * 1e3


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=import_gguf.default_out_dir())
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "target_profile.md"))
  args = p.parse_args(argv)
  if not os.path.exists(os.path.join(args.model, "config.json")):
    import_gguf.import_gguf(args.model)
  target = models.load_hf(args.model)
  cfg = target.config
  full = {k: step_seconds(target, 1, 512, steps=16, repeats=7, tokens=k) * 1e3 for k in (1, 8)}
  head = {}
  for k in (1, 8):
    x = jnp.ones((k, cfg.d_model), jnp.float32)
    project = jax.jit(lambda x: target.project(x))
    head[k] = best_ms(lambda: project(x))
  thin_cfg = cfg.replace(d_model=64, mlp_dim=64, vocab_size=256)
  thin = models.create(thin_cfg)
  thin_ms = {(k, s): step_seconds(thin, 1, s, steps=16, repeats=7, tokens=k) * 1e3
             for k in (1, 8) for s in (512, 64)}
  attend = transformer.attend
  transformer.attend = lambda q, k, v, mask: q  # attention removed (cache writes stay)
  _step_program.cache_clear()
  try:
    no_attn = {k: step_seconds(thin, 1, 512, steps=16, repeats=7, tokens=k) * 1e3 for k in (1, 8)}
  finally:
    transformer.attend = attend
    _step_program.cache_clear()
  gumbel = sampler_us(lambda key, l: jax.random.categorical(key, jax.nn.log_softmax(l, -1)), cfg.vocab_size)
  ours = sampler_us(lambda key, l: dist.sample(key, l, False, 1.0), cfg.vocab_size)
  rows = []
  for k in (1, 8):
    weights = full[k] - thin_ms[(k, 512)]
    rows.append(f"| {k} | {full[k]:.1f} | {head[k]:.1f} | {weights - head[k]:.1f} | {thin_ms[(k, 512)]:.1f} "
                f"({thin_ms[(k, 512)] - no_attn[k]:.1f} attention) | {thin_ms[(k, 64)]:.1f} |")
  text = "\n".join([
      "# Where a B=1 decode step of the real target goes", "",
      "Command: `python experiments/profile_target.py`", "",
      f"{cfg.num_layers} layers, d_model {cfg.d_model}, vocab {cfg.vocab_size}, fp32, B=1, cache of 512 slots a "
      "quarter full; 2 CPU cores. By subtraction: 'width-independent' is a model of the same depth and heads with "
      "d_model 64, mlp 64 and vocab 256 (attention over the cache, norms, rotary, cache writes, per-op overhead); "
      "'layer matmuls' = full - width-independent - head.", "",
      "| k tokens | full forward ms | LM head ms | layer matmuls ms | width-independent ms (of which attention) "
      "| width-independent with a 64-slot cache ms |",
      "|---:|---:|---:|---:|---:|---:|", *rows, "",
      f"Sampling one token at T=1 over {cfg.vocab_size:,} entries: jax.random.categorical (Gumbel-max, one "
      f"random number per entry) {gumbel:.0f} us; the project's two-level inverse CDF (one uniform) {ours:.0f} us.",
      "", "Findings (this machine, this session):", "",
      "* Attention over a static cache is the largest cost outside the weights: it grows with the cache size, "
      "not with what is valid in it. A head-major cache layout ([B, kv, S, d]) made the attention alone 4x faster "
      "in isolation (30 layers: 4.1 -> 1.0 ms at k=1, 6.5 -> 3.6 ms at k=8), but in the full model it was slower at "
      "k=1 (A/B in alternating processes: 29.3/33.1 ms vs 27.1/26.1 ms) and no faster at k=8, so the "
      "sequence-major layout stays.",
      "* Operand order of the weight matmuls: on this CPU (AMD EPYC) `x @ W` and weights-as-left-operand "
      "run the unfused 30-layer skeleton equally (17.3 vs 17.7 ms at k=1); only fused qkv / gate-up weights on "
      "the left gain 10-20% (../shared/bench/xla_cpu_dots.py). Not adopted: it needs another parameter layout.",
      "* bf16: XLA:CPU's bf16 matrix-vector dot (one token) ran ~10x slower than its two-row matmul; "
      "one-token bf16 matmuls now run on two rows (layers.mm), which made bf16 k=1 go from 40.3 to "
      "~27 ms, no slower than fp32 (experiments/results/target_benchmark.md).",
      "* Sampling: switched from Gumbel-max to the inverse CDF (numbers above).", ""])
  write_text(args.out, text)


if __name__ == "__main__":
  main()

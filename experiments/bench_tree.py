"""Trees vs chains on this CPU: the cost v(N) of verifying N tree nodes, and tokens/s at B=1.

    python experiments/bench_tree.py [--target DIR] [--draft DIR] [--dtype bfloat16]
        [--specs 3:2:4,4:2:6,...] [--gammas 1,2,3]

1. v(N) = time of one cached forward over the root and N tree nodes / time of a
   one-token decode step, N in {4, 8, 16, 32, 64}, for the world's target and draft
   shapes (configs/world.py presets target-20m and draft-2m with the world's 8k-entry
   vocabulary; random weights: cost does not depend on them) and for the real target.
2. On the real pair (SmolLM2-135M-Instruct and a draft distilled for it), B=1,
   T=0 and T=1: autoregressive tokens/s, then the chain for each gamma and the
   dynamic tree for each TreeSpec (depth:top_k:num_nodes): tokens/s, tau, nodes
   verified per round, speedup over autoregressive; all measured in this run.
Writes experiments/results/tree_benchmark.md and the tree rows of
experiments/results/decode_benchmark.json (pair, batch, temperature, tree, ...).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from specdistill_jax import loading, models, sampling  # noqa: E402
from specdistill_jax.evaluate import step_seconds  # noqa: E402
from specdistill_jax.models import import_gguf  # noqa: E402
from bench_decode import default_prompts, timed_runs  # noqa: E402
from studylib import replace_json_rows, write_text  # noqa: E402

NODES = (4, 8, 16, 32, 64)
WORLD_VOCAB = 8192


def v_of_n(model, cache: int = 512) -> tuple[float, dict]:
  one = step_seconds(model, 1, cache, steps=16, repeats=5)
  return one * 1e3, {n: step_seconds(model, 1, cache, steps=8, repeats=5, tokens=n + 1) / one for n in NODES}


def parse_specs(text: str) -> list:
  return [sampling.TreeSpec(*map(int, s.split(":"))) for s in text.split(",") if s]


def median_run(fn, repeats: int) -> dict:
  """fn() -> stats with wall_seconds; the run of median wall time after a warm-up (bench_decode.timed_runs)."""
  return timed_runs(lambda: (lambda st: (st, st["wall_seconds"]))(fn()), repeats)[0]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target", default=import_gguf.default_out_dir())
  p.add_argument("--draft", default=os.path.join(ROOT, "workdir", "runs", "real", "layers2", "hf"))
  p.add_argument("--pair", default="smollm2-135m-instruct/layers2")
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--specs", default="2:2:4,3:2:6,4:2:8,4:3:10,5:4:16,6:4:24")
  p.add_argument("--gammas", default="1,2,3")
  p.add_argument("--temperatures", default="0,1")
  p.add_argument("--num_prompts", type=int, default=4)
  p.add_argument("--corpus_config", default="full", help="'small' for the micro world")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--skip_world", action="store_true")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "tree_benchmark.md"))
  p.add_argument("--json", default=os.path.join(ROOT, "experiments", "results", "decode_benchmark.json"))
  args = p.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  target, draft = loading.load_model(args.target, dtype=dtype), loading.load_model(args.draft, dtype=dtype)

  cost_rows = []
  shapes = [] if args.skip_world else [
      ("world target (target-20m)", models.create(models.preset("target-20m", WORLD_VOCAB, dtype=args.dtype,
                                                                  param_dtype=args.dtype))),
      ("world draft (draft-2m)", models.create(models.preset("draft-2m", WORLD_VOCAB, dtype=args.dtype,
                                                               param_dtype=args.dtype)))]
  label = f"target {args.pair.split('/')[0]}"
  for name, model in shapes + [(label, target)]:
    one_ms, v = v_of_n(model)
    cost_rows.append(f"| {name} | {model.config.num_params() / 1e6:.1f}M | {one_ms:.2f} | "
                     + " | ".join(f"{v[n]:.2f}" for n in NODES) + " |")
    print(cost_rows[-1], flush=True)

  prompts = default_prompts(args.target, args.num_prompts, corpus_config=args.corpus_config)[: args.num_prompts]
  n_new = args.max_new_tokens
  width = max(map(len, prompts))  # one padded width: one compilation per setting
  padded = [(np.asarray([pr + [0] * (width - len(pr))], np.int32), [len(pr)]) for pr in prompts]
  rows, records, measured = [], [], []
  for temp in (float(t) for t in args.temperatures.split(",")):
    def per_prompt(**kw):
      stats = [median_run(lambda: sampling.speculative_generate(target, draft, row, n_new, temperature=temp,
                                                                 rng=1, lengths=n, **kw)[1], args.repeats)
               for row, n in padded]
      tokens = sum(s["tokens"] for s in stats)
      wall = sum(s["wall_seconds"] for s in stats)
      rounds = sum(s["rounds"] for s in stats)
      return dict(tps=tokens / wall, tau=tokens / rounds, nodes=sum(s["nodes_per_round"] * s["rounds"]
                                                                    for s in stats) / rounds)

    ar_tps = sum(median_run(lambda pr=pr: ar_one(target, pr, n_new, temp), args.repeats)["tokens_per_second"]
                 for pr in prompts) / len(prompts)
    for label, kw in ([(f"chain gamma={g}", dict(gamma=g)) for g in map(int, args.gammas.split(","))]
                      + [(f"tree {s.depth}:{s.top_k}:{s.num_nodes}", dict(tree=s)) for s in parse_specs(args.specs)]):
      r = per_prompt(**kw)
      rows.append(f"| {temp:g} | {label} | {r['nodes']:.1f} | {r['tau']:.2f} | {ar_tps:.1f} | {r['tps']:.1f} | "
                  f"{r['tps'] / ar_tps:.2f} | {1e3 * r['tau'] / r['tps']:.1f} |")
      measured.append((temp, label, r["tau"], r["tps"], ar_tps))
      print(rows[-1], flush=True)
      spec = kw.get("tree")
      records.append(dict(pair=args.pair, batch=1, temperature=temp, gamma=kw.get("gamma", spec and spec.depth),
                          tree=f"depth={spec.depth},top_k={spec.top_k},num_nodes={spec.num_nodes}" if spec else None,
                          dtype=args.dtype, ar_tokens_per_s=round(ar_tps, 2), sd_tokens_per_s=round(r["tps"], 2),
                          speedup=round(r["tps"] / ar_tps, 3), predicted_speedup=None, tau=round(r["tau"], 3),
                          nodes_per_round=round(r["nodes"], 2), source="bench_tree"))
  text = "\n".join([
      "# Trees vs chains on this CPU", "",
      f"Command: `python experiments/bench_tree.py --dtype {args.dtype} --specs {args.specs} --gammas {args.gammas}`",
      "", f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}; {args.dtype} "
      "parameters and compute; B=1.", "",
      "## v(N): verifying N tree nodes, in one-token decode steps", "",
      "A cached forward over the root and N nodes (N+1 tokens), best of 5, cache of 512 slots a quarter full, "
      "divided by a one-token step. World shapes with random weights (the cost does not depend on them).", "",
      "| model | params | one-token step ms | " + " | ".join(f"v({n})" for n in NODES) + " |",
      "|---|---:|---:|" + "---:|" * len(NODES), *cost_rows, "",
      f"## Tokens/s on the real pair ({args.pair})", "",
      f"{len(prompts)} chat prompts decoded one at a time, {n_new} new tokens each, median of {args.repeats} runs "
      "after a warm-up; tree = depth:top_k:num_nodes; nodes = draft tokens verified per round.", "",
      "| T | drafting | nodes | tau | AR tok/s | SD tok/s | speedup | ms per round |",
      "|---:|---|---:|---:|---:|---:|---:|---:|", *rows, "", *reading(measured)])
  replace_json_rows(args.json, [r for r in records if r["tree"]], ("pair", "tree", "temperature"))
  write_text(args.out, text)


def reading(measured) -> list[str]:
  """Best tree vs best chain per temperature, from this run's rows (temp, label, tau, tps, ar_tps)."""
  lines = ["## Reading it", ""]
  for temp in sorted({m[0] for m in measured}):
    chains = [m for m in measured if m[0] == temp and m[1].startswith("chain")]
    trees = [m for m in measured if m[0] == temp and m[1].startswith("tree")]
    if not chains or not trees:
      continue
    chain, tree = max(chains, key=lambda m: m[3]), max(trees, key=lambda m: m[3])
    longest = max(trees, key=lambda m: m[2])
    lines.append(
        f"* T={temp:g}: fastest chain ({chain[1]}) {chain[3]:.1f} tok/s (tau {chain[2]:.2f}, "
        f"{1e3 * chain[2] / chain[3]:.1f} ms per round); fastest tree ({tree[1]}) {tree[3]:.1f} tok/s (tau "
        f"{tree[2]:.2f}, {1e3 * tree[2] / tree[3]:.1f} ms per round): tree >= chain "
        f"{'met' if tree[3] >= chain[3] else 'not met'}. The longest acceptance, {longest[1]} (tau "
        f"{longest[2]:.2f}, {longest[2] / chain[2]:.2f}x the fastest chain's), pays for "
        f"{1e3 * longest[2] / longest[3]:.1f} ms rounds: on this CPU a round's cost grows with the nodes "
        f"verified (v(N) above) faster than tau grows with them.")
  return lines + [""]


def ar_one(target, prompt, n_new, temp):
  g = sampling.generate_batch(target, [prompt], n_new, temp, rng=1)
  return {"tokens_per_second": int(g.lengths.sum()) / g.wall_seconds, "wall_seconds": g.wall_seconds}


if __name__ == "__main__":
  main()

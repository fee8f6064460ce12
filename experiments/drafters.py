"""Study: every kind of drafter on the real target, from the benchmark's own rows.

    python experiments/drafters.py

Reads the rows that `python -m specdistill_jax.bench` wrote to
experiments/results/decode_benchmark.json (B=1, bf16, the field's protocol: each row
is one (pair, prompt set, temperature, gamma) of one benchmark run, speedup measured
against plain decoding in that same run) for the drafters below, at the given number
of prompts per set, and writes experiments/results/drafters.md and drafters.png:
per set and temperature the best chain length of each drafter (speedup with its 95%
CI, tau, alpha, per-position acceptance, the measured draft cost of a round), then
every chain length. The trained drafters (the EAGLE-3 head and the block drafter)
trained on the same 600 batches of 16 x 256 tokens (configs/eagle3.py:cpu and
configs/dflash.py:cpu). The commands that wrote the rows are those at the top of
each drafter's benchmark file (`FILES`).
"""

from __future__ import annotations

import argparse
import json
import os

import studylib as lib

DRAFTERS = {  # pair in the benchmark rows -> (name, benchmark file that holds the command)
    "smollm2-135m-instruct/prompt_lookup": ("prompt lookup (3:1)", "decode_benchmark_prompt_lookup.md"),
    "smollm2-135m-instruct/eagle3-cpu": ("EAGLE-3 head (1 layer)", "decode_benchmark_eagle3_cpu_40.md"),
    "smollm2-135m-instruct/dflash-cpu": ("block drafter (2 layers, block 8)", "decode_benchmark_dflash_cpu_40.md"),
}
CLAIMS = ("DFlash (z-lab): a block-diffusion drafter conditioned on the target's context features drafts a "
          "whole block in one forward; reported up to 6.2x lossless on Qwen3-8B (GPU), about 2.5x EAGLE-3's "
          "speedup. DSpark on Llama-3.2-1B (100K samples): tau 3.15 at block 8 (speculators #1135).")


def _load(path: str, num_prompts: int) -> dict:
  with open(path) as fh:
    rows = json.load(fh)
  out: dict = {}
  for r in rows:
    if r.get("pair") in DRAFTERS and r.get("num_prompts") == num_prompts and r.get("tree") is None:
      out.setdefault((r["pair"], r["prompt_set"], r["temperature"]), []).append(r)
  return out


def _round(r) -> str:
  if r.get("draft_round") is not None:
    return f"{r['draft_round']:.3f}"
  return f"~{r['gamma'] * r['c']:.3f} (gamma c)"


def _row(name: str, r: dict) -> list:
  ci = r.get("speedup_ci")
  return [name, r["gamma"], f"{r['speedup']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
          f"{r['tau']:.2f}", f"{r['alpha']:.3f}", " / ".join(f"{a:.2f}" for a in r["position_acceptance"]),
          _round(r)]


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default_rows = os.path.join("experiments", "results", "decode_benchmark.json")
  p.add_argument("--rows", default=default_rows)
  p.add_argument("--num_prompts", type=int, default=40, help="prompts per set of the rows to compare")
  p.add_argument("--results_dir", default=None)
  args = p.parse_args(argv)
  groups = _load(args.rows, args.num_prompts)
  report = lib.Report("drafters", "Every kind of drafter on the real target (SmolLM2-135M-Instruct, B=1, bf16)",
                      "python experiments/drafters.py" + (f" --rows {args.rows}" if args.rows != default_rows else "")
                      + (f" --num_prompts {args.num_prompts}" if args.num_prompts != 40 else ""))
  found = sorted({pair for pair, _, _ in groups})
  report.text("Rows: " + "; ".join(f"{DRAFTERS[p][0]} from `experiments/results/{DRAFTERS[p][1]}`" for p in found)
              + ". Each speedup is against plain decoding measured in the same benchmark run; runs differ in "
              "machine load, so compare speedups, not tok/s, across drafters. Draft round = one proposal "
              "round of gamma drafts / a target step (a block drafter: one pass).")
  header = ["drafter", "gamma", "speedup [95% CI]", "tau", "alpha", "acceptance by position", "draft round"]
  best_rows = {}
  for prompt_set in ("mt_bench", "humaneval"):
    for temp in (0.0, 1.0):
      best = [max(groups[(pair, prompt_set, temp)], key=lambda r: r["speedup"]) for pair in DRAFTERS
              if (pair, prompt_set, temp) in groups]
      if not best:
        continue
      best_rows[(prompt_set, temp)] = best
      report.table(header, [_row(DRAFTERS[r["pair"]][0], r) for r in best],
                   f"**{prompt_set}, T={temp:g}**: each drafter at its fastest chain length "
                   f"({args.num_prompts} prompts).")
  every = [_row(DRAFTERS[pair][0], r) + [s, f"{t:g}"] for (pair, s, t), rows in sorted(groups.items())
           for r in sorted(rows, key=lambda r: r["gamma"])]
  report.table(header + ["set", "T"], every, "Every chain length.")
  report.text("Published: " + CLAIMS)
  plt, save = lib.figure("drafters", args.results_dir)
  fig, axes = plt.subplots(1, max(len(best_rows), 1), figsize=(3.2 * max(len(best_rows), 1), 3.4), squeeze=False)
  for ax, ((prompt_set, temp), rows) in zip(axes[0], best_rows.items()):
    names = [DRAFTERS[r["pair"]][0].split(" (")[0] for r in rows]
    ax.bar(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"{prompt_set} T={temp:g}", fontsize=9)
    ax.set_ylabel("speedup vs plain decoding")
  save(fig)
  return report.write(args.results_dir)


if __name__ == "__main__":
  main()

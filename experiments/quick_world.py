"""The toy-world quick study: data, a small target and draft trained here, distillation, before/after.

    python experiments/quick_world.py           # 8.6 min measured on 2 CPU cores

1. prepares the bundled corpora and a 8192-token BPE (specdistill_jax.data.prepare);
2. trains a ~5M-parameter target and a ~1.4M-parameter draft on sharegpt_chat
   (configs/world.py, scale quick);
3. distils the draft towards the target: on-policy data, forward KL (configs/common.distill_cell);
4. prints (and writes to WORKDIR/quick_world.md) alpha, tau and the speedup over
   autoregressive decoding, before and after distillation, greedy and at temperature 1.
Everything is cached under WORKDIR (default ./workdir/quick): a rerun reuses it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, ROOT)


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join("workdir", "quick"))
  p.add_argument("--data_dir", default=None, help="default: $SPECDISTILL_DATA_DIR or ./workdir/data")
  p.add_argument("--scale", default="quick", choices=("quick", "micro"))
  p.add_argument("--distill_steps", type=int, default=100)
  args = p.parse_args(argv)
  t0 = time.time()
  workdir = os.path.abspath(args.workdir)
  import build_world
  world, data_dir = build_world.paths(os.path.join(workdir, "world"), args.data_dir)
  build_world.build(args.scale, world, data_dir, in_process=True, names=("target_general", "draft_generic"))

  import studylib as lib
  from configs import common
  from specdistill_jax import evaluate

  micro = args.scale == "micro"
  target_dir, draft_dir = common.world("target_general", "hf"), common.world("draft_generic", "hf")
  cfg = common.distill_cell("micro" if micro else "cpu", target_dir, draft_dir, "sharegpt_chat",
                            steps=args.distill_steps)
  cfg.data.source, cfg.objective.loss = "on_policy", "fkl"
  cfg.optim.lr = 1e-3
  distilled_dir = lib.train_cell(cfg, os.path.join(workdir, "distill"))

  chat = lib.chat_format(data_dir)
  n, new_tokens, gamma = (2, 6, 4) if micro else (32, 48, 4)
  prompts = lib.prompts(chat, "sharegpt_chat", n, 0, 24 if micro else 64,
                        corpus_config="small" if micro else "full")
  target, before, after = lib.model(target_dir), lib.model(draft_dir), lib.model(distilled_dir)
  c = evaluate.cost_ratio(target, before, len(prompts), max(map(len, prompts)) + new_tokens + gamma + 2)
  rows = []
  for temp in (0.0, 1.0):
    ar = lib.autoregressive_tps(target, prompts, temp, 0, new_tokens)
    for name, draft in (("before (generic draft)", before), ("after (distilled)", after)):
      r = lib.evaluate_pair(target, draft, prompts, gamma, temp, 0, new_tokens, timed=True)
      rows.append([f"{temp:g}", name, f"{r['alpha']:.3f}", f"{r['tau']:.2f}",
                   f"{evaluate.theoretical_speedup(r['alpha'], gamma, c):.2f}x",
                   f"{r['tokens_per_second'] / ar:.2f}x"])
  header = ["temperature", "draft", "alpha", "tau", "speedup (theory)", "speedup (measured)"]
  lines = [f"# Quick study: distilling a draft for speculative decoding", "",
           f"Target {target.config.num_params() / 1e6:.1f}M params, draft {before.config.num_params() / 1e6:.2f}M "
           f"params, {cfg.train.steps} on-policy FKL steps; gamma {gamma}, {n} validation prompts x {new_tokens} "
           f"tokens; measured cost ratio c = {c:.3f}. Total time {(time.time() - t0) / 60:.1f} min.", "",
           "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
           *["| " + " | ".join(r) + " |" for r in rows], "",
           "Speedups are over autoregressive decoding of the target on this machine. The theory assumes "
           "verifying gamma+1 tokens costs one target step; for models this small on a CPU it costs "
           "1.25-3.5 steps (python -m specdistill_jax.bench measures it) and each round adds overhead, so the "
           "measured speedup falls short.", ""]
  text = "\n".join(lines)
  print(text)
  path = os.path.join(workdir, "quick_world.md")
  with open(path, "w") as fh:
    fh.write(text)
  return path


if __name__ == "__main__":
  main()

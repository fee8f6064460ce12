"""Build the CPU-scale model world the studies run on (configs/world.py), caching what exists.

    python experiments/build_world.py [--scale cpu|quick|micro] [--world DIR] [--data_dir DIR]

1. prepares the bundled corpora and the tokenizer (specdistill_jax.data.prepare);
2. trains target_general and draft_generic from scratch, then fine-tunes target_code,
   target_tools, target_mix and target_math_base from target_general and target_math from
   target_math_base, each with
   `python -m specdistill_jax.train --config=configs/world.py:NAME,scale=SCALE`;
3. writes DIR/manifest.json and experiments/results/world.md (sizes, steps, minutes, CE).
A model whose DIR/NAME/hf already exists is reused; an interrupted run resumes from its
checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ORDER = ("target_general", "draft_generic", "target_code", "target_tools", "target_mix", "target_math_base",
         "target_math")


def paths(world: str | None, data_dir: str | None) -> tuple[str, str]:
  world = os.path.abspath(world or os.environ.get("SPECDISTILL_WORLD", os.path.join("workdir", "world")))
  data_dir = os.path.abspath(data_dir or os.environ.get("SPECDISTILL_DATA_DIR", os.path.join("workdir", "data")))
  os.environ["SPECDISTILL_WORLD"], os.environ["SPECDISTILL_DATA_DIR"] = world, data_dir
  return world, data_dir


def prepare_data(scale: str, data_dir: str) -> float:
  from specdistill_jax.data import prepare
  t0 = time.time()
  small = scale == "micro"
  prepare.prepare(data_dir, list(prepare.corpora.BUNDLED), "small" if small else "full",
                  vocab_size=1024 if small else 8192, tokenizer_chars=300_000 if small else 3_000_000,
                  with_stats=not small)
  return time.time() - t0


def train_one(name: str, scale: str, world: str, in_process: bool) -> float:
  workdir = os.path.join(world, name)
  t0 = time.time()
  if in_process:
    from configs import world as world_config
    from specdistill_jax.distill.train import Trainer
    trainer = Trainer(world_config.get_config(f"{name},scale={scale}"), workdir)
    try:
      trainer.run()
    finally:
      trainer.close()
  else:
    cmd = [sys.executable, "-m", "specdistill_jax.train", f"--config=configs/world.py:{name},scale={scale}",
           f"--workdir={workdir}"]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ))
  return time.time() - t0


def last_eval(workdir: str) -> dict:
  from specdistill_jax import metrics
  path = os.path.join(workdir, "metrics.jsonl")
  records = [r for r in metrics.read(path) if "eval/ce" in r] if os.path.exists(path) else []
  return records[-1] if records else {}


def build(scale: str = "cpu", world: str | None = None, data_dir: str | None = None,
          in_process: bool = False, names=ORDER, report: str | None = None) -> dict:
  world, data_dir = paths(world, data_dir)
  os.makedirs(world, exist_ok=True)
  manifest_path = os.path.join(world, "manifest.json")
  manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
  from specdistill_jax.data import corpora
  config = "small" if scale == "micro" else "full"
  missing = [n for n in corpora.BUNDLED if not os.path.isdir(os.path.join(data_dir, n, config))]
  if "data_seconds" not in manifest or missing or not os.path.exists(os.path.join(data_dir, "tokenizer")):
    # reuses what is prepared: builds only the missing corpora (a new bundled one, say)
    manifest["data_seconds"] = manifest.get("data_seconds", 0.0) + prepare_data(scale, data_dir)
  for name in names:
    hf = os.path.join(world, name, "hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
      print(f"== building {name} (scale {scale})", flush=True)
      manifest[name] = {"seconds": train_one(name, scale, world, in_process),
                        "built_by": f"python experiments/build_world.py --scale {scale} --only {','.join(names)}"}
    entry = manifest.setdefault(name, {})
    from configs import world as world_config
    from specdistill_jax import models
    cfg = models.load_hf(hf).config
    wc = world_config.get_config(f"{name},scale={scale}")
    entry.update(params=cfg.num_params(), d_model=cfg.d_model, layers=cfg.num_layers,
                 steps=wc.train.steps, corpora=wc.data.corpora, batch=wc.data.batch_size,
                 eval_ce=last_eval(os.path.join(world, name)).get("eval/ce"))
    with open(manifest_path, "w") as fh:
      json.dump(manifest, fh, indent=1)
  if report:
    write_report(manifest, scale, report)
  return manifest


def write_report(manifest: dict, scale: str, path: str) -> None:
  rows = ["| model | params | layers x d_model | corpora | steps x batch x 128 | validation CE | minutes | built by |",
          "|---|---:|---|---|---|---:|---:|---|"]
  total = manifest.get("data_seconds", 0.0)
  for name in ORDER:
    e = manifest.get(name)
    if not e:
      continue
    total += e.get("seconds", 0.0)
    ce = f"{e['eval_ce']:.2f}" if e.get("eval_ce") is not None else "-"
    rows.append(f"| {name} | {e['params'] / 1e6:.2f}M | {e['layers']} x {e['d_model']} | {e['corpora']} | "
                f"{e['steps']} x {e['batch']} | {ce} | {e.get('seconds', 0) / 60:.1f} | `{e.get('built_by', '-')}` |")
  text = "\n".join([f"# The model world (scale {scale})", "",
                    "Command: `python experiments/build_world.py --scale " + scale + "`", "",
                    "Rewritten whole from the world's manifest.json at every build; a model trained by an earlier "
                    "build (or an `--only` build) is reused, and its row names the build that trained it.", "",
                    f"Data preparation: {manifest.get('data_seconds', 0):.0f} s. Total: {total / 60:.1f} min "
                    "on 2 CPU cores (bf16 compute, fp32 parameters).", "", *rows, ""])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as fh:
    fh.write(text)
  print(text)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--scale", default="cpu", choices=("cpu", "quick", "micro"))
  p.add_argument("--world", default=None)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--only", default=",".join(ORDER))
  p.add_argument("--in_process", action="store_true")
  p.add_argument("--report", default=None, help="default: experiments/results/world.md at scale cpu")
  args = p.parse_args(argv)
  report = args.report or (os.path.join(ROOT, "experiments", "results", "world.md") if args.scale == "cpu" else None)
  build(args.scale, args.world, args.data_dir, args.in_process, args.only.split(","), report)


if __name__ == "__main__":
  main()

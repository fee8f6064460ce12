"""Study: acceptance and speedup of the real target's drafts against unique training data and steps.

    python experiments/draft_scaling.py --config=configs/draft_scaling.py:cpu ['--config.cells=a,b']

Cells and axes: configs/draft_scaling.py. For each cell the driver trains the draft (or reuses
it: cells live under `workdir/draft_scaling/`), counts the unique data its batches held
(Source.unique_data: distinct examples and their loss tokens), measures its training step
time from its metrics (median seconds per step, so a resumed run is not charged its restart),
and benchmarks it with the suite's B=1 protocol (specdistill_jax.bench.suite.run_suite). Each
cell's benchmark rows are kept next to it (bench.json), so the table covers every cell
measured so far, including cells of earlier runs. Writes experiments/results/draft_scaling.md
and draft_scaling.png (first-position acceptance against unique loss tokens, log x; and
against steps at fixed and at fresh data).
"""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import studylib as lib

from configs import draft_scaling as study
from specdistill_jax import metrics as metrics_lib
from specdistill_jax.bench.report import ci_text


def cell_config(config, name: str):
  """The train config of one cell (see configs/draft_scaling.py)."""
  kind, recipe, examples, steps, overrides = study.cells(config.scale)[name]
  base = config.independent if kind == "token" else (config.regenerated if recipe == "regenerated" else config.feature)
  c = copy.deepcopy(base)
  c.train.steps = steps
  c.train.checkpoint_every = min(c.train.checkpoint_every, steps)
  c.optim.warmup_steps = max(1, min(c.optim.warmup_steps, steps // 5))
  c.data.max_examples = examples
  if recipe == "regenerated":
    c.data.num_prompts = examples  # the target answers the same turns the fixed cell trains on
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def cell_dir(config, name: str) -> str:
  return os.path.join(config.workdir, "draft_scaling", re.sub(r"[^A-Za-z0-9]+", "_", name))


def unique_data(cfg, workdir: str) -> tuple[int, int]:
  """(distinct examples, their loss tokens) that the cell's `train.steps` batches held."""
  from specdistill_jax.data.tokenizer import ChatFormat
  from specdistill_jax.distill import components, sources
  from specdistill_jax.distill.teacher_cache import TeacherCache
  d = cfg.data
  if d.source == "teacher_offline":
    cache = TeacherCache(d.offline_cache or os.path.join(workdir, "teacher_cache"))
    source = sources.TeacherOfflineSource(cache, d.batch_size, cfg.seed, white_box=False)
  else:
    chat = ChatFormat.from_dir(cfg.tokenizer)
    text = components.text_source(cfg, chat, d.corpora, d.split, d.max_examples)
    source = sources.FixedSource(components.pipeline(cfg, chat, text, cfg.seed), "tokens")
  return source.unique_data(cfg.train.steps)


def seconds_per_step(workdir: str) -> float:
  """Median seconds per step between consecutive train log records of the same run."""
  rows = [r for r in metrics_lib.read(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
  rates = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(rows, rows[1:])
           if b["step"] > a["step"] and b["time"] > a["time"]]
  return float(np.median(rates)) if rates else float("nan")


def measure_cell(config, name: str) -> dict:
  """Train (or reuse) a cell and benchmark it (or reuse its rows); returns its record."""
  from specdistill_jax.bench import protocol, report, suite
  workdir = cell_dir(config, name)
  record_path = os.path.join(workdir, "study.json")
  if os.path.exists(record_path):
    with open(record_path) as fh:
      return json.load(fh)
  cfg = cell_config(config, name)
  hf = lib.train_cell(cfg, workdir)
  examples, tokens = unique_data(cfg, workdir)
  result = suite.run_suite(
      config.target_dir, hf, [s.strip() for s in config.sets.split(",") if s.strip()],
      [protocol.Method(config.gamma)], list(config.temperatures), config.max_new_tokens, config.limit,
      dtype=config.dtype, data_dir=config.data_dir, corpus_config=config.corpus_config,
      cache_dir=os.path.join(config.workdir, "bench_cache"), peers=(), pair=name)
  kind, recipe, _, steps, overrides = study.cells(config.scale)[name]
  record = dict(name=name, kind=kind, recipe=recipe, steps=steps, overrides=overrides, unique_examples=examples,
                unique_loss_tokens=tokens, seconds_per_step=seconds_per_step(workdir),
                bench=report.json_rows(result))
  with open(record_path + ".tmp", "w") as fh:
    json.dump(record, fh, indent=1)
  os.replace(record_path + ".tmp", record_path)
  return record


def _row(record: dict, prompt_set: str, temperature: float):
  return next((r for r in record["bench"] if r["prompt_set"] == prompt_set and r["temperature"] == temperature),
              None)


def _first(record: dict, prompt_set: str, temperature: float = 0.0) -> float:
  r = _row(record, prompt_set, temperature)
  return r["position_acceptance"][0] if r and r["position_acceptance"] else float("nan")


def plot(records: list, first_set: str, results_dir: str) -> str:
  plt, save = lib.figure("draft_scaling", results_dir)
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  groups: dict = {}
  for r in records:
    label = f"{r['kind']} {r['recipe']}" + (f" {r['overrides']}" if r["overrides"] else "")
    groups.setdefault(label, []).append(r)
  for label, rs in groups.items():
    rs = sorted(rs, key=lambda r: r["unique_loss_tokens"])
    ax.plot([r["unique_loss_tokens"] for r in rs], [_first(r, first_set) for r in rs], "o-", label=label)
  ax.set_xscale("log")
  ax.set_xlabel("unique training loss tokens")
  ax.set_ylabel(f"first-position acceptance ({first_set}, T=0)")
  ax.legend(fontsize=7)
  by_data: dict = {}
  for r in records:
    if r["kind"] == "feature" and r["recipe"] == "fixed" and not r["overrides"]:
      by_data.setdefault(r["name"].split()[1], []).append(r)
  for data, rs in by_data.items():
    if len(rs) > 1:
      rs = sorted(rs, key=lambda r: r["steps"])
      bx.plot([r["steps"] for r in rs], [_first(r, first_set) for r in rs], "o-", label=f"data {data}")
  bx.set_xscale("log")
  bx.set_xlabel("training steps")
  bx.set_ylabel(f"first-position acceptance ({first_set}, T=0)")
  if bx.lines:
    bx.legend(fontsize=7)
  return save(fig)


def run(config) -> str:
  names = [n.strip() for n in config.cells.split(",") if n.strip()]
  known = study.cells(config.scale)
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"unknown cells {unknown}; known: {sorted(known)}")
  report = lib.Report("draft_scaling", "Draft scaling on the real target: unique data vs training steps",
                      f"python experiments/draft_scaling.py --config=configs/draft_scaling.py:{config.scale} "
                      f"'--config.cells={config.cells}'")
  for name in names:
    measure_cell(config, name)
  # every cell measured so far (this run's and earlier runs')
  records = []
  for name in known:
    path = os.path.join(cell_dir(config, name), "study.json")
    if os.path.exists(path):
      with open(path) as fh:
        records.append(json.load(fh))
  sets = [s.strip() for s in config.sets.split(",") if s.strip()]
  temps = list(config.temperatures)
  header = ["cell", "unique examples", "unique loss tokens", "steps", "s/step"]
  header += [f"{s} {h}" for s in sets for h in ("acc@1", "tau", "speedup T=0")]
  header += [f"{sets[0]} speedup T={t:g}" for t in temps if t != 0.0]
  rows = []
  for r in sorted(records, key=lambda r: (r["kind"], r["recipe"], str(r["overrides"]), r["unique_loss_tokens"],
                                          r["steps"])):
    row = [r["name"], r["unique_examples"], f"{r['unique_loss_tokens']:,}", r["steps"], f"{r['seconds_per_step']:.2f}"]
    for s in sets:
      b = _row(r, s, 0.0) or _row(r, s, temps[0])
      row += [f"{_first(r, s, b['temperature']):.3f}", f"{b['tau']:.2f}",
              f"{b['speedup']:.2f}x {ci_text(b['speedup_ci'])}"] if b else ["", "", ""]
    for t in temps:
      if t != 0.0:
        b = _row(r, sets[0], t)
        row.append(f"{b['speedup']:.2f}x {ci_text(b['speedup_ci'])}" if b else "")
    rows.append(row)
  first = records[0]["bench"][0] if records and records[0]["bench"] else None
  report.table(header, rows, (
      f"Each cell: B=1, {config.dtype}, chain gamma {config.gamma}, {config.max_new_tokens} new tokens, "
      f"--limit {config.limit} prompts per set (round-robin over categories); acc@1 = first-position "
      "acceptance, tau = tokens per round, speedup = SD tokens/s over plain decoding's in the same run, with "
      "its 95% bootstrap interval over prompts. s/step = median training step time from the cell's metrics. "
      + (f"c {first['c']:.3f}, v({config.gamma + 1}) {first['v']:.2f} (first cell)." if first else "")))
  pos_rows = []
  for r in records:
    b = _row(r, sets[0], 0.0) or _row(r, sets[0], temps[0])
    if b:
      pos_rows.append([r["name"]] + [f"{a:.3f}" for a in b["position_acceptance"]])
  report.table(["cell"] + [f"position {i + 1}" for i in range(config.gamma)], pos_rows,
               f"Per-position acceptance on {sets[0]} (T={0 if 0.0 in temps else temps[0]:g}): the fraction of "
               "rounds reaching a position whose draft there is accepted.")
  missing = [n for n in known if not os.path.exists(os.path.join(cell_dir(config, n), "study.json"))]
  report.text("Against the paper(s): published first-position acceptance / tau of EAGLE-3 heads on larger "
              "targets (different models and data, for scale only): "
              + "; ".join(f"{who}: acc@1 {a}" + (f", tau {t}" if t else "") for who, a, t in study.PUBLISHED)
              + "." + (f"\n\nCells configured but not measured yet: {', '.join(missing)}." if missing else ""))
  plot(records, sets[0], config.results_dir or None)
  return report.write(config.results_dir or None)


if __name__ == "__main__":
  lib.cli(run, "configs/draft_scaling.py:cpu")

"""A benchmark run written whole: markdown (command at the top), JSON rows and a PNG.

* markdown: the command that rewrites the file, the machine, the protocol, one table per
  prompt set overall (speedup with its 95% CI, alpha, tau, per-position acceptance, c, v,
  predicted speedup, greedy SD vs AR ids), one per category, and the peers;
* JSON rows (`json_rows`) into a shared list (experiments/results/decode_benchmark.json),
  replacing rows with the same (pair, prompt_set, gamma, tree, temperature, dtype); a row of
  prompt lookup or of the draft with it names its drafter in its pair ('PAIR [lookup]'); rows
  of the earlier one-prompt protocol (no `prompt_set` field) are dropped;
* PNG: speedup per category, one bar per method, a panel per temperature.
"""

from __future__ import annotations

import json
import os

from specdistill_jax.bench.suite import SuiteResult
from specdistill_jax.models import backend_layout

PROTOCOL = (
    "Protocol: batch 1; every prompt of each set decoded (or the printed --limit, taken round-robin over "
    "categories); at most {new} new tokens, stop at eos; the target's chat template; AR and every SD method "
    "of a prompt run back to back, {repeats} time(s), median per prompt, compilation excluded; tokens/s = total "
    "tokens / total seconds (prefill included); speedup = SD tok/s / AR tok/s with a 95% bootstrap CI over "
    "prompts; tau = tokens per round (bonus token included); acceptance by position = accepted / tested at "
    "chain position (tree depth) 1..gamma; c = draft step / target step, v(k) = k-token verification / "
    "target step and r(gamma) = one proposal round of gamma drafts / target step (gamma draft steps; one pass "
    "of a block drafter), measured in this run at the set's cache size; predicted = tau / (r(gamma) + "
    "v(gamma+1)). "
    "T > 0 is exact rejection sampling; at T=0 SD ids are compared with AR ids on every prompt (the kernel "
    "layout computes every row of a k-token pass as a one-token pass does, so they are equal; with XLA's dots "
    "a bf16 k-token pass may round a near-tie differently: such rows are counted and the first differing "
    "position is given).")


def ci_text(ci) -> str:
  return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"


def _greedy(s) -> str:
  if "greedy_differs" not in s:
    return "-"
  d = s["greedy_differs"]
  if not d:
    return f"0/{s['num_prompts']}"
  return f"{len(d)}/{s['num_prompts']} (first at token " + ", ".join(str(x[1]) for x in d[:4]) + \
      (", ..." if len(d) > 4 else "") + ")"


def markdown(result: SuiteResult, command: str, minutes: float) -> str:
  import jax
  lines = [f"# Speculative decoding benchmark: {result.pair}", "", f"Command: `{command}`", "",
           f"Machine: {backend_layout.describe_cpu()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
           f"({jax.devices()[0].platform}); {result.dtype} parameters and compute, "
           f"{result.layout} parameter layout (models/backend_layout.py). This run took {minutes:.1f} min.",
           "", PROTOCOL.format(new=result.max_new_tokens, repeats=result.repeats), ""]
  for s in result.sets:
    lines += [f"## {s.name}: {s.num_prompts} prompts" + (f" (--limit {s.limit})" if s.limit else ""), "",
              f"Target step {s.target_step_ms:.1f} ms; c = {s.c:.3f}; "
              + ", ".join(f"v({k}) = {x:.2f}" for k, x in s.v.items())
              + "".join(f", r({g}) = {x:.3f}" if d == "draft" else f", {d} r({g}) = {x:.3f}"
                        for (d, g), x in s.draft_round.items()) + ".", "",
              "| T | method | AR tok/s | SD tok/s | speedup [95% CI] | alpha | tau | acceptance by position | "
              "predicted | ms/round | greedy SD != AR |",
              "|---:|---|---:|---:|---|---:|---:|---|---:|---:|---|"]
    for x in (x for x in s.summaries if x["category"] == "all"):
      pred = x.get("predicted_speedup")
      lines.append(f"| {x['temperature']:g} | {x['method'].label} | {x['ar_tokens_per_s']:.1f} | "
                   f"{x['sd_tokens_per_s']:.1f} | {x['speedup']:.2f}x {ci_text(x['speedup_ci'])} | {x['alpha']:.3f} | "
                   f"{x['tau']:.2f} | {' / '.join(f'{a:.2f}' for a in x['position_acceptance'])} | "
                   f"{'-' if pred is None else f'{pred:.2f}x'} | {x['ms_per_round']:.1f} | {_greedy(x)} |")
    cats = sorted({x["category"] for x in s.summaries} - {"all"})
    if len(cats) > 1:
      lines += ["", f"Per category ({s.name}): speedup / tau.", "",
                "| T | method | " + " | ".join(cats) + " |", "|---:|---|" + "---:|" * len(cats)]
      for temp in result.temperatures:
        for m in result.methods:
          cells = {x["category"]: x for x in s.summaries if x["temperature"] == temp and x["method"] == m}
          lines.append(f"| {temp:g} | {m.label} | " + " | ".join(
              f"{cells[c]['speedup']:.2f}x / {cells[c]['tau']:.2f}" for c in cats) + " |")
    if s.peers:
      ar0 = next((x["ar_tokens_per_s"] for x in s.summaries if x["category"] == "all" and x["temperature"] == 0.0),
                 None)
      lines += ["", f"Peers on the same {s.num_prompts} prompts (T=0):", "",
                "| system | tok/s | vs our AR | note |", "|---|---:|---:|---|"]
      if ar0:
        lines.append(f"| ours: plain decoding ({result.dtype}) | {ar0:.1f} | 1.00x | |")
        for x in (x for x in s.summaries if x["category"] == "all" and x["temperature"] == 0.0):
          lines.append(f"| ours: SD {x['method'].label} ({result.dtype}) | {x['sd_tokens_per_s']:.1f} | "
                       f"{x['sd_tokens_per_s'] / ar0:.2f}x | |")
      for r in s.peers:
        tps = r["tokens_per_second"]
        rel = f"{tps / ar0:.2f}x" if tps and ar0 else "-"
        lines.append(f"| {r['system']} | {'-' if tps is None else f'{tps:.1f}'} | {rel} | {r['note']} |")
    lines.append("")
  return "\n".join(lines)


def json_rows(result: SuiteResult) -> list[dict]:
  rows = []
  for s in result.sets:
    for x in (x for x in s.summaries if x["category"] == "all"):
      m = x["method"]
      cats = {y["category"]: dict(speedup=round(y["speedup"], 3), tau=round(y["tau"], 3), num_prompts=y["num_prompts"])
              for y in s.summaries if y["method"] == m and y["temperature"] == x["temperature"] and y["category"] != "all"}
      pred = x.get("predicted_speedup")
      rows.append(dict(
          pair=result.pair if m.drafter == "draft" else f"{result.pair} [{m.drafter}]", drafter=m.drafter, batch=1, temperature=x["temperature"], gamma=m.gamma, tree=m.tree_field,
          dtype=result.dtype, ar_tokens_per_s=round(x["ar_tokens_per_s"], 2),
          sd_tokens_per_s=round(x["sd_tokens_per_s"], 2), speedup=round(x["speedup"], 3),
          predicted_speedup=None if pred is None else round(pred, 3), alpha=round(x["alpha"], 4),
          tau=round(x["tau"], 3), c=round(s.c, 4), v=round(s.v[m.verified], 3),
          draft_round=None if m.tree is not None else round(s.draft_round[(m.drafter, m.gamma)], 4),
          prompt_set=s.name,
          num_prompts=x["num_prompts"], new_tokens=x["new_tokens"], speedup_ci=x["speedup_ci"],
          max_new_tokens=result.max_new_tokens, position_acceptance=x["position_acceptance"],
          greedy_differs=len(x["greedy_differs"]) if "greedy_differs" in x else None, categories=cats,
          source="specdistill_jax.bench"))
  return rows


KEY = ("pair", "prompt_set", "gamma", "tree", "temperature", "dtype")


def write_json(path: str, rows: list[dict]) -> None:
  ident = lambda r: tuple(json.dumps(r.get(k)) for k in KEY)  # noqa: E731
  mine = {ident(r) for r in rows}
  old = []
  if os.path.exists(path):
    with open(path) as fh:
      old = [r for r in json.load(fh) if r.get("prompt_set") and ident(r) not in mine]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as fh:
    json.dump(old + rows, fh, indent=1)
  os.replace(path + ".tmp", path)


def plot(result: SuiteResult, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  temps = result.temperatures
  fig, axes = plt.subplots(len(temps), 1, figsize=(max(6, 1.1 * sum(len({x["category"] for x in s.summaries})
                                                                      for s in result.sets)), 3.2 * len(temps)),
                           squeeze=False)
  for ax, temp in zip(axes[:, 0], temps):
    groups = [(s.name, c) for s in result.sets for c in ["all"] + sorted({x["category"] for x in s.summaries} - {"all"})]
    width = 0.8 / len(result.methods)
    for j, m in enumerate(result.methods):
      vals = []
      for name, cat in groups:
        s = next(s for s in result.sets if s.name == name)
        vals.append(next(x["speedup"] for x in s.summaries if x["method"] == m and x["category"] == cat
                         and x["temperature"] == temp))
      ax.bar(np.arange(len(groups)) + (j - (len(result.methods) - 1) / 2) * width, vals, width, label=m.label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{n}\n{c}" if c == "all" else c for n, c in groups], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("speedup over AR")
    ax.set_title(f"{result.pair}, {result.dtype}, B=1, T={temp:g}", fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(result.methods)))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)

"""Study f (TAPS: task-aware drafters combined by confidence routing).

    python experiments/taps.py --config=configs/taps.py:cpu
Writes experiments/results/taps.md and taps.png.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import studylib as lib

from specdistill_jax import sampling

CLAIM = ("TAPS (2603.27027): each specialised drafter wins on its own domain; checkpoint (parameter) "
         "averaging fails; confidence routing beats either single drafter overall (HASS tau, MT/GSM8K/"
         "MATH-500/SVAMP: math 2.37/4.96/5.42/4.94, ShareGPT 3.89/4.17/3.98/4.09, routed 3.93/4.93/5.38/4.88).")


def run(config) -> str:
  chat = lib.ChatFormat.from_dir(config.tokenizer) if config.tokenizer else lib.chat_format(config.data_dir)
  report = lib.Report("taps", "TAPS: specialised drafters, averaged vs routed",
                      f"python experiments/taps.py --config=configs/taps.py:{config.scale}")
  target = lib.model(config.target)
  names = [n for n, _ in config.domains]
  drafters = {}
  for name, corpus in config.domains:
    for seed in range(config.seeds):
      c = copy.deepcopy(config.base)
      c.data.corpora, c.seed = corpus, seed
      drafters[name, seed] = lib.train_cell(c, os.path.join(config.workdir, "taps", f"{name}_s{seed}"))
  methods = {f"{n} drafter": (lambda s, n=n: lib.model(drafters[n, s])) for n in names}
  averaged = {}

  def average(seed):
    if seed not in averaged:
      averaged[seed] = sampling.average_params([lib.model(drafters[n, seed]) for n in names])
    return averaged[seed]

  methods["parameter average"] = average
  methods[f"routed ({config.signal})"] = lambda s: [lib.model(drafters[n, s]) for n in names]
  results = {}
  for domain, corpus in config.domains:
    prompts = {s: lib.prompts(chat, corpus, config.num_prompts, s, config.max_prompt_tokens,
                              corpus_config=config.corpus_config) for s in range(config.seeds)}
    for method, draft_of in methods.items():
      results[domain, method] = lib.seed_stats(target, draft_of, prompts, config)
  rows = []
  for method in methods:
    row = [method]
    for t in config.temperatures:
      taus = [results[d, method][t]["tau"] for d in names]
      row += [lib.fmt(s, 2) for s in taus] + [f"{np.mean([s.mean for s in taus]):.2f}"]
    rows.append(row)
  header = ["drafter"] + [f"{h} (T={t:g})" for t in config.temperatures for h in [*names, "mean"]]
  report.table(header, rows, f"tau (tokens per target call), gamma {config.gamma}, {config.num_prompts} validation "
               f"prompts per domain, mean ± std over {config.seeds} seeds. One target: {os.path.basename(os.path.dirname(config.target))}.")
  rows = [[m] + [lib.fmt(results[d, m][t]["alpha"]) for t in config.temperatures for d in names] for m in methods]
  report.table(["drafter"] + [f"alpha {d} (T={t:g})" for t in config.temperatures for d in names], rows)
  lines = []
  routed = f"routed ({config.signal})"
  for t in config.temperatures:
    mean_tau = {m: np.mean([results[d, m][t]["tau"].mean for d in names]) for m in methods}
    singles = [f"{n} drafter" for n in names]
    own = all(results[d, f"{d} drafter"][t]["tau"].mean >= max(results[d, s][t]["tau"].mean for s in singles) - 1e-9
              for d in names)
    best_single = max(singles, key=lambda m: mean_tau[m])
    lines.append(
        f"T={t:g}: specialists win their own domain: {'yes' if own else 'no'}; mean tau routed "
        f"{mean_tau[routed]:.2f} vs best single ({best_single}) {mean_tau[best_single]:.2f} "
        f"({'routing wins: agrees' if mean_tau[routed] > mean_tau[best_single] else 'routing does not win: disagrees'}); "
        f"parameter average {mean_tau['parameter average']:.2f} "
        f"({'below both specialists on average: agrees' if mean_tau['parameter average'] < min(mean_tau[s] for s in singles) else 'not below both: disagrees'}).")
  report.text(f"**Against the paper.** {CLAIM}\n\n" + "\n\n".join(lines) + "\n\nThe drafters here are distilled "
              "copies of one generic draft (as TAPS' heads share a backbone), so averaging them is less harmful "
              "than averaging independently trained models; routing at temperature 1 uses the previous round's "
              "confidences to keep the output exactly the target's (see sampling/routing.py).")
  plt, save = lib.figure("taps", config.results_dir or None)
  fig, axes = plt.subplots(1, len(config.temperatures), figsize=(5 * len(config.temperatures), 3.6))
  for ax, t in zip(np.atleast_1d(axes), config.temperatures):
    lib.bar_chart(ax, names, {m: [results[d, m][t]["tau"] for d in names] for m in methods}, "tau", f"T={t:g}")
  save(fig)
  return report.write(config.results_dir or None)


if __name__ == "__main__":
  lib.cli(run, "configs/taps.py:cpu")

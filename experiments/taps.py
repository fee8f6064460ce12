"""Study f (TAPS: task-aware drafters combined by confidence routing).

    python experiments/taps.py --config=configs/taps.py:cpu
Methods, on each domain at T=0 and T=1, 3 seeds: each drafter alone (chain), their
parameter average, routed chains with the confidence and the entropy signal, the
merged tree of both drafters (one target pass), and each drafter's own dynamic tree, of
the merged tree's spec and with as many verified drafts as its chain (equal cost).
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
  tree = sampling.TreeSpec(config.gamma, config.tree_top_k, config.tree_nodes_per_level * config.gamma)
  equal_cost = sampling.TreeSpec(config.gamma, config.tree_top_k, config.gamma)
  single = lambda n: (lambda s: lib.model(drafters[n, s]))  # noqa: E731
  both = lambda s: [lib.model(drafters[n, s]) for n in names]  # noqa: E731
  # method -> (draft_of(seed), decode keywords)
  methods = {f"{n} drafter": (single(n), {}) for n in names}
  averaged = {}

  def average(seed):
    if seed not in averaged:
      averaged[seed] = sampling.average_params([lib.model(drafters[n, seed]) for n in names])
    return averaged[seed]

  methods["parameter average"] = (average, {})
  for signal in ("confidence", "entropy"):
    methods[f"routed chain ({signal})"] = (both, {"signal": signal})
  methods["merged tree"] = (both, {"tree": tree})
  for n in names:
    methods[f"{n} drafter, tree"] = (single(n), {"tree": tree})
    methods[f"{n} drafter, tree at chain cost"] = (single(n), {"tree": equal_cost})
  results = {}
  for domain, corpus in config.domains:
    prompts = {s: lib.prompts(chat, corpus, config.num_prompts, s, config.max_prompt_tokens,
                              corpus_config=config.corpus_config) for s in range(config.seeds)}
    for method, (draft_of, decode) in methods.items():
      results[domain, method] = lib.seed_stats(target, draft_of, prompts, config, **decode)
  rows = []
  for method in methods:
    row = [method]
    for t in config.temperatures:
      taus = [results[d, method][t]["tau"] for d in names]
      row += [lib.fmt(s, 2) for s in taus] + [f"{np.mean([s.mean for s in taus]):.2f}"]
    rows.append(row)
  header = ["drafter"] + [f"{h} (T={t:g})" for t in config.temperatures for h in [*names, "mean"]]
  report.table(header, rows, f"tau (tokens per target call), chains gamma {config.gamma}; merged tree: each drafter's "
               f"TreeSpec{(tree.depth, tree.top_k, tree.num_nodes)} (depth, top_k, num_nodes), shared prefixes merged, one target pass; "
               f"'tree': one drafter's tree of the same spec; 'tree at chain cost': "
               f"TreeSpec{(equal_cost.depth, equal_cost.top_k, equal_cost.num_nodes)}, the chain's number of verified "
               f"drafts. {config.num_prompts} validation prompts per domain, mean ± std "
               f"over {config.seeds} seeds. One target: {os.path.basename(os.path.dirname(config.target))}.")
  rows = [[m] + [lib.fmt(results[d, m][t]["alpha"]) for t in config.temperatures for d in names] for m in methods]
  report.table(["drafter"] + [f"alpha {d} (T={t:g})" for t in config.temperatures for d in names], rows,
               "alpha: accepted / tested drafts along the verified path (per depth for trees).")
  report.text(f"**Against the paper.** {CLAIM}\n\n" + "\n\n".join(verdicts(results, names, config.temperatures))
              + "\n\nThe drafters here are distilled copies of one generic draft (as TAPS' heads share a backbone), "
              "so averaging them is less harmful than averaging independently trained models; routing at "
              "temperature 1 uses the previous round's confidences to keep the output exactly the target's "
              "(sampling/routing.py); trees are exact at every temperature (sampling/tree.py).")
  plt, save = lib.figure("taps", config.results_dir or None)
  fig, axes = plt.subplots(1, len(config.temperatures), figsize=(5 * len(config.temperatures), 3.6))
  for ax, t in zip(np.atleast_1d(axes), config.temperatures):
    lib.bar_chart(ax, names, {m: [results[d, m][t]["tau"] for d in names] for m in methods}, "tau", f"T={t:g}")
    ax.legend(fontsize=6)
  save(fig)
  return report.write(config.results_dir or None)


def verdicts(results, names, temperatures) -> list[str]:
  """TAPS' claims checked against this run's mean tau over the domains."""
  lines = []
  singles = [f"{n} drafter" for n in names]
  for t in temperatures:
    tau = {m: np.mean([results[d, m][t]["tau"].mean for d in names]) for (_, m) in results}
    own = all(results[d, f"{d} drafter"][t]["tau"].mean >= max(results[d, s][t]["tau"].mean for s in singles) - 1e-9
              for d in names)
    best = max(singles, key=lambda m: tau[m])
    conf, ent, merged = tau["routed chain (confidence)"], tau["routed chain (entropy)"], tau["merged tree"]
    tree_gain = min(tau[f"{n} drafter, tree"] / tau[f"{n} drafter"] for n in names)
    equal_gain = min(tau[f"{n} drafter, tree at chain cost"] / tau[f"{n} drafter"] for n in names)
    lines.append(
        f"T={t:g}: specialists win their own domain: {'yes' if own else 'no'}. Mean tau: merged tree {merged:.2f}, "
        f"routed chain (confidence) {conf:.2f}, best single ({best}) {tau[best]:.2f}: the merged tree "
        f"{'accepts longest: agrees' if merged > max(conf, tau[best]) else 'does not accept longest: disagrees'} "
        f"(best single drafter's own tree of the same spec, half the verified nodes: "
        f"{max(tau[f'{n} drafter, tree'] for n in names):.2f}). "
        f"Routing signal: confidence {conf:.2f} vs entropy {ent:.2f} "
        f"({'confidence wins: agrees' if conf > ent else 'confidence does not win: disagrees'}). "
        f"Parameter average {tau['parameter average']:.2f} "
        f"({'below both specialists: agrees' if tau['parameter average'] < min(tau[s] for s in singles) else 'not below both: disagrees'}). "
        f"One drafter, dynamic tree vs its chain: tau ratio {tree_gain:.2f} (lowest over drafters; target >= 1.3: "
        f"{'met' if tree_gain >= 1.3 else 'not met'}); at the chain's number of verified drafts {equal_gain:.2f}.")
  return lines


if __name__ == "__main__":
  lib.cli(run, "configs/taps.py:cpu")

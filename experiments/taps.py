"""Study f (TAPS: task-aware drafters combined by confidence routing).

    python experiments/taps.py --config=configs/taps.py:cpu
Methods, on each domain at T=0 and T=1, 3 seeds: each drafter alone (chain), their
parameter average, routed chains with the confidence and the entropy signal, the
merged tree of both drafters (one target pass), and each drafter's own dynamic tree, of
the merged tree's spec and with as many verified drafts as its chain (equal cost).
With a third, mixed-data drafter (configs/taps.py:math) it is compared with the specialists,
and a domain with verified answers (math) adds answer accuracy of plain decoding and of lossy
SD. Writes experiments/results/taps.md and taps.png (taps_math.md / .png for the math preset).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import studylib as lib

from specdistill_jax import evaluate, sampling
from specdistill_jax.data.math_word_problems import extract_answer

CLAIM = ("TAPS (2603.27027): each specialised drafter wins on its own domain; checkpoint (parameter) "
         "averaging fails; confidence routing beats either single drafter overall (HASS tau, MT/GSM8K/"
         "MATH-500/SVAMP: math 2.37/4.96/5.42/4.94, ShareGPT 3.89/4.17/3.98/4.09, routed 3.93/4.93/5.38/4.88); "
         "mixing the training data gives no clear winner.")
ANSWER_CORPORA = ("math_word_problems", "gsm8k")  # references end in '#### answer'


def run(config) -> str:
  chat = lib.ChatFormat.from_dir(config.tokenizer) if config.tokenizer else lib.chat_format(config.data_dir)
  report = lib.Report(config.study, "TAPS: specialised drafters, averaged vs routed"
                      + (", with a mixed-data drafter" if config.mixed else ""),
                      f"python experiments/taps.py --config=configs/taps.py:{config.preset}")
  target = lib.model(config.target)
  names = [n for n, _ in config.domains]
  trained = list(config.domains) + ([("mixed", ",".join(c for _, c in config.domains))] if config.mixed else [])
  cell_dir = "taps" if config.study == "taps" else config.study
  drafters = {}
  for name, corpus in trained:
    for seed in range(config.seeds):
      c = copy.deepcopy(config.base)
      c.data.corpora, c.seed = corpus, seed
      drafters[name, seed] = lib.train_cell(c, os.path.join(config.workdir, cell_dir, f"{name}_s{seed}"))
  tree = sampling.TreeSpec(config.gamma, config.tree_top_k, config.tree_nodes_per_level * config.gamma)
  equal_cost = sampling.TreeSpec(config.gamma, config.tree_top_k, config.gamma)
  single = lambda n: (lambda s: lib.model(drafters[n, s]))  # noqa: E731
  both = lambda s: [lib.model(drafters[n, s]) for n in names]  # noqa: E731
  # method -> (draft_of(seed), decode keywords)
  methods = {f"{n} drafter": (single(n), {}) for n, _ in trained}
  averaged = {}

  def average(seed):
    if seed not in averaged:
      averaged[seed] = sampling.average_params([lib.model(drafters[n, seed]) for n in names])
    return averaged[seed]

  methods["parameter average"] = (average, {})
  for signal in ("confidence", "entropy"):
    methods[f"routed chain ({signal})"] = (both, {"signal": signal})
  methods["merged tree"] = (both, {"tree": tree})
  for n, _ in trained:
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
  for domain, corpus in config.domains:
    if corpus in ANSWER_CORPORA:
      answer_accuracy_table(report, config, chat, target, corpus, domain,
                            {f"{n} drafter": single(n) for n, _ in trained}, both, names)
  report.text(f"**Against the paper.** {CLAIM}\n\n" + "\n\n".join(verdicts(results, names, config.temperatures))
              + "\n\nThe drafters here are distilled copies of one generic draft (as TAPS' heads share a backbone), "
              "so averaging them is less harmful than averaging independently trained models; routing at "
              "temperature 1 uses the previous round's confidences to keep the output exactly the target's "
              "(sampling/routing.py); trees are exact at every temperature (sampling/tree.py).")
  if config.mixed:
    report.text(mixed_verdict(results, names, config.temperatures))
  plt, save = lib.figure(config.study, config.results_dir or None)
  fig, axes = plt.subplots(1, len(config.temperatures), figsize=(5 * len(config.temperatures), 3.6))
  for ax, t in zip(np.atleast_1d(axes), config.temperatures):
    lib.bar_chart(ax, names, {m: [results[d, m][t]["tau"] for d in names] for m in methods}, "tau", f"T={t:g}")
    ax.legend(fontsize=6)
  save(fig)
  return report.write(config.results_dir or None)


def answer_accuracy_table(report, config, chat, target, corpus, domain, singles, both, names) -> None:
  """Answer accuracy of plain decoding and of lossy SD (chains, T=1) with each drafter and the routed pair."""
  runs = {}
  for seed in range(config.seeds):
    prompts = lib.prompts(chat, corpus, config.answer_prompts, seed, config.max_prompt_tokens,
                          corpus_config=config.corpus_config)
    answers = [extract_answer(r) for r in lib.references(corpus, config.answer_prompts, seed,
                                                         corpus_config=config.corpus_config)]
    score = lambda outs: evaluate.answer_accuracy([chat.decode(o) for o in outs], answers)  # noqa: E731
    for temp in config.temperatures:
      g = sampling.generate_batch(target, prompts, config.answer_tokens, temp, rng=seed)
      toks, lens = np.asarray(g.tokens), np.asarray(g.lengths)
      runs.setdefault(("target, plain decoding", f"T={temp:g}"), []).append(
          (score([list(toks[r, : lens[r]]) for r in range(len(prompts))]), float("nan")))
    settings = [(None, "lossless")] + [((k, e), f"f_{k} eps={e:g}") for k in config.lossy_kinds
                                        for e in config.lossy_eps]
    drafts = dict(singles, **{f"routed ({'/'.join(names)}, confidence)": both})
    for method, draft_of in drafts.items():
      for lenience, label in settings:
        r = lib.evaluate_pair(target, draft_of(seed), prompts, config.gamma, 1.0, seed, config.answer_tokens,
                              lenience=lenience)
        runs.setdefault((method, label), []).append((score(r["outputs"]), r["tau"]))
  rows = [[m, label, lib.fmt(lib.aggregate([a for a, _ in v])),
           lib.fmt(lib.aggregate([t for _, t in v]), 2)] for (m, label), v in runs.items()]
  report.table(["decoder", "acceptance", "answer accuracy", "tau"], rows,
               f"**Answer accuracy on {domain}** ({corpus} validation, {config.answer_prompts} problems x "
               f"{config.answer_tokens} tokens per seed, mean ± std over {config.seeds} seeds): the final "
               "'#### answer' against the verified one. SD rows sample at T=1 (lossless = the target's own "
               "distribution; lenience trades accuracy for tau, DistillSpec's lossy SD).")


def mixed_verdict(results, names, temperatures) -> str:
  """TAPS: mixing the training data gives no clear winner (is the mixed drafter best on every domain?)."""
  lines = []
  for t in temperatures:
    per = {d: {m: results[d, f"{m} drafter"][t]["tau"].mean for m in [*names, "mixed"]} for d in names}
    wins = [d for d in names if per[d]["mixed"] >= max(per[d].values()) - 1e-9]
    lines.append(f"T={t:g}: mixed-data drafter tau " + ", ".join(
        f"{d} {per[d]['mixed']:.2f} (own specialist {per[d][d]:.2f})" for d in names)
        + f"; best on {len(wins)} of {len(names)} domains: "
        + ("a clear winner: disagrees with 'no clear winner'." if len(wins) == len(names) else
           "no clear winner: agrees."))
  return "**Mixed training data.** " + " ".join(lines)


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

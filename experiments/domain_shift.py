"""Study a (domain shift): the generic draft's alpha and tau against the general vs domain targets.

    python experiments/domain_shift.py --config=configs/domain_shift.py:cpu
Writes experiments/results/domain_shift.md and domain_shift.png.
"""

from __future__ import annotations

import studylib as lib

CLAIM = ("2503.07807: a generic draft's acceptance drops significantly on domain targets "
         "(up to 38% is reported, *unconfirmed*).")


def run(config) -> str:
  chat = lib.chat_format(config.data_dir) if not config.tokenizer else lib.ChatFormat.from_dir(config.tokenizer)
  draft = lib.model(config.draft)
  report = lib.Report("domain_shift", "Domain shift: a generic draft on general vs domain targets",
                      f"python experiments/domain_shift.py --config=configs/domain_shift.py:{config.scale}")
  results = {}
  corpus_of = {name: corpus for name, _, corpus in config.domains}
  for domain, target_dir, corpus in config.domains:
    target = lib.model(target_dir)
    for temp in config.temperatures:
      runs = []
      for seed in range(config.seeds):
        p = lib.prompts(chat, corpus, config.num_prompts, seed, config.max_prompt_tokens,
                        corpus_config=config.corpus_config)
        runs.append(lib.evaluate_pair(target, draft, p, config.gamma, temp, seed, config.max_new_tokens))
      results[domain, temp] = {k: lib.aggregate([r[k] for r in runs]) for k in ("alpha", "tau")}
  domains = [name for name, _, _ in config.domains]
  rows = []
  for d in domains:
    row = [d, corpus_of[d]]
    for temp in config.temperatures:
      a, t = results[d, temp]["alpha"], results[d, temp]["tau"]
      drop = lib.relative(a.mean, results[domains[0], temp]["alpha"].mean)
      row += [lib.fmt(a), lib.fmt(t, 2), f"{drop:+.0f}%" if d != domains[0] else "-"]
    rows.append(row)
  header = ["target", "prompts"]
  for temp in config.temperatures:
    header += [f"alpha (T={temp:g})", f"tau (T={temp:g})", f"alpha vs {domains[0]}"]
  report.table(header, rows, f"Generic draft, gamma {config.gamma}, {config.num_prompts} validation prompts x "
               f"{config.max_new_tokens} new tokens, mean ± std over {config.seeds} seeds.")
  drops = {(d, t): lib.relative(results[d, t]["alpha"].mean, results[domains[0], t]["alpha"].mean)
           for d in domains[1:] for t in config.temperatures}
  finite = {k: v for k, v in drops.items() if v == v}
  (wd, wt), worst = min(finite.items(), key=lambda kv: kv[1]) if finite else ((domains[0], 0.0), float("nan"))
  verdict = ("agrees in direction" if worst < 0 else "does not reproduce") if finite else "undetermined"
  report.text(
      f"**Against the paper.** {CLAIM} Here the largest relative alpha drop on a domain target is "
      f"{worst:.0f}% ({wd}, T={wt:g}); drops per domain and temperature: "
      + ", ".join(f"{d} T={t:g}: {v:+.0f}%" for (d, t), v in drops.items()) + f". Verdict: {verdict}"
      + (f", and larger than the paper's up-to-38% ({-worst:.0f}%). Likely reason: the largest drop is on "
         "the narrowest domain; a 1.4M draft trained on chat alone has no prior for its format, whereas a "
         "real generic draft has seen code and JSON in pretraining." if finite and worst < -38 else
         ". Likely reason for the size: the domain targets are small models fine-tuned for a few hundred "
         "steps from the general target, so they stay closer to it than an 8B domain model does to a "
         "generic one; the narrower the domain's format, the larger the shift."))
  plt, save = lib.figure("domain_shift", config.results_dir or None)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, key in zip(axes, ("alpha", "tau")):
    lib.bar_chart(ax, domains, {f"T={t:g}": [results[d, t][key] for d in domains] for t in config.temperatures},
                  key, f"generic draft: {key} per target")
  save(fig)
  return report.write(config.results_dir or None)


if __name__ == "__main__":
  lib.cli(run, "configs/domain_shift.py:cpu")

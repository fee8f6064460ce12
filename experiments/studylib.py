"""Shared machinery of the study drivers in experiments/.

* `train_cell`: one distillation (or fine-tuning) run from a train config, cached: a cell
  whose workdir already holds an exported model is not retrained;
* `evaluate_pair`: alpha / tau (and optionally tokens/s) of a draft with a target on prompts;
* `Stat` / `aggregate`: mean and spread over seeds;
* `Report`: a markdown table with the command, the machine, timings and a comparison
  with the paper's claim, written to experiments/results/<study>.md;
* plotting helpers (matplotlib, Agg) writing experiments/results/<study>.png.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from specdistill_jax import loading, sampling  # noqa: E402
from specdistill_jax.data import ChatFormat, historical_queries  # noqa: E402

RESULTS = os.path.join(ROOT, "experiments", "results")


@dataclasses.dataclass
class Stat:
  mean: float
  std: float
  n: int

  def __str__(self) -> str:
    return fmt(self)


def aggregate(values: Sequence[float]) -> Stat:
  v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
  if not len(v):
    return Stat(float("nan"), float("nan"), 0)
  return Stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))


def fmt(stat: Stat, digits: int = 3) -> str:
  if stat.n == 0:
    return "-"
  if stat.n == 1:
    return f"{stat.mean:.{digits}f}"
  return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def relative(a: float, b: float) -> float:
  """(a - b) / b in percent."""
  return 100.0 * (a - b) / b if b else float("nan")


def train_cell(config, workdir: str) -> str:
  """Train (or reuse) one cell; returns its exported HF directory."""
  from specdistill_jax.distill.train import Trainer
  hf = os.path.join(workdir, config.export_hf or "hf")
  if os.path.exists(os.path.join(hf, "config.json")):
    return hf
  config.export_hf = config.export_hf or "hf"
  trainer = Trainer(config, workdir)
  try:
    trainer.run()
  finally:
    trainer.close()
  return hf


_MODELS: dict = {}


def model(path: str):
  """A model directory, loaded once per driver run."""
  if path not in _MODELS:
    _MODELS[path] = loading.load_model(path)
  return _MODELS[path]


def chat_format(data_dir: Optional[str] = None) -> ChatFormat:
  from specdistill_jax.data import corpora
  return ChatFormat.from_dir(os.path.join(data_dir or corpora.default_data_dir(), "tokenizer"))


def prompts(chat: ChatFormat, corpus: str, n: int, seed: int, max_prompt_tokens: int,
            split: str = "validation", corpus_config: str = "full") -> list[list[int]]:
  return historical_queries(chat, corpus, split, n, seed=seed, max_prompt_tokens=max_prompt_tokens,
                            config=corpus_config)


def references(corpus: str, n: int, seed: int, split: str = "validation", corpus_config: str = "full") -> list[str]:
  """The reference responses of the examples `prompts(..., seed)` draws."""
  from specdistill_jax.data.prompts import sampled_examples
  return [response for _, response in sampled_examples(corpus, split, n, None, seed, corpus_config)]


def evaluate_pair(target, draft, prompt_ids, gamma: int, temperature: float, seed: int,
                  max_new_tokens: int, lenience=None, timed: bool = False, tree=None, signal=None) -> dict:
  """One speculative decode of `prompt_ids`; with `timed`, the faster of two runs' tokens/s.

  draft: one model, or a list (routed per round by `signal`, or the merged tree with `tree`).
  """
  kw = dict(gamma=gamma, temperature=temperature, lenience=lenience, rng=seed, tree=tree)
  if isinstance(draft, (list, tuple)):
    routing = {"signal": signal} if signal else {}
    run = lambda: sampling.routed_speculative_generate(target, draft, prompt_ids, max_new_tokens,  # noqa: E731
                                                       **kw, **routing)
  else:
    run = lambda: sampling.speculative_generate(target, draft, prompt_ids, max_new_tokens, **kw)  # noqa: E731
  out, stats = run()
  if timed:
    _, again = run()
    stats["tokens_per_second"] = max(stats["tokens_per_second"], again["tokens_per_second"])
  stats["outputs"] = out
  return stats


def seed_stats(target, draft_of, prompts_by_seed: dict, config, gamma=None, temperatures=None,
               lenience=None, keys=("alpha", "tau"), timed: bool = False, **decode) -> dict:
  """{temperature: {key: Stat over seeds, "runs": per-seed stats}}; draft_of(seed) gives the draft
  (or a list: routing / merged tree); `timed`, `tree` and `signal` as in evaluate_pair."""
  out = {}
  for temp in temperatures if temperatures is not None else config.temperatures:
    runs = [evaluate_pair(target, draft_of(seed), prompts_by_seed[seed], gamma or config.gamma, temp, seed,
                          config.max_new_tokens, lenience=lenience, timed=timed, **decode)
            for seed in sorted(prompts_by_seed)]
    out[temp] = {k: aggregate([r[k] for r in runs]) for k in keys}
    out[temp]["runs"] = runs
  return out


def autoregressive_tps(target, prompt_ids, temperature: float, seed: int, max_new_tokens: int) -> float:
  """Tokens/s of plain decoding (the faster of two runs after compilation)."""
  best = 0.0
  for _ in range(2):
    g = sampling.generate_batch(target, prompt_ids, max_new_tokens, temperature, rng=seed)
    best = max(best, float(np.sum(np.asarray(g.lengths))) / max(g.wall_seconds, 1e-9))
  return best


def best_seconds(fn, repeats: int = 5) -> float:
  """Fastest of `repeats` timed calls of fn() (blocking on its result) after one warm-up."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_flops(dtype="float32", n: int = 2048) -> float:
  """FLOP/s of an n^3 matmul in `dtype` with fp32 accumulation: the practical peak here."""
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n)).astype(dtype)
  f = jax.jit(lambda a: jnp.einsum("ij,jk->ik", a, a, preferred_element_type=jnp.float32))
  return 2 * n ** 3 / best_seconds(lambda: f(a))


class Report:
  """Accumulates a study's markdown; `write` adds the header (command, machine, time)."""

  def __init__(self, study: str, title: str, command: str):
    self.study, self.title, self.command = study, title, command
    self.sections: list[str] = []
    self.t0 = time.time()

  def table(self, header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
    lines = ([f"{caption}", ""] if caption else []) + [
        "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    self.sections.append("\n".join(lines))

  def text(self, text: str) -> None:
    self.sections.append(text.strip())

  def write(self, results_dir: Optional[str] = None) -> str:
    results_dir = results_dir or RESULTS
    os.makedirs(results_dir, exist_ok=True)
    minutes = (time.time() - self.t0) / 60
    head = [f"# {self.title}", "", f"Command: `{self.command}`", "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
            f"({jax.devices()[0].platform}). This run took {minutes:.1f} min "
            "(cells already trained in an earlier run are reused and not counted).", ""]
    path = os.path.join(results_dir, f"{self.study}.md")
    with open(path, "w") as fh:
      fh.write("\n\n".join(["\n".join(head)] + self.sections) + "\n")
    print(open(path).read())
    return path


def figure(path_stem: str, results_dir: Optional[str] = None):
  """(fig, save) for a matplotlib figure saved as PNG next to the study's table."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  results_dir = results_dir or RESULTS
  os.makedirs(results_dir, exist_ok=True)

  def save(fig):
    fig.tight_layout()
    path = os.path.join(results_dir, f"{path_stem}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

  return plt, save


def replace_json_rows(path: str, rows: list[dict], key) -> None:
  """Write `rows` into the JSON list at `path`, dropping old rows with the same value(s) of `key`
  (a field name, or a tuple of them)."""
  import json
  keys = (key,) if isinstance(key, str) else tuple(key)
  ident = lambda r: tuple(json.dumps(r.get(k)) for k in keys)  # noqa: E731
  mine = {ident(r) for r in rows}
  old = []
  if os.path.exists(path):
    with open(path) as fh:
      old = [r for r in json.load(fh) if ident(r) not in mine]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as fh:
    json.dump(old + rows, fh, indent=1)


def write_text(path: Optional[str], text: str) -> None:
  """Print `text` and, if a path is given, write it there (creating the folder)."""
  print(text)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
      fh.write(text)


def cli(run, default_config: str) -> None:
  """A study driver's command line: `--config=configs/<study>.py:PRESET [--config.x=...]`."""
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", default_config, "study config")
  def main(argv):
    del argv
    run(flags.FLAGS.config)  # returns the results path; app.run would exit non-zero on it

  app.run(main)


def bar_chart(ax, groups: Sequence[str], series: dict, ylabel: str, title: str = "") -> None:
  """Grouped bars with error bars: series = {label: [Stat per group]}."""
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  for i, (label, stats) in enumerate(series.items()):
    ax.bar(x + i * width - 0.4 + width / 2, [s.mean for s in stats], width,
           yerr=[s.std for s in stats], capsize=3, label=label)
  ax.set_xticks(x)
  ax.set_xticklabels(groups, rotation=20, ha="right")
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.legend(fontsize=8)

"""The field's speculative-decoding protocol: batch 1, every prompt, AR and SD of a prompt back to back.

For one prompt set and one temperature (`decode_set`):
* every program gets one cache size (from the widest prompt of the set); a prompt runs at
  its own width rounded up to 16 tokens (`sampling.pad_prompts`), so its prefill does no
  work for padding, and a program compiles once per (method, temperature, width bucket).
  Compilation is never timed (`CompiledProgram` keeps it apart, a warm-up run of every
  program on the first prompt is untimed, and a prompt that opens a new bucket is timed on
  its second run: a new executable's first run pays one-time costs), but it costs wall time:
  on the real target a prompt that opens a new bucket takes ~1 min longer (one compile per method);
* per prompt, `repeats` times: plain decoding (`sampling.generate_batch`) then every SD
  method (`sampling.speculative_generate`, a chain of gamma drafts or a `TreeSpec`, by the
  run's draft, prompt lookup, or both routed / merged: `Method.drafter`), back to back, so
  machine noise hits all of them alike; a prompt's time is the median over repeats (its tokens and acceptance are the same in every repeat: the seed is the prompt's
  index);
* `max_new_tokens` new tokens at most, stopping at the target's eos.

`summarise` turns per-prompt records into the reported numbers over any subset of prompts
(a category, or all): AR and SD tokens/s (total tokens / total seconds), speedup with a
bootstrap 95% CI over prompts, alpha, tau (tokens per round, bonus token included),
per-position acceptance (chain position or tree depth 1..gamma), and at T=0 the rows whose
SD ids differ from the AR ids (with where they first differ).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Optional, Sequence

import numpy as np

from specdistill_jax import sampling
from specdistill_jax.sampling.prompts import round_up


DRAFTERS = ("draft", "lookup", "draft+lookup")


@dataclasses.dataclass(frozen=True)
class Method:
  """One way of drafting: a chain of `gamma` drafts, or a dynamic tree, by `drafter`: the run's
  draft ('draft'), prompt lookup ('lookup': sampling.prompt_lookup(), no weights) or both
  ('draft+lookup': chains routed per row and round by confidence, trees merged; TAPS)."""

  gamma: int
  tree: Optional[sampling.TreeSpec] = None
  drafter: str = "draft"

  @property
  def label(self) -> str:
    t = self.tree
    shape = f"tree {t.depth}:{t.top_k}:{t.num_nodes}" if t else f"chain gamma={self.gamma}"
    if self.drafter == "draft":
      return shape
    if self.drafter == "lookup":
      return f"prompt lookup, {shape}"
    return f"draft + lookup {'merged' if t else 'routed'}, {shape}"

  @property
  def verified(self) -> int:
    """Tokens of one verification pass: the last token and the drafts (every drafter's tree)."""
    trees = len(self.drafter.split("+"))
    return 1 + (trees * self.tree.num_nodes if self.tree else self.gamma)

  @property
  def extra_slots(self) -> int:
    t = self.tree
    return self.gamma + 1 if t is None else max(self.verified, t.depth + 1 + (t.depth - 1) * t.top_k)

  @property
  def tree_field(self) -> Optional[str]:
    t = self.tree
    return f"depth={t.depth},top_k={t.top_k},num_nodes={t.num_nodes}" if t else None


def parse_methods(gammas: str, trees: str, drafters: str = "draft") -> list[Method]:
  """'1,2,3' and '4:2:8,5:4:16' (and 'draft,lookup') -> chains then trees, per drafter."""
  shapes = []
  for g in (s for s in gammas.split(",") if s.strip()):
    if not g.strip().isdigit() or int(g) < 1:
      raise ValueError(f"--gammas: {g!r} is not an integer >= 1 (e.g. --gammas 1,2,3,4)")
    shapes.append((int(g), None))
  for s in (s for s in trees.split(",") if s.strip()):
    parts = s.split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
      raise ValueError(f"--trees: {s!r} is not depth:top_k:num_nodes (e.g. --trees 4:2:8)")
    spec = sampling.TreeSpec(*map(int, parts))
    shapes.append((spec.depth, spec))
  if not shapes:
    raise ValueError("no SD method: give --gammas and/or --trees")
  names = [d.strip() for d in drafters.split(",") if d.strip()]
  bad = [d for d in names if d not in DRAFTERS]
  if bad or not names:
    raise ValueError(f"--drafters: {bad or drafters!r} not among {', '.join(DRAFTERS)} (e.g. --drafters draft,lookup)")
  return [Method(g, t, d) for d in names for g, t in shapes]


@dataclasses.dataclass
class Record:
  """One prompt decoded one way (AR: method None)."""

  prompt: int
  category: str
  tokens: int
  seconds: float
  ids: list
  accepted: int = 0
  tested: int = 0
  rounds: int = 0
  pos_accepted: Optional[list] = None
  pos_tested: Optional[list] = None
  compile_seconds: float = 0.0  # > 0: this call compiled its program (a new width bucket)


def padded(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 64):
  """The set as one [n, W] int32 array and lengths (the samplers re-pad each row to its own
  16-token bucket; W only sizes the cache)."""
  width = round_up(max(map(len, prompts)), multiple)
  rows = np.full((len(prompts), width), pad_id, np.int32)
  for i, p in enumerate(prompts):
    rows[i, : len(p)] = p
  return rows, np.asarray([len(p) for p in prompts], np.int32)


def decode_set(target, draft, prompts: Sequence[Sequence[int]], categories: Sequence[str],
               methods: Sequence[Method], temperature: float, max_new_tokens: int, repeats: int = 1,
               progress: Optional[str] = None, lookup=None) -> dict:
  """{None: [AR Record per prompt], method: [SD Record per prompt]} (see the module docstring).

  lookup: the prompt-lookup drafter of 'lookup' methods (default sampling.prompt_lookup())."""
  from tqdm import tqdm

  drafters = dict(draft=draft, lookup=lookup if lookup is not None else sampling.prompt_lookup())

  rows, lengths = padded(prompts, target.config.pad_token_id)
  cache = rows.shape[1] + max_new_tokens + max(m.extra_slots for m in methods)

  def ar(i):
    g = sampling.generate_batch(target, rows[i:i + 1], max_new_tokens, temperature, rng=i,
                                lengths=lengths[i:i + 1], cache_size=cache)
    n = int(np.asarray(g.lengths)[0])
    return Record(i, categories[i], n, g.wall_seconds, np.asarray(g.tokens)[0, :n].tolist(),
                  compile_seconds=g.compile_seconds)

  def sd(i, m: Method):
    kw = dict(temperature=temperature, rng=i, lengths=lengths[i:i + 1], cache_size=cache, tree=m.tree)
    ds = [drafters[name] for name in m.drafter.split("+")]
    if len(ds) == 1:
      out, st = sampling.speculative_generate(target, ds[0], rows[i:i + 1], max_new_tokens, gamma=m.gamma, **kw)
    else:
      out, st = sampling.routed_speculative_generate(target, ds, rows[i:i + 1], max_new_tokens, gamma=m.gamma, **kw)
    return Record(i, categories[i], st["tokens"], st["wall_seconds"], out[0], st["accepted"], st["tested"],
                  st["row_rounds"], st["position_accepted"], st["position_tested"], st["compile_seconds"])

  runs = [(None, ar)] + [(m, lambda i, m=m: sd(i, m)) for m in methods]
  for _, fn in runs:  # compile every program once, untimed
    fn(0)
  out = {m: [] for m, _ in runs}
  for i in tqdm(range(len(prompts)), desc=progress, leave=False, disable=progress is None):
    timed = {m: [] for m, _ in runs}
    for _ in range(repeats):
      for m, fn in runs:
        rec = fn(i)
        if rec.compile_seconds > 0:  # a new program's first run pays one-time costs: time a second run
          rec = fn(i)
        timed[m].append(rec)
    for m, recs in timed.items():
      rec = recs[0]
      rec.seconds = statistics.median(r.seconds for r in recs)
      out[m].append(rec)
  return out


def _ratio(sd_tokens, sd_secs, ar_tokens, ar_secs):
  return (sd_tokens.sum() / sd_secs.sum()) / (ar_tokens.sum() / ar_secs.sum())


def bootstrap_ci(sd: Sequence[Record], ar: Sequence[Record], samples: int = 2000, seed: int = 0):
  """95% bootstrap interval of the speedup (ratio of total tokens/s) over prompts."""
  st, ss = np.asarray([r.tokens for r in sd], float), np.asarray([r.seconds for r in sd], float)
  at, as_ = np.asarray([r.tokens for r in ar], float), np.asarray([r.seconds for r in ar], float)
  if len(st) < 2:
    return None
  idx = np.random.default_rng(seed).integers(0, len(st), (samples, len(st)))
  ratios = (st[idx].sum(1) / ss[idx].sum(1)) / (at[idx].sum(1) / as_[idx].sum(1))
  return [round(float(np.percentile(ratios, 2.5)), 3), round(float(np.percentile(ratios, 97.5)), 3)]


def first_difference(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
  """Index of the first differing token (None when equal)."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def summarise(sd: Sequence[Record], ar: Sequence[Record], temperature: float) -> dict:
  """The reported numbers over these prompts (module docstring)."""
  tok = lambda rs: float(sum(r.tokens for r in rs))  # noqa: E731
  sec = lambda rs: float(sum(r.seconds for r in rs))  # noqa: E731
  ar_tps, sd_tps = tok(ar) / sec(ar), tok(sd) / sec(sd)
  pos_acc = np.sum([r.pos_accepted for r in sd], axis=0)
  pos_tested = np.sum([r.pos_tested for r in sd], axis=0)
  out = dict(num_prompts=len(sd), new_tokens=int(tok(sd)), ar_tokens_per_s=ar_tps, sd_tokens_per_s=sd_tps,
             speedup=sd_tps / ar_tps, speedup_ci=bootstrap_ci(sd, ar),
             alpha=sum(r.accepted for r in sd) / max(sum(r.tested for r in sd), 1),
             tau=tok(sd) / max(sum(r.rounds for r in sd), 1),
             position_acceptance=[round(float(a / max(t, 1)), 4) for a, t in zip(pos_acc, pos_tested)],
             ms_per_round=1e3 * sec(sd) / max(sum(r.rounds for r in sd), 1))
  if temperature == 0.0:
    diffs = [(r.prompt, first_difference(r.ids, a.ids)) for r, a in zip(sd, ar)]
    out["greedy_differs"] = [[p, d] for p, d in diffs if d is not None]
  return out

"""One benchmark run: a target, a draft, prompt sets, SD methods and temperatures -> `SuiteResult`.

`run_suite` loads the models, reads each prompt set (data/suites.py), measures this
machine's cost model at the set's cache size (c = draft step / target step, v(k) = a
k-token verification / a target step, r(gamma) = one proposal round of gamma drafts / a
target step: gamma steps of a token draft or an EAGLE-3 head, one pass of a block
drafter), decodes every prompt with the protocol of
bench/protocol.py at every temperature, summarises per category and per set, and runs
the peers (bench/peers.py) on the same prompts. `--limit N` keeps N prompts per set,
taken round-robin over the set's categories (MT-Bench: N/8 per category), and is printed.
MT-Bench turn 2 needs the target's own turn-1 answers: generated once (greedy, batched,
`max_new_tokens` tokens) and cached in `cache_dir` per target and dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

from specdistill_jax.bench import peers as peer_lib
from specdistill_jax.bench.protocol import Method, decode_set, summarise


PEERS = ("transformers", "transformers_plain", "llama_cpp", "llama_cpp_lookup")
LLAMA_CPP_LOOKUP_TOKENS = 10  # llama-cpp-python's default num_pred_tokens


@dataclasses.dataclass
class SetResult:
  name: str
  num_prompts: int
  limit: Optional[int]
  c: float
  v: dict  # verified tokens -> v
  draft_round: dict  # (Method.drafter, chain length gamma) -> one proposal round / a target step
  target_step_ms: float
  summaries: list  # dicts: temperature, method, category ('all' = the whole set), summary fields
  peers: list


@dataclasses.dataclass
class SuiteResult:
  pair: str
  dtype: str
  max_new_tokens: int
  repeats: int
  methods: list
  temperatures: list
  sets: list
  layout: str = "standard"  # the parameter layout decoded with (models/backend_layout.py)


def round_robin(prompts: Sequence, limit: Optional[int]) -> list:
  """The first `limit` prompts taking categories in turn (all of them without a limit)."""
  if limit is None or limit >= len(prompts):
    return list(prompts)
  by_cat: dict = {}
  for p in prompts:
    by_cat.setdefault(p.category, []).append(p)
  out, i = [], 0
  while len(out) < limit:
    for cat in by_cat.values():
      if i < len(cat) and len(out) < limit:
        out.append(cat[i])
    i += 1
  return out


def _fingerprint(target_dir: str) -> str:
  h = hashlib.sha256()
  for name in sorted(os.listdir(target_dir)):
    path = os.path.join(target_dir, name)
    if os.path.isfile(path):
      h.update(f"{name}:{os.path.getsize(path)}".encode())
  with open(os.path.join(target_dir, "config.json"), "rb") as fh:
    h.update(fh.read())
  return h.hexdigest()[:16]


def turn1_answers(target, chat, target_dir: str, dtype: str, max_new_tokens: int, cache_dir: str) -> dict:
  """{question_id: the target's greedy turn-1 answer}, generated once and cached."""
  from specdistill_jax import sampling
  from specdistill_jax.data import suites
  path = os.path.join(cache_dir, f"mt_bench_turn1-{_fingerprint(target_dir)}-{dtype}-{max_new_tokens}.json")
  if os.path.exists(path):
    with open(path) as fh:
      return json.load(fh)
  prompts = suites.mt_bench()
  ids = suites.encode(chat, prompts)
  answers = {}
  for i in range(0, len(ids), 16):
    outs = sampling.generate(target, ids[i:i + 16], max_new_tokens)
    for p, out in zip(prompts[i:i + 16], outs):
      answers[p.id] = chat.decode(out).strip()
  os.makedirs(cache_dir, exist_ok=True)
  with open(path + ".tmp", "w") as fh:
    json.dump(answers, fh, indent=1)
  os.replace(path + ".tmp", path)
  return answers


def _peer(name: str, fn, *args) -> dict:
  """A peer's row; a peer that fails (another library's bug) is reported as failed, with its error,
  instead of losing the run's own measurements."""
  try:
    return fn(*args)
  except Exception as e:  # noqa: BLE001 - whatever the peer library raises
    return dict(system=name, tokens_per_second=None, note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


def release_programs() -> None:
  """Drop the compiled decoding programs of a finished (set, temperature): a 30-layer target's
  programs hold many executable memory maps, and a run that kept every one of them met
  LLVM's 'Cannot allocate memory' under Linux's default vm.max_map_count (65,530)."""
  import jax

  from specdistill_jax.sampling import autoregressive, speculative
  speculative.clear_programs()
  autoregressive.clear_programs()
  jax.clear_caches()


def run_suite(target_dir: str, draft_dir: str, sets: Sequence[str], methods: Sequence[Method],
              temperatures: Sequence[float], max_new_tokens: int = 64, limit: Optional[int] = None,
              repeats: int = 1, dtype: str = "bfloat16", data_dir: Optional[str] = None,
              corpus_config: str = "full", cache_dir: str = os.path.join("workdir", "bench_cache"),
              peers: Sequence[str] = ("transformers", "llama_cpp"), gguf: Optional[str] = None,
              hf_gamma: Optional[int] = None, pair: Optional[str] = None,
              max_prompt_tokens: int = 1024, layout: str = "auto", log=print) -> SuiteResult:
  import jax.numpy as jnp

  from specdistill_jax import evaluate, loading, sampling
  from specdistill_jax.data import suites
  from specdistill_jax.data.tokenizer import ChatFormat
  from specdistill_jax.models import backend_layout
  unknown = [s for s in sets if s not in suites.SETS]
  if unknown:
    raise ValueError(f"unknown prompt set(s) {unknown}; known: {', '.join(suites.SETS)}")
  bad = [p for p in peers if p not in PEERS]
  if bad:
    raise ValueError(f"unknown peer(s) {bad}: choose from {', '.join(PEERS)}")
  if limit is not None and limit < 1:
    raise ValueError(f"--limit {limit} must be >= 1 (or omitted: every prompt)")
  if not loading.has_tokenizer(target_dir):
    raise FileNotFoundError(f"no tokenizer in the target directory {target_dir!r}: the benchmark encodes its "
                            "prompts with the target's chat template")
  backend_layout.resolve(layout)
  target = loading.load_model(target_dir, dtype=jnp.dtype(dtype))
  draft = backend_layout.for_decoding(loading.load_draft(draft_dir, target, dtype=jnp.dtype(dtype)), layout)
  if os.fspath(draft_dir).split(":")[0] == loading.PROMPT_LOOKUP:  # --draft prompt_lookup: its rows are the lookup rows
    if any(m.drafter == "draft+lookup" for m in methods):
      raise ValueError(f"--drafters draft+lookup: the draft ({draft_dir}) is prompt lookup itself; "
                       "use --drafters draft")
    methods = [m for m in methods if m.drafter != "lookup"]
  drafters = dict(draft=draft, lookup=sampling.prompt_lookup().for_target(target))
  target = backend_layout.for_decoding(target, layout)
  chat = ChatFormat(loading.load_tokenizer(target_dir))
  pair = pair or f"{os.path.basename(os.path.normpath(target_dir))}/{os.path.basename(os.path.normpath(draft_dir))}"
  results = []
  for name in sets:
    answers = (turn1_answers(target, chat, target_dir, dtype, max_new_tokens, cache_dir)
               if name == "mt_bench_turn2" else None)
    prompts = round_robin(suites.load(name, data_dir, corpus_config, answers=answers), limit)
    ids = suites.encode(chat, prompts, max_prompt_tokens)
    cats = [p.category for p in prompts]
    cache = max(map(len, ids)) + max_new_tokens + 64
    passes = evaluate.step_seconds_by_tokens(target, 1, cache, (1, *sorted({m.verified for m in methods})))
    step = passes[1]
    c = evaluate.round_seconds(draft, 1, cache) / step
    v = {k: passes[k] / step for k in sorted({m.verified for m in methods})}
    rounds = {(m.drafter, m.gamma): sum(evaluate.round_seconds(drafters[d], m.gamma, cache)
                                        for d in m.drafter.split("+")) / step
              for m in methods if m.tree is None}
    log(f"{name}: {len(prompts)} prompts{f' (--limit {limit})' if limit else ''}; target step "
        f"{1e3 * step:.1f} ms, c {c:.3f}, v " + ", ".join(f"v({k}) {x:.2f}" for k, x in v.items())
        + ", draft round " + ", ".join(f"{d} r({g}) {x:.3f}" for (d, g), x in rounds.items()))
    summaries, greedy_ar = [], None
    for temp in temperatures:
      recs = decode_set(target, draft, ids, cats, methods, temp, max_new_tokens, repeats,
                        progress=f"{name} T={temp:g}", lookup=drafters["lookup"])
      release_programs()
      if temp == 0.0:
        greedy_ar = [r.ids for r in recs[None]]
      for m in methods:
        for cat in ["all"] + sorted(set(cats)):
          keep = [i for i, cc in enumerate(cats) if cat == "all" or cc == cat]
          summary = summarise([recs[m][i] for i in keep], [recs[None][i] for i in keep], temp)
          if m.tree is None:
            summary["predicted_speedup"] = summary["tau"] / (rounds[(m.drafter, m.gamma)] + v[m.verified])
          summaries.append(dict(temperature=temp, method=m, category=cat, **summary))
          if cat == "all":
            s = summary
        log(f"  T={temp:g} {m.label}: speedup {s['speedup']:.2f}x {s['speedup_ci']}, tau {s['tau']:.2f}, "
            f"alpha {s['alpha']:.3f}")
    peer_rows = []
    if "transformers" in peers and greedy_ar is not None:
      chains = [m.gamma for m in methods if m.tree is None]
      gamma = hf_gamma or (max(chains) if chains else 4)
      peer_rows.append(_peer("transformers", peer_lib.transformers_assisted, target, draft, ids, max_new_tokens, gamma, greedy_ar))
    if "transformers_plain" in peers and greedy_ar is not None:
      peer_rows.append(_peer("transformers_plain", peer_lib.transformers_plain, target, ids, max_new_tokens, greedy_ar))
    for system, lookup in (("llama_cpp", None), ("llama_cpp_lookup", LLAMA_CPP_LOOKUP_TOKENS)):
      if system in peers:
        peer_rows.append(_peer(system, peer_lib.llama_cpp_plain, gguf or peer_lib.source_gguf(target_dir), ids,
                               max_new_tokens, target.config.eos_token_ids, lookup))
    for r in peer_rows:
      log(f"  peer {r['system']}: {r['tokens_per_second']} tok/s ({r['note']})")
    results.append(SetResult(name, len(prompts), limit, c, v, rounds, 1e3 * step, summaries, peer_rows))
  return SuiteResult(pair, dtype, max_new_tokens, repeats, list(methods), list(temperatures), results,
                     backend_layout.resolve(layout, jnp.dtype(dtype)))

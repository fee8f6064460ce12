"""Where one speculative-decoding round of the real pair goes: jax.profiler trace + XLA's HLO dump.

    python experiments/profile_sd_round.py [--target DIR] [--draft DIR|prompt_lookup:3:1] [--gamma 4]
        [--tree DEPTH:TOP_K:NODES] [--temperatures 0,1] [--dtype bfloat16] [--layout auto]

Runs `speculative_generate` on the real pair at B=1 (compiled once, then traced),
with XLA dumping the optimised HLO of the decode program. Every op the trace
records (the CPU thunk executor's events, named after HLO instructions) is
mapped through the HLO's `op_name` metadata to the named scope it was traced in
(`sampling/rounds.py` and `sampling/speculative.py`: draft_propose, target_verify,
accept_and_advance; anything else is the loop itself and the prefill). The op kinds
inside each scope (matmuls, attention, other fusions, copies; in the kernel layout the
custom calls of models/cpu_gemv.py) come from the instruction. `--tree` profiles a tree
round (sampling.TreeSpec) instead of a chain of --gamma.
Writes experiments/results/sd_round_profile.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from specdistill_jax import decode, loading, sampling  # noqa: E402
from specdistill_jax.models import backend_layout, import_gguf  # noqa: E402
from studylib import write_text  # noqa: E402

SCOPES = ("draft_propose", "target_verify", "accept_and_advance")
OTHER = "loop, prefill, other"
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_scopes(dump_dir: str) -> dict:
  """instruction name -> (scope, kind) from the optimised HLO text of the decode program."""
  files = [f for f in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")) if "run" in f]
  out = {}
  for path in files:
    for line in open(path):
      m = _INSTR.match(line)
      if not m:
        continue
      name, meta = m.groups()
      op = _OP_NAME.search(meta)
      op_name = op.group(1) if op else ""
      scope = next((s for s in SCOPES if f"/{s}/" in op_name or op_name.endswith(f"/{s}")), OTHER)
      out[name] = (scope, kind(op_name, line))
  return out


def kind(op_name: str, line: str) -> str:
  """The op's part of the model, from the einsum spec or primitive in its op_name (the kernel
  layout's custom calls by their target name)."""
  if "specdistill_cpu_attention" in line:
    return "attention (kernel)"
  if "specdistill_cpu_gemv" in line:
    return "matmuls (kernel: layers and LM head)"
  if "specdistill_cpu_rows" in line:
    return "embedding rows (kernel)"
  if "->tv/" in op_name:
    return "LM head"
  if "bkgts" in op_name or "btkgd" in op_name:
    return "attention"
  if "softmax" in op_name:
    return "softmax (fused with its producer: LM head or attention scores)"
  if "dot_general" in op_name or " dot(" in line:
    return "layer matmuls"
  if "scatter" in op_name or "dynamic-update-slice" in line or "scatter" in line:
    return "cache writes"
  if "sort" in op_name or "cumsum" in op_name or "argmax" in op_name or "random" in op_name:
    return "sampling / argmax"
  return "other fusions"


def trace_events(trace_dir: str) -> list[dict]:
  path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
  data = json.load(gzip.open(path))
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def profile(target, draft, prompt, gamma, temperature, max_new, dump, tree=None) -> str:
  """One traced run -> a markdown section (table of ms per round by scope and op kind)."""
  def run():
    return sampling.speculative_generate(target, draft, prompt, max_new, gamma=gamma,
                                         temperature=temperature, rng=0, tree=tree)

  run()  # compile
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      _, stats = run()
    events = trace_events(trace_dir)
  scopes = hlo_scopes(dump)
  by_scope, by_kind, ops = collections.Counter(), collections.Counter(), collections.Counter()
  by_op, op_count = collections.Counter(), collections.Counter()
  for e in events:
    name = e["args"]["hlo_op"]
    if name in scopes and not name.startswith(("while", "conditional", "call")):
      scope, k = scopes[name]
      by_scope[scope] += e["dur"] / 1e3
      by_kind[(scope, k)] += e["dur"] / 1e3
      ops[scope] += 1
      base = (scope, re.sub(r"\.\d+$", "", name))  # the instruction's kind: ynn_fusion, wrapped_scatter, ...
      by_op[base] += e["dur"] / 1e3
      op_count[base] += 1
  rounds, total, wall_ms = stats["rounds"], sum(by_scope.values()), stats["wall_seconds"] * 1e3
  rows = []
  for scope in SCOPES + (OTHER,):
    rows.append(f"| {scope} | | {ops[scope] / rounds:.0f} | {by_scope[scope] / rounds:.2f} | "
                f"{by_scope[scope] / total:.0%} |")
    for (s, k), ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
      if s == scope and ms / rounds >= 0.05:
        rows.append(f"| | {k} | | {ms / rounds:.2f} | {ms / total:.0%} |")
  top = [f"| {s} | {op} | {op_count[(s, op)] / rounds:.0f} | {ms / rounds:.2f} | "
         f"{1e3 * ms / op_count[(s, op)]:.1f} |" for (s, op), ms in by_op.most_common(12)]
  return "\n".join([
      f"## Temperature {temperature:g}", "",
      f"{rounds} rounds (tau {stats['tau']:.2f}, alpha {stats['alpha']:.2f}) in {wall_ms:.0f} ms: "
      f"{wall_ms / rounds:.1f} ms per round of wall time; the traced ops sum to {total / rounds:.1f} ms per round "
      f"(the rest, {(wall_ms - total) / rounds:.1f} ms, is dispatch between the "
      f"{sum(ops.values()) / rounds:.0f} ops of a round, the loop's control and the host's call).", "",
      "| scope | op kind | ops per round | ms per round | share |", "|---|---|---:|---:|---:|", *rows, "",
      "The 12 costliest HLO instruction kinds (the optimised HLO's names without their numbers):", "",
      "| scope | instruction | per round | ms per round | us each |", "|---|---|---:|---:|---:|", *top, ""])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target", default=import_gguf.default_out_dir())
  p.add_argument("--draft", default=os.path.join("workdir", "runs", "real", "eagle3-cpu", "hf"),
                 help="a draft directory or prompt_lookup[:max_ngram[:min_ngram]] (default: configs/eagle3.py:cpu's head)")
  p.add_argument("--gamma", type=int, default=4)
  p.add_argument("--tree", default="", help="DEPTH:TOP_K:NODES: profile a tree round instead of a chain of --gamma")
  p.add_argument("--temperatures", default="0,1")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--mt_bench_prompt", type=int, default=None,
                 help="decode this MT-Bench turn-1 prompt (needs no prepared data); default: the first "
                      "sharegpt_chat validation prompt, as results/sd_round_profile.md")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--layout", default="standard", choices=backend_layout.LAYOUTS,
                 help="parameter layout of both models (models/backend_layout.py)")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "sd_round_profile.md"))
  args = p.parse_args(argv)
  # read when the CPU backend starts, i.e. at the first computation below
  dump = tempfile.mkdtemp(prefix="sd_round_hlo_")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump} "
                             "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*run.*").strip()
  dtype = jnp.dtype(args.dtype)
  target = backend_layout.for_decoding(loading.load_model(args.target, dtype=dtype), args.layout)
  draft = backend_layout.for_decoding(loading.load_draft(args.draft, target, dtype=dtype), args.layout)
  if args.mt_bench_prompt is None:
    from specdistill_jax.data import prompts as prompt_sets  # bench_decode's old default prompt
    prompt = prompt_sets.historical_queries(loading.load_tokenizer(args.target), "sharegpt_chat", "validation", 1,
                                            max_prompt_tokens=48)
    source, pick = "one sharegpt_chat validation prompt", ""
  else:
    from specdistill_jax.data import suites
    from specdistill_jax.data.tokenizer import ChatFormat
    chat = ChatFormat(loading.load_tokenizer(args.target))
    prompt = suites.encode(chat, [suites.mt_bench()[args.mt_bench_prompt]])
    source, pick = f"MT-Bench turn-1 prompt {args.mt_bench_prompt}", f"--mt_bench_prompt {args.mt_bench_prompt} "

  tree = decode.parse_tree(args.tree) if args.tree else None
  shape = f"tree {args.tree} (depth:top_k:nodes)" if tree else f"chain gamma {args.gamma}"
  sections = [profile(target, draft, prompt, args.gamma, t, args.max_new_tokens, dump, tree)
              for t in (float(x) for x in args.temperatures.split(","))]
  text = "\n".join([
      "# Where one speculative-decoding round of the real pair goes", "",
      f"Command: `python experiments/profile_sd_round.py --target {args.target} --draft {args.draft} "
      f"{pick}--gamma {args.gamma} {f'--tree {args.tree} ' if tree else ''}--temperatures {args.temperatures} --max_new_tokens {args.max_new_tokens} "
      f"--dtype {args.dtype} --layout {args.layout} --out {os.path.relpath(args.out, ROOT)}`",
      "",
      f"Target {os.path.basename(os.path.normpath(args.target))}, draft {args.draft}; {args.dtype}, "
      f"{backend_layout.resolve(args.layout, dtype)} parameter layout, "
      f"B=1, {shape}, {args.max_new_tokens} new tokens of {source}; jax {jax.__version__} on "
      f"{backend_layout.describe_cpu()}, {os.cpu_count()} cores. Per round: the XLA ops that jax.profiler recorded, summed and attributed "
      "through the HLO dump's op_name to the named scopes of sampling/speculative.py and to the einsum or "
      "primitive that produced them. A fusion carries the name of its root op (a softmax fused with the LM "
      "head that feeds it is listed as softmax).", "", *sections,
      "How to read it: target_verify is the target's (gamma+1)-token pass (a tree: 1 + nodes tokens) and "
      "draft_propose the draft's gamma steps (a tree: one step per level, top_k rows each); accept_and_advance, the loop and the untraced rest are the round's work outside the "
      "two models (issue target: <= 5% of a round). At B=1 on 2 CPU cores most small ops cost their "
      "dispatch more than their arithmetic, so the op counts matter as much as the milliseconds."])
  write_text(args.out, text)


if __name__ == "__main__":
  main()

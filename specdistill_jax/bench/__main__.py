"""`python -m specdistill_jax.bench`: the benchmark's command line (see the package docstring).

Writes --out (markdown; its first lines give the command that rewrites it, every option
spelled out), the PNG beside it and the rows of --json. A user error (a wrong path, an
unknown prompt set, a missing prompt-set wheel) prints one `error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

DEFAULTS_OUT = os.path.join("experiments", "results", "decode_benchmark.md")


def parser() -> argparse.ArgumentParser:
  from specdistill_jax.data import suites
  from specdistill_jax.models import backend_layout
  from specdistill_jax.models import import_gguf
  p = argparse.ArgumentParser(prog="python -m specdistill_jax.bench", description=__doc__.splitlines()[0])
  p.add_argument("--target", default=import_gguf.default_out_dir(), help="target model directory (with tokenizer)")
  p.add_argument("--draft", required=True, help="draft model directory, or prompt_lookup[:max_ngram[:min_ngram]] (n-gram "
                 "drafting, no model)")
  p.add_argument("--suite", default="mt_bench", help=f"comma-separated prompt sets: {', '.join(suites.SETS)}")
  p.add_argument("--gammas", default="1,2,3,4", help="chains: draft tokens per round")
  p.add_argument("--trees", default="", help="dynamic trees depth:top_k:num_nodes, comma-separated")
  p.add_argument("--drafters", default="draft,lookup",
                 help="comma-separated: draft (--draft), lookup (prompt lookup, no weights: a row in every table), "
                      "draft+lookup (both: chains routed by confidence, trees merged)")
  p.add_argument("--temperatures", default="0,1")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--limit", type=int, default=None, help="prompts per set (round-robin over categories)")
  p.add_argument("--repeats", type=int, default=1, help="timed runs per prompt and method (median)")
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--data_dir", default=None, help="prepared bundled corpora (default: $SPECDISTILL_DATA_DIR)")
  p.add_argument("--corpus_config", default="full")
  p.add_argument("--cache_dir", default=os.path.join("workdir", "bench_cache"), help="MT-Bench turn-1 answers")
  p.add_argument("--peers", default="transformers,llama_cpp",
                 help="comma-separated: transformers (assisted / prompt lookup), transformers_plain, llama_cpp "
                      "(plain), llama_cpp_lookup; '' for none")
  p.add_argument("--gguf", default=None, help="GGUF for llama.cpp (default: the target's source file)")
  p.add_argument("--hf_gamma", type=int, default=None, help="gamma of transformers' assisted generation")
  p.add_argument("--pair", default=None, help="name of the pair in the results (default: the two dir names)")
  p.add_argument("--max_prompt_tokens", type=int, default=1024)
  p.add_argument("--layout", default="auto", choices=backend_layout.LAYOUTS,
                 help="parameter layout for decoding (models/backend_layout.py; auto: kernel where its AVX512-BF16 "
                      "kernels build, else fused for bf16 on a CPU with AMX, else standard)")
  p.add_argument("--out", default=DEFAULTS_OUT)
  p.add_argument("--json", default=os.path.join("experiments", "results", "decode_benchmark.json"))
  return p


def command(args: argparse.Namespace) -> str:
  """The command line with every option spelled out: rerun as printed, it rewrites the same files."""
  parts = ["python -m specdistill_jax.bench"]
  for k, v in vars(args).items():
    if v is not None:
      parts.append(f"--{k} {shlex.quote(str(v)) if str(v) else repr('')}")
  return " ".join(parts)


def main(argv=None) -> str:
  from specdistill_jax.bench import protocol, report, suite
  args = parser().parse_args(argv)
  t0 = time.time()
  methods = protocol.parse_methods(args.gammas, args.trees, args.drafters)
  temps = []
  for t in (t for t in args.temperatures.split(",") if t.strip()):
    try:
      temps.append(float(t))
    except ValueError:
      raise ValueError(f"--temperatures: {t!r} is not a number (e.g. --temperatures 0,1)") from None
  result = suite.run_suite(
      args.target, args.draft, [s.strip() for s in args.suite.split(",") if s.strip()], methods, temps,
      args.max_new_tokens, args.limit, args.repeats, args.dtype, args.data_dir, args.corpus_config,
      args.cache_dir, [p for p in args.peers.split(",") if p], args.gguf, args.hf_gamma, args.pair,
      args.max_prompt_tokens, args.layout)
  text = report.markdown(result, command(args), (time.time() - t0) / 60)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
      fh.write(text)
    report.plot(result, os.path.splitext(args.out)[0] + ".png")
  if args.json:
    report.write_json(args.json, report.json_rows(result))
  return args.out


def cli(argv) -> int:
  """main(argv) with quiet library logs and a one-line error for a user mistake (--verbose: traceback)."""
  from specdistill_jax import cli as cli_lib
  cli_lib.quiet_logging()
  verbose = "--verbose" in argv
  try:
    main([a for a in argv if a != "--verbose"])
  except cli_lib.USER_ERRORS as e:
    if verbose:
      raise
    print(f"error: {cli_lib.error_line(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(cli(sys.argv[1:]))

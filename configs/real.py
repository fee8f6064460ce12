"""Drafts for the real target, SmolLM2-135M-Instruct (converted with specdistill_jax.models.import_gguf).

The draft is cut from the target (models.first_layers): its first `draft_layers` layers with
the target's embedding, final norm and tied 49k head, so it shares the tokenizer and starts
from weights that already predict the target a little. It is distilled with forward KL on
the target's own responses to bundled sharegpt_chat prompts (teacher_offline: generated
once, top-16 logits cached), the practice SpecForge and speculators recommend.

    python -m specdistill_jax.models.import_gguf --out workdir/models/smollm2-135m-instruct
    python -m specdistill_jax.data.prepare --data_dir=workdir/data --corpora=sharegpt_chat
    python -m specdistill_jax.train --config=configs/real.py:cpu --workdir=workdir/runs/real/layers2

Presets (`--config=configs/real.py:PRESET[,key=value]`, keys: draft_layers, steps, lr,
num_prompts, seed, loss, source):
* cpu: 2 draft layers (the target's first 2 of 30: 35.4M params, 28.3M of them the 49k x 576
  embedding/head), fp32, 512 prompts -> 30,272 target response tokens (mean 59; 137 bytes per
  token cached vs 196,608 for full fp32 logits), 150 steps of batch 16 x 160 tokens.
  Measured on 2 cores: 34.5 min (13 min teacher cache while another job shared the cores,
  21.5 min training at 7.6 s/step). Eval (8 prompts x 32 tokens, gamma 4, T=0): alpha
  0.22 / 0.27 / 0.29 and tau 1.26 / 1.35 / 1.39 at steps 50 / 100 / 150. At B=1 a 2-layer
  cut makes SD slower than plain decoding: c ~0.24 (the 49k head) against alpha ~0.15
  (experiments/results/decode_benchmark_layers2.md measures the quick preset's cut on MT-Bench).
* quick: the README's main job (experiments/quickstart.py): 256 prompts, 60 steps, bf16
  compute with fp32 master weights (2.3x the fp32 matmul rate on this CPU).
* micro: the smoke test's cell (1 layer, 4 prompts, 2 steps, small corpus).
Paths: $SPECDISTILL_MODELS (default ./workdir/models) and $SPECDISTILL_DATA_DIR.
"""

import os

from configs import common
from specdistill_jax.models import import_gguf

PRESETS = ("cpu", "quick", "micro")
INLINE = {"steps": "train.steps", "lr": "optim.lr", "num_prompts": "data.num_prompts", "seed": "seed",
          "loss": "objective.loss", "source": "data.source"}


def target_dir() -> str:
  return import_gguf.default_out_dir()


def get_config(arg=None):
  name, inline = common.parse_arg(arg, "cpu", PRESETS)
  layers = int(inline.pop("draft_layers", 1 if name == "micro" else 2))
  c = common.train_config()
  c.data_dir = common.data_dir()
  c.tokenizer = target_dir()  # the real target's own tokenizer and chat template
  c.target = common.model(hf_path=target_dir())
  c.draft = common.model(target_layers=layers)
  c.objective.loss = "fkl"
  c.data.update(corpora="sharegpt_chat", source="teacher_offline", gen_temperature=1.0, top_k=16)
  c.eval.update(gamma=4, temperature=0.0)
  if name == "quick":
    c.draft.dtype = "bfloat16"
  if name == "micro":
    c.data.update(corpus_config="small", batch_size=2, max_len=96, max_prompt_len=64, max_new_tokens=4,
                  num_prompts=4)
    c.train.update(steps=2, eval_every=0, checkpoint_every=2, log_every=1, async_checkpoints=False)
    c.optim.update(lr=1e-4, warmup_steps=1)
  else:
    quick = name == "quick"
    c.data.update(batch_size=16, max_len=160, max_prompt_len=96, max_new_tokens=64,
                  num_prompts=256 if quick else 512)
    c.train.update(steps=60 if quick else 150, eval_every=0 if quick else 50, eval_batches=2,
                   checkpoint_every=20 if quick else 50, log_every=10)
    c.optim.update(lr=3e-4, warmup_steps=6 if quick else 15)
    c.eval.update(num_prompts=8, max_new_tokens=32)
  common.apply_overrides(c, {INLINE.get(k, k): v for k, v in inline.items()})
  return c


def workdir(layers: int = 2) -> str:
  return os.path.join(os.environ.get("SPECDISTILL_RUNS", os.path.join("workdir", "runs")), "real",
                      f"layers{layers}")

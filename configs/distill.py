"""DistillSpec-style distillation of a draft towards a target (one run; studies sweep it).

Presets (`--config=configs/distill.py:PRESET[,key=value...]`):

* micro: a random 'tiny' target and a 'micro' draft on the small corpora. A smoke run:
    python -m specdistill_jax.data.prepare --data_dir=workdir/data --config=small --vocab_size=1024
    python -m specdistill_jax.train --config=configs/distill.py:micro --workdir=workdir/runs/micro \
        --config.data_dir=workdir/data
  (~20 s on 2 CPU cores; the loss falls, alpha is meaningless with random models).

* cpu: the CPU world's code target (12.6M) and generic draft (1.44M), on-policy data,
  forward KL, sharegpt_code prompts (the general target leaves a chat-trained draft little
  to learn). Needs `python experiments/build_world.py` first.
    python -m specdistill_jax.train --config=configs/distill.py:cpu --workdir=workdir/runs/distill
  Inline overrides pick the DistillSpec cell: `cpu,loss=rkl,source=mixture`.

* gpu: Qwen2.5-0.5B-Instruct draft, Qwen2.5-7B-Instruct target, read from local HF
  directories ($MODELS_DIR/Qwen2.5-0.5B-Instruct, $MODELS_DIR/Qwen2.5-7B-Instruct; nothing
  is downloaded), bf16, on-policy FKL, one GPU (fsdp=-1 shards over all local devices).
"""

import os

from configs import common

PRESETS = ("micro", "cpu", "gpu")
INLINE = {"loss": "objective.loss", "source": "data.source", "beta": "objective.beta",
          "lam": "data.mixture_lambda", "steps": "train.steps", "seed": "seed", "lr": "optim.lr",
          "batch_size": "data.batch_size", "temperature": "data.gen_temperature"}


def get_config(arg=None):
  name, inline = common.parse_arg(arg, "cpu", PRESETS)
  c = common.train_config()
  c.data_dir = common.data_dir()
  if name == "micro":
    c.data.corpus_config = "small"
    c.target = common.model(preset="tiny", seed=0)
    c.draft = common.model(preset="micro", seed=1)
    c.data.update(batch_size=4, max_len=64, max_prompt_len=32, max_new_tokens=16, num_prompts=16,
                  source="on_policy")
    c.train.update(steps=20, eval_every=10, eval_batches=1, checkpoint_every=10, log_every=5)
    c.eval.update(num_prompts=2, max_new_tokens=8)
  elif name == "cpu":
    c.target = common.model(hf_path=common.world("target_code", "hf"), dtype="bfloat16")
    c.draft = common.model(hf_path=common.world("draft_generic", "hf"), dtype="bfloat16")
    c.data.update(corpora="sharegpt_code", batch_size=16, max_len=128, max_prompt_len=64,
                  max_new_tokens=48, source="on_policy")
    c.optim.update(lr=1e-3, warmup_steps=20)
    c.train.update(steps=200, eval_every=50, eval_batches=4, checkpoint_every=50)
    c.eval.update(num_prompts=16, max_new_tokens=48)
  else:
    models_dir = os.environ.get("MODELS_DIR", "/models")
    c.target = common.model(hf_path=os.path.join(models_dir, "Qwen2.5-7B-Instruct"), dtype="bfloat16")
    c.draft = common.model(hf_path=os.path.join(models_dir, "Qwen2.5-0.5B-Instruct"), dtype="bfloat16")
    c.tokenizer = os.path.join(models_dir, "Qwen2.5-7B-Instruct")
    c.data.update(batch_size=32, max_len=1024, max_prompt_len=512, max_new_tokens=256, source="on_policy")
    c.optim.update(lr=2e-5, warmup_steps=100)
    c.train.update(steps=2000, eval_every=250, checkpoint_every=250)
    c.eval.update(num_prompts=64, max_new_tokens=128, gamma=4)
  common.apply_overrides(c, {INLINE.get(k, k): v for k, v in inline.items()})
  return c

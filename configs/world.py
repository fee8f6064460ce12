"""The CPU-scale model world: every model the studies need, trained with the project's own loop.

    python experiments/build_world.py              # all of it (scale cpu): measured 80.5 min on 2 cores
    python -m specdistill_jax.train --config=configs/world.py:target_general --workdir=workdir/world/target_general

Models (`--config=configs/world.py:NAME[,scale=cpu|quick|micro]`), each exported to
workdir/world/NAME/hf (save_hf + tokenizer). "draft" in the config is the model being
trained; these are plain LM runs (loss 'ce' on every token, packed sequences, bf16
compute with fp32 parameters):

* target_general  'target-20m' (12.6M params) trained from scratch on sharegpt_chat
* draft_generic   'draft-2m' (1.44M params) trained from scratch on sharegpt_chat
* target_code     target_general fine-tuned on sharegpt_code + python_code
* target_tools    target_general fine-tuned on function_calling
* target_mix      target_general fine-tuned on sharegpt_chat + function_calling (TAPS' one target)
* target_math_base  target_general fine-tuned on math_word_problems + sharegpt_chat
* target_math     target_math_base fine-tuned on math_word_problems alone (TAPS' math-domain
                  target). Greedy answer accuracy on 64 validation problems: 0/64 after the
                  mixed stage, 5/64 after this one (it copies the numbers; its arithmetic is weak)

Scales: cpu (the studies), quick (the README's quick study: a 5M target, minutes), micro
(smoke tests: 'tiny'/'micro' models, a few steps on the small corpora).
Measured on 2 cores (scale cpu; experiments/results/world.md): target_general 46.0 min
(validation CE 3.86), draft_generic 8.0 (4.27), target_code 10.8 (4.07), target_tools 8.3
(0.53), target_mix 6.7 (3.55); 80.5 min with data preparation, while other jobs shared
the cores at times (an idle machine is faster).
"""

from configs import common

PRESETS = ("target_general", "draft_generic", "target_code", "target_tools", "target_mix", "target_math_base",
           "target_math")
CORPORA = {"target_general": "sharegpt_chat", "draft_generic": "sharegpt_chat",
           "target_code": "sharegpt_code,python_code", "target_tools": "function_calling",
           "target_mix": "sharegpt_chat,function_calling",
           "target_math_base": "math_word_problems,sharegpt_chat", "target_math": "math_word_problems"}
PARENT = {"target_math": "target_math_base"}  # fine-tuned from this world model (default target_general)
# (preset for scratch models, steps, batch size, learning rate) per scale
SCRATCH = {"cpu": {"target_general": ("target-20m", 1500, 32, 1e-3),
                   "draft_generic": ("draft-2m", 1500, 32, 3e-3)},
           "quick": {"target_general": ("target-quick", 300, 32, 2e-3),
                     "draft_generic": ("draft-2m", 300, 32, 3e-3)},
           "micro": {"target_general": ("tiny", 4, 4, 1e-2), "draft_generic": ("micro", 4, 4, 1e-2)}}
FINETUNE_STEPS = {"cpu": {"target_code": 400, "target_tools": 300, "target_mix": 300, "target_math_base": 300,
                          "target_math": 400},
                  "quick": {"target_code": 60, "target_tools": 60, "target_mix": 60, "target_math_base": 60,
                            "target_math": 60},
                  "micro": {"target_code": 2, "target_tools": 2, "target_mix": 2, "target_math_base": 2,
                            "target_math": 2}}


def get_config(arg=None):
  name, inline = common.parse_arg(arg, "target_general", PRESETS)
  scale = inline.pop("scale", "cpu")
  if scale not in SCRATCH:
    raise ValueError(f"scale={scale!r} must be one of {sorted(SCRATCH)}")
  c = common.train_config()
  c.data_dir = common.data_dir()
  c.data.update(corpora=CORPORA[name], mode="pack", loss_on_prompt=True, max_len=128,
                corpus_config="small" if scale == "micro" else "full")
  c.objective.loss = "ce"
  c.target = common.model()  # no teacher: language modelling
  if name in SCRATCH[scale]:
    preset, steps, batch, lr = SCRATCH[scale][name]
    c.draft = common.model(preset=preset, dtype="bfloat16", seed=0)
    c.optim.update(lr=lr, warmup_steps=max(1, steps // 20))
  else:
    steps, batch = FINETUNE_STEPS[scale][name], SCRATCH[scale]["target_general"][2]
    c.draft = common.model(hf_path=common.world(PARENT.get(name, "target_general"), "hf"), dtype="bfloat16")
    c.optim.update(lr=3e-4 if scale != "micro" else 1e-2, warmup_steps=max(1, steps // 10))
  c.data.batch_size = batch
  c.train.update(steps=steps, eval_every=max(steps // 3, 1), eval_batches=4 if scale != "micro" else 1,
                 checkpoint_every=max(steps // 3, 1), log_every=max(1, min(25, steps // 4)))
  common.apply_overrides(c, inline)
  return c

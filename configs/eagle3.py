"""EAGLE-3 feature drafts (models.create_feature_draft) for the real target, SmolLM2-135M-Instruct.

The draft reads the target's hidden states at layers (2, 15, 27) of 30, one decoder layer
(d 576) and an LM head over the 8192 most frequent tokens of the training answers (the
49k head would cost 4x more). It is trained with the training-time test (3 steps unrolled,
equal weights) and forward KL against the target, whose features and logits are recomputed
in every step (the target's head only over the draft vocabulary's rows).

    python -m specdistill_jax.models.import_gguf --out workdir/models/smollm2-135m-instruct
    python -m specdistill_jax.data.prepare --data_dir=workdir/data --corpora=sharegpt_chat,sharegpt_code
    python -m specdistill_jax.train --config=configs/eagle3.py:cpu --workdir=workdir/runs/real/eagle3-fkl

Presets (`--config=configs/eagle3.py:PRESET[,key=value]`, keys: steps, lr, loss, source, seed,
ttt_steps, num_prompts, draft_vocab_size, layers, recipe, max_examples, unit, head_from_target):
* cpu: the real target's head at scale (issue 25's recipe): whole ShareGPT chat conversations
  (data.unit='conversation': every assistant turn with the conversation so far as context,
  through the target's chat template), packed into rows of 16 x 256 tokens, the target in
  bf16 recomputing features and logits in every step (the EAGLE-1 / HASS 'fixed' recipe);
  600 steps (2.46M token slots; the batches hold 6,766 distinct conversations of 10,686, each cut
  at 256 tokens: 925k unique loss tokens, counted by Source.unique_data), lr 1e-3, eval every
  100 steps, checkpoints every 50 steps (~8 min here). `recipe=regenerated`: the same head on the
  target's own answers (teacher_offline, generated once in bf16 with batched, bucketed,
  resumable generation; SpecForge / speculators' recipe). Step throughput:
  experiments/results/eagle3_step.md.
* quick: the README's main job (experiments/quickstart.py): the cpu recipe for 110 steps.
* smoke: the main job's CI run (the real target, 2 steps of 2 x 64 tokens, small corpus).
* cpu30k: the previous head (512 prompts, 30,272 target response tokens, ~13 epochs, fp32
  target): eval alpha 0.29-0.31 by memorising (train loss 1.0, held-out 3.07); its B=1 bf16
  benchmark: experiments/results/decode_benchmark_eagle3.md.
* cell: the study's cell (experiments/feature_drafters.py): cpu30k's model, fewer steps.
* micro: the smoke test's cell (a tiny random target, 2 steps).
* gpu: an EAGLE-3 head for Llama-3.1-8B-Instruct from $MODELS_DIR (unrun here: no GPU was
  lent): 1 layer, 32k draft vocabulary, 7 TTT steps, 4096 prompts, bf16.
Exported as speculators eagle3 (`workdir/.../hf`), naming the verifier.
"""

import os

from configs import common
from configs import real

PRESETS = ("cpu", "quick", "smoke", "cpu30k", "cell", "micro", "gpu")
RECIPES = ("fixed", "regenerated")
INLINE = {"steps": "train.steps", "lr": "optim.lr", "num_prompts": "data.num_prompts", "seed": "seed",
          "loss": "objective.loss", "source": "data.source", "ttt_steps": "objective.ttt_steps",
          "draft_vocab_size": "draft.feature.draft_vocab_size", "layers": "draft.feature.num_layers",
          "max_examples": "data.max_examples", "unit": "data.unit",
          "head_from_target": "draft.feature.head_from_target"}
VERIFIER = "HuggingFaceTB/SmolLM2-135M-Instruct"


def get_config(arg=None):
  name, inline = common.parse_arg(arg, "cpu", PRESETS)
  recipe = inline.pop("recipe", "fixed")
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r} must be one of {RECIPES}")
  c = common.train_config()
  c.data_dir = common.data_dir()
  c.draft = common.model(kind="feature", dtype="bfloat16")
  c.draft.feature.update(num_layers=1, draft_vocab_size=8192, vocab_batches=32, verifier=VERIFIER)
  c.objective.update(loss="fkl", ttt_steps=3, ttt_decay=1.0)
  c.data.update(corpora="sharegpt_chat", source="teacher_offline", gen_temperature=1.0, top_k=16)
  c.eval.update(gamma=4, temperature=0.0, num_prompts=8, max_new_tokens=32)
  if name == "micro":
    c.tokenizer = ""
    c.target = common.model(preset="tiny", seed=0)
    c.draft.feature.update(draft_vocab_size=256, vocab_batches=2, verifier="")
    c.draft.dtype = "float32"
    c.data.update(corpus_config="small", batch_size=2, max_len=64, max_prompt_len=32, max_new_tokens=8,
                  num_prompts=4)
    c.train.update(steps=2, eval_every=0, checkpoint_every=2, log_every=1, async_checkpoints=False)
    c.optim.update(lr=1e-3, warmup_steps=1)
  elif name == "gpu":
    c.tokenizer = common.models_dir("Llama-3.1-8B-Instruct")
    c.target = common.model(hf_path=common.models_dir("Llama-3.1-8B-Instruct"), dtype="bfloat16",
                            param_dtype="bfloat16")
    c.draft.feature.update(draft_vocab_size=32000, vocab_batches=256, verifier="meta-llama/Llama-3.1-8B-Instruct")
    c.objective.ttt_steps = 7
    c.data.update(batch_size=32, max_len=2048, max_prompt_len=1024, max_new_tokens=1024, num_prompts=4096)
    c.train.update(steps=6000, eval_every=500, checkpoint_every=500, log_every=50)
    c.optim.update(lr=1e-4, warmup_steps=200)
  elif name in ("cpu", "quick", "smoke"):
    c.tokenizer = real.target_dir()
    c.target = common.model(hf_path=real.target_dir(), dtype="bfloat16")  # it decodes in bf16
    c.data.update(corpora="sharegpt_chat", source="fixed", unit="conversation", mode="pack", pack_factor=8,
                  batch_size=16, max_len=256, max_prompt_len=96)
    c.eval.update(num_prompts=8, max_new_tokens=32)
    steps = dict(cpu=600, quick=110, smoke=2)[name]
    c.train.update(steps=steps, eval_every=100 if name == "cpu" else 0, eval_batches=2,
                   checkpoint_every=50 if name != "smoke" else 2, log_every=10 if name != "smoke" else 1)
    c.optim.update(lr=1e-3, warmup_steps=min(20, max(steps // 10, 1)))
    if recipe == "regenerated":  # the target's own answers to the conversations' first turns
      c.data.update(source="teacher_offline", unit="turn", mode="pad", max_new_tokens=160,
                    num_prompts=dict(cpu=16384, quick=2048, smoke=4)[name], gen_temperature=1.0,
                    offline_cache="")
    if name == "smoke":
      c.target.dtype = "float32"
      c.draft.feature.update(draft_vocab_size=1024, vocab_batches=1)
      c.data.update(corpus_config="small", batch_size=2, max_len=64, max_prompt_len=32, max_new_tokens=8)
      c.train.async_checkpoints = False
  else:
    c.tokenizer = real.target_dir()
    c.target = common.model(hf_path=real.target_dir())  # fp32: the cached generations came from it
    # the generations of configs/real.py:cpu (same prompts and settings): built once, shared
    c.data.update(batch_size=16, max_len=160, max_prompt_len=96, max_new_tokens=64, num_prompts=512,
                  offline_cache=os.path.join(real.workdir(2), "teacher_cache"))
    cell = name == "cell"
    c.train.update(steps=120 if cell else 400, eval_every=0 if cell else 100, eval_batches=2,
                   checkpoint_every=60 if cell else 100, log_every=10)
    c.optim.update(lr=1e-3, warmup_steps=10 if cell else 20)
  common.apply_overrides(c, {INLINE.get(k, k): v for k, v in inline.items()})
  return c


def workdir(variant: str) -> str:
  return os.path.join(os.environ.get("SPECDISTILL_RUNS", os.path.join("workdir", "runs")), "real", f"eagle3-{variant}")

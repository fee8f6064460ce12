"""EAGLE-3 feature drafts (models.create_feature_draft) for the real target, SmolLM2-135M-Instruct.

The draft reads the target's hidden states at layers (2, 15, 27) of 30, one decoder layer
(d 576) and an LM head over the 8192 most frequent tokens of the training responses (the
49k head would cost 4x more). It is trained with the training-time test (3 steps unrolled,
equal weights) and forward KL against the target, on the target's own responses to bundled
sharegpt_chat prompts (teacher_offline: the same generations as configs/real.py's cache,
reused when present; features and logits are recomputed by the target in every step).

    python -m specdistill_jax.models.import_gguf --out workdir/models/smollm2-135m-instruct
    python -m specdistill_jax.data.prepare --data_dir=workdir/data --corpora=sharegpt_chat
    python -m specdistill_jax.train --config=configs/eagle3.py:cpu --workdir=workdir/runs/real/eagle3-fkl

Presets (`--config=configs/eagle3.py:PRESET[,key=value]`, keys: steps, lr, loss, source, seed,
ttt_steps, num_prompts, draft_vocab_size, layers):
* cpu: the real target's head: 400 steps of batch 16 x 160 tokens (512 prompts, 30,272
  response tokens: ~13 epochs), lr 1e-3, bf16 draft compute with fp32 master weights; the
  target (fp32) recomputes features and logits in every step (one forward per batch; caching
  the three layers' features instead would take 3 x 576 x 2 = 3,456 bytes per token in bf16,
  against 137 for the top-16 logits cache). Measured on 2 cores: 56.9 min (7 s per step when
  the cores were free, 11-12 s while tests shared them). Eval (8 prompts x 32 tokens, gamma 4,
  T=0): alpha 0.29 / 0.31 / 0.31, tau 1.39 / 1.41 / 1.42 at steps 100 / 200 / 400; a rerun
  with `steps=200` (2026-12-02, 40.5 min while other jobs shared the cores) reached alpha 0.29 /
  tau 1.38. Its B=1, bf16 benchmark on MT-Bench and HumanEval (python -m specdistill_jax.bench):
  experiments/results/decode_benchmark_eagle3.md and decode_benchmark_eagle3_turn2_humaneval.md.
* cell: the study's cell (experiments/feature_drafters.py): the same model, fewer steps.
* micro: the smoke test's cell (a tiny random target, 2 steps).
* gpu: an EAGLE-3 head for Llama-3.1-8B-Instruct from $MODELS_DIR (unrun here: no GPU was
  lent): 1 layer, 32k draft vocabulary, 7 TTT steps, 4096 prompts, bf16.
Exported as speculators eagle3 (`workdir/.../hf`), naming the verifier.
"""

import os

from configs import common
from configs import real

PRESETS = ("cpu", "cell", "micro", "gpu")
INLINE = {"steps": "train.steps", "lr": "optim.lr", "num_prompts": "data.num_prompts", "seed": "seed",
          "loss": "objective.loss", "source": "data.source", "ttt_steps": "objective.ttt_steps",
          "draft_vocab_size": "draft.feature.draft_vocab_size", "layers": "draft.feature.num_layers"}
VERIFIER = "HuggingFaceTB/SmolLM2-135M-Instruct"


def get_config(arg=None):
  name, inline = common.parse_arg(arg, "cpu", PRESETS)
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

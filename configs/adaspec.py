"""Study d (AdaSPEC, 2510.19779): selective KD vs plain KD at equal steps, on the code domain.

    python experiments/adaspec.py --config=configs/adaspec.py:cpu

Plain KD: the generic draft distilled towards the code target with forward KL on cached
target generations (offline top-16, 1024 sharegpt_code prompts, 150 steps). AdaSPEC: the
same data and steps, starting again from the generic draft, with forward KL only on the
40% of tokens with the largest KL(p||q_draft) - KL(p||q_ref), where the reference is the
plain-KD draft of the same seed. Evaluated at temperature 0 and 1, gamma 4, 32 validation
prompts x 48 tokens, 3 seeds. Measured run time on 2 CPU cores: 8.1 min (teacher cache,
6 training runs, evaluation). Expected numbers (experiments/results/adaspec.md): alpha
undistilled 0.329 / 0.472 (T=0 / T=1), plain KD 0.626 / 0.585, AdaSPEC 0.617 / 0.588: the
two are within the seed spread at this scale.

Presets: cpu, micro (smoke test), gpu (Qwen2.5-0.5B-Instruct -> Qwen2.5-Coder-7B-Instruct
on sharegpt_code; local checkpoints under $MODELS_DIR).
"""

from configs import common


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro", "gpu"))
  c = common.study_config(scale)
  if scale == "gpu":
    c.tokenizer = common.models_dir("Qwen2.5-Coder-7B-Instruct")
    c.target, c.draft = common.models_dir("Qwen2.5-Coder-7B-Instruct"), common.models_dir("Qwen2.5-0.5B-Instruct")
  else:
    c.target, c.draft = common.world("target_code", "hf"), common.world("draft_generic", "hf")
  c.corpus = "sharegpt_code"
  c.base = common.distill_cell(scale, c.target, c.draft, c.corpus, steps=150 if scale == "cpu" else 1000)
  if c.tokenizer:
    c.base.tokenizer = c.tokenizer
  c.base.data.update(source="teacher_offline", top_k=16, gen_temperature=1.0)
  c.base.objective.loss = "fkl"
  c.fraction = 0.4
  common.apply_overrides(c, inline)
  return c

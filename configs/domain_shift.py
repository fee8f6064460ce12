"""Study a: how much acceptance a generic draft loses on domain targets (2503.07807's motivation).

    python experiments/domain_shift.py --config=configs/domain_shift.py:cpu

The generic draft (trained on chat) with the general target on chat prompts, the code
target on code prompts and the tool-use target on function-calling prompts; alpha and tau
at temperature 0 and 1, gamma 4, 32 validation prompts x 48 new tokens, 3 seeds (prompt
sample and sampling seed). Measured run time on 2 CPU cores: 0.8 min (no training).
Expected numbers (experiments/results/domain_shift.md): alpha at T=0 / T=1: general
0.601 / 0.600, code 0.329 / 0.472 (-45% / -21%), tools 0.097 / 0.072 (-84% / -88%).

Presets: cpu (the CPU world), micro (smoke test), gpu (Qwen2.5-0.5B-Instruct draft against
Qwen2.5-7B-Instruct, -Coder-7B-Instruct and -Math-7B-Instruct on the public TFDS gsm8k /
mbpp-style data: needs local checkpoints under $MODELS_DIR and prepared TFDS datasets).
"""

from configs import common


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro", "gpu"))
  c = common.study_config(scale)
  if scale == "gpu":
    c.tokenizer = common.models_dir("Qwen2.5-7B-Instruct")
    c.draft = common.models_dir("Qwen2.5-0.5B-Instruct")
    c.domains = (("general", common.models_dir("Qwen2.5-7B-Instruct"), "sharegpt_chat"),
                 ("code", common.models_dir("Qwen2.5-Coder-7B-Instruct"), "sharegpt_code"),
                 ("math", common.models_dir("Qwen2.5-Math-7B-Instruct"), "gsm8k"))
    c.max_new_tokens, c.num_prompts = 128, 64
  else:
    c.draft = common.world("draft_generic", "hf")
    c.domains = (("general", common.world("target_general", "hf"), "sharegpt_chat"),
                 ("code", common.world("target_code", "hf"), "sharegpt_code"),
                 ("tools", common.world("target_tools", "hf"), "function_calling"))  # (name, target, prompts)
  common.apply_overrides(c, inline)
  return c

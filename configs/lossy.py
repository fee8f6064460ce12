"""Study e (DistillSpec's lossy SD): eps sweeps of f_lin, f_sq, f_exp against tau and quality.

    python experiments/lossy.py --config=configs/lossy.py:cpu

Target: the tool-use target; draft: the generic draft (undistilled, so there are
rejections to trade away). Temperature 1, gamma 4, 32 validation requests x 40 tokens,
3 seeds, eps in {1, 0.5, 0.2, 0.1, 0.05} for each lenience kind. Quality: the target's
mean per-token log-likelihood of the outputs, and the fraction of outputs whose JSON
call equals the reference call exactly. eps = 1 is lossless (f = p). No training.
Measured run time on 2 CPU cores: 2.1 min.
Expected numbers (experiments/results/lossy.md): lossless tau 1.08, log-lik -0.516, exact
match 0.281; at eps 0.05: f_lin tau 1.22 (match 0.19), f_sq 2.04 (0.02), f_exp 4.95 (0.00);
f_exp is the most aggressive at every eps < 1.

Presets: cpu, micro (smoke test), gpu (Qwen2.5-0.5B-Instruct draft, Qwen2.5-7B-Instruct
target on function_calling; local checkpoints under $MODELS_DIR).
"""

from configs import common


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro", "gpu"))
  c = common.study_config(scale)
  if scale == "gpu":
    c.tokenizer = common.models_dir("Qwen2.5-7B-Instruct")
    c.target, c.draft = common.models_dir("Qwen2.5-7B-Instruct"), common.models_dir("Qwen2.5-0.5B-Instruct")
  else:
    c.target, c.draft = common.world("target_tools", "hf"), common.world("draft_generic", "hf")
  c.corpus = "function_calling"
  c.temperature = 1.0
  c.kinds = ("lin", "sq", "exp")
  c.eps = (1.0, 0.5, 0.2, 0.1, 0.05) if scale != "micro" else (1.0, 0.1)
  if scale == "cpu":
    c.max_new_tokens = 40
  common.apply_overrides(c, inline)
  return c

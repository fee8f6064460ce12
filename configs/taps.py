"""Study f (TAPS, 2603.27027): two domain drafters for one target, combined at inference.

    python experiments/taps.py --config=configs/taps.py:cpu

One target (target_mix: the general target fine-tuned on chat + tool use). Two drafters,
each the generic draft distilled towards it (offline white-box, top-16, 150 steps) on one
domain's prompts: chat (sharegpt_chat) and tools (function_calling). On each domain's
validation prompts, at temperature 0 and 1, gamma 4: each drafter alone, their parameter
average, and per-round confidence routing (TAPS: pick per row the proposal with the
higher mean cumulative probability; at temperature 1 routed on the previous round's
confidences to stay exact); trees: the merged tree of both drafters (each TreeSpec(4, 2, 8),
shared prefixes merged, one target pass), each drafter's own tree of that spec, and its
tree at the chain's cost TreeSpec(4, 2, 4). 3 seeds. Measured run time on 2 CPU cores:
12.3 min (2 teacher caches, 6 training runs, evaluation of 10 methods). Expected numbers
(experiments/results/taps.md), mean tau over the two domains at T=0 / T=1: chat drafter
1.86 / 1.82, tools drafter 2.72 / 2.44, parameter average 2.38 / 2.15, routed chain by
confidence 2.82 / 2.30 and by entropy 2.84 / 2.36, merged tree 3.37 / 2.83 (longest at both
temperatures, as TAPS finds), tools drafter's own tree 3.07 / 2.63.

Math domain (preset `math`; `micro,math=True` for its smoke test): the target is target_math
(the general target fine-tuned on math_word_problems + sharegpt_chat), the domains chat and
math, and a third drafter distilled on the mixture of both corpora (TAPS' mixed data); the
math domain also reports answer accuracy (the final '#### answer' of each output against
the verified one) of plain decoding and of lossy SD (lenience f_lin / f_exp at
`lossy_eps`, T=1, chains) with each drafter and the routed pair, on `answer_prompts`
validation problems per seed with `answer_tokens` new tokens.
    python experiments/taps.py --config=configs/taps.py:math
Measured: 35.9 min on 2 CPU cores (9 drafter cells, 14 methods, the answer table), sharing the
cores with other jobs for its first ~20 min. Expected (results/taps_math.md), mean tau over
chat / math at T=0: chat drafter 1.90, math drafter 2.16 (2.78 on math), mixed drafter 2.34
(best on neither domain), parameter average 2.04, routed chain (confidence) 2.25, merged tree
2.85 (longest at both temperatures). Answer accuracy: target greedy 0.068, lossless SD at T=1
0.05-0.07; f_exp eps 0.1 raises tau to ~4.7 and drops accuracy to 0-0.02.

Presets: cpu, math, micro (smoke test), gpu (two Qwen2.5-0.5B-Instruct drafters distilled on
gsm8k and sharegpt_chat against Qwen2.5-7B-Instruct; local checkpoints under $MODELS_DIR).
"""

from configs import common


def get_config(arg=None):
  preset, inline = common.parse_arg(arg, "cpu", ("cpu", "math", "micro", "gpu"))
  math = bool(inline.pop("math", preset == "math"))
  scale = "cpu" if preset == "math" else preset
  c = common.study_config(scale)
  c.preset = preset if not (math and preset == "micro") else "micro,math=True"
  c.study = "taps_math" if math else "taps"
  c.mixed = math  # a third drafter on all domains' data
  if scale == "gpu":
    c.tokenizer = common.models_dir("Qwen2.5-7B-Instruct")
    c.target, c.draft = common.models_dir("Qwen2.5-7B-Instruct"), common.models_dir("Qwen2.5-0.5B-Instruct")
    c.domains = (("chat", "sharegpt_chat"), ("math", "gsm8k"))
  else:
    c.target, c.draft = common.world("target_mix", "hf"), common.world("draft_generic", "hf")
    c.domains = (("chat", "sharegpt_chat"), ("tools", "function_calling"))  # (name, corpus)
  if math and scale != "gpu":
    c.target = common.world("target_math", "hf")
    c.domains = (("chat", "sharegpt_chat"), ("math", "math_word_problems"))
  steps = 150 if scale == "cpu" else 1000
  c.base = common.distill_cell(scale, c.target, c.draft, "sharegpt_chat", steps=steps)
  if c.tokenizer:
    c.base.tokenizer = c.tokenizer
  c.base.data.update(source="teacher_offline", top_k=16, gen_temperature=1.0)
  c.signal = "confidence"
  # trees: each drafter's TreeSpec in the merged tree is (gamma, tree_top_k, tree_nodes_per_level * gamma);
  # a single drafter's tree at the chain's cost is (gamma, tree_top_k, gamma)
  c.tree_top_k = 2
  c.tree_nodes_per_level = 2
  # answer accuracy (domains whose corpus has verified answers: math_word_problems, gsm8k)
  c.answer_prompts = 2 if scale == "micro" else 64
  c.answer_tokens = 8 if scale == "micro" else 96
  c.lossy_kinds = ("lin", "exp")
  c.lossy_eps = (0.5,) if scale == "micro" else (0.5, 0.1)
  common.apply_overrides(c, inline)
  return c

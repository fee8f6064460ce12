"""Study g: feature drafters (EAGLE-3) vs an independent distilled draft, on the real target.

    python experiments/feature_drafters.py --config=configs/feature_drafters.py:cpu

Target: SmolLM2-135M-Instruct (configs/real.py). Cells, each trained for `steps` steps of the
same batches (matched budget: the same target responses, batch and steps):
* independent: the 2-layer draft cut from the target (configs/real.py), forward KL;
* feature drafters (configs/eagle3.py: 1 layer, 8k draft vocabulary, 3 TTT steps), with
  forward KL (the base), reverse KL, TVD; on-policy TTT (the draft's own proposals and
  the target over them, Draft-OPD's signal) instead of teacher forcing; 1 and 5 TTT steps.
Evaluated at T=0 and T=1, gamma 4, on `num_prompts` validation prompts per seed (batched):
alpha, tau; c (draft step / target step) and v (a (gamma+1)-token verification / a target
step) measured once per draft kind at B=1; predicted speedup tau / (gamma c + v); and the
measured B=1 speedup of the independent and the base feature drafter (seed 0,
`speed_prompts` prompts, `max_new_tokens` tokens each).

Presets: cpu (3 seeds, 60 steps per cell: 21 cells; about 7 s per step on 2 cores, 20 s for
on-policy: not run in full here), micro (smoke test: the micro world's target, 2 steps, 1 seed),
gpu (Llama-3.1-8B-Instruct from $MODELS_DIR with configs/eagle3.py:gpu cells; unrun here).
Inline keys: seeds, steps, num_prompts, max_new_tokens; cells via --config.cells='a,b'.

What ran (results/feature_drafters.md): 1 seed, 25 steps per cell, 5 cells (no TVD, no 5 TTT
steps), 16 prompts x 32 tokens, 23.1 min:
    python experiments/feature_drafters.py --config=configs/feature_drafters.py:cpu,seeds=1,steps=25,\
        num_prompts=16,max_new_tokens=32 '--config.cells=independent,feature fkl,feature rkl,feature fkl on-policy,feature fkl ttt1'
tau T=0 / T=1: independent 1.12 / 1.11, feature FKL 1.12 / 1.17, RKL 1.02 / 1.09, on-policy
1.13 / 1.16, 1 TTT step 1.16 / 1.17; c 0.20 (independent) vs 0.04 (feature, fp32). At 25 steps
every draft is far from trained (the 400-step head of configs/eagle3.py:cpu30k reaches alpha 0.31).
"""

import copy

from configs import common
from configs import eagle3
from configs import real

CELLS = {  # name -> (kind, overrides)
    "independent": ("token", {}),
    "feature fkl": ("feature", {}),
    "feature rkl": ("feature", {"objective.loss": "rkl"}),
    "feature tvd": ("feature", {"objective.loss": "tvd"}),
    "feature fkl on-policy": ("feature", {"objective.ttt_inputs": "draft"}),
    "feature fkl ttt1": ("feature", {"objective.ttt_steps": 1}),
    "feature fkl ttt5": ("feature", {"objective.ttt_steps": 5}),
}


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro", "gpu"))
  c = common.study_config(scale)
  c.steps = 2 if scale == "micro" else (2000 if scale == "gpu" else 60)
  c.speed_prompts = 0 if scale == "micro" else 2  # 0: no B=1 timing
  c.max_new_tokens = 8 if scale == "micro" else 64
  c.cells = "independent,feature fkl" if scale == "micro" else ",".join(CELLS)
  if scale == "micro":
    c.feature = eagle3.get_config("micro")
    c.feature.target = common.model(hf_path=common.world("target_general", "hf"))
    c.feature.tokenizer = common.world("target_general", "hf")
    c.independent = common.distill_cell("micro", common.world("target_general", "hf"),
                                        common.world("draft_generic", "hf"), "sharegpt_chat", 2)
    c.independent.tokenizer = common.world("target_general", "hf")
    c.independent.target.dtype = c.independent.draft.dtype = "float32"
  elif scale == "gpu":
    c.feature = eagle3.get_config("gpu")
    c.independent = copy.deepcopy(c.feature)
    c.independent.draft = common.model(target_layers=2, dtype="bfloat16", param_dtype="bfloat16")
  else:
    c.feature = eagle3.get_config("cell")
    c.independent = real.get_config("cpu")
    c.independent.data.offline_cache = c.feature.data.offline_cache  # the same target responses
  for cell in (c.feature, c.independent):
    cell.train.update(eval_every=0, async_checkpoints=False)
    cell.export_hf = "hf"
  c.tokenizer = c.feature.tokenizer
  common.apply_overrides(c, inline)
  return c

"""Study: how the real target's drafts scale with training data and with training compute.

    python experiments/draft_scaling.py --config=configs/draft_scaling.py:cpu
    python experiments/draft_scaling.py --config=configs/draft_scaling.py:cpu '--config.cells=fixed n512 s60,fixed n512 s120'

Target: SmolLM2-135M-Instruct (configs/real.py). Every cell trains the EAGLE-3 head of
configs/eagle3.py (1 layer, 8k draft vocabulary, 3 TTT steps, forward KL, the target in bf16)
on ShareGPT chat turns (data.unit='turn': a user turn and its answer, packed into rows of
8 x 256 tokens; 8 x 256 rather than the head's 16 x 256 so that cells are half the cost),
with `examples` distinct turns (the unique data) for `steps` steps. A cell's name says its
recipe, its data and its steps: 'fixed n512 s240' = ShareGPT's own answers, 512 turns, 240
steps. The study measures each cell's unique loss tokens from its own batches (Source.unique_data).

Axes:
* data at fixed compute: n128 .. n16384 at 240 steps (unique tokens ~25K .. what 240 steps
  can hold; beyond that a cell sees each turn at most once);
* compute at fixed data: n512 at 60 / 120 / 240 / 480 steps (repeats: ~40 epochs at 480),
  against the same steps on fresh data ('fixed all s*': the whole corpus, nothing repeats);
  if a fixed-data cell matches the fresh-data cell of equal steps, compute binds, not data;
* the long cell 'fixed all s2400' (~5M tokens seen once; ~3 h here: resumable, run alone);
* recipe: target-regenerated answers to the same first turns (configs/eagle3.py's
  recipe=regenerated: teacher_offline, <= 160 tokens) vs ShareGPT's answers, n2048 s240;
* draft kind: the 2-layer independent draft (configs/real.py) at n512 and n16384, 240 steps;
* on-policy TTT (objective.ttt_inputs='draft', Draft-OPD) vs teacher forcing at matched wall
  time: its step costs ~3x, so 80 steps against 'fixed all s240';
* divergence: TVD vs FKL at n2048 s240.
Each cell is benchmarked with the suite's B=1 protocol (specdistill_jax.bench.suite) on
MT-Bench turn 1, HumanEval and held-out ShareGPT (`limit` prompts each, round-robin over
categories), chain gamma `gamma`, T=0 and T=1: first-position and per-position acceptance,
tau, measured speedup with its bootstrap interval, c and v.

Trained cells and their benchmark rows are kept under `workdir`; rerunning the driver
trains and measures only what is missing, so the study can be run a few cells at a time
(`--config.cells=...`) and the table then covers every cell measured so far.
Presets: cpu, micro (the test's: the micro world's target, 2 steps, one prompt).
"""

import copy

from configs import common
from configs import eagle3
from configs import real

# name -> (kind, recipe, examples (0: the whole corpus), steps, overrides)
CELLS = {
    **{f"fixed n{n} s240": ("feature", "fixed", n, 240, {}) for n in (128, 512, 2048, 4096, 16384)},
    **{f"fixed n512 s{s}": ("feature", "fixed", 512, s, {}) for s in (60, 120, 480)},
    **{f"fixed all s{s}": ("feature", "fixed", 0, s, {}) for s in (60, 120, 240, 480)},
    "fixed all s2400": ("feature", "fixed", 0, 2400, {}),
    "regenerated n2048 s240": ("feature", "regenerated", 2048, 240, {}),
    "independent n512 s240": ("token", "fixed", 512, 240, {}),
    "independent n16384 s240": ("token", "fixed", 16384, 240, {}),
    "on-policy all s80": ("feature", "fixed", 0, 80, {"objective.ttt_inputs": "draft"}),
    "tvd n2048 s240": ("feature", "fixed", 2048, 240, {"objective.loss": "tvd"}),
}
# the cells the cpu preset runs by default (the long cell only when named)
DEFAULT_CELLS = [n for n in CELLS if n != "fixed all s2400"]
MICRO_CELLS = {"fixed n2 s2": ("feature", "fixed", 2, 2, {}), "fixed n8 s2": ("feature", "fixed", 8, 2, {}),
               "regenerated n2 s2": ("feature", "regenerated", 2, 2, {}),
               "independent n8 s2": ("token", "fixed", 8, 2, {})}


def cells(scale: str) -> dict:
  return MICRO_CELLS if scale == "micro" else CELLS
PUBLISHED = (
    ("speculators PR #1132: EAGLE-3 head, Qwen3-8B, 5K samples", "0.52", "1.89"),
    ("SpecJAX: EAGLE-3, Llama-3.2-3B, ShareGPT", "0.606", ""),
)


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro"))
  c = common.study_config(scale)
  # micro: one feature and one independent cell (the test's budget; the other two run when named)
  c.cells = ",".join(DEFAULT_CELLS) if scale == "cpu" else "fixed n2 s2,independent n8 s2"
  if scale == "micro":
    world = common.world("target_general", "hf")
    c.feature = eagle3.get_config("micro")
    c.feature.target = common.model(hf_path=world)
    c.feature.tokenizer = world
    c.feature.data.update(source="fixed", unit="turn", mode="pack", pack_factor=2)
    c.independent = common.distill_cell("micro", world, common.world("draft_generic", "hf"), "sharegpt_chat", 2)
    c.independent.tokenizer = world
    c.independent.target.dtype = c.independent.draft.dtype = "float32"
    c.independent.data.update(source="fixed", unit="turn", mode="pack", pack_factor=2)
    c.regenerated = copy.deepcopy(c.feature)
    c.regenerated.data.update(source="teacher_offline", mode="pad", offline_cache="")
    c.target_dir = world
    c.sets = "mt_bench"
    c.limit = 1
    c.gamma = 1
    c.temperatures = (0.0,)
    c.max_new_tokens = 4
    c.dtype = "float32"
  else:
    c.feature = eagle3.get_config("cpu,unit=turn")
    c.feature.data.update(batch_size=8, max_len=256, max_prompt_len=96)
    c.independent = real.get_config("cpu")
    c.independent.data.update(source="fixed", unit="turn", mode="pack", pack_factor=8, batch_size=8, max_len=256,
                              max_prompt_len=96)
    c.independent.target.dtype = "bfloat16"
    c.regenerated = eagle3.get_config("cpu,recipe=regenerated")
    c.regenerated.data.update(batch_size=8)
    c.target_dir = real.target_dir()
    c.sets = "mt_bench,humaneval,sharegpt_chat"
    c.limit = 8
    c.gamma = 3
    c.max_new_tokens = 64
    c.dtype = "bfloat16"
  for cell in (c.feature, c.independent, c.regenerated):
    cell.train.update(eval_every=0, async_checkpoints=False, checkpoint_every=50 if scale == "cpu" else 2)
    cell.export_hf = "hf"
  c.tokenizer = c.feature.tokenizer
  common.apply_overrides(c, inline)
  return c

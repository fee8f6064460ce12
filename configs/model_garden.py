"""Study g (DistillSpec's model garden): distil the target first, then the draft towards it.

    python experiments/model_garden.py --config=configs/model_garden.py:cpu

The large model is target_mix (12.6M parameters, 6 layers: the general target fine-tuned on
chat + tool use, so the tool-use task metric means something; the world has no larger model).
1. The distilled target: the large model's first `small_layers` layers with its embedding,
   final norm and head (models.first_layers), distilled towards it with FKL on its own
   top-16 generations (teacher_offline) over sharegpt_chat + function_calling.
2. The draft (draft_generic, 1.44M) distilled the same way towards the distilled target, and,
   for SD on the large model, towards the large model.
Measured at B=1 (one prompt at a time, greedy and T=1, 48 new tokens, 16 tool-use validation
prompts): ms per token of (a) the large model decoding, (b) the distilled target decoding,
(c) distilled target + its draft (SD, gamma 4), (d) the large model + its draft (SD).
Quality: cross-entropy under the large model's next-token distributions on 256 validation
responses (chat + tools; SD's output distribution is its verifier's, so (c) = (b) and
(d) = (a) here), and JSON exact match of the greedy tool calls actually produced by each of
(a)-(d) on 64 requests. 95% bootstrap CIs over prompts (latency: paired ratios) and over
validation rows; one training seed.
Measured on 2 CPU cores: 13.7 min from nothing (8.7 min training: 2 distilled targets, 3 drafts),
3.1 min with the cells cached. Expected numbers (results/model_garden.md, the last of two
uncontended runs; B=1 timings move by up to ~2x between runs on this machine, so the CIs
cover prompts, not runs): large AR 3.5-4.5 ms/token; the 1-layer distilled target decoded
plainly 5.0x (T=0) and 6.8x (T=1) faster (9.2x / 3.9x in the other run), SD with its draft
slower than that (3.4x / 4.5x; c = 0.34); the large model with its draft 1.4-2.1x; quality:
+0.82 nats CE under the large model, valid JSON calls 0.94 -> 0.67 at T=0, exact match 0
for every system (the large model's included).

Presets: cpu, micro (smoke test).
"""

from configs import common


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro"))
  c = common.study_config(scale)
  c.large = common.world("target_mix", "hf")
  c.draft = common.world("draft_generic", "hf")
  c.corpora = "sharegpt_chat,function_calling"
  c.task_corpus = "function_calling"
  c.small_layers = (1,) if scale == "micro" else (2, 1)
  c.small = common.distill_cell(scale, c.large, c.large, c.corpora, steps=300)
  c.small.data.update(source="teacher_offline", top_k=16)
  c.draft_cell = common.distill_cell(scale, c.large, c.draft, c.corpora, steps=150)
  c.draft_cell.data.update(source="teacher_offline", top_k=16)
  c.latency_prompts = 2 if scale == "micro" else 16
  c.quality_prompts = 2 if scale == "micro" else 64
  c.quality_rows = 4 if scale == "micro" else 256
  c.bootstrap = 200 if scale == "micro" else 2000
  c.claim_low, c.claim_high = 6.0, 10.0
  common.apply_overrides(c, inline)
  return c

"""Study c (2503.07807): training a domain draft -- offline vs online, white-box vs black-box,
three data scenarios, and data scaling -- on the tool-use (function calling) domain.

    python experiments/domain_draft.py --config=configs/domain_draft.py:cpu

The generic draft is distilled towards the tool-use target for 150 steps (batch 16 x 96
tokens, forward KL unless black-box) in each condition:
* offline white-box: the target answers the prompts once; its top-16 logits are cached
  (teacher_cache) and the draft trains on them without the target;
* online white-box: responses are generated during training (by the draft, as in online
  speculative decoding) and the target scores them live. The paper's exact definition of
  "online" is *unconfirmed* here; this is the reading we test;
* offline black-box: the same cached responses, tokens only, cross-entropy (SFT);
* data scenarios for offline white-box: historical user queries (the corpus' requests),
  curated domain text (the tools' API documentation, no prompts: the draft matches the
  target's logits on the documents), synthetic prompts (Magpie: the target writes requests
  after the chat template's user marker);
* data scaling: offline white-box on 64, 256 and 1024 historical queries.
Generated data use temperature 1 (recorded in the cache and reused at evaluation); every
draft is evaluated at temperature 0 and 1, gamma 4, 32 validation requests x 40 tokens,
3 seeds. Measured run time on 2 CPU cores: 17.1 min (teacher caches, 21 training runs,
evaluation). Expected numbers (experiments/results/domain_draft.md), alpha at T=0 / T=1:
undistilled 0.097 / 0.073; offline white-box 0.775 / 0.757; online white-box 0.716 / 0.667;
offline black-box 0.776 / 0.752; curated text 0.171 / 0.105; synthetic prompts 0.767 /
0.752; data scaling 64 / 256 / 1024 queries: 0.727 / 0.774 / 0.775 (T=0).

Presets: cpu, micro (smoke test), gpu (Qwen2.5-0.5B-Instruct -> a local function-calling
target under $MODELS_DIR, e.g. a Llama-3.1-8B-Instruct fine-tune, on function_calling).
"""

from configs import common

CELLS = {
    "offline_whitebox": dict(source="teacher_offline", loss="fkl"),
    "online_whitebox": dict(source="on_policy", loss="fkl"),
    "offline_blackbox": dict(source="teacher_offline", loss="ce", black_box=True),
    "curated_whitebox": dict(source="fixed", loss="fkl", documents=True),
    "synthetic_whitebox": dict(source="teacher_offline", loss="fkl", prompts="synthetic"),
}


def get_config(arg=None):
  scale, inline = common.parse_arg(arg, "cpu", ("cpu", "micro", "gpu"))
  c = common.study_config(scale)
  if scale == "gpu":
    c.tokenizer = common.models_dir("function-calling-target")
    c.target, c.draft = common.models_dir("function-calling-target"), common.models_dir("Qwen2.5-0.5B-Instruct")
  else:
    c.target, c.draft = common.world("target_tools", "hf"), common.world("draft_generic", "hf")
  c.corpus = "function_calling"
  c.base = common.distill_cell(scale, c.target, c.draft, c.corpus, steps=150 if scale == "cpu" else 1000)
  if c.tokenizer:
    c.base.tokenizer = c.tokenizer
  if scale == "cpu":
    c.base.data.update(max_len=96, max_prompt_len=56, max_new_tokens=40)
    c.max_new_tokens = 40
  c.base.data.update(gen_temperature=1.0, top_k=16)
  c.cells = tuple(CELLS) if scale != "micro" else ("offline_whitebox", "online_whitebox")
  c.scaling = (64, 256, 1024) if scale == "cpu" else ((8,) if scale == "micro" else (1024, 4096, 8192))
  common.apply_overrides(c, inline)
  return c

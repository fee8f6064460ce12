"""DFlash block drafters (models.create_block_draft) for the real target, SmolLM2-135M-Instruct.

The draft reads the target's hidden states at layers (2, 15, 27) of 30, as the EAGLE-3
head does, and drafts a block of 8 (the anchor and 7 tokens) in one pass: 2 decoder layers
(d 576, attending to the context's keys/values and bidirectionally inside the block) and the
target's own head over the 8192 most frequent tokens of the training answers (frozen, as in
speculators). Each step draws max_len // block_size = 32 anchors per row; drafted slot i
weighs exp(-i / 4) (normalised); forward KL against the target, whose features and logits
are recomputed in every step.

    python -m specdistill_jax.models.import_gguf --out workdir/models/smollm2-135m-instruct
    python -m specdistill_jax.data.prepare --data_dir=workdir/data --corpora=sharegpt_chat,sharegpt_code
    python -m specdistill_jax.train --config=configs/dflash.py:cpu --workdir=workdir/runs/real/dflash-cpu

Presets (`--config=configs/dflash.py:PRESET[,key=value]`; the keys of configs/eagle3.py plus
block_size, num_anchors, block_decay):
* cpu: the EAGLE-3 head's cpu recipe (configs/eagle3.py:cpu: whole ShareGPT conversations
  packed into 16 x 256-token rows, 600 steps, lr 1e-3): equal training tokens, so the two
  drafters compare at equal data.
* micro: the smoke test's cell (a tiny random target, 2 steps).
Exported as speculators dflash (`workdir/.../hf`), naming the target's local directory as the
verifier (the format takes the embedding and head from it; `models.load_hf` reads them there).
"""

import os

from configs import common
from configs import eagle3

PRESETS = ("cpu", "micro")
INLINE = {"block_size": "draft.feature.block_size", "num_anchors": "objective.num_anchors",
          "block_decay": "objective.block_decay"}


def get_config(arg=None):
  name, inline = common.parse_arg(arg, "cpu", PRESETS)
  ours = {k: inline.pop(k) for k in list(inline) if k in INLINE}
  c = eagle3.get_config(",".join([name] + [f"{k}={v!r}" for k, v in inline.items()]))
  c.draft.kind = "block"
  # the dflash export takes its embedding and head from the verifier: name the local target directory
  c.draft.feature.update(num_layers=2 if name == "cpu" else 1, block_size=8 if name == "cpu" else 4, verifier="")
  c.objective.update(num_anchors=0, block_decay=4.0)
  common.apply_overrides(c, {INLINE[k]: v for k, v in ours.items()})
  return c


def workdir(variant: str) -> str:
  return os.path.join(os.environ.get("SPECDISTILL_RUNS", os.path.join("workdir", "runs")), "real", f"dflash-{variant}")

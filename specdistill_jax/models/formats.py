"""`load_hf` / `save_hf`: every checkpoint format behind two calls.

A plain model is an HF directory (models/hf.py). A draft head is written in
speculators' format for its kind, which vLLM / SGLang load: an EAGLE-3 head as
`eagle3` (models/eagle3_io.py), a block drafter as `dflash` (models/dflash_io.py).
`load_hf` reads `speculators_model_type` from config.json to pick the reader.
This module is the one place that maps model classes to formats.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from specdistill_jax.models import backend_layout, dflash_io, eagle3_io, hf
from specdistill_jax.models import speculators_format as fmt
from specdistill_jax.models.block_draft import BlockDraft
from specdistill_jax.models.feature_draft import FeatureDraft

_READERS = {eagle3_io.FORMAT: eagle3_io.load_eagle3, dflash_io.FORMAT: dflash_io.load_dflash}
_WRITERS = ((FeatureDraft, eagle3_io.save_eagle3), (BlockDraft, dflash_io.save_dflash))


def load_hf(path: str, dtype=jnp.float32, param_dtype=None, shardings=None, scan_layers: bool = False):
  """Load a local checkpoint directory: an HF model as a `Transformer`, a speculators eagle3
  directory as a `FeatureDraft`, a dflash one as a `BlockDraft`.

  dtype: compute dtype; param_dtype: storage dtype (default: dtype).
  shardings: optional callable(abstract nnx.State) -> pure dict of shardings
  (e.g. `lambda s: sharding.param_shardings(s, mesh)`), so that a large model
  is placed on the mesh tensor by tensor as it loads (plain models).
  scan_layers: run the layers as one lax.scan (ModelConfig.scan_layers; plain models).
  """
  path = hf.check_directory(path)
  kind = fmt.model_type(path)
  if kind is None:
    return hf.load_transformer(path, dtype, param_dtype, shardings, scan_layers)
  if kind not in _READERS:
    raise hf.CheckpointFormatError(f"{path}: speculators_model_type={kind!r} is not supported; this loader "
                                   f"reads {sorted(_READERS)}")
  return _READERS[kind](path, dtype, param_dtype)


def save_hf(model, path: str, verifier: Optional[str] = None) -> None:
  """Write `model` as an HF directory (config.json + model.safetensors); a draft head in its
  speculators format, naming `verifier` (the target's HF id or local path) as its target.
  A model in the fused decode layout is written in the standard one (models/backend_layout.py)."""
  model = backend_layout.standard(model)
  for cls, write in _WRITERS:
    if isinstance(model, cls):
      return write(model, path, verifier)
  return hf.save_transformer(model, path)

"""speculators' `dflash` checkpoint format for block drafters (models/block_draft.py).

A directory with config.json and model.safetensors (the parts every speculators
format shares: models/speculators_format.py):

* config.json: `speculators_model_type: "dflash"`, `architectures: ["DFlashSpeculator"]`,
  `block_size`, `mask_token_id`, `aux_hidden_state_layer_ids` (our `feature_layers`),
  `draft_vocab_size`, `target_hidden_size`, `sample_from_anchor: false` (the anchor is
  the verified bonus token; block_size - 1 drafts), `sliding_window_non_causal`, and
  the greedy proposal of block_size - 1 tokens;
* tensors, torch layout ([out, in]): fc, hidden_norm, layers.i.{self_attn.{q,k,v,o}_proj,
  self_attn.{q,k}_norm, mlp.*, input_layernorm, post_attention_layernorm}, norm, and with
  a reduced vocabulary lm_head [draft_vocab, D] with d2t / t2d. As speculators saves it,
  the embedding and a full-vocabulary head are not stored: they are the verifier's, read
  back from `speculators_config.verifier.name_or_path` (a local directory) on load.

tests/models/test_dflash_export.py loads our export with speculators' own DFlashDraftModel and
compares logits for the same features, ids and anchors.
"""

from __future__ import annotations

import os
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax.models import hf
from specdistill_jax.models import speculators_format as fmt
from specdistill_jax.models.block_draft import BlockDraft
from specdistill_jax.models.draft_vocab import target_head

FORMAT = "dflash"


def _specs(c, num_features: int, draft_vocab: Optional[int]):
  d, dh = c.d_model, c.head_dim
  same = lambda w: w  # noqa: E731
  specs = [(("fc",), "fc.weight", lambda w: w.T, lambda w: w.T, (num_features * d, d)),
           (("hidden_norm", "weight"), "hidden_norm.weight", same, same, (d,)),
           (("final_norm", "weight"), "norm.weight", same, same, (d,))]
  if draft_vocab is not None:
    specs.append((("frozen_lm_head",), "lm_head.weight", lambda w: w.T, lambda w: w.T, (d, draft_vocab)))
  for i in range(c.num_layers):
    specs += hf.layer_tensor_specs(c, ("layers", i), f"layers.{i}.")
    specs += [(("layers", i, n, "weight"), f"layers.{i}.self_attn.{n}.weight", same, same, (dh,))
              for n in ("q_norm", "k_norm")]
  return specs


def _verifier(path: Optional[str], where: str):
  """The verifier as a Transformer from a local HF directory, or None if `path` is not one."""
  if not path or not os.path.exists(os.path.join(path, "config.json")):
    return None
  try:
    return hf.load_transformer(path)
  except (OSError, ValueError, KeyError) as e:
    raise hf.CheckpointFormatError(f"{where}: the verifier {path!r} does not load ({e})") from e


def save_dflash(draft: BlockDraft, path: str, verifier: Optional[str] = None) -> None:
  """Write `draft` in speculators' dflash format. verifier: the target's HF id or local path.

  The embedding and a full-vocabulary head are left to the verifier, as speculators does;
  with a local verifier directory they are checked to be the verifier's own.
  """
  c = draft.config
  target = _verifier(verifier, "save_hf")
  if target is not None:
    ours = [np.asarray(draft.frozen_embed[...], np.float32), np.asarray(draft.frozen_lm_head[...], np.float32)]
    theirs = [np.asarray(target.embed[...], np.float32), np.asarray(target_head(target, draft.draft_ids), np.float32)]
    if any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(ours, theirs)):
      raise ValueError(f"the block draft's embedding / head are not those of the verifier {verifier!r}, and "
                       "the dflash format takes them from the verifier: build the draft with "
                       "models.create_block_draft(target.config, ..., target=target)")
  config = {
      "architectures": ["DFlashSpeculator"],
      "speculators_model_type": FORMAT,
      "transformer_layer_config": fmt.layer_config(c),
      "draft_vocab_size": draft.draft_vocab_size,
      "block_size": draft.block_size,
      "mask_token_id": draft.mask_token_id,
      "aux_hidden_state_layer_ids": list(draft.feature_layers),
      "target_hidden_size": None,
      "sample_from_anchor": False,
      "sliding_window_non_causal": False,
      "specdistill_target_layers": draft.target_layers,
      "speculators_config": fmt.speculators_config(FORMAT, draft.block_size - 1, verifier),
  }
  reduced = None if draft.draft_ids is None else draft.draft_vocab_size
  tensors = hf.hf_tensors(draft, _specs(c, len(draft.feature_layers), reduced))
  fmt.write(path, config, {**tensors, **fmt.vocab_tensors(draft)})


def load_dflash(path: str, dtype=jnp.float32, param_dtype=None) -> BlockDraft:
  """A `BlockDraft` from a speculators dflash directory (its verifier must be a local directory)."""
  meta = fmt.read_meta(path)
  if meta.get("sample_from_anchor"):
    raise hf.CheckpointFormatError(f"{path}/config.json sets sample_from_anchor=true (DSpark-style), which "
                                   "this loader does not implement")
  if meta.get("mask_token_id") is None:
    raise hf.CheckpointFormatError(f"{path}/config.json has no mask_token_id; set the id the draft was "
                                   "trained with")
  config, pname = fmt.read_layer_config(meta, path, dtype, param_dtype)
  feature_layers = tuple(int(i) for i in meta["aux_hidden_state_layer_ids"])
  draft_ids = fmt.read_draft_ids(meta, hf._open_tensors(path), config.vocab_size)
  name = fmt.verifier_path(meta)
  target = _verifier(name, path)
  if target is None:
    raise hf.CheckpointFormatError(
        f"{path}: a dflash draft takes its embedding from its verifier, but speculators_config.verifier."
        f"name_or_path={name!r} is not a local directory with a config.json; point it at the target's "
        "local directory")
  build = lambda: BlockDraft(config, feature_layers=feature_layers, target_layers=fmt.target_layers(meta, path),  # noqa: E731
                             block_size=int(meta["block_size"]), mask_token_id=int(meta["mask_token_id"]),
                             draft_ids=draft_ids, rngs=nnx.Rngs(0))
  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  pure = hf.read_tensors(path, _specs(config, len(feature_layers), None if draft_ids is None else len(draft_ids)),
                         pname)
  cast = lambda w: jnp.asarray(np.asarray(w, np.float32)).astype(config.jnp_param_dtype)  # noqa: E731
  pure["frozen_embed"] = cast(target.embed[...])
  if draft_ids is None:
    pure["frozen_lm_head"] = cast(target_head(target))
  nnx.replace_by_pure_dict(abstract, pure)
  return nnx.merge(graphdef, abstract)

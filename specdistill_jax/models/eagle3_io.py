"""speculators' `eagle3` checkpoint format for feature drafts (the format vLLM and SGLang load).

A directory with config.json and model.safetensors (the parts every speculators format
shares: models/speculators_format.py):

* config.json: `speculators_model_type: "eagle3"`, `architectures: ["Eagle3Speculator"]`,
  `eagle_aux_hidden_state_layer_ids` (our `feature_layers`), `norm_before_residual`.
* tensors, torch layout ([out, in]): embed_tokens, fc, layers.0.{self_attn.{q,k,v}_proj (2 D
  inputs), o_proj, mlp.*, input_layernorm, hidden_norm, post_attention_layernorm}, further
  layers as in Llama, norm, lm_head [draft_vocab, D], and with a reduced vocabulary d2t / t2d.

tests/models/test_eagle3_export.py loads our export with speculators' own Eagle3DraftModel and
compares logits for the same hidden states and ids.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import nnx

from specdistill_jax.models import hf
from specdistill_jax.models import speculators_format as fmt
from specdistill_jax.models.feature_draft import FeatureDraft

FORMAT = "eagle3"
_UNSUPPORTED = ("norm_before_fc", "fc_norm", "norm_output")


def _specs(draft_config, num_features: int, vocab: int, draft_vocab: int):
  d = draft_config.d_model
  same = lambda w: w  # noqa: E731
  specs = [(("frozen_embed",), "embed_tokens.weight", same, same, (vocab, d)),
           (("fc",), "fc.weight", lambda w: w.T, lambda w: w.T, (num_features * d, d)),
           (("layers", 0, "hidden_norm", "weight"), "layers.0.hidden_norm.weight", same, same, (d,)),
           (("final_norm", "weight"), "norm.weight", same, same, (d,)),
           (("lm_head",), "lm_head.weight", lambda w: w.T, lambda w: w.T, (d, draft_vocab))]
  for i in range(draft_config.num_layers):
    specs += hf.layer_tensor_specs(draft_config, ("layers", i), f"layers.{i}.", 2 * d if i == 0 else None)
  return specs


def save_eagle3(draft: FeatureDraft, path: str, verifier: Optional[str] = None,
                speculative_tokens: int = 3) -> None:
  """Write `draft` in speculators' eagle3 format. verifier: the target's HF id or local path."""
  c = draft.config
  config = {
      "architectures": ["Eagle3Speculator"],
      "speculators_model_type": FORMAT,
      "transformer_layer_config": fmt.layer_config(c),
      "draft_vocab_size": draft.draft_vocab_size,
      "norm_before_residual": draft.norm_before_residual,
      "norm_before_fc": False, "fc_norm": False, "norm_output": False, "embed_requires_grad": False,
      "target_hidden_size": None,
      "eagle_aux_hidden_state_layer_ids": list(draft.feature_layers),
      "specdistill_target_layers": draft.target_layers,
      "tie_word_embeddings": False,
      "speculators_config": fmt.speculators_config(FORMAT, speculative_tokens, verifier),
  }
  tensors = hf.hf_tensors(draft, _specs(c, len(draft.feature_layers), c.vocab_size, draft.draft_vocab_size))
  fmt.write(path, config, {**tensors, **fmt.vocab_tensors(draft)})


def load_eagle3(path: str, dtype=jnp.float32, param_dtype=None) -> FeatureDraft:
  """A `FeatureDraft` from a speculators eagle3 directory."""
  meta = fmt.read_meta(path)
  for flag in _UNSUPPORTED:
    if meta.get(flag):
      raise hf.CheckpointFormatError(f"{path}/config.json sets {flag}=true, which this loader does not "
                                     "implement; export the draft without it")
  config, pname = fmt.read_layer_config(meta, path, dtype, param_dtype)
  feature_layers = tuple(int(i) for i in meta["eagle_aux_hidden_state_layer_ids"])
  target_layers = fmt.target_layers(meta, path)
  draft_ids = fmt.read_draft_ids(meta, hf._open_tensors(path), config.vocab_size)
  build = lambda: FeatureDraft(config, feature_layers=feature_layers, target_layers=target_layers,  # noqa: E731
                               draft_ids=draft_ids, norm_before_residual=bool(meta.get("norm_before_residual")),
                               rngs=nnx.Rngs(0))
  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  specs = _specs(config, len(feature_layers), config.vocab_size, int(meta["draft_vocab_size"]))
  nnx.replace_by_pure_dict(abstract, hf.read_tensors(path, specs, pname))
  return nnx.merge(graphdef, abstract)

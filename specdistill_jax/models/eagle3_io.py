"""speculators' `eagle3` checkpoint format for feature drafts (the format vLLM and SGLang load).

A directory with config.json and model.safetensors:

* config.json: `speculators_model_type: "eagle3"`, `architectures: ["Eagle3Speculator"]`, the
  decoder-layer config (`transformer_layer_config`, a transformers LlamaConfig with the draft's
  num_hidden_layers and the target's vocab_size), `draft_vocab_size`,
  `eagle_aux_hidden_state_layer_ids` (our `feature_layers`), `norm_before_residual`, and
  `speculators_config` naming the verifier (`name_or_path`, `architectures`) and a greedy
  proposal of `speculative_tokens` drafts. We add `specdistill_target_layers` (the verifier's
  layer count, so the draft can be checked against a target without reading the verifier).
* tensors, torch layout ([out, in]): embed_tokens, fc, layers.0.{self_attn.{q,k,v}_proj (2 D
  inputs), o_proj, mlp.*, input_layernorm, hidden_norm, post_attention_layernorm}, further
  layers as in Llama, norm, lm_head [draft_vocab, D], and with a reduced vocabulary
  d2t [draft_vocab] (int64 offsets: target id = draft id + d2t[draft id]) and t2d [V] (bool).

tests/models/test_eagle3_export.py loads our export with speculators' own Eagle3DraftModel and
compares logits for the same hidden states and ids.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax.models import hf
from specdistill_jax.models.feature_draft import FeatureDraft

FORMAT = "eagle3"
_UNSUPPORTED = ("norm_before_fc", "fc_norm", "norm_output")


def is_eagle3(path: str) -> bool:
  try:
    with open(os.path.join(path, "config.json")) as fh:
      return json.load(fh).get("speculators_model_type") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


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
  from safetensors.numpy import save_file

  c = draft.config
  os.makedirs(path, exist_ok=True)
  layer_config = hf.config_to_hf(c).to_diff_dict()
  layer_config.pop("architectures", None)
  layer_config.pop("dtype", None)
  verifier_arch = []
  if verifier and os.path.exists(os.path.join(verifier, "config.json")):
    with open(os.path.join(verifier, "config.json")) as fh:
      verifier_arch = json.load(fh).get("architectures") or []
  config = {
      "architectures": ["Eagle3Speculator"],
      "speculators_model_type": FORMAT,
      "transformer_layer_config": layer_config,
      "draft_vocab_size": draft.draft_vocab_size,
      "norm_before_residual": draft.norm_before_residual,
      "norm_before_fc": False, "fc_norm": False, "norm_output": False, "embed_requires_grad": False,
      "target_hidden_size": None,
      "eagle_aux_hidden_state_layer_ids": list(draft.feature_layers),
      "specdistill_target_layers": draft.target_layers,
      "tie_word_embeddings": False,
      "speculators_config": {
          "algorithm": FORMAT,
          "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": int(speculative_tokens),
                                "accept_tolerance": 0.0, "verifier_accept_k": 1}],
          "default_proposal_method": "greedy",
          "verifier": {"name_or_path": verifier, "architectures": verifier_arch or ["LlamaForCausalLM"]},
      },
  }
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  tensors = hf.hf_tensors(draft, _specs(c, len(draft.feature_layers), c.vocab_size, draft.draft_vocab_size))
  if draft.draft_ids is not None:
    ids = np.asarray(draft.draft_ids, np.int64)
    tensors["d2t"] = ids - np.arange(len(ids), dtype=np.int64)
    t2d = np.zeros((c.vocab_size,), np.bool_)
    t2d[ids] = True
    tensors["t2d"] = t2d
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def load_eagle3(path: str, dtype=jnp.float32, param_dtype=None) -> FeatureDraft:
  """A `FeatureDraft` from a speculators eagle3 directory."""
  import transformers

  with open(os.path.join(path, "config.json")) as fh:
    meta = json.load(fh)
  for flag in _UNSUPPORTED:
    if meta.get(flag):
      raise hf.CheckpointFormatError(f"{path}/config.json sets {flag}=true, which this loader does not "
                                     "implement; export the draft without it")
  layer = dict(meta["transformer_layer_config"])
  kind = layer.pop("model_type", "llama")
  if kind != "llama":
    raise hf.CheckpointFormatError(f"{path}: transformer_layer_config.model_type={kind!r}; only 'llama' "
                                   "decoder layers are supported")
  dname = jnp.dtype(dtype).name
  pname = jnp.dtype(param_dtype).name if param_dtype is not None else dname
  config = hf.config_from_hf(transformers.LlamaConfig(**layer), dname, pname, path)
  feature_layers = tuple(int(i) for i in meta["eagle_aux_hidden_state_layer_ids"])
  target_layers = meta.get("specdistill_target_layers") or _verifier_layers(meta, path)
  get = hf._open_tensors(path)
  draft_vocab = int(meta["draft_vocab_size"])
  draft_ids = None
  if draft_vocab != config.vocab_size:
    d2t = np.asarray(get("d2t"), np.int64)
    draft_ids = tuple(int(t) for t in d2t + np.arange(len(d2t)))
  build = lambda: FeatureDraft(config, feature_layers=feature_layers, target_layers=int(target_layers),  # noqa: E731
                               draft_ids=draft_ids, norm_before_residual=bool(meta.get("norm_before_residual")),
                               rngs=nnx.Rngs(0))
  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  specs = _specs(config, len(feature_layers), config.vocab_size, draft_vocab)
  nnx.replace_by_pure_dict(abstract, hf.read_tensors(path, specs, pname))
  return nnx.merge(graphdef, abstract)


def _verifier_layers(meta: dict, path: str) -> int:
  """The verifier's layer count from its local config.json (exports by other tools)."""
  name = (meta.get("speculators_config", {}).get("verifier") or {}).get("name_or_path")
  if name and os.path.exists(os.path.join(name, "config.json")):
    with open(os.path.join(name, "config.json")) as fh:
      return int(json.load(fh)["num_hidden_layers"])
  raise hf.CheckpointFormatError(
      f"{path}: the verifier's layer count is unknown (no specdistill_target_layers, and verifier "
      f"{name!r} is not a local directory with a config.json); point speculators_config.verifier."
      "name_or_path at the target's local directory")

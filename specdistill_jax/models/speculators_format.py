"""What speculators' draft formats (`eagle3`, `dflash`) share: config.json parts and vocab tensors.

A speculators draft directory holds config.json and model.safetensors. Its
config.json names `speculators_model_type`, the decoder-layer config
(`transformer_layer_config`, a transformers LlamaConfig with the draft's
num_hidden_layers and the target's vocab_size), `draft_vocab_size`, and
`speculators_config` (the verifier's `name_or_path` / `architectures` and a greedy
proposal of `speculative_tokens` drafts). We add `specdistill_target_layers` (the
verifier's layer count, so a draft is checked against a target without reading
the verifier). A reduced vocabulary is stored as `d2t` [draft_vocab] (int64
offsets: target id = draft id + d2t[draft id]) and `t2d` [V] (bool).
models/eagle3_io.py and models/dflash_io.py build on these helpers.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax.numpy as jnp
import numpy as np

from specdistill_jax.models import hf


def model_type(path: str) -> Optional[str]:
  """`speculators_model_type` of the directory's config.json, or None (a plain HF model)."""
  try:
    with open(os.path.join(path, "config.json")) as fh:
      kind = json.load(fh).get("speculators_model_type")
  except (OSError, ValueError, AttributeError):
    return None
  return kind if isinstance(kind, str) else None


def layer_config(config) -> dict:
  """The draft's decoder layers as a transformers config dict (`transformer_layer_config`)."""
  out = hf.config_to_hf(config).to_diff_dict()
  out.pop("architectures", None)
  out.pop("dtype", None)
  return out


def speculators_config(algorithm: str, speculative_tokens: int, verifier: Optional[str]) -> dict:
  """The `speculators_config` block: a greedy proposal of `speculative_tokens`, the verifier."""
  arch = []
  if verifier and os.path.exists(os.path.join(verifier, "config.json")):
    with open(os.path.join(verifier, "config.json")) as fh:
      arch = json.load(fh).get("architectures") or []
  return {
      "algorithm": algorithm,
      "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": int(speculative_tokens),
                            "accept_tolerance": 0.0, "verifier_accept_k": 1}],
      "default_proposal_method": "greedy",
      "verifier": {"name_or_path": verifier, "architectures": arch or ["LlamaForCausalLM"]},
  }


def vocab_tensors(draft) -> dict:
  """d2t / t2d of a draft with a reduced vocabulary ({} with the full one)."""
  if draft.draft_ids is None:
    return {}
  ids = np.asarray(draft.draft_ids, np.int64)
  t2d = np.zeros((draft.config.vocab_size,), np.bool_)
  t2d[ids] = True
  return {"d2t": ids - np.arange(len(ids), dtype=np.int64), "t2d": t2d}


def write(path: str, config: dict, tensors: dict) -> None:
  from safetensors.numpy import save_file

  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def read_meta(path: str) -> dict:
  with open(os.path.join(path, "config.json")) as fh:
    return json.load(fh)


def read_layer_config(meta: dict, path: str, dtype, param_dtype):
  """(our ModelConfig of the decoder layers, param dtype name) from `transformer_layer_config`."""
  import transformers

  layer = dict(meta["transformer_layer_config"])
  kind = layer.pop("model_type", "llama")
  if kind != "llama":
    raise hf.CheckpointFormatError(f"{path}: transformer_layer_config.model_type={kind!r}; only 'llama' "
                                   "decoder layers are supported")
  dname = jnp.dtype(dtype).name
  pname = jnp.dtype(param_dtype).name if param_dtype is not None else dname
  return hf.config_from_hf(transformers.LlamaConfig(**layer), dname, pname, path), pname


def read_draft_ids(meta: dict, get, vocab_size: int) -> Optional[tuple]:
  """The draft vocabulary from d2t (None when draft_vocab_size is the full vocabulary)."""
  if int(meta["draft_vocab_size"]) == vocab_size:
    return None
  d2t = np.asarray(get("d2t"), np.int64)
  return tuple(int(t) for t in d2t + np.arange(len(d2t)))


def verifier_path(meta: dict) -> Optional[str]:
  return (meta.get("speculators_config", {}).get("verifier") or {}).get("name_or_path")


def target_layers(meta: dict, path: str) -> int:
  """The verifier's layer count: ours, or from the verifier's local config.json (other tools)."""
  if meta.get("specdistill_target_layers"):
    return int(meta["specdistill_target_layers"])
  name = verifier_path(meta)
  if name and os.path.exists(os.path.join(name, "config.json")):
    with open(os.path.join(name, "config.json")) as fh:
      return int(json.load(fh)["num_hidden_layers"])
  raise hf.CheckpointFormatError(
      f"{path}: the verifier's layer count is unknown (no specdistill_target_layers, and verifier "
      f"{name!r} is not a local directory with a config.json); point speculators_config.verifier."
      "name_or_path at the target's local directory")

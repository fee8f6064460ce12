"""Hugging Face checkpoint interop for the transformer: `load_transformer` / `save_transformer`.

`models.load_hf` / `models.save_hf` (models/formats.py) come here for plain models
and to the speculators formats for draft heads, which reuse the tensor-layout
helpers below. Reads a local directory holding config.json and model.safetensors (or a
sharded model.safetensors.index.json) for LlamaForCausalLM, MistralForCausalLM
and Qwen2ForCausalLM; writes directories that
`transformers.AutoModelForCausalLM.from_pretrained` loads. Nothing here reaches
a model hub: paths are local, `local_files_only` is always set.
"""

from __future__ import annotations

import dataclasses

import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from specdistill_jax.models.config import ModelConfig, RopeScaling
from specdistill_jax.models.transformer import Transformer

_ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
          "Qwen2ForCausalLM": "qwen2"}
_HF_CLASS = {v: k for k, v in _ARCHS.items()}
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointFormatError(ValueError):
  """An HF directory that cannot be read as one of the supported models."""


def _ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)


def config_from_hf(hf_config, dtype: str = "float32", param_dtype: Optional[str] = None,
                   path: str = "") -> ModelConfig:
  """A ModelConfig from a transformers config object (Llama, Mistral or Qwen2)."""
  archs = list(getattr(hf_config, "architectures", None) or [])
  arch = next((_ARCHS[a] for a in archs if a in _ARCHS), None)
  if arch is None and getattr(hf_config, "model_type", None) in _HF_CLASS:
    arch = hf_config.model_type
  if arch is None:
    raise CheckpointFormatError(
        f"unsupported architecture {archs or hf_config.model_type!r} in {path}/config.json; "
        f"supported: {sorted(_ARCHS)}")
  act = getattr(hf_config, "hidden_act", "silu")
  if act != "silu":
    raise CheckpointFormatError(f"hidden_act={act!r} in {path}/config.json; only 'silu' is supported")
  if arch == "llama" and (getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False)):
    raise CheckpointFormatError(
        f"{path}/config.json sets attention_bias/mlp_bias (bias on o_proj or the MLP): not supported")
  rp = dict(getattr(hf_config, "rope_parameters", None) or {})
  theta = float(rp.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
  kind = rp.get("rope_type", "default")
  scaling = None
  if kind == "linear":
    scaling = RopeScaling("linear", float(rp["factor"]))
  elif kind == "llama3":
    scaling = RopeScaling("llama3", float(rp["factor"]), float(rp["low_freq_factor"]),
                          float(rp["high_freq_factor"]), int(rp["original_max_position_embeddings"]))
  elif kind != "default":
    raise CheckpointFormatError(f"rope_type={kind!r} in {path}/config.json is not supported "
                                "(supported: default, linear, llama3)")
  window = getattr(hf_config, "sliding_window", None)
  window_layers = None
  if arch == "qwen2":
    types = getattr(hf_config, "layer_types", None)
    if not getattr(hf_config, "use_sliding_window", False) or not types:
      window = None
    else:
      window_layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
  eos = _ids(getattr(hf_config, "eos_token_id", None))
  bos = _ids(getattr(hf_config, "bos_token_id", None))
  pad = getattr(hf_config, "pad_token_id", None)
  return ModelConfig(
      vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
      num_layers=hf_config.num_hidden_layers, num_heads=hf_config.num_attention_heads,
      num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
      head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
      mlp_dim=hf_config.intermediate_size, architecture=arch, rope_theta=theta,
      rope_scaling=scaling, rms_norm_eps=float(hf_config.rms_norm_eps), qkv_bias=(arch == "qwen2"),
      tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
      max_seq_len=int(getattr(hf_config, "max_position_embeddings", 2048)),
      sliding_window=window, sliding_window_layers=window_layers,
      bos_token_id=bos[0] if bos else None, eos_token_ids=eos,
      pad_token_id=int(pad) if isinstance(pad, int) else (eos[0] if eos else 0),
      dtype=dtype, param_dtype=param_dtype or dtype)


def config_to_hf(config: ModelConfig):
  """The transformers config object for a ModelConfig."""
  import transformers

  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    s = config.rope_scaling
    rope.update(rope_type=s.kind, factor=s.factor)
    if s.kind == "llama3":
      rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                  original_max_position_embeddings=s.original_max_position_embeddings)
  eos = list(config.eos_token_ids)
  kw = dict(
      vocab_size=config.vocab_size, hidden_size=config.d_model,
      intermediate_size=config.mlp_dim, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, max_position_embeddings=config.max_seq_len,
      rms_norm_eps=config.rms_norm_eps, rope_parameters=rope,
      tie_word_embeddings=config.tie_embeddings, bos_token_id=config.bos_token_id,
      eos_token_id=(eos[0] if len(eos) == 1 else (eos or None)),
      pad_token_id=config.pad_token_id, architectures=[_HF_CLASS[config.architecture]],
      dtype=config.param_dtype)
  if config.architecture == "llama":
    return transformers.LlamaConfig(**kw)
  if config.architecture == "mistral":
    return transformers.MistralConfig(sliding_window=config.sliding_window, **kw)
  sliding = config.sliding_window is not None
  first = min(config.sliding_window_layers or (0,)) if sliding else config.num_layers
  return transformers.Qwen2Config(use_sliding_window=sliding, sliding_window=config.sliding_window,
                                  max_window_layers=first, **kw)


# ---------------------------------------------------------------------------
# Tensor layout: HF stores Linear weights as [out, in]; we store [in, heads, head_dim] etc.

def _tensor_specs(c: ModelConfig):
  """(our path, HF name, to_ours(w), to_hf(w), our shape) for every parameter."""
  d, v = c.d_model, c.vocab_size
  same = lambda w: w  # noqa: E731
  specs = [(("embed",), "model.embed_tokens.weight", same, same, (v, d)),
           (("final_norm", "weight"), "model.norm.weight", same, same, (d,))]
  if not c.tie_embeddings:
    specs.append((("lm_head",), "lm_head.weight", lambda w: w.T, lambda w: w.T, (d, v)))
  for i in range(c.num_layers):
    specs += layer_tensor_specs(c, ("layers", i), f"model.layers.{i}.")
  return specs


def layer_tensor_specs(c: ModelConfig, ours: tuple, prefix: str, in_dim: Optional[int] = None):
  """`_tensor_specs` rows of one decoder layer (q/k/v reading `in_dim`, default d_model)."""
  d, h, hkv, dh, f = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
  d_in = in_dim or d
  same = lambda w: w  # noqa: E731

  def heads(count):
    return (lambda w: w.T.reshape(d_in, count, dh)), (lambda w: w.reshape(d_in, count * dh).T)

  specs = []
  for name, hf, count in (("q", "q_proj", h), ("k", "k_proj", hkv), ("v", "v_proj", hkv)):
    to_ours, to_hf = heads(count)
    specs.append((ours + ("attn", name), f"{prefix}self_attn.{hf}.weight", to_ours, to_hf, (d_in, count, dh)))
    if c.qkv_bias:
      specs.append((ours + ("attn", f"{name}_bias"), f"{prefix}self_attn.{hf}.bias",
                    (lambda w, k=count: w.reshape(k, dh)), (lambda w: w.reshape(-1)), (count, dh)))
  return specs + [
      (ours + ("attn", "o"), f"{prefix}self_attn.o_proj.weight", lambda w: w.T.reshape(h, dh, d),
       lambda w: w.reshape(h * dh, d).T, (h, dh, d)),
      (ours + ("mlp", "gate"), f"{prefix}mlp.gate_proj.weight", lambda w: w.T, lambda w: w.T, (d, f)),
      (ours + ("mlp", "up"), f"{prefix}mlp.up_proj.weight", lambda w: w.T, lambda w: w.T, (d, f)),
      (ours + ("mlp", "down"), f"{prefix}mlp.down_proj.weight", lambda w: w.T, lambda w: w.T, (f, d)),
      (ours + ("attn_norm", "weight"), f"{prefix}input_layernorm.weight", same, same, (d,)),
      (ours + ("mlp_norm", "weight"), f"{prefix}post_attention_layernorm.weight", same, same, (d,)),
  ]


def _set_path(tree: dict, path: tuple, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get_path(tree, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def _open_tensors(path: str) -> Callable[[str], np.ndarray]:
  """A getter name -> numpy array over model.safetensors or its sharded index."""
  from safetensors import safe_open

  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    try:
      with open(index) as fh:
        weight_map = json.load(fh)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointFormatError(f"{index} is not a safetensors index (a JSON object with a "
                                  f"'weight_map'): {type(e).__name__}: {e}") from e
  elif os.path.exists(single):
    weight_map = None
  else:
    raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in {path}; "
        "save the checkpoint with safetensors (save_pretrained(safe_serialization=True))")
  handles = {}

  def unreadable(file: str, e: Exception) -> CheckpointFormatError:
    reason = " ".join(str(e).split())[:200]
    return CheckpointFormatError(
        f"{file} is not a readable safetensors file ({type(e).__name__}: {reason}); it is truncated "
        "or corrupt: export or copy the checkpoint again")

  def get(name: str) -> np.ndarray:
    file = single if weight_map is None else os.path.join(path, weight_map.get(name, ""))
    if weight_map is not None and name not in weight_map:
      raise CheckpointFormatError(f"tensor {name!r} is missing from {index}")
    if file not in handles:
      if not os.path.isfile(file):
        raise CheckpointFormatError(f"{file} (listed in {index}) does not exist: the checkpoint is "
                                    "incomplete")
      try:
        handles[file] = safe_open(file, framework="numpy")
      except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, ...
        raise unreadable(file, e) from e
    handle = handles[file]
    if name not in handle.keys():
      raise CheckpointFormatError(f"tensor {name!r} is missing from {file}")
    try:
      return handle.get_tensor(name)
    except Exception as e:  # noqa: BLE001
      raise unreadable(file, e) from e

  return get


def load_transformer(path: str, dtype=jnp.float32, param_dtype=None, shardings=None,
                     scan_layers: bool = False) -> Transformer:
  """Load a local HF checkpoint directory (Llama / Mistral / Qwen2) as a `Transformer`.

  dtype: compute dtype; param_dtype: storage dtype (default: dtype).
  shardings: optional callable(abstract nnx.State) -> pure dict of shardings
  (e.g. `lambda s: sharding.param_shardings(s, mesh)`), so that a large model
  is placed on the mesh tensor by tensor as it loads.
  scan_layers: run the layers as one lax.scan (ModelConfig.scan_layers; same parameters).
  """
  import transformers

  path = check_directory(path)
  try:
    hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointFormatError(f"{path}/config.json is not a readable transformers config "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
  dname = jnp.dtype(dtype).name
  pname = jnp.dtype(param_dtype).name if param_dtype is not None else dname
  config = dataclasses.replace(config_from_hf(hf_config, dname, pname, path), scan_layers=bool(scan_layers))
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  target_shardings = shardings(abstract) if shardings is not None else None
  nnx.replace_by_pure_dict(abstract, read_tensors(path, _tensor_specs(config), pname, target_shardings))
  return nnx.merge(graphdef, abstract)


def check_directory(path) -> str:
  """`path` as a string, or FileNotFoundError if it is not a directory with a config.json."""
  path = os.fspath(path)
  if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path!r} is not a directory with a config.json: pass the local "
                            "directory of a Llama/Mistral/Qwen2 checkpoint")
  return path


def read_tensors(path: str, specs, param_dtype: str, shardings=None) -> dict:
  """The pure parameter dict that `specs` (rows of `_tensor_specs`) read from `path`'s safetensors."""
  get = _open_tensors(path)
  pure = {}
  for ours, name, to_ours, _, shape in specs:
    w = to_ours(get(name))
    if tuple(w.shape) != shape:
      raise CheckpointFormatError(
          f"tensor {name!r} in {path} has shape {tuple(get(name).shape)}, which does not fit "
          f"config.json (expected {shape} in our layout)")
    w = jnp.asarray(np.asarray(w).astype(_NP_DTYPES[param_dtype]))
    if shardings is not None:
      w = jax.device_put(w, _get_path(shardings, ours))
    _set_path(pure, ours, w)
  return pure


def hf_tensors(model, specs) -> dict:
  """{HF name: numpy array} of `model`'s parameters laid out by `specs`."""
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {name: np.ascontiguousarray(to_hf(np.asarray(jax.device_get(_get_path(pure, ours)))))
          for ours, name, _, to_hf, _ in specs}


def save_transformer(model: Transformer, path: str) -> None:
  """Write `model` as an HF directory (config.json + model.safetensors)."""
  from safetensors.numpy import save_file

  config: ModelConfig = model.config
  os.makedirs(path, exist_ok=True)
  config_to_hf(config).save_pretrained(path)
  save_file(hf_tensors(model, _tensor_specs(config)), os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})

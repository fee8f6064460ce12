"""Open what a user points at: a model directory (HF or orbax) or a tokenizer directory.

A model directory is either an HF checkpoint (config.json + safetensors, read
by `models.load_hf`) or an orbax model checkpoint written by
`checkpoint.save_model`. Tokenizers are HF tokenizer directories, loaded with
`transformers.AutoTokenizer` from local files only.
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from specdistill_jax import checkpoint, models


def load_model(path: str, dtype=jnp.float32, param_dtype=None, shardings=None):
  """A Transformer from an HF directory or an orbax model checkpoint directory.

  dtype: compute dtype; param_dtype: storage dtype (default: dtype for HF, as saved for orbax).
  """
  path = os.fspath(path)
  if os.path.exists(os.path.join(path, "config.json")):
    return models.load_hf(path, dtype=dtype, param_dtype=param_dtype, shardings=shardings)
  if os.path.isdir(path):
    return checkpoint.load_model(path, shardings=shardings, dtype=dtype, param_dtype=param_dtype)
  raise FileNotFoundError(f"model path {path!r} does not exist: pass an HF checkpoint directory "
                          "(config.json + model.safetensors) or an orbax model checkpoint")


PROMPT_LOOKUP = "prompt_lookup"


def load_draft(spec: str, target, dtype=jnp.float32):
  """A draft for `target`: a model directory (`load_model`), or `prompt_lookup[:max_ngram[:min_ngram]]`
  (n-gram drafting, no model; default 3:1), as the CLIs' --draft takes it."""
  name, *sizes = os.fspath(spec).split(":")
  if name != PROMPT_LOOKUP:
    return load_model(spec, dtype=dtype)
  from specdistill_jax import sampling
  if len(sizes) > 2 or not all(x.isdigit() for x in sizes):
    raise ValueError(f"--draft {spec!r}: use {PROMPT_LOOKUP}[:max_ngram[:min_ngram]], e.g. {PROMPT_LOOKUP}:3:1")
  return sampling.prompt_lookup(*map(int, sizes)).for_target(target)


def has_tokenizer(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def load_tokenizer(path: str):
  """An HF tokenizer from a local directory."""
  import transformers

  if not os.path.isdir(path) or not has_tokenizer(path):
    raise FileNotFoundError(f"no tokenizer in {path!r}: expected tokenizer.json or "
                            "tokenizer_config.json (build one with specdistill_jax.data.prepare)")
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)

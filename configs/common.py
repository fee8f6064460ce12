"""Shared pieces of experiment configs (ml_collections), and the `get_config(arg)` convention.

Every file in configs/ defines `get_config(arg=None) -> ConfigDict`. `arg` is the
text after the colon in `--config=configs/x.py:arg`: a preset name optionally
followed by comma-separated overrides, e.g. `cpu`, `micro`, `gpu,seed=3`.
Any field can also be overridden on the command line: `--config.train.steps=100`.
"""

from __future__ import annotations

import ast
from typing import Any, Optional

import ml_collections

from specdistill_jax.sharding import DEFAULT_RULES


def parse_arg(arg: Optional[str], default_preset: str, presets: tuple[str, ...]) -> tuple[str, dict]:
  """'cpu,seed=3' -> ('cpu', {'seed': 3}); an unknown preset is an error naming the known ones."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  name = default_preset
  overrides: dict[str, Any] = {}
  for part in parts:
    if "=" in part:
      key, value = part.split("=", 1)
      try:
        overrides[key.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        overrides[key.strip()] = value.strip()
    else:
      name = part
  if name not in presets:
    raise ValueError(f"unknown config preset {name!r}; choose one of {presets}")
  return name, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Set dotted keys ('train.steps': 10) on a ConfigDict; unknown keys are errors."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config has no field {key!r}")
    node[leaf] = value
  return config


def mesh(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh sizes for ('data', 'fsdp', 'tensor'); -1 takes the rest of the devices."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def sharding_rules() -> tuple:
  """The logical-axis rules table (logical name -> mesh axes); fork to change a layout."""
  return DEFAULT_RULES


def model(preset: str = "", hf_path: str = "", checkpoint: str = "", dtype: str = "float32",
          seed: int = 0, **overrides) -> ml_collections.ConfigDict:
  """Where a model comes from: an HF directory, an orbax model checkpoint, or a preset.

  The first that is set wins (hf_path, then checkpoint, then preset). A preset
  takes its vocabulary from the tokenizer; `overrides` change preset fields.
  """
  return ml_collections.ConfigDict(dict(
      preset=preset, hf_path=hf_path, checkpoint=checkpoint, dtype=dtype, seed=seed,
      overrides=ml_collections.ConfigDict(overrides)))

"""Model hyper-parameters: the frozen `ModelConfig` dataclass and named presets.

Layers only ever see a `ModelConfig`, never an experiment config. The config
covers the Llama, Mistral and Qwen2 decoder families (they differ in q/k/v
bias, sliding windows and RoPE scaling); `hf.py` converts it to and from the
transformers config classes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

ARCHITECTURES = ("llama", "mistral", "qwen2")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling. kind: 'linear' (positions / factor) or 'llama3'."""

  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.kind not in ("linear", "llama3"):
      raise ValueError(
          f"unsupported rope scaling {self.kind!r}: supported are 'linear' and "
          "'llama3' (or none); convert the checkpoint or extend models/rope.py")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of one decoder-only transformer (hashable, static in jit)."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  head_dim: Optional[int] = None  # None: d_model // num_heads
  architecture: str = "llama"
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False
  tie_embeddings: bool = False
  max_seq_len: int = 2048
  sliding_window: Optional[int] = None
  sliding_window_layers: Optional[tuple[int, ...]] = None  # None: every layer
  bos_token_id: Optional[int] = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute (activations, KV cache)
  # run the layers as one lax.scan over their stacked parameters (compiles one layer, not
  # num_layers copies; models/transformer.py); parameters and checkpoints are unchanged
  scan_layers: bool = False

  def __post_init__(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
    if self.scan_layers and self.sliding_window is not None and self.sliding_window_layers is not None:
      raise ValueError(f"scan_layers=True needs one attention window for every layer, but sliding_window="
                       f"{self.sliding_window} applies only to layers {self.sliding_window_layers}: "
                       "use scan_layers=False for this model")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r} is not one of {sorted(_DTYPES)}")
    if self.head_dim is None:
      if self.d_model % self.num_heads:
        raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    object.__setattr__(self, "eos_token_ids", tuple(int(e) for e in self.eos_token_ids))

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  def window_for_layer(self, layer: int) -> Optional[int]:
    if self.sliding_window is None:
      return None
    if self.sliding_window_layers is None or layer in self.sliding_window_layers:
      return self.sliding_window
    return None

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    d = dict(d)
    if d.get("rope_scaling"):
      d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    for key in ("sliding_window_layers", "eos_token_ids"):
      if d.get(key) is not None:
        d[key] = tuple(d[key])
    return cls(**d)

  def num_params(self) -> int:
    d, f, v = self.d_model, self.mlp_dim, self.vocab_size
    q = self.num_heads * self.head_dim
    kv = self.num_kv_heads * self.head_dim
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0)
    layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + self.num_layers * layer + d

  def flops_per_token(self, context: int = 0) -> float:
    """Forward FLOPs per token: 2 * matmul params + attention over `context` keys."""
    d, f, v = self.d_model, self.mlp_dim, self.vocab_size
    q = self.num_heads * self.head_dim
    kv = self.num_kv_heads * self.head_dim
    matmul = self.num_layers * (d * q + 2 * d * kv + q * d + 3 * d * f) + d * v
    return 2.0 * matmul + 4.0 * self.num_layers * q * context


# Named presets. Sizes quoted with a 4096-token vocabulary.
_PRESETS = {
    # unit tests: compile in a second
    "micro": dict(d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64),
    "tiny": dict(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128),
    # the README's quick study: a ~5M target
    "target-quick": dict(d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=768,
                         tie_embeddings=True),
    # CPU studies: a ~1.5M draft and a ~13M target (vocabulary 8192)
    "draft-2m": dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=384,
                     tie_embeddings=True),
    "target-20m": dict(d_model=384, num_layers=6, num_heads=6, num_kv_heads=2, mlp_dim=1024,
                       tie_embeddings=True),
}


# The Python type of every ModelConfig field as a command-line override (configs/common.model
# declares one typed placeholder per entry). rope_scaling is given as a tuple of RopeScaling's
# fields, e.g. ('linear', 2.0).
OVERRIDE_TYPES = {
    "vocab_size": int, "d_model": int, "num_layers": int, "num_heads": int, "num_kv_heads": int,
    "mlp_dim": int, "head_dim": int, "architecture": str, "rope_theta": float, "rope_scaling": tuple,
    "rms_norm_eps": float, "qkv_bias": bool, "tie_embeddings": bool, "max_seq_len": int,
    "sliding_window": int, "sliding_window_layers": tuple, "bos_token_id": int,
    "eos_token_ids": tuple, "pad_token_id": int, "param_dtype": str, "dtype": str, "scan_layers": bool,
}


def preset(name: str, vocab_size: int, **overrides) -> ModelConfig:
  """A named preset ('micro', 'tiny', 'target-quick', 'draft-2m', 'target-20m') for a vocabulary.

  `overrides` replace any ModelConfig field; rope_scaling may be a tuple of RopeScaling fields.
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(_PRESETS)}")
  unknown = sorted(set(overrides) - set(OVERRIDE_TYPES))
  if unknown:
    raise ValueError(f"unknown ModelConfig field(s) {unknown} in the overrides of preset {name!r}; "
                     f"fields: {sorted(OVERRIDE_TYPES)}")
  kw = dict(_PRESETS[name], vocab_size=vocab_size)
  kw.update(overrides)
  if isinstance(kw.get("rope_scaling"), (tuple, list)):
    kw["rope_scaling"] = RopeScaling(*kw["rope_scaling"])
  for key in ("sliding_window_layers", "eos_token_ids"):
    if isinstance(kw.get(key), list):
      kw[key] = tuple(kw[key])
  return ModelConfig(**kw)


def preset_names() -> list[str]:
  return sorted(_PRESETS)

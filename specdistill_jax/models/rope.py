"""Rotary position embeddings (the half-split convention of HF Llama/Qwen2/Mistral).

Owns the inverse frequencies (default, 'linear' and 'llama3' scaling, matching
transformers' `rope_parameters`) and their application to q/k at arbitrary
per-row positions, so cached decoding at ragged offsets uses the same code.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from specdistill_jax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
  """[head_dim // 2] float64 inverse frequencies, scaled as the config asks."""
  dim = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  scaling = config.rope_scaling
  if scaling is None:
    return inv_freq
  if scaling.kind == "linear":
    return inv_freq / scaling.factor
  # llama3: long wavelengths divided by `factor`, short kept, a smooth ramp between.
  old_len = scaling.original_max_position_embeddings
  low_wavelen = old_len / scaling.low_freq_factor
  high_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled)


def rotary_tables(config: ModelConfig, positions: jnp.ndarray):
  """cos, sin of shape [B, T, head_dim] (fp32) for int positions [B, T]."""
  inv_freq = jnp.asarray(inverse_frequencies(config), jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotate x [B, T, H, head_dim] by the tables [B, T, head_dim]; keeps x's dtype."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)

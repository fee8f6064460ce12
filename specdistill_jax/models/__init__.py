"""Decoder-only draft and target models: config, NNX transformer, KV cache, HF interop."""

from flax import nnx

from specdistill_jax.models.block_draft import BlockDraft, create_block_draft
from specdistill_jax.models.feature_draft import FeatureDraft, create_feature_draft, select_draft_vocab
from specdistill_jax.models.config import ModelConfig, RopeScaling, preset, preset_names
from specdistill_jax.models.formats import load_hf, save_hf
from specdistill_jax.models.hf import CheckpointFormatError, config_from_hf, config_to_hf
from specdistill_jax.models.kv_cache import CachedForward, KVCache
from specdistill_jax.models.self_draft import first_layers
from specdistill_jax.models.transformer import Transformer, init_cache


def create(config: ModelConfig, seed: int = 0) -> Transformer:
  """A randomly initialised model for `config`."""
  return Transformer(config, rngs=nnx.Rngs(seed))


__all__ = ["ModelConfig", "RopeScaling", "preset", "preset_names", "Transformer", "KVCache", "CachedForward",
           "init_cache", "load_hf", "save_hf", "config_from_hf", "config_to_hf", "create",
           "CheckpointFormatError", "first_layers", "FeatureDraft", "create_feature_draft", "select_draft_vocab",
           "BlockDraft", "create_block_draft"]

"""Drafts cut from their target: the first N layers with the target's embedding, final norm and head.

A self-speculative draft (LayerSkip / Kangaroo style) shares the target's
tokenizer and vocabulary by construction and starts from weights that already
predict the target's next token a little; distillation then trains it towards
the full model. Its cost is N / num_layers of the layers plus the whole LM head,
so on a small target the head dominates (experiments/results/target_profile.md).
"""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from specdistill_jax.models.transformer import Transformer


def first_layers(target: Transformer, num_layers: int, dtype: Optional[str] = None,
                 param_dtype: Optional[str] = None) -> Transformer:
  """A new model: the target's first `num_layers` blocks, embedding, final norm and head (copied).

  dtype / param_dtype: compute and storage dtype of the draft (default: the target's).
  """
  total = target.config.num_layers
  if not 1 <= int(num_layers) < total:
    raise ValueError(f"num_layers={num_layers} must be in [1, {total - 1}] for a {total}-layer target")
  config = target.config.replace(num_layers=int(num_layers), dtype=dtype or target.config.dtype,
                                 param_dtype=param_dtype or target.config.param_dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  source = nnx.to_pure_dict(nnx.state(target, nnx.Param))
  pure = {k: v for k, v in source.items() if k != "layers"}
  pure["layers"] = {i: source["layers"][i] for i in range(int(num_layers))}
  pure = jax.tree.map(lambda x: jax.numpy.array(x, dtype=config.jnp_param_dtype, copy=True), pure)
  nnx.replace_by_pure_dict(abstract, pure)
  return nnx.merge(graphdef, abstract)

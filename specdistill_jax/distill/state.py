"""The train state (draft params, optax state, step, rng), the optimizer, and their shardings.

`TrainState` is a pytree: the jitted train step takes and returns it whole
(donated). Parameters stay an `nnx.State`, so `nnx.merge(graphdef, params)`
rebuilds the draft inside jit; optimizer moments mirror that State, so their
shardings come from the same `logical_axes` metadata as the parameters'.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from specdistill_jax import sharding


@flax.struct.dataclass
class TrainState:
  params: nnx.State
  opt_state: Any
  step: jax.Array
  rng: jax.Array


def learning_rate_schedule(lr: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.1):
  """Linear warmup from 0 to lr, then cosine decay to final_fraction * lr at total_steps."""
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1),
                                            end_value=lr * final_fraction)


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, weight_decay: float = 0.01,
                   clip_norm: float = 1.0, b1: float = 0.9, b2: float = 0.95,
                   final_fraction: float = 0.1, freeze: bool = False) -> optax.GradientTransformation:
  """AdamW (no decay on norms) with warmup + cosine decay and global-norm clipping.

  freeze: parameters named `frozen_*` (a feature draft's shared target embedding) get no
  update and no optimiser state.
  """
  schedule = learning_rate_schedule(lr, warmup_steps, total_steps, final_fraction)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # noqa: E731
  tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                   optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
  if not freeze:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, frozen_labels)


def _is_frozen(path) -> bool:
  return any(str(getattr(k, "key", getattr(k, "name", ""))).startswith("frozen_") for k in path)


def has_frozen(params) -> bool:
  return any(_is_frozen(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))


def frozen_labels(params):
  """'frozen' for parameters named frozen_*, else 'train'."""
  return jax.tree_util.tree_map_with_path(lambda path, _: "frozen" if _is_frozen(path) else "train", params)


def create(model, tx: optax.GradientTransformation, seed: int = 0) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, TrainState(params=params, opt_state=tx.init(params), step=jnp.int32(0),
                              rng=jax.random.PRNGKey(seed))


def tree_shardings(tree, mesh: Mesh, rules=None):
  """Shardings (as a pytree prefix) for any tree holding annotated nnx Variables.

  Variables get their logical-axes sharding; every other leaf is replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(x):
    if isinstance(x, nnx.Variable) and hasattr(x.get_value(), "shape"):  # (a frozen leaf's state: none)
      axes = x.get_metadata().get("logical_axes") or (None,) * x.get_value().ndim
      return NamedSharding(mesh, sharding.logical_to_spec(axes, x.get_value().shape, mesh, rules))
    return replicated

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: TrainState, mesh: Mesh, rules=None) -> TrainState:
  return tree_shardings(state, mesh, rules)

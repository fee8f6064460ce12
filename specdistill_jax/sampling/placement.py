"""Where decoding inputs live: on the mesh the model's parameters are sharded over.

A model placed with `sharding.shard_model` carries its mesh in its parameters'
shardings. Prompts then go batch-sharded over ('data', 'fsdp') when the batch
divides, else replicated; rng and scalars are replicated. An unsharded model
runs on the default device. Results come back to the host (gathered across
processes in a multi-host run).
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from specdistill_jax import sharding


def mesh_of(state) -> Optional[Mesh]:
  for leaf in jax.tree.leaves(state):
    s = getattr(leaf, "sharding", None)
    if isinstance(s, NamedSharding) and s.mesh.size > 1:
      return s.mesh
  return None


def place_inputs(state, tokens, lengths, *replicated):
  """(tokens, lengths) batch-sharded and the rest replicated on the params' mesh."""
  mesh = mesh_of(state)
  if mesh is None:
    return (jax.numpy.asarray(tokens), jax.numpy.asarray(lengths)) + tuple(replicated)
  rep = NamedSharding(mesh, PartitionSpec())
  batch = (tokens, lengths)
  if np.shape(tokens)[0] % sharding._batch_divisor(mesh) == 0:
    placed = tuple(jax.device_put(x, sharding.batch_sharding(x, mesh)) for x in batch)
  else:
    placed = tuple(jax.device_put(x, rep) for x in batch)
  return placed + tuple(jax.device_put(x, rep) for x in replicated)


def to_host(*arrays):
  """numpy copies of (possibly sharded, possibly multi-process) arrays."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return tuple(np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in arrays)
  return tuple(np.asarray(a) for a in arrays)

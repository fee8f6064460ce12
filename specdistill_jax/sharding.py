"""The device mesh ('data', 'fsdp', 'tensor') and the logical-axis rules table.

Parameters carry logical axis names (`logical_axes` metadata, e.g.
('embed', 'mlp')); one short rules table maps each name to mesh axes. The
same code runs on one CPU, on 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8) and multi-host. A
dimension the mesh axes do not divide is replicated rather than failing, so a
model with 2 kv heads still runs on tensor=4.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 (= the rest of the devices)."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n % known:
      raise ValueError(f"{n} devices cannot be split into mesh {dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) > n:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
                     f"but {n} are available; set one axis to -1 to use the rest")
  devices = devices[: int(np.prod(shape))]  # a smaller mesh uses the first devices
  if devices[0].platform == "tpu":  # physical-topology-aware order on TPU slices
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices)
  else:  # devices are ordered by process, so data/fsdp split across hosts
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def mesh_from_config(mesh_config) -> Mesh:
  """Mesh from a ConfigDict/dict with data, fsdp, tensor sizes."""
  get = mesh_config.get if hasattr(mesh_config, "get") else lambda k, d: getattr(mesh_config, k, d)
  return make_mesh(get("data", 1), get("fsdp", -1), get("tensor", 1))


def _rules_dict(rules) -> dict:
  return dict(rules if rules is not None else DEFAULT_RULES)


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules=None) -> PartitionSpec:
  """PartitionSpec for an array of `shape` whose dimensions have logical names `axes`.

  A mesh axis is used at most once per array, and only where it divides the dimension.
  """
  table = _rules_dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    chosen = []
    size = 1
    for axis in targets:
      if axis in used or mesh.shape[axis] == 1:
        continue
      if dim % (size * mesh.shape[axis]) == 0:
        chosen.append(axis)
        size *= mesh.shape[axis]
    used.update(chosen)
    spec.append(None if not chosen else (chosen[0] if len(chosen) == 1 else tuple(chosen)))
  return PartitionSpec(*spec)


def param_shardings(state: nnx.State, mesh: Mesh, rules=None) -> dict:
  """Pure dict (as `nnx.to_pure_dict`) of NamedShardings for a State of annotated Params."""

  def one(var):
    axes = var.get_metadata().get("logical_axes")
    shape = var.get_value().shape
    if axes is None:
      axes = (None,) * len(shape)
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

  shardings = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(shardings)


def state_shardings(state: nnx.State, mesh: Mesh, rules=None) -> nnx.State:
  """Like `param_shardings`, but shaped as the State itself (for jit in/out_shardings)."""
  pure = param_shardings(state, mesh, rules)
  out = jax.tree.map(lambda x: x, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  nnx.replace_by_pure_dict(out, pure)
  return out


def shard_state(state: nnx.State, mesh: Mesh, rules=None) -> nnx.State:
  """Place every parameter of `state` on the mesh by its logical axes."""
  return jax.device_put(state, state_shardings(state, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules=None) -> nnx.Module:
  """Shard a model's parameters in place and return it."""
  state = nnx.state(model)
  nnx.update(model, shard_state(state, mesh, rules))
  return model


def batch_spec(ndim: int, mesh: Mesh, rules=None, batch_size: Optional[int] = None) -> PartitionSpec:
  """Leading (batch) dimension over the 'batch' rule's axes, the rest replicated."""
  axes = ("batch",) + (None,) * (ndim - 1)
  shape = (batch_size if batch_size is not None else _batch_divisor(mesh, rules),) + (1,) * (ndim - 1)
  return logical_to_spec(axes, shape, mesh, rules)


def _batch_divisor(mesh: Mesh, rules=None) -> int:
  target = _rules_dict(rules).get("batch")
  targets = (target,) if isinstance(target, str) else tuple(target or ())
  return int(np.prod([mesh.shape[a] for a in targets]))


def batch_sharding(x, mesh: Mesh, rules=None) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(np.ndim(x), mesh, rules, np.shape(x)[0] if np.ndim(x) else 1))


def batch_shardings(batch, mesh: Mesh, rules=None):
  """A tree of shardings for a tree of [B, ...] arrays (batch over data x fsdp)."""
  return jax.tree.map(lambda x: batch_sharding(x, mesh, rules), batch)


def shard_batch(batch, mesh: Mesh, rules=None):
  """Place a host batch on the mesh.

  Single process: `batch` is the global batch. Multi-process: each process
  passes its own slice (process-local rows) and gets one global array.
  """
  if jax.process_count() == 1:
    return jax.device_put(batch, batch_shardings(batch, mesh, rules))

  def one(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    sharding = NamedSharding(mesh, batch_spec(x.ndim, mesh, rules, global_shape[0]))
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(one, batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())

"""Sharding: a forward with params sharded fsdp x tensor on 8 devices equals the unsharded one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from specdistill_jax import models, sharding
from tests.tolerances import fp32_atol


def test_eight_simulated_devices_are_available():
  assert jax.device_count() == 8, "tests/conftest.py sets XLA_FLAGS for 8 CPU devices"


@pytest.mark.parametrize("data,fsdp,tensor", [(1, 4, 2), (2, 2, 2), (1, 1, 8)])
def test_sharded_forward_equals_unsharded(data, fsdp, tensor):
  cfg = models.preset("tiny", 96, num_heads=8, num_kv_heads=4, d_model=64)
  model = models.create(cfg, seed=1)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 16), 0, 96)
  want = model(tokens)
  mesh = sharding.make_mesh(data, fsdp, tensor)
  graphdef, state = nnx.split(model)
  sharded_state = sharding.shard_state(state, mesh)
  # the parameters really are split across devices
  q = sharded_state["layers"][0]["attn"]["q"].get_value()
  assert len({s.device for s in q.addressable_shards}) == 8
  assert q.sharding.spec == P("fsdp" if fsdp > 1 else None, "tensor", None)

  @jax.jit
  def forward(state, tokens):
    return nnx.merge(graphdef, state)(tokens)

  got = forward(sharded_state, sharding.shard_batch(tokens, mesh))
  # another reduction order across shards: 'tiny' reduces over <= 128 terms, 2 layers + head
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=fp32_atol(want, 128, 3), rtol=0)


def test_mesh_sizes_and_errors():
  mesh = sharding.make_mesh(2, -1, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh(3, 2, 2)
  assert sharding.make_mesh(1, 1, 1).devices.size == 1  # a smaller mesh takes the first devices
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh(-1, -1, 1)


def test_indivisible_dimensions_are_replicated_not_an_error():
  mesh = sharding.make_mesh(1, 2, 4)
  # 2 kv heads cannot be split 4 ways: replicated; 64 embed over fsdp=2 is fine
  assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P("fsdp", None, None)
  assert sharding.logical_to_spec(("batch", None), (6, 3), mesh) == P("fsdp", None)


def test_custom_rules_table():
  mesh = sharding.make_mesh(1, 8, 1)
  rules = (("embed", None), ("vocab", "fsdp"))
  assert sharding.logical_to_spec(("vocab", "embed"), (96, 64), mesh, rules) == P("fsdp", None)

"""Checkpoints: exact save/restore with shardings; missing or corrupt ones raise clear errors."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from specdistill_jax import checkpoint, models, sharding


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_model_round_trip_with_shardings(tmp_path):
  model = models.create(models.preset("tiny", 96, num_heads=4, num_kv_heads=2), seed=2)
  checkpoint.save_model(tmp_path / "m", model)
  mesh = sharding.make_mesh(1, 4, 2)
  restored = checkpoint.load_model(tmp_path / "m", shardings=lambda s: sharding.state_shardings(s, mesh))
  assert restored.config == model.config
  for a, b in zip(_params(model), _params(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  emb = nnx.state(restored, nnx.Param)["embed"].get_value()
  assert emb.sharding.spec == sharding.logical_to_spec(("vocab", "embed"), emb.shape, mesh)


def test_manager_keeps_k_and_restores_latest(tmp_path):
  tree = {"w": np.arange(6.0).reshape(2, 3), "step": np.int32(0)}
  with checkpoint.Checkpointer(tmp_path, save_every=2, keep=2, async_save=False) as ckpt:
    for step in range(1, 8):
      ckpt.save(step, {"w": tree["w"] * step, "step": np.int32(step)}, {"step": step})
    assert ckpt.all_steps() == [4, 6]
    state, meta = ckpt.restore(tree)
  assert meta == {"step": 6} and int(state["step"]) == 6
  np.testing.assert_array_equal(state["w"], tree["w"] * 6)


def test_missing_checkpoint_directory_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.load_model(tmp_path / "nothing-here")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
    checkpoint.load_model(tmp_path / "empty")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  model = models.create(models.preset("micro", 64))
  checkpoint.save_model(tmp_path / "m", model)
  # damage every data file of the saved state
  for root, _, files in os.walk(tmp_path / "m" / "0" / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
    checkpoint.load_model(tmp_path / "m")

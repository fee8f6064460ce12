"""The training loop: every regime lowers its loss; exact resume; sharded == unsharded; errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from specdistill_jax import checkpoint
from specdistill_jax.distill import step as step_lib
from specdistill_jax.distill.train import Trainer, TrainingDiverged
from tests.distill.helpers import micro_config, straight_and_stopped, trained_params


def _loss(trainer, batch, params):
  c = trainer.parts
  target = (trainer.target_graphdef, trainer.target_params) if trainer.target_graphdef else None
  ref = (trainer.reference_graphdef, trainer.reference_params) if trainer.reference_graphdef else None
  b = {k: jnp.asarray(v) for k, v in batch.items()}
  return float(step_lib.compute_loss(c.objective, trainer.graphdef, params, b, target, ref)[0])




REGIMES = [("fixed", "fkl", {}), ("teacher_offline", "fkl", {}), ("teacher_offline", "ce", {"black_box": True}),
           ("teacher_online", "rkl", {}), ("on_policy", "tvd", {}), ("mixture", "jsd", {}),
           ("fixed", "adaspec", {}), ("fixed", "ce", {"no_target": True})]


@pytest.mark.parametrize("source,loss,extra", REGIMES, ids=[f"{s}-{l}" for s, l, _ in REGIMES])
def test_a_few_steps_lower_the_loss(small_data, tmp_path, source, loss, extra):
  extra = dict(extra)
  no_target = extra.pop("no_target", False)
  cfg = micro_config(small_data[0], source, loss, steps=10, **extra)
  if loss == "adaspec":
    cfg.reference = common.model(preset="micro", seed=7)
  if no_target:
    cfg.target = common.model()  # plain LM training
  trainer = Trainer(cfg, str(tmp_path))
  batch = trainer.parts.source.batch(0, trainer.draft_model())
  before = _loss(trainer, batch, jax.device_get(trainer.state.params))
  trainer.run()
  after = _loss(trainer, batch, jax.device_get(trainer.state.params))
  if extra.get("black_box"):  # black-box training still reports acceptance against the target
    assert {"acceptance_proxy", "alpha", "tau"} <= set(trainer.evaluate())
  trainer.close()
  assert after < before, (before, after)


def test_kill_and_resume_equals_uninterrupted_bitwise(small_data, tmp_path):
  cfg = micro_config(small_data[0], "mixture", "fkl", steps=6)
  cfg.train.checkpoint_every = 2
  want, workdir = straight_and_stopped(cfg, tmp_path, stop_after=3)
  resumed = Trainer(cfg, str(workdir))
  assert int(resumed.state.step) == 3
  resumed.run()
  for a, b in zip(want, trained_params(resumed)):
    np.testing.assert_array_equal(a, b)
  resumed.close()


def test_train_step_on_8_devices_matches_one_device(small_data, tmp_path):
  """fsdp=4 x tensor=2 on 8 devices vs one device, with tolerances from what is compared.

  The first gradient agrees at fp32 reduction-order scale; the per-step losses agree
  closely (reduction noise, plus Adam's amplification of it on near-zero gradients,
  barely moves the loss); the parameters agree within Adam's bounded per-step move.
  Exact equality is not a property of the code: the meshes sum in different orders.
  """
  from specdistill_jax import metrics, sharding
  from tests.tolerances import adam_drift_bound

  runs = []
  for data, fsdp, tensor in ((1, 1, 1), (1, 4, 2)):
    cfg = micro_config(small_data[0], "fixed", "fkl", steps=3)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = data, fsdp, tensor
    cfg.draft = common.model(preset="micro", seed=1, num_heads=4, num_kv_heads=2, d_model=32)
    workdir = tmp_path / f"m{fsdp}{tensor}"
    trainer = Trainer(cfg, str(workdir))
    if fsdp > 1:
      q = trainer.state.params["layers"][0]["attn"]["q"].get_value()
      assert len({s.device for s in q.addressable_shards}) == 8
    batch = sharding.shard_batch(trainer.parts.source.batch(0), trainer.mesh, trainer.rules)
    target = (trainer.target_graphdef, trainer.target_params)
    grad = jax.jit(jax.grad(lambda p: step_lib.compute_loss(
        trainer.parts.objective, trainer.graphdef, p, batch, target)[0]))(trainer.state.params)
    grads = [np.asarray(g) for g in jax.tree.leaves(jax.device_get(grad))]
    trainer.run()
    losses = [r["train/loss"] for r in metrics.read(str(workdir / "metrics.jsonl")) if "train/loss" in r]
    runs.append((grads, losses, trained_params(trainer), trainer.tx_lr))
    trainer.close()
  (g1, l1, p1, lr), (g8, l8, p8, _) = runs
  for a, b in zip(g1, g8):  # a reduction over ~1e5 terms: 1e-4 of the largest entry is ~800 ulps
    np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max(), rtol=0)
  assert len(l1) == len(l8) == 3
  np.testing.assert_allclose(l8, l1, rtol=1e-4)
  bound = adam_drift_bound(lr, 3)
  for a, b in zip(p1, p8):
    np.testing.assert_allclose(b, a, atol=bound, rtol=0)


def test_nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(small_data, tmp_path):
  cfg = micro_config(small_data[0], "fixed", "fkl", steps=8)
  cfg.train.checkpoint_every = 1
  trainer = Trainer(cfg, str(tmp_path))
  real_step, calls = trainer.train_step, []

  def poisoned(state, batch, t, r):
    state, metrics = real_step(state, batch, t, r)
    calls.append(1)
    if len(calls) == 3:
      metrics = dict(metrics, loss=jnp.float32(math.nan))
    return state, metrics

  trainer.train_step = poisoned
  with pytest.raises(TrainingDiverged, match=r"loss=nan .*at step 3.*last good checkpoint is step 2"):
    trainer.run()
  trainer.close()
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 2


@pytest.mark.parametrize("section,field,value,match", [
    ("objective", "loss", "kl2", "unknown loss/divergence 'kl2'"),
    ("objective", "beta", 1.5, "beta=1.5"),
    ("data", "mixture_lambda", 1.2, "lambda=1.2"),
    ("data", "top_k", 5000, "top_k=5000"),
    ("data", "source", "replay", "unknown data source 'replay'"),
])
def test_bad_config_values_are_named(small_data, tmp_path, section, field, value, match):
  source = {"mixture_lambda": "mixture", "top_k": "teacher_offline"}.get(field, "fixed")
  cfg = micro_config(small_data[0], source, "jsd")
  cfg[section][field] = value
  with pytest.raises(ValueError, match=match):
    Trainer(cfg, str(tmp_path))


def test_vocabulary_mismatch_and_missing_target_are_named(small_data, tmp_path):
  cfg = micro_config(small_data[0], "fixed", "fkl")
  cfg.draft.overrides.vocab_size = 2048
  with pytest.raises(ValueError, match="vocabulary mismatch"):
    Trainer(cfg, str(tmp_path))
  cfg = micro_config(small_data[0], "on_policy", "fkl")
  cfg.target = common.model()
  with pytest.raises(ValueError, match="needs a target"):
    Trainer(cfg, str(tmp_path))


def test_workdir_of_another_model_is_refused(small_data, tmp_path):
  cfg = micro_config(small_data[0], "fixed", "fkl", steps=2)
  trainer = Trainer(cfg, str(tmp_path))
  trainer.run()
  trainer.close()
  cfg.draft = common.model(preset="tiny", seed=1)
  with pytest.raises(checkpoint.CheckpointError, match="another model.*d_model"):
    Trainer(cfg, str(tmp_path))


def test_sigterm_checkpoints_and_exits_cleanly(small_data, tmp_path):
  """A real `python -m specdistill_jax.train` process, stopped with SIGTERM mid-run."""
  import os
  import signal
  import subprocess
  import sys
  import time

  from specdistill_jax import metrics

  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "specdistill_jax.train", "--config=configs/distill.py:micro",
         f"--workdir={workdir}", f"--config.data_dir={small_data[0]}", "--config.train.steps=100000",
         "--config.train.eval_every=0", "--config.train.log_every=1", "--config.data.source=fixed"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 120
    log = workdir / "metrics.jsonl"
    while time.time() < deadline and (not log.exists() or len(metrics.read(str(log))) < 3):
      assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
  last = metrics.read(str(workdir / "metrics.jsonl"))[-1]["step"]
  saved = checkpoint.Checkpointer(workdir / "checkpoints").latest_step()
  assert 3 <= saved < 100000 and saved >= last

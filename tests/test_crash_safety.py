"""A crash costs nothing: real `python -m specdistill_jax.train` processes killed and resumed.

* SIGKILL at start-up, between checkpoints and while a checkpoint is being written, then a
  rerun of the same command: final parameters bitwise equal to an uninterrupted run.
* A corrupt latest checkpoint (a truncated data file) is reported in one line, moved aside
  as STEP.corrupt, and the run resumes from the previous step to the same parameters.
* When no checkpoint restores, `CheckpointError` names the directory.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from specdistill_jax import checkpoint, metrics
from specdistill_jax.distill.train import Trainer
from tests.distill.helpers import micro_config, straight_and_stopped, trained_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16


def _command(data_dir, workdir):
  return [sys.executable, "-m", "specdistill_jax.train", "--config=configs/distill.py:micro",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", f"--config.train.steps={STEPS}",
          "--config.train.checkpoint_every=3", "--config.train.eval_every=0", "--config.train.log_every=1"]


def _start(data_dir, workdir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
  return subprocess.Popen(_command(data_dir, workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)


def _wait_until(proc, ready, timeout=180.0, poll=0.002):
  """Poll `ready()` until true (-> True) or the process ends first (-> False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if ready():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  raise TimeoutError("the training process neither reached the moment nor ended")


def _steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return len(metrics.read(path)) if os.path.exists(path) else 0


def _saving(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt) and any("tmp" in n for n in os.listdir(ckpt))


def _final_params(workdir):
  from safetensors.numpy import load_file
  return load_file(os.path.join(workdir, "hf", "model.safetensors"))


def _run_to_end(data_dir, workdir) -> str:
  """Run (or resume) to the last step; -> what it printed."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
  proc = subprocess.run(_command(data_dir, workdir), cwd=ROOT, env=env, capture_output=True, timeout=300)
  assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  return proc.stdout.decode() + proc.stderr.decode()


def _finished_steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


def test_sigkill_at_any_moment_then_rerun_equals_uninterrupted(small_data, tmp_path):
  data_dir = small_data[0]
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  reference = _start(data_dir, straight)  # the uninterrupted run, alongside the killed ones
  moments = [("start-up", lambda: True, 1.0),
             ("between checkpoints", lambda: _steps_logged(killed) >= 4 and not _saving(killed), 0.0),
             ("while a checkpoint is written", lambda: _saving(killed), 0.0)]
  for name, ready, delay in moments:
    proc = _start(data_dir, killed)
    try:
      time.sleep(delay)
      reached = _wait_until(proc, ready)
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=30)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert reached, f"the run finished before the moment {name!r}"
    assert proc.returncode == -signal.SIGKILL
  latest = _finished_steps(killed)[-1]  # the killed runs left a finished checkpoint past step 0
  assert latest > 0
  printed = _run_to_end(data_dir, killed)
  assert f"resumed from {os.path.join(killed, 'checkpoints')}/{latest}" in printed  # not a fresh start
  _, err = reference.communicate(timeout=300)
  assert reference.returncode == 0, err.decode()[-3000:]
  want, got = _final_params(straight), _final_params(killed)
  assert sorted(want) == sorted(got)
  for name in want:
    assert np.array_equal(want[name].view(np.uint8), got[name].view(np.uint8)), name


def _truncate_a_data_file(step_dir):
  files = []
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    if os.sep + "d" in root:
      files += [os.path.join(root, n) for n in names]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as fh:
    fh.truncate(os.path.getsize(biggest) // 3)


def test_a_corrupt_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(small_data, tmp_path, capsys):
  cfg = micro_config(small_data[0], "fixed", "fkl", steps=6)
  cfg.train.checkpoint_every = 2
  want, workdir = straight_and_stopped(cfg, tmp_path, stop_after=4)  # checkpoints at steps 2 and 4
  ckpt_dir = workdir / "checkpoints"
  _truncate_a_data_file(str(ckpt_dir / "4"))
  capsys.readouterr()
  resumed = Trainer(cfg, str(workdir))
  lines = capsys.readouterr().err.splitlines()
  assert int(resumed.state.step) == 2
  assert os.path.isdir(ckpt_dir / "4.corrupt") and not os.path.exists(ckpt_dir / "4")
  report = [line for line in lines if "does not restore" in line]
  assert len(report) == 1 and "step 4" in report[0] and "4.corrupt" in report[0]
  assert "OUT_OF_RANGE" in report[0]  # the root cause, not orbax's wrapper
  resumed.run()
  for a, b in zip(want, trained_params(resumed)):
    np.testing.assert_array_equal(a, b)
  resumed.close()


def test_no_checkpoint_restores_names_the_directory(small_data, tmp_path):
  cfg = micro_config(small_data[0], "fixed", "fkl", steps=4)
  cfg.train.checkpoint_every = 2
  trainer = Trainer(cfg, str(tmp_path))
  trainer.run()
  trainer.close()
  ckpt_dir = tmp_path / "checkpoints"
  for step in checkpoint.Checkpointer(ckpt_dir).all_steps():
    _truncate_a_data_file(str(ckpt_dir / str(step)))
  with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint in {ckpt_dir} restores"):
    Trainer(cfg, str(tmp_path))
  assert sorted(n for n in os.listdir(ckpt_dir) if n.endswith(".corrupt")) == ["2.corrupt", "4.corrupt"]

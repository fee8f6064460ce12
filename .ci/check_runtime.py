"""Checks an environment made from requirements.txt alone (no test extras) can run the project.

    python .ci/check_runtime.py

1. every pinned requirement (requirements.txt, requirements-target.txt) is installed at
   its pinned version;
2. every module of the package, the configs and the experiment drivers imports;
3. the lazily imported runtime paths work: a chat template renders (jinja2),
   safetensors round-trips, a PNG plot and a TensorBoard event file are written.
Exits non-zero naming what is missing, so CI fails on an incomplete requirements.txt.
"""

import importlib
import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pinned() -> list[tuple[str, str]]:
  out = []
  for name in ("requirements.txt", "requirements-target.txt"):
    out += _pins(os.path.join(ROOT, name))
  return out


def _pins(path: str) -> list[tuple[str, str]]:
  out = []
  with open(path) as fh:
    for line in fh:
      line = line.split("#")[0].strip()
      m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
      if m:
        out.append((m.group(1), m.group(2)))
  return out


def modules() -> list[str]:
  import specdistill_jax
  names = ["specdistill_jax"]
  names += [m.name for m in pkgutil.walk_packages(specdistill_jax.__path__, "specdistill_jax.")]
  names += [f"configs.{f[:-3]}" for f in sorted(os.listdir(os.path.join(ROOT, "configs")))
            if f.endswith(".py") and f != "__init__.py"]
  names += [f[:-3] for f in sorted(os.listdir(os.path.join(ROOT, "experiments"))) if f.endswith(".py")]
  return names


def lazy_paths(tmp: str) -> None:
  import numpy as np
  from safetensors.numpy import load_file, save_file
  from specdistill_jax.data.tokenizer import train_bpe
  tok = train_bpe(["hello world, a tiny corpus for a tiny tokenizer"] * 50, 300, os.path.join(tmp, "tok"))
  ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
  assert len(ids["input_ids"] if hasattr(ids, "keys") else ids) > 2
  save_file({"w": np.ones((2, 2), np.float32)}, os.path.join(tmp, "w.safetensors"))
  assert load_file(os.path.join(tmp, "w.safetensors"))["w"].sum() == 4
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  plt.plot([0, 1], [1, 0])
  plt.savefig(os.path.join(tmp, "p.png"))
  from specdistill_jax.metrics import MetricsWriter
  w = MetricsWriter(os.path.join(tmp, "m"))
  w.write(1, {"loss": 1.0})
  w.close()


def main() -> int:
  problems = []
  for dist, version in pinned():
    try:
      have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      problems.append(f"{dist}=={version} is not installed")
      continue
    if have != version:
      problems.append(f"{dist}: {have} installed, requirements.txt pins {version}")
  names = modules()
  from absl.flags import DuplicateFlagError
  for name in names:
    try:
      importlib.import_module(name)
    except DuplicateFlagError:  # two entry points both define e.g. --config: import it alone
      done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:2])))
      if done.returncode:
        problems.append(f"import {name}: {done.stderr.strip().splitlines()[-1]}")
    except Exception as e:  # noqa: BLE001 - report every failing module
      problems.append(f"import {name}: {type(e).__name__}: {e}")
  with tempfile.TemporaryDirectory() as tmp:
    try:
      lazy_paths(tmp)
    except Exception as e:  # noqa: BLE001
      problems.append(f"runtime path: {type(e).__name__}: {e}")
  for p in problems:
    print(f"runtime check: {p}", file=sys.stderr)
  print(f"runtime check: {len(pinned())} pinned requirements, {len(names)} modules, "
        f"{'FAILED' if problems else 'ok'}")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())

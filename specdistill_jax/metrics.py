"""Metrics output: one JSON line per record (metrics.jsonl) and TensorBoard event files.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import numpy as np


def _plain(v):
  if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "dtype"):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  return v


class MetricsWriter:
  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict, prefix: Optional[str] = None) -> None:
    if not self.enabled:
      return
    record = {f"{prefix}/{k}" if prefix else k: _plain(v) for k, v in metrics.items()}
    with open(self.path, "a") as fh:
      fh.write(json.dumps({"step": int(step), "time": time.time(), **record}) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and np.isfinite(v):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read(path: str) -> list[dict]:
  """All records of a metrics.jsonl file."""
  with open(path) as fh:
    return [json.loads(line) for line in fh if line.strip()]

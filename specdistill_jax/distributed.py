"""Multi-process start-up: `jax.distributed.initialize` when run as one of several processes.

The coordinator address, process count and process id come from flags
(--coordinator_address, --num_processes, --process_id) or the usual
environment variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); on Cloud TPU and SLURM, JAX detects them by itself
(--distributed=auto). A single process needs nothing.
"""

from __future__ import annotations

import os

import jax
from absl import flags

flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
flags.DEFINE_enum("distributed", "env", ["env", "auto", "off"],
                  "env: initialize when flags/env name several processes; auto: let JAX detect "
                  "the cluster (TPU pods, SLURM); off: never")

_done = False


def initialize() -> bool:
  """Initialize the distributed runtime if asked to; returns whether it is multi-process."""
  global _done
  if _done:
    return jax.process_count() > 1
  f = flags.FLAGS
  mode = f.distributed if f.is_parsed() else "env"
  if mode == "off":
    return False
  address = (f.coordinator_address if f.is_parsed() else None) or os.environ.get("JAX_COORDINATOR_ADDRESS")
  count = (f.num_processes if f.is_parsed() else None) or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
  pid = f.process_id if f.is_parsed() and f.process_id is not None else os.environ.get("JAX_PROCESS_ID")
  if mode == "auto":
    jax.distributed.initialize()
    _done = True
  elif address and count > 1:
    if pid is None:
      raise ValueError("multi-process run without a process id: pass --process_id or set JAX_PROCESS_ID")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or jax.config.jax_platforms == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=int(pid))
    _done = True
  return jax.process_count() > 1

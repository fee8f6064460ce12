"""One process of the multi-host test (tests/test_multihost.py); not collected by pytest.

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR OUT

With NUM_PROCESSES > 1 it joins a loopback cluster (4 simulated CPU devices per process,
gloo collectives); with 1 it runs alone. Either way: 3 distillation steps on a
('data'=2, 'fsdp'=4) mesh with a checkpoint, a restore of that checkpoint, and one
batched greedy speculative decode (checked against greedy decoding of the target in the
same run). Process 0 writes OUT.npz (the trained parameters)
and OUT.json (restore check, decoded tokens, stats).
"""

import json
import os
import sys


def main(pid: int, count: int, port: int, data_dir: str, workdir: str, out: str) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // count}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  if count > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=pid)
  import numpy as np
  from flax import nnx
  from jax.experimental import multihost_utils

  from specdistill_jax import sampling
  from specdistill_jax.distill.train import Trainer
  from tests.distill.helpers import micro_config

  assert jax.device_count() == 8 and jax.process_count() == count
  cfg = micro_config(data_dir, "fixed", "fkl", steps=3)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 4, 1
  cfg.data.batch_size = 8
  cfg.train.checkpoint_every = 3
  trainer = Trainer(cfg, workdir)
  trainer.run()
  trained = multihost_utils.process_allgather(trainer.state.params, tiled=True)
  trainer.close()

  restored = Trainer(cfg, workdir)  # resumes from the step-3 checkpoint
  again = multihost_utils.process_allgather(restored.state.params, tiled=True)
  same = all(bool(np.array_equal(a, b)) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(again)))
  target = nnx.merge(restored.target_graphdef, restored.target_params)
  prompts = [[1, 5, 9], [2, 4], [7, 7, 7, 7], [3], [8, 9, 10], [11, 12], [13], [14, 15, 16, 17]]
  outputs, stats = sampling.speculative_generate(target, restored.draft_model(), prompts, 8, gamma=3)
  greedy = sampling.generate(target, prompts, 8)  # greedy SD must equal greedy target decoding
  step = int(jax.device_get(restored.state.step))
  restored.close()
  if pid == 0:
    leaves = {f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(trained))}
    np.savez(out + ".npz", **leaves)
    with open(out + ".json", "w") as fh:
      json.dump({"restored_equal": same, "restored_step": step, "outputs": outputs,
                 "sd_equals_greedy": outputs == greedy, "alpha": stats["alpha"], "tau": stats["tau"]}, fh)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  a = sys.argv[1:]
  main(int(a[0]), int(a[1]), int(a[2]), a[3], a[4], a[5])

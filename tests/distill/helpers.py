"""Micro configs for the distillation tests (tiny random target, micro draft, small corpora)."""

from configs import common


def micro_config(data_dir, source="fixed", loss="fkl", steps=8, **data_overrides):
  c = common.train_config()
  c.seed = 0
  c.data_dir = data_dir
  c.data.corpus_config = "small"
  c.target = common.model(preset="tiny", seed=0)
  c.draft = common.model(preset="micro", seed=1)
  c.data.source = source
  c.objective.loss = loss
  c.data.batch_size = 4
  c.data.max_len = 48
  c.data.max_prompt_len = 24
  c.data.max_new_tokens = 12
  c.data.num_prompts = 8
  c.data.top_k = 8
  c.optim.lr = 1e-2
  c.optim.warmup_steps = 1
  c.train.steps = steps
  c.train.eval_every = 0
  c.train.log_every = 1
  c.train.checkpoint_every = 1000
  c.train.async_checkpoints = False
  c.eval.num_prompts = 2
  c.eval.max_new_tokens = 6
  c.mesh.fsdp = 1
  c.export_hf = ""
  for k, v in data_overrides.items():
    c.data[k] = v
  return c


def trained_params(trainer):
  """The trainer's draft parameters as a list of host arrays."""
  import jax
  import numpy as np
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state.params))]


def straight_and_stopped(cfg, root, stop_after: int):
  """(params of an uninterrupted run in root/a, workdir root/b of a run stopped after `stop_after` steps)."""
  from specdistill_jax.distill.train import Trainer
  straight = Trainer(cfg, str(root / "a"))
  straight.run()
  want = trained_params(straight)
  straight.close()
  first = Trainer(cfg, str(root / "b"))
  first.run(stop_after=stop_after)  # stops and checkpoints there
  first.close()
  return want, root / "b"

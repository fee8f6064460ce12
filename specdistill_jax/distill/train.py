"""The training loop: distillation of a draft, or plain LM training, from one config.

`Trainer(config, workdir).run()`:
  * builds the mesh, models, data source and objective (components.py);
  * places the train state (donated each step) and the frozen target/reference
    on the mesh by logical axes; compiles one train step and one eval step;
  * resumes from the latest orbax checkpoint in workdir/checkpoints (the data
    position is the step: sources are deterministic in it); a checkpoint of
    another model is refused;
  * checkpoints every N steps and on SIGTERM; a NaN/inf loss or gradient stops
    the run with an error before anything is saved, so the last good checkpoint
    stays the latest;
  * evaluates every M steps: objective loss, CE, acceptance proxy 1 - TVD, and
    alpha/tau from a short real speculative run against the target;
  * logs to metrics.jsonl + TensorBoard with a tqdm bar (process 0 only);
  * exports the trained model with `save_hf` (plus the tokenizer) at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Optional

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from specdistill_jax import checkpoint, models, sampling, sharding
from specdistill_jax.distill import components, state as state_lib, step as step_lib
from specdistill_jax.metrics import MetricsWriter


class TrainingDiverged(FloatingPointError):
  """The loss or gradient became NaN/inf."""


def _config_diff(a: dict, b: dict) -> str:
  norm = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731 - JSON turns tuples to lists
  keys = sorted(set(a) | set(b))
  return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if norm(a.get(k)) != norm(b.get(k)))


class Trainer:
  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.is_main = jax.process_index() == 0
    self.mesh = sharding.mesh_from_config(config.mesh)
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    self.parts = components.build(config, self.workdir)
    c, t = self.parts, config.train
    self.tx = state_lib.make_optimizer(config.optim.lr, config.optim.warmup_steps, t.steps,
                                       config.optim.weight_decay, config.optim.clip_norm,
                                       config.optim.b1, config.optim.b2, config.optim.final_fraction,
                                       freeze=state_lib.has_frozen(nnx.state(c.draft, nnx.Param)))
    self.graphdef, state = state_lib.create(c.draft, self.tx, config.seed)
    self.state_shardings = state_lib.state_shardings(state, self.mesh, self.rules)
    self.state = jax.device_put(state, self.state_shardings)
    self.target_graphdef, self.target_params, target_sh = self._frozen(c.target)
    self.reference_graphdef, self.reference_params, reference_sh = self._frozen(c.reference)
    sample = c.source.batch(0, c.draft if c.source.name in ("on_policy", "mixture") else None)
    self.batch_shardings = sharding.batch_shardings(
        {k: np.zeros((c.source.batch_size,) + v.shape[1:], v.dtype) for k, v in sample.items()},
        self.mesh, self.rules)
    use_target = c.objective.step_needs_target
    self.train_step = step_lib.make_train_step(
        c.objective, self.graphdef, self.tx, self.target_graphdef if use_target else None,
        self.reference_graphdef, self.state_shardings, self.batch_shardings,
        target_sh if use_target else None, reference_sh, self.mesh, config.objective.chunk_tokens)
    has_target = self.target_graphdef is not None
    eval_objective = dataclasses.replace(
        c.objective, loss=c.objective.loss if has_target else "ce", teacher="online" if has_target else "tokens")
    self.eval_step = step_lib.make_eval_step(eval_objective, self.graphdef, self.target_graphdef,
                                             self.reference_graphdef, config.objective.chunk_tokens)
    self.ckpt = checkpoint.Checkpointer(os.path.join(self.workdir, "checkpoints"),
                                        save_every=t.checkpoint_every, keep=t.keep,
                                        async_save=t.async_checkpoints)
    self.writer = MetricsWriter(self.workdir)
    self._stop_requested = False
    # the train state now owns (and each step donates) the draft's buffers: drop the model
    # object so nothing uses deleted arrays; `draft_model()` rebuilds it from the state.
    self.draft_config = c.draft.config
    c.draft = None
    self._resume()

  def _frozen(self, model):
    if model is None:
      return None, None, None
    graphdef, params = nnx.split(model, nnx.Param)
    shardings = state_lib.tree_shardings(params, self.mesh, self.rules)
    return graphdef, jax.device_put(params, shardings), shardings

  def _meta(self, step: int) -> dict:
    return {"step": int(step), "model_config": self.draft_config.to_dict(),
            "source": self.parts.source.name, "loss": self.parts.objective.loss}

  def _resume(self) -> None:
    """Restore the newest checkpoint that restores; unreadable ones are moved aside (one line each)."""
    mine = self.draft_config.to_dict()

    def same_model(step: int, meta: dict) -> None:
      theirs = meta.get("model_config", {})
      try:
        same = models.ModelConfig.from_dict(theirs) == self.draft_config
      except (TypeError, ValueError):
        same = False
      if not same:
        raise checkpoint.CheckpointMismatch(
            f"workdir {self.workdir!r} holds a checkpoint (step {step}) of another model "
            f"({_config_diff(theirs, mine)}): use a fresh --workdir or the matching config")

    report = (lambda line: tqdm.write(line, file=sys.stderr)) if self.is_main else (lambda line: None)
    found = self.ckpt.restore_newest(self.state, same_model, report)
    if found is None:
      return
    self.state, _, step = found
    if self.is_main:
      tqdm.write(f"resumed from {self.ckpt.directory}/{step}")

  # -- evaluation -----------------------------------------------------------
  def draft_model(self, params=None):
    return nnx.merge(self.graphdef, params if params is not None else self.state.params)

  def evaluate(self, params=None) -> dict:
    params = params if params is not None else self.state.params
    c, cfg = self.parts, self.config
    totals: dict[str, float] = {}
    weight = 0.0
    for i in range(cfg.train.eval_batches):
      batch = sharding.shard_batch(c.eval_pipeline.batch(i), self.mesh, self.rules)
      m = jax.device_get(self.eval_step(params, batch, self.target_params, self.reference_params))
      w = float(m.pop("tokens"))
      weight += w
      for k, v in m.items():
        totals[k] = totals.get(k, 0.0) + float(v) * w
    out = {k: v / max(weight, 1.0) for k, v in totals.items()}
    if cfg.eval.speculative and c.target is not None and c.eval_prompts:
      _, stats = sampling.speculative_generate(
          c.target, self.draft_model(params), c.eval_prompts, cfg.eval.max_new_tokens,
          gamma=cfg.eval.gamma, temperature=c.eval_temperature, rng=cfg.seed)
      out.update(alpha=stats["alpha"], tau=stats["tau"])
    return out

  # -- the loop ---------------------------------------------------------------
  def _request_stop(self, signum, frame):  # noqa: ARG002
    self._stop_requested = True

  def run(self, stop_after: Optional[int] = None) -> dict:
    """Train to config.train.steps (or stop early after `stop_after` steps, for tests)."""
    cfg, c = self.config, self.parts
    total = cfg.train.steps
    step = int(jax.device_get(self.state.step))
    try:
      previous = signal.signal(signal.SIGTERM, self._request_stop)
    except ValueError:  # not the main thread
      previous = None
    if self.is_main:
      os.makedirs(self.workdir, exist_ok=True)
      with open(os.path.join(self.workdir, "config.json"), "w") as fh:
        fh.write(cfg.to_json_best_effort(indent=1))
      with open(os.path.join(self.workdir, "source.json"), "w") as fh:
        json.dump(c.source.describe(), fh, indent=1, default=str)
    needs_draft = c.source.name in ("on_policy", "mixture")
    last_eval: dict = {}
    bar = tqdm(total=total, initial=step, desc=f"train {c.objective.loss}/{c.source.name}",
               disable=not self.is_main, dynamic_ncols=True)
    t0, tokens_seen, steps_run = time.perf_counter(), 0.0, 0
    try:
      while step < total:
        batch = c.source.batch(step, self.draft_model() if needs_draft else None)
        tokens_seen += float(np.sum(batch["loss_mask"]))
        batch = sharding.shard_batch(batch, self.mesh, self.rules)
        self.state, metrics = self.train_step(self.state, batch, self.target_params,
                                              self.reference_params)
        step += 1
        steps_run += 1
        metrics = jax.device_get(metrics)
        loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
          good = self.ckpt.latest_step()
          raise TrainingDiverged(
              f"loss={loss} grad_norm={gnorm} at step {step}: training diverged. The last good "
              f"checkpoint is step {good} in {self.ckpt.directory} (kept); lower optim.lr or "
              "raise optim.warmup_steps and rerun to resume from it")
        self.ckpt.save(step, self.state, self._meta(step))
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == total:
          elapsed = time.perf_counter() - t0
          record = {k: float(v) for k, v in metrics.items()}
          record.update(lr=float(self.tx_lr(step)), target_tokens_per_second=tokens_seen / max(elapsed, 1e-9))
          self.writer.write(step, record, "train")
          bar.set_postfix(loss=f"{loss:.3f}", **({"alpha": f"{last_eval['alpha']:.2f}"} if "alpha" in last_eval else {}))
        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == total):
          last_eval = self.evaluate()
          self.writer.write(step, last_eval, "eval")
        if self._stop_requested or (stop_after is not None and steps_run >= stop_after):
          self.ckpt.save(step, self.state, self._meta(step), force=True)
          break
      else:
        self.ckpt.save(step, self.state, self._meta(step), force=True)
    finally:
      bar.close()
      self.ckpt.wait()
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    if step >= total:
      self.export()
    return {"step": step, **last_eval}

  def tx_lr(self, step: int) -> float:
    o = self.config.optim
    return state_lib.learning_rate_schedule(o.lr, o.warmup_steps, self.config.train.steps,
                                            o.final_fraction)(step)

  def export(self) -> Optional[str]:
    """save_hf of the trained model (+ tokenizer) by process 0; parameters gathered from all hosts."""
    if not self.config.export_hf:
      return None
    params = self.state.params
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      params = multihost_utils.process_allgather(params, tiled=True)
    if not self.is_main:
      return None
    path = os.path.join(self.workdir, self.config.export_hf)
    draft = self.draft_model(jax.device_get(params))
    # a draft head is written in its speculators format, naming its verifier (ignored otherwise)
    models.save_hf(draft, path, verifier=self.config.draft.feature.verifier or self.config.target.hf_path or None)
    self.parts.chat.tokenizer.save_pretrained(path)
    return path

  def close(self) -> None:
    self.ckpt.close()
    self.writer.close()

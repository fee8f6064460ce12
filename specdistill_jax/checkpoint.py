"""Orbax checkpoints: save and restore pytrees (model or train state) with shardings.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager`: a step directory
holds the state pytree plus a JSON metadata record (model config, data
position, ...). Orbax writes each step to a temporary directory and renames it
when complete, so a crash mid-save never damages a finished checkpoint.
Restoring a missing or unreadable checkpoint raises `CheckpointError` naming
the directory and what to do. `restore_newest` is the resume path: a step that
fails to restore (a truncated file, a damaged manifest) is reported in one line,
moved aside to `STEP.corrupt` (never deleted) and the next older step is tried.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from flax import nnx


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable, or belongs to another model."""


class CheckpointMismatch(CheckpointError):
  """A readable checkpoint of another model or run: never moved aside, always reported."""


def _one_line(e: BaseException, limit: int = 240) -> str:
  """The root cause of `e` on one line (orbax wraps the useful message several levels deep)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class _quiet_orbax:
  """Silence orbax's own error logging while a restore that may fail is attempted."""

  def __enter__(self):
    self.logger = logging.getLogger("absl")
    self.level = self.logger.level
    self.logger.setLevel(logging.CRITICAL)

  def __exit__(self, *exc):
    self.logger.setLevel(self.level)


def abstract_like(tree) -> Any:
  """ShapeDtypeStructs (with the arrays' shardings) for a tree of arrays."""
  def one(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class Checkpointer:
  """Numbered checkpoints in `directory`: every `save_every` steps, keeping the last `keep`."""

  def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"checkpoint directory {self.directory!r} does not exist: "
                            "check the path (or train a model there first)")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, int(save_every)), create=not read_only,
        enable_async_checkpointing=async_save, read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, metadata: Optional[dict] = None, force: bool = False) -> bool:
    """Save when `step` is due (or `force`); returns whether a save started."""
    if self.manager.latest_step() == int(step):
      return False  # already saved (e.g. a forced final save on an interval step)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(dict(metadata or {})))
    return self.manager.save(int(step), args=args, force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def _check_step(self, step: Optional[int]) -> int:
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory!r}: check the path, or start "
                            "without restoring (a fresh workdir)")
    step = max(steps) if step is None else int(step)
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory!r}; "
                            f"available steps: {steps}")
    return step

  def metadata(self, step: Optional[int] = None) -> dict:
    step = self._check_step(step)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds
      raise CheckpointError(
          f"checkpoint metadata at {self.directory}/{step} is unreadable ({type(e).__name__}: "
          f"{e}); delete that step directory to fall back to an earlier one") from e
    return dict(out.meta or {})

  def move_aside(self, step: int) -> str:
    """Rename step directory `step` to `step.corrupt` (or `.corrupt-N`); returns the new path."""
    src = os.path.join(self.directory, str(int(step)))
    dst, n = src + ".corrupt", 1
    while os.path.exists(dst):
      dst, n = f"{src}.corrupt-{n}", n + 1
    if jax.process_index() == 0 and os.path.exists(src):
      os.replace(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"move aside {src}")
    self.manager.reload()
    return dst

  def restore_newest(self, abstract_state, validate: Optional[Callable[[int, dict], None]] = None,
                     report: Callable[[str], None] = None):
    """(state, metadata, step) of the newest step that restores, or None when there is none.

    A step whose metadata or state fails to read is reported through `report`
    (default: one line on stderr), moved aside with `move_aside`, and the next
    older step is tried. `validate(step, metadata)` may raise `CheckpointMismatch`
    (another model): that propagates unchanged. When steps exist but none
    restores, raises `CheckpointError` naming the directory.
    """
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    tried = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        with _quiet_orbax():
          meta = self.metadata(step)
          if validate is not None:
            validate(step, meta)
          state, meta = self.restore(abstract_state, step)
        return state, meta, step
      except CheckpointMismatch:
        raise
      except CheckpointError as e:
        reason = _one_line(e)
        moved = self.move_aside(step)
        tried.append(f"{step} ({reason})")
        report(f"checkpoint step {step} in {self.directory} does not restore ({reason}); "
               f"moved it to {moved}, trying the previous one")
    if tried:
      raise CheckpointError(
          f"no checkpoint in {self.directory} restores (tried steps {', '.join(tried)}); they were "
          "moved aside as STEP.corrupt: start from a fresh --workdir or restore a backup")
    return None

  def restore(self, abstract_state, step: Optional[int] = None):
    """(state, metadata) of `step` (default: latest), placed as `abstract_state`'s shardings.

    abstract_state: a tree of ShapeDtypeStruct (with .sharding) or of arrays.
    """
    step = self._check_step(step)
    target = abstract_like(abstract_state)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: {e}). "
          "It is corrupt or from a different model/optimizer: delete that step directory to "
          "resume from an earlier step, or use a fresh workdir") from e
    return out.state, dict(out.meta or {})

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def save_model(directory: str, model, step: int = 0, extra: Optional[dict] = None) -> None:
  """Save a model's parameters and its ModelConfig (restorable by `load_model`)."""
  with Checkpointer(directory, async_save=False) as ckpt:
    meta = {"model_config": model.config.to_dict(), **(extra or {})}
    ckpt.save(step, nnx.state(model, nnx.Param), meta, force=True)


def load_model(directory: str, step: Optional[int] = None, shardings=None, dtype=None,
               param_dtype=None):
  """The model saved by `save_model`.

  shardings: optional callable(abstract State) -> State of shardings; dtype /
  param_dtype: compute / storage dtype to run with (default: as saved).
  """
  import jax.numpy as jnp

  from specdistill_jax import models

  with Checkpointer(directory, read_only=True) as ckpt:
    meta = ckpt.metadata(step)
    if "model_config" not in meta:
      raise CheckpointError(f"{directory!r} holds no model_config: not a model checkpoint")
    saved = models.ModelConfig.from_dict(meta["model_config"])
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: models.Transformer(saved, rngs=nnx.Rngs(0))))
    if shardings is not None:
      target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings(abstract))
    else:
      target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    state, _ = ckpt.restore(target, step)
  config = saved.replace(dtype=jnp.dtype(dtype).name if dtype is not None else saved.dtype,
                         param_dtype=jnp.dtype(param_dtype).name if param_dtype is not None else saved.param_dtype)
  if config != saved:
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.Transformer(config, rngs=nnx.Rngs(0))))
    state = jax.tree.map(lambda x: x.astype(config.jnp_param_dtype), state)
  return nnx.merge(graphdef, state)

"""The jitted train and eval steps: one loss for every regime, selected by an `Objective`.

Only the draft's parameters are differentiated; the target (online teacher)
and the AdaSPEC reference are frozen inputs under stop_gradient. Logits at
position t predict token t+1, so the loss uses logits[:, :-1] against
tokens[:, 1:] weighted by loss_mask[:, 1:] (responses only). The step is
compiled once with explicit in/out shardings over the ('data', 'fsdp',
'tensor') mesh, and the train state is donated.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from specdistill_jax.distill import divergences as div
from specdistill_jax.distill import block_loss, feature_loss
from specdistill_jax.distill.state import TrainState


@dataclasses.dataclass(frozen=True)
class Objective:
  """loss: fkl | rkl | jsd | tvd | ce | adaspec; teacher: online | topk | tokens.

  A 'ce' loss trains on the tokens alone; with an online teacher it also reports
  the TVD to the target (used by the eval step of black-box runs).
  """

  loss: str = "fkl"
  teacher: str = "online"
  beta: float = 0.5
  temperature: float = 1.0
  adaspec_fraction: float = 0.4
  # feature drafts (EAGLE-3): the target runs in the step (features + logits), the draft is
  # unrolled ttt_steps ahead, step s weighted ttt_decay**s (distill/feature_loss.py)
  feature: bool = False
  ttt_steps: int = 3
  ttt_decay: float = 1.0
  ttt_inputs: str = "data"  # 'data' (teacher forcing) or 'draft' (on-policy: its own samples)
  ttt_temperature: float = 1.0  # on-policy sampling temperature (0 = argmax)
  # block drafters (DFlash; feature=True too): num_anchors blocks per row (0: T // block_size),
  # slot i weighted exp(-i / block_decay) (distill/block_loss.py)
  block: bool = False
  num_anchors: int = 0
  block_decay: float = 4.0

  def __post_init__(self):
    if self.loss not in div.LOSSES:
      raise ValueError(f"unknown loss/divergence {self.loss!r}; choose one of {div.LOSSES}")
    div.check_unit_interval("beta", self.beta)
    if self.loss == "adaspec" and not 0.0 < self.adaspec_fraction <= 1.0:
      raise ValueError(f"adaspec_fraction={self.adaspec_fraction} must be in (0, 1]")
    if self.loss != "ce" and self.teacher == "tokens":
      raise ValueError(f"loss {self.loss!r} needs teacher logits, but the data source has tokens "
                       "only (black-box): use loss 'ce', or a white-box source")
    if self.temperature <= 0:
      raise ValueError(f"distillation temperature={self.temperature} must be > 0")
    if self.feature:
      feature_loss.step_weights(self.ttt_steps, self.ttt_decay)
      if self.ttt_inputs not in ("data", "draft"):
        raise ValueError(f"ttt_inputs={self.ttt_inputs!r} must be 'data' (teacher forcing) or 'draft' (on-policy)")
      if self.ttt_inputs == "draft" and self.loss in ("ce", "adaspec"):
        raise ValueError(f"loss {self.loss!r} is off-policy: on-policy feature training (ttt_inputs='draft') "
                         "needs a divergence against the target (fkl, rkl, jsd, tvd)")
      if self.ttt_temperature < 0:
        raise ValueError(f"ttt_temperature={self.ttt_temperature} must be >= 0 (0 = argmax)")
      if self.block:
        block_loss.slot_weights(2, self.block_decay)
        if int(self.num_anchors) != self.num_anchors or self.num_anchors < 0:
          raise ValueError(f"num_anchors={self.num_anchors} must be an integer >= 0 (0: T // block_size)")
        if self.loss == "adaspec":
          raise ValueError("loss 'adaspec' is implemented for token and EAGLE-3 drafts; a block draft trains "
                           "with fkl, rkl, jsd, tvd or ce")
        if self.ttt_inputs != "data":
          raise ValueError("ttt_inputs='draft' (on-policy) is not defined for a block draft: its drafted slots "
                           "read mask tokens, never its own samples; train on regenerated data instead "
                           "(data.source='teacher_online')")
      if self.teacher != "online":
        raise ValueError(f"a feature draft reads the target's hidden states, so its teacher is the target "
                         f"run in the train step ('online'), not {self.teacher!r}")

  @property
  def needs_target(self) -> bool:
    return self.teacher == "online"

  @property
  def step_needs_target(self) -> bool:
    """Whether the train step reads the target's logits ('ce' trains on tokens alone)."""
    return self.needs_target and (self.loss != "ce" or self.feature)

  @property
  def needs_reference(self) -> bool:
    return self.loss == "adaspec"


def _hidden(graphdef, params, batch):
  """(model, hidden states [B, T-1, D]) -- the positions that predict tokens 1..T-1."""
  model = nnx.merge(graphdef, params)
  h = model.hidden(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  return model, h[:, :-1]


def _flat(x):
  return x.reshape((-1,) + x.shape[2:])


def chunked_map(fn, inputs: dict, chunk: int) -> dict:
  """fn(dict of [C, ...]) -> dict of [C] over the leading axis in chunks of `chunk` tokens.

  Each chunk runs under jax.checkpoint inside lax.map, so [chunk, V] logits are
  never stored for the backward pass and stay in cache (chunk 0 = one chunk).
  """
  n = next(iter(inputs.values())).shape[0]
  if not chunk or chunk >= n:
    return fn(inputs)
  pad = (-n) % chunk
  padded = {k: jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in inputs.items()}
  shaped = {k: v.reshape((-1, chunk) + v.shape[1:]) for k, v in padded.items()}
  out = jax.lax.map(jax.checkpoint(fn), shaped)
  return {k: v.reshape(-1)[:n] for k, v in out.items()}


def token_values(objective: Objective, graphdef, params, batch, target=None, reference=None,
                 chunk: int = 128, with_nll: bool = False, key=None) -> tuple[dict, jax.Array]:
  """Per-token values over [B*(T-1)] positions: loss, nll, and tvd/delta where defined.

  Returns (values, mask). The student and every teacher project hidden states to
  logits one chunk at a time. A feature draft's values span its unrolled steps
  (feature_loss.py).
  """
  if objective.block:
    return block_loss.block_token_values(objective, graphdef, params, batch, target, with_nll, key)
  if objective.feature:
    return feature_loss.feature_token_values(objective, graphdef, params, batch, target, reference, with_nll, key)
  student, s_h = _hidden(graphdef, params, batch)
  inputs = {"s_h": _flat(s_h), "targets": _flat(batch["tokens"][:, 1:])}
  teacher_model = ref_model = None
  if objective.teacher == "topk":
    for k in ("topk_values", "topk_indices", "log_normalizer"):
      inputs[k] = _flat(batch[k][:, :-1])
  elif objective.teacher == "online" and target is not None:
    teacher_model, t_h = _hidden(target[0], target[1], batch)
    inputs["t_h"] = _flat(jax.lax.stop_gradient(t_h))
  if objective.loss == "adaspec":
    ref_model, r_h = _hidden(reference[0], reference[1], batch)
    inputs["r_h"] = _flat(jax.lax.stop_gradient(r_h))
  t = objective.temperature

  def per_chunk(x):
    logits = student.project(x["s_h"])
    raw = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(raw, x["targets"][:, None], axis=-1)[:, 0]
    out = {"nll": nll} if with_nll else {}
    if "topk_values" in x:
      teacher = div.TopKTeacher(x["topk_values"], x["topk_indices"], x["log_normalizer"])
    elif "t_h" in x:
      teacher = teacher_model.project(x["t_h"])
    else:
      scaled = raw if t == 1.0 else jax.nn.log_softmax(logits / t, axis=-1)
      out["loss"] = -jnp.take_along_axis(scaled, x["targets"][:, None], axis=-1)[:, 0]
      return out
    log_p, log_q = div.log_probs(logits, teacher, t)
    out["tvd"] = jax.lax.stop_gradient(div.tvd(log_p, log_q))
    if objective.loss == "ce":
      out["loss"] = nll
    elif objective.loss == "adaspec":
      _, log_r = div.log_probs(ref_model.project(x["r_h"]), teacher, t)
      out["loss"] = div.kl(log_p, log_q)
      out["delta"] = jax.lax.stop_gradient(out["loss"] - div.kl(log_p, log_r))
    else:
      out["loss"] = div.token_divergence(objective.loss, log_p, log_q, objective.beta)
    return out

  return chunked_map(per_chunk, inputs, chunk), _flat(batch["loss_mask"][:, 1:])


def reduce_values(objective: Objective, values: dict, mask) -> tuple[jax.Array, dict]:
  """(loss, metrics) from per-token values: masked means (AdaSPEC: over its selected tokens)."""
  metrics = {"tokens": jnp.sum(mask)}
  if objective.loss == "adaspec":
    weights = div.top_fraction(values["delta"], mask, objective.adaspec_fraction)
    metrics.update(selected_fraction=jnp.sum(weights) / jnp.maximum(jnp.sum(mask), 1.0),
                   delta=div.masked_mean(values["delta"], mask))
  else:
    weights = mask
  loss = div.masked_mean(values["loss"], weights)
  metrics["loss"] = loss
  if "tvd" in values:
    metrics["tvd"] = div.masked_mean(values["tvd"], mask)
  if "nll" in values:
    metrics["ce"] = div.masked_mean(values["nll"], mask)
  return loss, metrics


def compute_loss(objective: Objective, graphdef, params, batch, target=None, reference=None,
                 chunk: int = 128, key=None):
  """(loss, metrics) of the draft `params` on one batch. target/reference: (graphdef, params).

  key: randomness of on-policy feature training (the train step folds in its step number).
  """
  values, mask = token_values(objective, graphdef, params, batch, target, reference, chunk, key=key)
  return reduce_values(objective, values, mask)


def make_train_step(objective: Objective, graphdef, tx: optax.GradientTransformation,
                    target_graphdef=None, reference_graphdef=None, state_shardings=None,
                    batch_shardings=None, target_shardings=None, reference_shardings=None, mesh=None,
                    chunk: int = 128):
  """jitted step(state, batch, target_params, reference_params) -> (state, metrics)."""

  def step(state: TrainState, batch, target_params, reference_params):
    target = (target_graphdef, target_params) if target_graphdef is not None else None
    reference = (reference_graphdef, reference_params) if reference_graphdef is not None else None

    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      return compute_loss(objective, graphdef, params, batch, target, reference, chunk, key)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    return TrainState(params, opt_state, state.step + 1, state.rng), metrics

  if mesh is None:
    return jax.jit(step, donate_argnums=(0,))
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, donate_argnums=(0,),
                 in_shardings=(state_shardings, batch_shardings, target_shardings, reference_shardings),
                 out_shardings=(state_shardings, replicated))


def make_eval_step(objective: Objective, graphdef, target_graphdef=None, reference_graphdef=None,
                   chunk: int = 128):
  """jitted eval(params, batch, target_params, reference_params) -> metrics.

  Reports the objective's loss, the draft's CE on the batch tokens, and (with a
  teacher) the acceptance proxy 1 - TVD(p, q) averaged over response tokens.
  """

  def evaluate(params, batch, target_params, reference_params):
    target = (target_graphdef, target_params) if target_graphdef is not None else None
    reference = (reference_graphdef, reference_params) if reference_graphdef is not None else None
    values, mask = token_values(objective, graphdef, params, batch, target, reference, chunk, True)
    _, metrics = reduce_values(objective, values, mask)
    out = {k: metrics[k] for k in ("loss", "ce", "tokens")}
    if "tvd" in metrics:
      out["acceptance_proxy"] = 1.0 - metrics["tvd"]
    return out

  return jax.jit(evaluate)

"""The training-time-test loss of a feature draft (EAGLE-3 / HASS), with any divergence.

One target forward (frozen) gives the features the draft reads and the
teacher's next-token logits. The draft is unrolled `ttt_steps` positions ahead
(`FeatureDraft.unroll`): step s at entry i predicts token i+2+s and is compared
with the target's distribution at position i+1+s, restricted to the draft
vocabulary and renormalised there (the draft cannot put mass elsewhere; a
target token outside the draft vocabulary simply has q = 0 at decoding time).

Per-token values come back flattened over (step, token) with each step's
weight folded in: step s weighs ttt_decay**s, normalised so the weights
average 1 over the steps (speculators' `ttt_step_loss_decay`; the default 1.0
weighs every step equally). A position counts if its chain stays inside one
sequence and its predicted token is a response token (loss_mask).

Losses: fkl / rkl / jsd / tvd against the target (divergences.py), 'ce' on the
data's tokens mapped into the draft vocabulary (tokens outside it are skipped),
and 'adaspec' (selective KD) with a reference feature draft unrolled alike.

On-policy (objective.ttt_inputs = 'draft', Draft-OPD's idea): from every entry the
draft proposes its own chain (step s >= 1 reads its sample from step s-1, as in a
speculative round), the target is run over those proposals with the same
block mask (`proposal_teacher.target_over_proposals`, what a verification pass computes), and
the loss is taken at every proposed position, accepted or not, against that
target distribution. 'ce' and 'adaspec' are off-policy only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax.distill import divergences as div
from specdistill_jax.distill import proposal_teacher


def step_weights(steps: int, decay: float) -> np.ndarray:
  """Weights of the unrolled steps: decay**s, normalised to mean 1."""
  if int(steps) != steps or steps < 1:
    raise ValueError(f"ttt_steps={steps} must be an integer >= 1")
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"ttt_decay={decay} must be in (0, 1]")
  w = decay ** np.arange(steps, dtype=np.float64)
  return (w * steps / w.sum()).astype(np.float32)


def _shift(x, s: int, total: int):
  """x [B, T, ...] -> [B, total, ...]: entry i holds x[:, i + s] (zero past the end)."""
  part = x[:, s:s + total]
  pad = total - part.shape[1]
  return jnp.pad(part, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else part


def target_pass(graphdef, params, batch, target):
  """(draft, target model, the target's final hidden states [B, T, D], its features at the
  draft's layers [B, T, F]) for one batch; the target is frozen (no gradient)."""
  draft = nnx.merge(graphdef, params)
  t_model = nnx.merge(*target)
  t_h, feats = t_model.hidden(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                              feature_layers=draft.feature_layers)
  return draft, t_model, jax.lax.stop_gradient(t_h), jax.lax.stop_gradient(feats)


def head_values(objective, student, teacher, d_target, mask, with_nll: bool, reference=None):
  """Per-position values of a draft head's logits `student` [..., Vd] against the target's
  `teacher` [..., Vd]: tvd, nll (with_nll) and the objective's loss; d_target: the data's next
  tokens in the draft vocabulary (-1: outside it). reference: AdaSPEC's reference logits.
  -> (values, mask): 'ce' skips the tokens outside the draft vocabulary."""
  log_q_raw = jax.nn.log_softmax(student.astype(jnp.float32), -1)
  # tokens outside the draft vocabulary (q = 0) count 0 in the CE metric, and 'ce' skips them
  nll = jnp.where(d_target >= 0, -jnp.take_along_axis(log_q_raw, jnp.maximum(d_target, 0)[..., None], -1)[..., 0],
                  0.0)
  log_p, log_q = div.log_probs(student, teacher, objective.temperature)
  values = {"tvd": jax.lax.stop_gradient(div.tvd(log_p, log_q))}
  if with_nll:
    values["nll"] = nll
  if objective.loss == "ce":
    values["loss"] = nll
    mask = mask & (d_target >= 0)
  elif objective.loss == "adaspec":
    _, log_r = div.log_probs(reference, teacher, objective.temperature)
    values["loss"] = div.kl(log_p, log_q)
    values["delta"] = jax.lax.stop_gradient(values["loss"] - div.kl(log_p, log_r))
  else:
    values["loss"] = div.token_divergence(objective.loss, log_p, log_q, objective.beta)
  return values, mask


def feature_token_values(objective, graphdef, params, batch, target, reference=None,
                         with_nll: bool = False, key=None) -> tuple[dict, jax.Array]:
  """Per-(step, token) values [S * B * (T-1)] and their mask, like step.token_values.

  objective.ttt_inputs 'draft' (on-policy): steps >= 1 read the draft's own samples (`key`),
  and their teacher is the target run over those proposals (`proposal_teacher.target_over_proposals`).
  """
  draft, t_model, t_h, feats = target_pass(graphdef, params, batch, target)
  tokens, seg = batch["tokens"], batch["segment_ids"]
  steps = objective.ttt_steps
  on_policy = objective.ttt_inputs == "draft"
  if on_policy and key is None:
    key = jax.random.PRNGKey(0)
  logits, chain_ok, inputs = draft.unroll(tokens, feats, steps, segment_ids=seg, key=key if on_policy else None,
                                          temperature=objective.ttt_temperature)  # [S, B, T-1, Vd]
  proposed = []
  if on_policy and steps > 1:
    proposed = proposal_teacher.target_over_proposals(t_model, tokens, list(jax.lax.stop_gradient(inputs[1:])),
                                                        segment_ids=seg)
    proposed = [jax.lax.stop_gradient(h) for h in proposed]
  ref_logits = None
  if objective.loss == "adaspec":
    ref_logits = jax.lax.stop_gradient(nnx.merge(*reference).unroll(tokens, feats, steps, segment_ids=seg)[0])
  n = tokens.shape[1] - 1
  weights = step_weights(steps, objective.ttt_decay)
  out: dict = {}
  masks = []
  teacher_all = t_model.project(t_h, vocab_ids=draft.draft_ids)  # only the draft vocabulary's head rows
  draft_ids = draft.to_draft_ids(tokens)  # the data's tokens in the draft vocabulary (-1: absent)
  for s in range(steps):
    # step s at entry i: teacher at position i+1+s, predicted token at i+2+s
    if s and on_policy:  # after the draft's own proposals: the target over them
      teacher = t_model.project(proposed[s - 1], vocab_ids=draft.draft_ids)
    else:
      teacher = _shift(teacher_all, 1 + s, n)
    mask = chain_ok[s] & (_shift(batch["loss_mask"], 2 + s, n) > 0)
    student = logits[s]
    d_target = _shift(draft_ids, 2 + s, n)
    values, mask = head_values(objective, student, teacher, d_target, mask, with_nll,
                               ref_logits[s] if ref_logits is not None else None)
    values["loss"] = values["loss"] * weights[s]
    for k, v in values.items():
      out.setdefault(k, []).append(v.reshape(-1))
    masks.append(mask.reshape(-1).astype(jnp.float32))
  return {k: jnp.concatenate(v) for k, v in out.items()}, jnp.concatenate(masks)

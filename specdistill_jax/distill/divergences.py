"""Distillation losses: pure functions on logits, mask-weighted means over tokens.

Each divergence is `fn(student_logits, teacher_logits, mask, *, temperature=1.0)
-> (loss, metrics)` with p = softmax(teacher / T) and q = softmax(student / T):

* `forward_kl`  KL(p || q)  (mode covering)
* `reverse_kl`  KL(q || p)  (mode seeking)
* `generalized_jsd(..., beta)`  GKD's JSD(beta) (Agarwal et al. 2306.13649):
  beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.
  beta is the teacher's weight in the mixture; beta = 0.5 is the symmetric JSD;
  as in GKD/TRL, beta = 0 is taken as forward KL and beta = 1 as reverse KL
  (the limits' directions; the mixture form itself vanishes there).
* `total_variation`  0.5 * sum |p - q|  (1 - TVD is the SD acceptance rate)

`teacher_logits` may be full logits [..., V] or a `TopKTeacher` (the offline
cache): then both distributions are compared over k + 1 buckets (the teacher's
top-k tokens and "the rest"), which costs O(k) per token for the teacher.
No T^2 gradient rescaling is applied. Everything is computed in log space in
fp32; log-probabilities are floored so gradients stay finite for extreme logits.

Also: `cross_entropy` (black-box: next-token CE on target-generated tokens) and
`selective_forward_kl` (AdaSPEC): forward KL on the `fraction` of tokens with
the largest delta = KL(p || q_draft) - KL(p || q_reference).
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

LOG_FLOOR = -1e4  # log-probabilities below this contribute nothing and keep gradients finite


@flax.struct.dataclass
class TopKTeacher:
  """A sparse teacher: top-k logits [..., k], their token ids [..., k], logsumexp [...]."""

  values: jax.Array
  indices: jax.Array
  log_normalizer: jax.Array


def _log1mexp(x):
  """log(1 - exp(x)) for x <= 0, stable at both ends."""
  x = jnp.minimum(x, -1e-7)
  return jnp.where(x > -0.6931, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def log_probs(student_logits, teacher, temperature: float = 1.0):
  """(log p, log q) over the same support: the vocabulary, or top-k + rest buckets."""
  s = student_logits.astype(jnp.float32) / temperature
  log_q = jax.nn.log_softmax(s, axis=-1)
  if isinstance(teacher, TopKTeacher):
    if temperature != 1.0:
      raise ValueError(f"distillation temperature {temperature} with a top-k teacher cache: the "
                       "cache stores the log-normaliser at temperature 1; rebuild it or use 1.0")
    top_p = teacher.values.astype(jnp.float32) - teacher.log_normalizer[..., None].astype(jnp.float32)
    top_q = jnp.take_along_axis(log_q, teacher.indices.astype(jnp.int32), axis=-1)
    rest_p = _log1mexp(jax.nn.logsumexp(top_p, axis=-1, keepdims=True))
    rest_q = _log1mexp(jax.nn.logsumexp(top_q, axis=-1, keepdims=True))
    log_p, log_q = jnp.concatenate([top_p, rest_p], -1), jnp.concatenate([top_q, rest_q], -1)
  else:
    log_p = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
  return jnp.maximum(log_p, LOG_FLOOR), jnp.maximum(log_q, LOG_FLOOR)


def kl(log_a, log_b):
  """KL(a || b) per token from log-probabilities over the last axis."""
  return jnp.sum(jnp.exp(log_a) * (log_a - log_b), axis=-1)


def tvd(log_a, log_b):
  return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_a) - jnp.exp(log_b)), axis=-1)


def jsd(log_p, log_q, beta: float):
  if beta == 0.0:
    return kl(log_p, log_q)
  if beta == 1.0:
    return kl(log_q, log_p)
  log_m = jnp.logaddexp(log_p + jnp.log(beta), log_q + jnp.log1p(-beta))
  return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)


def masked_mean(values, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _divergence(per_token: Callable, student_logits, teacher_logits, mask, *, temperature=1.0):
  log_p, log_q = log_probs(student_logits, teacher_logits, temperature)
  loss = masked_mean(per_token(log_p, log_q), mask)
  metrics = {"loss": loss, "tvd": masked_mean(jax.lax.stop_gradient(tvd(log_p, log_q)), mask),
             "tokens": jnp.sum(mask.astype(jnp.float32))}
  return loss, metrics


def forward_kl(student_logits, teacher_logits, mask, *, temperature=1.0):
  """KL(teacher || student), masked mean over tokens."""
  return _divergence(kl, student_logits, teacher_logits, mask, temperature=temperature)


def reverse_kl(student_logits, teacher_logits, mask, *, temperature=1.0):
  """KL(student || teacher), masked mean over tokens."""
  return _divergence(lambda p, q: kl(q, p), student_logits, teacher_logits, mask, temperature=temperature)


def generalized_jsd(student_logits, teacher_logits, mask, *, beta=0.5, temperature=1.0):
  """GKD's JSD(beta) with m = beta p + (1 - beta) q (see the module docstring)."""
  check_unit_interval("beta", beta)
  return _divergence(functools.partial(jsd, beta=float(beta)), student_logits, teacher_logits, mask,
                     temperature=temperature)


def total_variation(student_logits, teacher_logits, mask, *, temperature=1.0):
  """0.5 * sum |p - q|, masked mean over tokens."""
  return _divergence(tvd, student_logits, teacher_logits, mask, temperature=temperature)


def cross_entropy(student_logits, targets, mask, *, temperature=1.0):
  """Black-box distillation / LM training: -log q(target token), masked mean."""
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  nll = -jnp.take_along_axis(log_q, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  loss = masked_mean(nll, mask)
  return loss, {"loss": loss, "tokens": jnp.sum(mask.astype(jnp.float32))}


def token_divergence(name: str, log_p, log_q, beta: float = 0.5):
  """Per-token divergence `name` from log-probabilities (see `log_probs`)."""
  if name == "fkl":
    return kl(log_p, log_q)
  if name == "rkl":
    return kl(log_q, log_p)
  if name == "jsd":
    return jsd(log_p, log_q, check_unit_interval("beta", beta))
  if name == "tvd":
    return tvd(log_p, log_q)
  raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")


def top_fraction(scores, mask, fraction: float):
  """0/1 weights on the `fraction` of valid tokens with the largest scores (AdaSPEC's selection)."""
  valid = mask > 0
  n_valid = jnp.sum(valid)
  k = jnp.maximum(jnp.ceil(fraction * n_valid), 1).astype(jnp.int32)
  ranked = jnp.sort(jnp.where(valid, scores, -jnp.inf).ravel())[::-1]
  threshold = ranked[jnp.clip(k - 1, 0, ranked.size - 1)]
  return (valid & (scores >= threshold)).astype(jnp.float32)


def selective_forward_kl(student_logits, teacher_logits, mask, *, reference_logits, fraction=0.4,
                         temperature=1.0):
  """AdaSPEC: forward KL on the top `fraction` of tokens by KL(p||q) - KL(p||q_ref)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"AdaSPEC fraction={fraction} must be in (0, 1]")
  log_p, log_q = log_probs(student_logits, teacher_logits, temperature)
  _, log_r = log_probs(reference_logits, teacher_logits, temperature)
  per_token = kl(log_p, log_q)
  delta = jax.lax.stop_gradient(per_token - kl(log_p, log_r))
  selected = top_fraction(delta, mask, fraction)
  loss = masked_mean(per_token, selected)
  metrics = {"loss": loss, "tvd": masked_mean(jax.lax.stop_gradient(tvd(log_p, log_q)), mask),
             "tokens": jnp.sum(mask.astype(jnp.float32)),
             "selected_fraction": jnp.sum(selected) / jnp.maximum(jnp.sum(mask > 0), 1),
             "delta": masked_mean(delta, mask)}
  return loss, metrics


DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": generalized_jsd, "tvd": total_variation}
LOSSES = tuple(DIVERGENCES) + ("ce", "adaspec")


def check_unit_interval(name: str, value) -> float:
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value} must be in [0, 1]")
  return value


def get_divergence(name: str, beta: float = 0.5) -> Callable:
  """The divergence `name` ('fkl', 'rkl', 'jsd', 'tvd') with beta bound for 'jsd'."""
  if name not in DIVERGENCES:
    raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)} "
                     "(or loss 'ce' / 'adaspec')")
  if name == "jsd":
    return functools.partial(generalized_jsd, beta=check_unit_interval("beta", beta))
  return DIVERGENCES[name]

"""Acceptance rules of speculative decoding: one round, all rows, pure functions.

Notation: G = gamma draft tokens d_1..d_G per row, draft distributions q_1..q_G,
target distributions p_1..p_{G+1} (p_{G+1} follows the last draft token).
Each rule returns n (accepted drafts, 0..G) and the next token t, which
corrects the first rejection or is the bonus token after G acceptances.

* greedy (temperature 0): accept the longest prefix matching argmax p_i; t is
  the target's argmax at position n+1. Output == greedy target decoding.
* exact (Leviathan et al. / Chen et al.): accept d_i with prob min(1, p_i/q_i);
  at the first rejection sample t from norm(max(0, p - q)); after G acceptances
  sample t from p_{G+1}. Output ~ target sampling, exactly.
* lossy (DistillSpec, lenience): accept with prob min(1, f(p_i, eps)/q_i),
  f_lin = p/eps, f_sq = p/eps^2, f_exp = p^eps; eps = 1 gives f = p exactly.
  Residual after a lossy rejection: we keep norm(max(0, p - q)). Since f >= p
  for every eps in (0, 1], the probability mass the lenient test accepts,
  min(q, f), covers min(q, p); the part of p it leaves uncovered is exactly
  max(0, p - q), so this residual is the one that keeps the output closest to p
  (and it makes eps = 1 the exact rule, bit for bit). The output distribution
  then over-weights tokens where q > p, by at most the extra accepted mass
  sum(min(q, f) - min(q, p)).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from specdistill_jax.sampling import distributions as dist

LENIENCE_KINDS = ("lin", "sq", "exp")


def check_lenience(lenience, temperature: float) -> Optional[tuple[str, float]]:
  """Validated (kind, eps) or None; raises a clear error naming the bad value."""
  if lenience is None:
    return None
  try:
    kind, eps = lenience
  except (TypeError, ValueError):
    raise ValueError(f"lenience={lenience!r} must be a (kind, eps) pair, e.g. ('lin', 0.5)") from None
  if kind not in LENIENCE_KINDS:
    raise ValueError(f"unknown lenience kind {kind!r}; use one of {LENIENCE_KINDS}")
  eps = float(eps)
  if not 0.0 < eps <= 1.0:
    raise ValueError(f"lenience eps={eps} must be in (0, 1] (1 = lossless)")
  if temperature == 0.0:
    raise ValueError("lenience needs temperature > 0: at temperature 0 the target distribution "
                     "is one-hot, f(p) is 0 off the argmax, and lossy SD equals greedy SD")
  return kind, eps


def lenient_log_target(log_p: jax.Array, kind: Optional[str], eps) -> jax.Array:
  """log f(p, eps) from log p (kind None: f = p)."""
  if kind is None:
    return log_p
  if kind == "lin":
    return log_p - jnp.log(eps)
  if kind == "sq":
    return log_p - 2.0 * jnp.log(eps)
  return eps * log_p


def accepted_prefix(accept: jax.Array) -> jax.Array:
  """Length of the leading run of True along the last axis: [B, G] bool -> [B] int32."""
  return jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)


def _at(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, T, ...] at per-row index [B] -> [B, ...]."""
  idx = index.reshape((-1, 1) + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)[:, 0]


def proposed(draft_tokens: jax.Array, lengths: Optional[jax.Array]) -> jax.Array:
  """[B, G] bool: the drafts that are proposals (the first lengths[b] of each row; None: all)."""
  if lengths is None:
    return jnp.ones(draft_tokens.shape, jnp.bool_)
  return jnp.arange(draft_tokens.shape[1])[None, :] < lengths[:, None]


def greedy(draft_tokens: jax.Array, target_logits: jax.Array, lengths: Optional[jax.Array] = None):
  """draft_tokens [B, G], target_logits [B, G+1, V] -> (n [B], t [B]).

  lengths [B]: only the first lengths[b] drafts are proposals (None: all G); n <= lengths."""
  return greedy_tokens(draft_tokens, dist.argmax(target_logits), lengths)


def greedy_tokens(draft_tokens: jax.Array, target_tokens: jax.Array, lengths: Optional[jax.Array] = None):
  """`greedy` from the target's argmax tokens [B, G+1] (computed once by a caller that uses them
  again)."""
  g = draft_tokens.shape[1]
  n = accepted_prefix((draft_tokens == target_tokens[:, :g]) & proposed(draft_tokens, lengths))
  return n, _at(target_tokens, n)


def correction(p: jax.Array, q: jax.Array) -> jax.Array:
  """Where a rejected draft's replacement is drawn from: norm(max(0, p - q)) ([..., V]; p itself
  where p <= q everywhere). The chain's rule and each sibling's test in a tree use it."""
  rest = jnp.maximum(p - q, 0.0)
  total = jnp.sum(rest, -1, keepdims=True)
  return jnp.where(total > 0, rest / jnp.maximum(total, 1e-30), p)


def stochastic(key: jax.Array, draft_tokens: jax.Array, log_q: jax.Array, log_p: jax.Array,
               kind: Optional[str] = None, eps=1.0, lengths: Optional[jax.Array] = None):
  """Exact (kind None) or lossy rule.

  draft_tokens [B, G]; log_q [B, G, V] draft log-probs; log_p [B, G+1, V] target log-probs;
  lengths [B]: only the first lengths[b] drafts are proposals (None: all G). Past them there
  is no draft: t is drawn from p itself, as after G acceptances (q := 0 there).
  Returns (n [B], t [B], tvd [B, G]) where tvd_i = 0.5 * sum |p_i - q_i|.
  """
  b, g = draft_tokens.shape
  k_accept, k_next = jax.random.split(key)
  idx = draft_tokens[..., None]
  log_p_d = jnp.take_along_axis(log_p[:, :g], idx, axis=-1)[..., 0]
  log_q_d = jnp.take_along_axis(log_q, idx, axis=-1)[..., 0]
  u = jax.random.uniform(k_accept, (b, g), minval=jnp.finfo(jnp.float32).tiny)
  accept = (jnp.log(u) + log_q_d < lenient_log_target(log_p_d, kind, eps)) & proposed(draft_tokens, lengths)
  n = accepted_prefix(accept)
  # residual at position n: max(0, p_n - q_n), with q := 0 past the proposals (the bonus token)
  p_n = jnp.exp(_at(log_p, n))
  last = g if lengths is None else lengths
  q_n = jnp.where((n < last)[:, None], jnp.exp(_at(log_q, jnp.minimum(n, g - 1))), 0.0)
  t = dist.sample_from_probs(k_next, correction(p_n, q_n))
  tvd = 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p[:, :g]) - jnp.exp(log_q)), axis=-1)
  return n, t, tvd

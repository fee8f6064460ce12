"""Several drafters for one target: per-round confidence routing (TAPS) and parameter averaging.

Every round each drafter proposes gamma tokens; per row the router picks the
proposal with the highest score and the target verifies that one.

With a `TreeSpec` there is no routing: every drafter grows its tree and the
target verifies the merged tree (TAPS' strongest setting; sampling/tree.py).

Signals (computed from the drafter's own distribution at temperature 1):
* 'confidence' (TAPS): mean over k of the cumulative probability
  prod_{j<=k} q(d_j) of the proposal's prefixes;
* 'entropy': minus the mean entropy of the proposal's distributions.

Exactness. At temperature 0 the proposals are deterministic functions of the
prefix, so routing on the current round's proposals keeps output == greedy
target decoding. At temperature > 0, picking a proposal *because of its own
sampled tokens* biases the draft distribution (two identical drafters with
q = (0.9, 0.1) and score q(d) would propose the likelier token with
probability 0.99, not 0.9) and the min(1, p/q) test is then no longer exact.
So when sampling, the route for round r uses the scores of round r-1's
proposals, which are fixed before round r draws anything; the output stays
distributed exactly as the target's. `route_on='current'` forces TAPS' same-
round routing when sampling (not exact; for replicating the paper).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from specdistill_jax.sampling import acceptance
from specdistill_jax.sampling.speculative import run_speculative


def confidence(logits: jax.Array, tokens: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
  """TAPS confidence: logits [B, G, V], tokens [B, G] -> mean_k prod_{j<=k} q(d_j), [B]. A position
  the drafter did not propose (past `lengths` [B], prompt lookup without a match) counts as q = 0."""
  logq = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], axis=-1)[..., 0]
  logq = jnp.where(acceptance.proposed(tokens, lengths), logq, -jnp.inf)
  return jnp.mean(jnp.exp(jnp.cumsum(logq, axis=-1)), axis=-1)


def negative_entropy(logits: jax.Array, tokens: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
  """Minus the mean entropy of the proposal's distributions over the proposed positions, [B]
  (-inf for a row with no proposal)."""
  logq = jax.nn.log_softmax(logits, -1)
  ok = acceptance.proposed(tokens, lengths)
  total = jnp.sum(jnp.where(ok, jnp.sum(jnp.exp(logq) * logq, axis=-1), 0.0), axis=-1)
  count = jnp.sum(ok, axis=-1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), -jnp.inf)


SIGNALS = {"confidence": confidence, "entropy": negative_entropy}


def routed_speculative_generate(target, drafts: Sequence, prompts, max_new_tokens: int,
                                gamma: int = 4, temperature: float = 0.0, lenience=None, rng=None,
                                signal: str = "confidence", route_on: str = "auto", lengths=None,
                                cache_size: Optional[int] = None, tree=None):
  """`speculative_generate` with 2+ drafters routed per row and round; same (out, stats).

  route_on: 'auto' (current round at temperature 0, previous round when sampling:
  exact either way), 'current' or 'previous'. stats['drafter_share'] gives the
  fraction of row-rounds each drafter was chosen.
  tree: a `TreeSpec` verifies the merged tree of all drafters' trees (TAPS; shared
  prefixes merged, sampling/tree.py) in one target pass instead of routing;
  stats['merged_share'][k] is the fraction of row-rounds with an accepted draft
  whose whole accepted path drafter k's own tree held.
  """
  if len(drafts) < 2:
    raise ValueError(f"routing needs at least 2 drafters, got {len(drafts)}; "
                     "use speculative_generate for one")
  if signal not in SIGNALS:
    raise ValueError(f"unknown routing signal {signal!r}; use one of {sorted(SIGNALS)}")
  if route_on not in ("auto", "current", "previous"):
    raise ValueError(f"route_on={route_on!r} must be 'auto', 'current' or 'previous'")
  if tree is not None and (signal != "confidence" or route_on != "auto"):
    raise ValueError(f"signal={signal!r} / route_on={route_on!r} choose a route, but a tree is not routed: "
                     "every drafter's tree is merged and verified at once; drop them or pass tree=None")
  current = (float(temperature) == 0.0) if route_on == "auto" else route_on == "current"
  return run_speculative(target, list(drafts), prompts, max_new_tokens, gamma, temperature,
                         lenience, rng, lengths, cache_size, score_fn=SIGNALS[signal],
                         route_on_current=current, tree=tree)


def average_params(drafts: Sequence):
  """A drafter whose parameters are the mean of `drafts`' (same architecture required)."""
  if not drafts:
    raise ValueError("average_params needs at least one model")
  config = drafts[0].config
  for i, d in enumerate(drafts[1:], 1):
    if d.config != config:
      raise ValueError(f"drafter {i} has a different ModelConfig than drafter 0: parameter "
                       "averaging needs identical architectures")
  graphdef, first = nnx.split(drafts[0])
  states = [first] + [nnx.split(d)[1] for d in drafts[1:]]
  mean = jax.tree.map(lambda *xs: (sum(x.astype(jnp.float32) for x in xs) / len(xs)).astype(xs[0].dtype),
                      *states)
  return nnx.merge(graphdef, mean)

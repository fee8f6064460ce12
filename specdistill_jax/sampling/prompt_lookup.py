"""Prompt lookup drafting: `prompt_lookup(max_ngram=3, min_ngram=1)`, a drafter with no model.

The draft proposes the continuation of the most recent earlier occurrence of the
longest n-gram (max_ngram down to min_ngram tokens) that ends the text so far,
prompt and generated tokens alike (Saxena's prompt lookup decoding; llama.cpp's
lookup decoding). It costs no model pass and no training, so it is the baseline
every drafter is compared with: it wins where outputs copy their context (code
edits, summaries, quoted questions) and is rejected elsewhere at the price of a
wider verification pass.

It sits behind the same interface as a draft model (`init_cache`,
`forward_cached`, `config.vocab_size`), so `speculative_generate(target,
prompt_lookup(), ...)`, routing among drafters and (merged) draft trees take it
unchanged; in a tree its point mass gives each node one child, so its own tree
is a chain:

* its "cache" is the token history: `keys[0]` [B, S, 1, 1] int32, rolled back by
  `lengths` exactly like a KV cache (entries past a row's length are stale);
* `forward_cached(tokens, cache, mask=...)` writes the tokens and returns, for
  each of them (reading the text its attention mask makes visible: the prefix and,
  in a tree, the node's ancestors), logits that are a point mass on the predicted next token. q is one-hot,
  so exact rejection sampling accepts a draft d with probability p(d) and
  draws a rejection's replacement from p without d: T > 0 stays exact.

When no n-gram matches it has no proposal. Its logits then still hold a point mass (on
the last token again, so a tree node keeps one child), and its states (`features`
[B, T, 1]: 1.0 where the n-gram matched) tell the engine: a chain round verifies only
the drafts up to the first unmatched one (`proposal_lengths`), and a round in which no
row has one is a one-token pass (sampling/rounds.py), so a text that never repeats
decodes at the cost of plain decoding instead of a (gamma+1)-token pass per token.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from specdistill_jax.models import kv_cache as kvc
from specdistill_jax.sampling.acceptance import accepted_prefix

_OFF = -1e30  # logit of every token but the proposed one (finite: no inf - inf under scaling)


@dataclasses.dataclass(frozen=True)
class LookupConfig:
  """What the engine reads of a draft's config; vocab_size is the target's (set by `for_target`)."""
  max_ngram: int = 3
  min_ngram: int = 1
  vocab_size: Optional[int] = None
  max_seq_len: int = 1 << 30  # bounded only by the cache the engine allocates


class PromptLookup(nnx.Module):
  """The n-gram drafter (see the module docstring). Build it with `prompt_lookup(...)`."""

  def __init__(self, config: LookupConfig):
    self.config = config

  def for_target(self, target) -> "PromptLookup":
    """This drafter over the target's vocabulary (the engine calls it before checking the pair)."""
    vocab = target.config.vocab_size
    if self.config.vocab_size == vocab:
      return self
    return PromptLookup(dataclasses.replace(self.config, vocab_size=vocab))

  def transformers_generate_kwargs(self, num_tokens: int) -> dict:
    """transformers' own prompt lookup decoding with these n-gram sizes (the benchmark's peer)."""
    return dict(prompt_lookup_num_tokens=num_tokens, max_matching_ngram_size=self.config.max_ngram)

  def init_cache(self, batch: int, size: int) -> kvc.KVCache:
    return kvc.KVCache.create(1, batch, size, 1, 1, jnp.int32)

  def forward_cached(self, tokens, cache: kvc.KVCache, num_valid=None, *, positions=None, mask=None,
                     logits_at=None):
    """Write tokens [B, T] at each row's length; logits [B, T, V]: token t's proposed successor
    (with `logits_at` [B, K]: those tokens' only, [B, K, V]).

    mask [B, T, S] (a draft tree's node sees the prefix and its ancestors; default causal):
    token t's text is the visible slots in slot order, itself last. positions are unused.
    """
    del positions
    if self.config.vocab_size is None:
      raise ValueError("prompt_lookup() is not bound to a vocabulary: pass it to speculative_generate, "
                       "or call .for_target(target) first")
    num_valid, slots = kvc.cached_slots(cache, tokens.shape[1], num_valid)
    history = kvc.scatter_rows(cache.keys[0][..., 0, 0], tokens, slots)
    if mask is None:
      mask = kvc.cached_attention_mask(slots, history.shape[1])
    nxt, matched = jax.vmap(lambda h, m: jax.vmap(lambda mj: self.lookup(*_visible_text(h, mj)))(m))(history, mask)
    logits = jnp.where(jax.nn.one_hot(kvc.rows_at(nxt, logits_at), self.config.vocab_size, dtype=jnp.bool_), 0.0, _OFF)
    new = kvc.KVCache((history[..., None, None],), cache.values, cache.lengths + num_valid)
    return kvc.CachedForward(logits, new, matched.astype(jnp.float32)[..., None])

  @staticmethod
  def proposal_lengths(states):
    """How many leading drafts [B] are proposals: states [B, G, 1] of the G drafts (1.0 where
    the n-gram matched) -> the drafts before the first unmatched one."""
    return accepted_prefix(states[..., 0] > 0)

  def propose(self, history, length):
    """The next token after history[:length] (history [S] int32; length a traced scalar >= 1)."""
    return self.lookup(history, length)[0]

  def lookup(self, history, length):
    """(next token, whether an n-gram matched) after history[:length]; unmatched: the last token."""
    s = history.shape[0]
    idx = jnp.arange(s)
    best = jnp.int32(-1)
    for n in range(self.config.min_ngram, self.config.max_ngram + 1):  # longer n-grams override shorter
      match = (idx + n <= length - 1) & (length >= n + 1)  # an earlier occurrence with a continuation
      for r in range(n):
        tail = jax.lax.dynamic_index_in_dim(history, jnp.maximum(length - n + r, 0), keepdims=False)
        match &= jnp.roll(history, -r) == tail
      last = jnp.max(jnp.where(match, idx + n, -1))  # the continuation's index, most recent match
      best = jnp.where(last >= 0, last, best)
    fallback = jax.lax.dynamic_index_in_dim(history, jnp.maximum(length - 1, 0), keepdims=False)
    return jnp.where(best >= 0, history[jnp.maximum(best, 0)], fallback), best >= 0


def _visible_text(history, visible):
  """The visible slots of history [S] moved to the front in slot order -> (text [S], length)."""
  at = jnp.where(visible, jnp.cumsum(visible) - 1, history.shape[0])
  return jnp.zeros_like(history).at[at].set(history, mode="drop"), jnp.sum(visible).astype(jnp.int32)


def prompt_lookup(max_ngram: int = 3, min_ngram: int = 1) -> PromptLookup:
  """A prompt lookup drafter: `speculative_generate(target, prompt_lookup(), prompts, ...)`."""
  for name, value in (("max_ngram", max_ngram), ("min_ngram", min_ngram)):
    if int(value) != value or value < 1:
      raise ValueError(f"{name}={value!r} must be an integer >= 1 (tokens in the n-gram to match)")
  if min_ngram > max_ngram:
    raise ValueError(f"min_ngram={min_ngram} > max_ngram={max_ngram}: use min_ngram <= max_ngram, "
                     "e.g. prompt_lookup(max_ngram=3, min_ngram=1)")
  return PromptLookup(LookupConfig(max_ngram=int(max_ngram), min_ngram=int(min_ngram)))

"""Shared pieces of the sampling tests: tiny models and an exact first-tokens distribution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import stats as sps

from specdistill_jax import models

FALSE_ALARM = 1e-3  # chi-square tests reject a correct sampler with this probability


def tiny(vocab=97, seed=0, preset="tiny", eos=(), **kw):
  return models.create(models.preset(preset, vocab, eos_token_ids=eos, **kw), seed=seed)


def never_right_draft(target):
  """A copy of the target whose lm_head columns are rolled by one: its argmax is always
  (target argmax - 1) mod V, so its first proposal of every round is rejected."""
  graphdef, state = nnx.split(target)
  state = jax.tree.map(lambda x: x, state)
  head = state["lm_head"][...]
  state["lm_head"].set_value(jnp.roll(head, -1, axis=1))
  return nnx.merge(graphdef, state)


def uniform_draft(vocab):
  """A draft with all logits 0 (final norm weight 0): uniform, so never confident."""
  draft = tiny(vocab, seed=5, preset="micro")
  state = nnx.state(draft, nnx.Param)
  state["final_norm"]["weight"].set_value(jnp.zeros_like(state["final_norm"]["weight"][...]))
  nnx.update(draft, state)
  return draft


def next_logits(model, width=32):
  """A jitted fn(list of token lists) -> [B, V] next-token logits (fixed padded width)."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))

  def fn(seqs):
    tokens = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
      tokens[i, : len(s)] = s
    logits = forward(state, jnp.asarray(tokens))
    return np.asarray(logits)[np.arange(len(seqs)), [len(s) - 1 for s in seqs]]

  return fn


def reference_greedy(model, prompt, n, eos=()):
  """Greedy decoding one full forward per token (the definition, no cache)."""
  step = next_logits(model, width=len(prompt) + n)
  seq, out = list(prompt), []
  for _ in range(n):
    tok = int(np.argmax(step([seq])[0]))
    out.append(tok)
    seq.append(tok)
    if tok in eos:
      break
  return out


def exact_joint(target, prompt, steps=2):
  """{(t1, ..., t_steps): probability} of the target's first tokens at temperature 1."""
  vocab = target.config.vocab_size
  step = next_logits(target, width=len(prompt) + steps)
  seqs = list(itertools.product(range(vocab), repeat=steps))
  prefixes = [list(prompt) + list(seq[:i]) for seq in seqs for i in range(steps)]
  logp = np.asarray(jax.nn.log_softmax(step(prefixes), -1)).reshape(len(seqs), steps, vocab)
  return {seq: float(np.exp(sum(logp[j, i, t] for i, t in enumerate(seq))))
          for j, seq in enumerate(seqs)}


def chi_square_pvalue(samples, probs, min_expected=5.0):
  """p-value of observed tuples against exact probabilities (small cells pooled)."""
  n = len(samples)
  counts = {}
  for s in samples:
    counts[tuple(s)] = counts.get(tuple(s), 0) + 1
  obs, exp, pool_o, pool_e = [], [], 0, 0.0
  for key, p in probs.items():
    if p * n >= min_expected:
      obs.append(counts.get(key, 0))
      exp.append(p * n)
    else:
      pool_o += counts.get(key, 0)
      pool_e += p * n
  if pool_e > 0:  # no small cells: no pool (an empty one would make the statistic 0/0)
    obs.append(pool_o)
    exp.append(pool_e)
  obs, exp = np.asarray(obs, float), np.asarray(exp, float)
  exp *= obs.sum() / exp.sum()
  return sps.chisquare(obs, exp).pvalue


def after_first_token(out, prompt, target, new=3):
  """Rows' tokens 2..new given the commonest first token t1, and their exact law: tokens past a
  round's first (bonus tokens, the second round) put to a chi-square test."""
  out = np.asarray([o[:new] for o in out])
  t1 = np.bincount(out[:, 0]).argmax()
  return out[out[:, 0] == t1][:, 1:], exact_joint(target, list(prompt) + [int(t1)], steps=new - 1)


def with_bug(monkeypatch, module, name, value):
  """Patch a sampling helper for one test; compiled decoding programs are dropped before and after."""
  from specdistill_jax.sampling import speculative
  speculative.clear_programs()
  monkeypatch.setattr(module, name, value)
  return speculative.clear_programs  # call at the end (the patch itself is undone by pytest)

"""Autoregressive decoding: `generate`, the baseline every speedup is measured against.

Two compiled programs: the prefill (per model and prompt width) reads all prompts but
their last token with one cached forward (ragged rows at their own lengths) and feeds each
row's last prompt token as a one-token step; the decode loop (per model, settings and
cache size, whatever the prompt's width) is a `lax.while_loop` of cached one-token steps
on device. The last prompt token goes through a decode-sized pass as in speculative decoding
(sampling/speculative.py prefills the same prefix and verifies from that token): the
target then computes the same numbers in both, so greedy SD equals greedy AR wherever the
target's passes are row-count invariant (the bf16 `kernel` layout, models/cpu_gemv.py),
not only in fp32. Greedy at temperature 0, else sampling
(optionally top-k / top-p). Each row stops at an eos id or max_new_tokens; the
eos token is part of the output.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from specdistill_jax import models
from specdistill_jax.sampling import distributions as dist
from specdistill_jax.sampling import placement
from specdistill_jax.sampling.checks import as_key, check_temperature
from specdistill_jax.sampling.compiled import CompiledProgram
from specdistill_jax.sampling.prompts import check_cache, pad_prompts, unpad


class Generation(NamedTuple):
  """tokens [B, max_new_tokens] (pad past `lengths`), lengths [B], timings in seconds."""

  tokens: jax.Array
  lengths: jax.Array
  wall_seconds: float
  compile_seconds: float


@flax.struct.dataclass
class _LoopState:
  step: jax.Array
  cache: models.KVCache
  logits: jax.Array  # [B, V] next-token logits
  rng: jax.Array
  out: jax.Array  # [B, N]
  n_out: jax.Array  # [B]
  done: jax.Array  # [B] bool


def last_valid(logits: jax.Array, lengths: jax.Array) -> jax.Array:
  """logits [B, T, V] at each row's position lengths-1 -> [B, V]."""
  return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]


@functools.lru_cache(maxsize=64)
def _prefill_program(graphdef, cache_size: int):
  """The prompts but their last token in one cached forward, then that token as a one-token
  step: (cache, next-token logits [B, V]). Compiled per prompt width; the loop is not."""

  def run(state, tokens, lengths):
    model = nnx.merge(graphdef, state)
    cache = models.init_cache(model.config, tokens.shape[0], cache_size)
    prefix = lengths - 1
    _, cache, _ = model.forward_cached(tokens, cache, num_valid=prefix, logits_at=prefix[:, None])  # logits unused
    logits, cache, _ = model.forward_cached(jnp.take_along_axis(tokens, prefix[:, None], axis=1), cache)
    return cache, logits[:, 0]

  return CompiledProgram(run)


@functools.lru_cache(maxsize=64)
def _program(graphdef, max_new_tokens: int, cache_size: int, greedy: bool,
             top_k: Optional[int], top_p: Optional[float], eos_ids: tuple, pad_id: int):
  """The decode loop from a prefilled cache: compiled once per settings and cache size."""

  def run(state, cache, logits, rng, temperature):
    model = nnx.merge(graphdef, state)
    b = logits.shape[0]
    init = _LoopState(step=jnp.int32(0), cache=cache, logits=logits, rng=rng,
                      out=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
                      n_out=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), jnp.bool_))

    def cond(s):
      return (s.step < max_new_tokens) & ~jnp.all(s.done)

    def body(s):
      rng, key = jax.random.split(s.rng)
      tok = dist.sample(key, s.logits, greedy, temperature, top_k, top_p)
      tok = jnp.where(s.done, pad_id, tok)
      n_out = s.n_out + (~s.done).astype(jnp.int32)
      done = s.done | dist.is_eos(tok, eos_ids) | (n_out >= max_new_tokens)
      logits, cache, _ = model.forward_cached(tok[:, None], s.cache)
      return _LoopState(s.step + 1, cache, logits[:, 0], rng, s.out.at[:, s.step].set(tok), n_out, done)

    final = jax.lax.while_loop(cond, body, init)
    return final.out, final.n_out

  return CompiledProgram(run)


def clear_programs() -> None:
  """Drop the compiled prefill and decode-loop programs."""
  _prefill_program.cache_clear()
  _program.cache_clear()


def generate_batch(model, prompts, max_new_tokens: int, temperature: float = 0.0, rng=None,
                   top_k: Optional[int] = None, top_p: Optional[float] = None, lengths=None,
                   cache_size: Optional[int] = None) -> Generation:
  """Like `generate`, but returns padded device arrays and timings (for training loops)."""
  temperature = check_temperature(temperature)
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k={top_k} must be >= 1 (or None)")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1] (or None)")
  config = model.config
  tokens, lens = pad_prompts(prompts, lengths, pad_id=config.pad_token_id, vocab_size=config.vocab_size)
  size = check_cache(tokens.shape[1], max_new_tokens, 0, config.max_seq_len, cache_size, "decode")
  key = as_key(rng)
  graphdef, state = nnx.split(model)
  prefill = _prefill_program(graphdef, size)
  program = _program(graphdef, int(max_new_tokens), size, temperature == 0.0, top_k, top_p,
                     config.eos_token_ids, config.pad_token_id)
  tokens, lens, key, temp = placement.place_inputs(state, tokens, lens, key, jnp.float32(max(temperature, 1e-6)))
  t0 = time.perf_counter()
  (cache, logits), compile_prefill = prefill(state, tokens, lens)
  (out, n_out), compile_loop = program(state, cache, logits, key, temp)
  jax.block_until_ready(out)
  compile_s = compile_prefill + compile_loop
  return Generation(out, n_out, time.perf_counter() - t0 - compile_s, compile_s)


def generate(model, prompts, max_new_tokens: int, temperature: float = 0.0, rng=None,
             top_k: Optional[int] = None, top_p: Optional[float] = None, lengths=None,
             cache_size: Optional[int] = None) -> list[list[int]]:
  """Generated token ids per row (prompt excluded; ends with eos if one was produced).

  prompts: list of token-id lists (ragged), or a padded [B, P] int array with `lengths`.
  temperature: 0 = greedy; > 0 samples from softmax(logits / temperature).
  """
  g = generate_batch(model, prompts, max_new_tokens, temperature, rng, top_k, top_p, lengths, cache_size)
  return unpad(*placement.to_host(g.tokens, g.lengths))

"""Measurement: alpha, tau and speedups of a draft/target pair, and the quality of outputs.

* `speculative_eval`: one speculative run and one autoregressive run of the
  same prompts -> alpha, tau, tokens/s of both, the measured speedup, the
  cost ratio c and the theoretical speedup (1 - a^(g+1)) / ((1 - a)(g c + 1));
* `cost_ratio`: c = draft step time / target step time (cached one-token steps);
  `step_seconds_by_tokens`: cached passes of several token counts timed in interleaved rounds;
  `round_seconds`: one proposal round of any drafter (gamma steps, or one block pass);
* `target_log_likelihood`: mean log p_target(output token | prefix) (lossy-SD quality);
* `json_exact_match`: fraction of outputs whose JSON equals the reference JSON;
* `answer_accuracy`: fraction of outputs whose final '#### answer' is the right number (math);
* `reference_cross_entropy`: per-sequence cross-entropy of a model under a reference
  model's next-token distributions (a distilled model's quality against its teacher).

CLI:
    python -m specdistill_jax.evaluate --target DIR --draft DIR --corpus sharegpt_chat \
        [--split validation] [--num_prompts 32] [--gamma 4] [--temperature 0]
"""

from __future__ import annotations

import functools
import json
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdistill_jax import sampling
from specdistill_jax.sampling import proposer
from specdistill_jax.sampling import distributions as dist


def expected_tau(alpha: float, gamma: int) -> float:
  """Tokens per target call under i.i.d. acceptance alpha: (1 - a^(g+1)) / (1 - a)."""
  if alpha >= 1.0:
    return float(gamma + 1)
  return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def theoretical_speedup(alpha: float, gamma: int, c: float) -> float:
  """Walltime improvement over autoregressive decoding (Leviathan et al.)."""
  return expected_tau(alpha, gamma) / (gamma * c + 1)


@functools.lru_cache(maxsize=16)
def _step_program(graphdef, steps: int):
  @jax.jit
  def run(state, cache, token):
    model = nnx.merge(graphdef, state)

    def body(_, carry):
      c, t = carry
      logits, c, _ = proposer.feed(model, t, c)
      return c, dist.argmax(logits)

    return jax.lax.fori_loop(0, steps, body, (cache, token))
  return run


@functools.lru_cache(maxsize=16)
def _round_program(graphdef, gamma: int, rounds: int):
  @jax.jit
  def run(state, cache):
    model = nnx.merge(graphdef, state)
    pending, n_pending, hidden = proposer.blank_pending(model, cache.lengths.shape[0])
    start = cache.lengths

    def body(i, carry):
      c, acc = carry
      toks, logits, c, _ = proposer.propose(model, c, pending, n_pending, hidden, jax.random.PRNGKey(i), gamma,
                                            True, 1.0)
      # every round starts from the same cache length; the sum keeps the proposals live
      return c.with_lengths(start), acc + jnp.sum(toks) + jnp.sum(logits[..., 0])

    return jax.lax.fori_loop(0, rounds, body, (cache, jnp.float32(0)))
  return run


def round_seconds(draft, gamma: int, cache_size: int, batch: int = 1, rounds: int = 16, repeats: int = 5) -> float:
  """Seconds of one proposal round of `gamma` drafts (best of `repeats`), any kind of draft:
  feeding one pending token, then gamma one-token steps (a token draft, an EAGLE-3 head) or one
  block pass (a block drafter). The cache starts a quarter full."""
  graphdef, state = nnx.split(draft)
  run = _round_program(graphdef, int(gamma), rounds)
  cache = draft.init_cache(batch, cache_size).with_lengths(jnp.full((batch,), cache_size // 4, jnp.int32))
  jax.block_until_ready(run(state, cache))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(state, cache))
    best = min(best, time.perf_counter() - t0)
  return best / rounds


def step_seconds(model, batch: int, cache_size: int, steps: int = 32, repeats: int = 5,
                 tokens: int = 1) -> float:
  """Seconds per cached forward of `tokens` new tokens per row (best of `repeats`).

  tokens=1 is a decode step; tokens=gamma+1 is a verification pass. The cache starts a
  quarter full and `steps` is capped so the forwards fit in it.
  """
  return step_seconds_by_tokens(model, batch, cache_size, (tokens,), steps, repeats)[tokens]


def step_seconds_by_tokens(model, batch: int, cache_size: int, tokens: Sequence[int], steps: int = 32,
                           repeats: int = 5) -> dict:
  """`step_seconds` of several token counts -> {tokens: seconds}, timed in interleaved rounds (each
  round times every count once; the best round of each is kept), so that ratios such as
  v(k) = seconds[k] / seconds[1] compare passes timed under the same machine conditions (this
  CPU's speed drifts by 10-30% over seconds: a shared host's memory bandwidth)."""
  start = cache_size // 4
  graphdef, state = nnx.split(model)
  runs = {}
  for k in dict.fromkeys(tokens):
    n = max(1, min(steps, (cache_size - start) // k))
    cache = model.init_cache(batch, cache_size).with_lengths(jnp.full((batch,), start, jnp.int32))
    runs[k] = (_step_program(graphdef, n), cache, jnp.zeros((batch, k), jnp.int32), n)
    for _ in range(2):  # compile, then the new executable's slower first run
      jax.block_until_ready(runs[k][0](state, *runs[k][1:3]))
  best = {k: float("inf") for k in runs}
  for _ in range(repeats):
    for k, (run, cache, token, n) in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(run(state, cache, token))
      best[k] = min(best[k], (time.perf_counter() - t0) / n)
  return best


def cost_ratio(target, draft, batch: int = 1, cache_size: int = 256) -> float:
  """c = a one-draft proposal round / a target step, measured here (a token draft: its step)."""
  return round_seconds(draft, 1, cache_size, batch) / step_seconds(target, batch, cache_size)


def speculative_eval(target, draft, prompts, max_new_tokens: int = 64, gamma: int = 4,
                     temperature: float = 0.0, rng=0, lenience=None, baseline: bool = True,
                     c: Optional[float] = None, repeats: int = 1) -> dict:
  """alpha, tau and (with baseline) measured vs theoretical speedup on `prompts`."""
  def sd():
    return sampling.speculative_generate(target, draft, prompts, max_new_tokens, gamma=gamma,
                                         temperature=temperature, lenience=lenience, rng=rng)
  out, stats = sd()
  for _ in range(repeats - 1):  # after compilation; keep the fastest
    _, again = sd()
    if again["wall_seconds"] < stats["wall_seconds"]:
      stats = again
  result = {k: stats[k] for k in ("alpha", "tau", "tokens", "position_acceptance",
                                  "accepted_per_round", "tokens_per_second", "wall_seconds")}
  result.update(gamma=gamma, temperature=temperature, outputs=out)
  if baseline:
    gens = [sampling.generate_batch(target, prompts, max_new_tokens, temperature, rng=rng)
            for _ in range(max(repeats, 1))]
    g = min(gens, key=lambda x: x.wall_seconds)
    ar_tps = float(np.sum(np.asarray(g.lengths))) / max(g.wall_seconds, 1e-9)
    if c is None:
      c = cost_ratio(target, draft, len(prompts), max(map(len, prompts)) + max_new_tokens + gamma + 2)
    result.update(ar_tokens_per_second=ar_tps, speedup=stats["tokens_per_second"] / ar_tps, c=c,
                  theoretical_speedup=theoretical_speedup(stats["alpha"], gamma, c))
  return result


@functools.lru_cache(maxsize=8)
def _logprob_program(graphdef):
  @jax.jit
  def run(state, tokens, mask):
    logits = nnx.merge(graphdef, state)(tokens)[:, :-1]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
    return jnp.sum(logp * mask[:, 1:]), jnp.sum(mask[:, 1:])
  return run


def _scored_batches(prompts, outputs, pad_id: int, batch_size: int):
  """(tokens [b, W], mask over the output tokens [b, W]) per batch of prompt + output rows; one width
  W (a multiple of 16) for all batches, so one compiled program scores them."""
  width = ((max(len(p) + len(o) for p, o in zip(prompts, outputs)) + 15) // 16) * 16
  for s in range(0, len(prompts), batch_size):
    rows = list(zip(prompts[s:s + batch_size], outputs[s:s + batch_size]))
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    for r, (p, o) in enumerate(rows):
      tokens[r, : len(p) + len(o)] = list(p) + list(o)
      mask[r, len(p): len(p) + len(o)] = 1.0
    yield jnp.asarray(tokens), jnp.asarray(mask)


def target_log_likelihood(target, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                          batch_size: int = 32) -> float:
  """Mean per-token log-probability the target assigns to `outputs` after `prompts`."""
  graphdef, state = nnx.split(target)
  run = _logprob_program(graphdef)
  total, count = 0.0, 0.0
  for tokens, mask in _scored_batches(prompts, outputs, target.config.pad_token_id, batch_size):
    lp, n = run(state, tokens, mask)
    total, count = total + float(lp), count + float(n)
  return total / max(count, 1.0)


def json_exact_match(outputs: Sequence[str], references: Sequence[str]) -> float:
  """Fraction of outputs that parse as JSON equal to the reference's JSON."""
  hits = 0
  for out, ref in zip(outputs, references):
    try:
      hits += json.loads(out) == json.loads(ref)
    except (json.JSONDecodeError, TypeError):
      pass
  return hits / max(len(references), 1)


def answer_accuracy(outputs: Sequence[str], answers: Sequence) -> float:
  """Fraction of outputs whose final answer (the number after '####') equals the reference answer."""
  from specdistill_jax.data.math_word_problems import extract_answer
  hits = sum(extract_answer(out) == int(ans) for out, ans in zip(outputs, answers))
  return hits / max(len(answers), 1)


@functools.lru_cache(maxsize=8)
def _cross_entropy_program(ref_graphdef, graphdef):
  @jax.jit
  def run(ref_state, state, tokens, mask):
    log_p = jax.nn.log_softmax(nnx.merge(ref_graphdef, ref_state)(tokens).astype(jnp.float32), -1)
    log_q = jax.nn.log_softmax(nnx.merge(graphdef, state)(tokens).astype(jnp.float32), -1)
    per_token = -jnp.sum(jnp.exp(log_p) * log_q, -1)[:, :-1]  # predicting token t+1 from the prefix
    m = mask[:, 1:]
    return jnp.sum(per_token * m, -1), jnp.sum(m, -1)
  return run


def reference_cross_entropy(reference, model, prompts: Sequence[Sequence[int]],
                            responses: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
  """Per row: mean over the response tokens of H(p_reference, p_model) = -sum_v p_ref(v) log p_model(v).

  With model = reference it is the reference's own entropy, the floor; the excess is the KL a
  smaller model pays. Both models must share the vocabulary.
  """
  if reference.config.vocab_size != model.config.vocab_size:
    raise ValueError(f"vocabulary mismatch: reference {reference.config.vocab_size} vs model "
                     f"{model.config.vocab_size}")
  (ref_graphdef, ref_state), (graphdef, state) = nnx.split(reference), nnx.split(model)
  run = _cross_entropy_program(ref_graphdef, graphdef)
  out = []
  for tokens, mask in _scored_batches(prompts, responses, model.config.pad_token_id, batch_size):
    total, count = run(ref_state, state, tokens, mask)
    out.append(np.asarray(total) / np.maximum(np.asarray(count), 1.0))
  return np.concatenate(out)


def main(argv):
  from absl import flags

  from specdistill_jax import distributed, loading
  from specdistill_jax.data import ChatFormat, historical_queries

  distributed.initialize()
  f = flags.FLAGS
  target, draft = loading.load_model(f.target), loading.load_model(f.draft)
  chat = ChatFormat(loading.load_tokenizer(f.tokenizer or f.target))
  prompts = historical_queries(chat, f.corpus, f.split, f.num_prompts, f.data_dir,
                               max_prompt_tokens=f.max_prompt_tokens, config=f.corpus_config)
  r = speculative_eval(target, draft, prompts, f.max_new_tokens, f.gamma, f.temperature, rng=f.seed,
                       repeats=2)
  r.pop("outputs")
  print(json.dumps(r, indent=1))


if __name__ == "__main__":
  from absl import flags

  import specdistill_jax.distributed  # noqa: F401 - defines the multi-process flags
  from specdistill_jax import cli
  flags.DEFINE_string("target", None, "target model directory", required=True)
  flags.DEFINE_string("draft", None, "draft model directory", required=True)
  flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: the target's)")
  flags.DEFINE_string("corpus", "sharegpt_chat", "corpus whose user queries are the prompts")
  flags.DEFINE_string("split", "validation", "split of the corpus")
  flags.DEFINE_string("data_dir", None, "prepared data directory")
  flags.DEFINE_enum("corpus_config", "full", ["full", "small"], "which build of a bundled corpus")
  flags.DEFINE_integer("num_prompts", 32, "prompts to decode")
  flags.DEFINE_integer("max_prompt_tokens", 64, "prompts are cut to their last N tokens")
  flags.DEFINE_integer("max_new_tokens", 64, "new tokens per prompt")
  flags.DEFINE_integer("gamma", 4, "draft tokens per round")
  flags.DEFINE_float("temperature", 0.0, "sampling temperature (0 = greedy)")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  cli.run(main)

"""Prompt sets for the domain-draft study's three data scenarios (Hong et al., 2503.07807).

* historical user queries: real prompts of the domain (the corpus' user turns);
* curated domain text: documents of the domain, no prompts (code, API docs, answers);
* synthetic prompts: the target writes user queries itself (Magpie): it is fed
  only the chat template's user prefix and samples until the end of the turn;
  each query is then wrapped as a chat prompt. `generate` is the sampler's
  (or any function with its signature).

Prompts are token-id lists ending with the assistant marker, ready for generation.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from specdistill_jax.data import corpora
from specdistill_jax.data.tokenizer import ChatFormat


def _chat(tokenizer_or_chat) -> ChatFormat:
  return tokenizer_or_chat if isinstance(tokenizer_or_chat, ChatFormat) else ChatFormat(tokenizer_or_chat)


def _truncate(ids: list[int], max_tokens: Optional[int]) -> list[int]:
  if max_tokens is None or len(ids) <= max_tokens:
    return ids
  return ids[:1] + ids[len(ids) - max_tokens + 1:]  # keep BOS and the end (assistant marker)


def sampled_examples(corpus: str, split: str, n: int, data_dir: Optional[str] = None, seed: int = 0,
                     config: str = "full", documents: bool = False) -> list:
  """The n records of `corpus` that every prompt set draws for this seed (a seeded permutation)."""
  source = corpora.load(corpus, split, data_dir, config, documents=documents)
  order = np.random.default_rng(seed).permutation(len(source))[:n]
  return [source[int(i)] for i in order]


def historical_queries(tokenizer, corpus: str, split: str, n: int, data_dir: Optional[str] = None,
                       max_prompt_tokens: Optional[int] = None, seed: int = 0,
                       config: str = "full") -> list[list[int]]:
  """n real user prompts of `corpus` (seeded sample), chat-encoded."""
  chat = _chat(tokenizer)
  if corpora.FIELDS.get(corpus, corpora.Fields(None, None, "")).prompt is None:
    raise ValueError(f"corpus {corpus!r} has no user queries (documents only): use "
                     "curated_documents, or a corpus with prompts")
  return [_truncate(chat.prompt_ids(prompt), max_prompt_tokens)
          for prompt, _ in sampled_examples(corpus, split, n, data_dir, seed, config)]


def curated_documents(corpus: str, split: str, n: int, data_dir: Optional[str] = None,
                      seed: int = 0, config: str = "full") -> list[str]:
  """n documents of the domain (seeded sample): the curated-text scenario."""
  return [doc for _, doc in sampled_examples(corpus, split, n, data_dir, seed, config, documents=True)]


def synthetic_prompts(target, tokenizer, n: int, rng=0, max_query_tokens: int = 32,
                      temperature: float = 1.0, generate: Optional[Callable] = None,
                      batch_size: int = 64) -> list[list[int]]:
  """n Magpie-style prompts: queries the target writes after the user marker, chat-encoded."""
  import jax

  if generate is None:
    from specdistill_jax.sampling import generate
  chat = _chat(tokenizer)
  prefix = chat.user_prefix_ids()
  key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
  prompts: list[list[int]] = []
  attempts = 0
  while len(prompts) < n:
    key, sub = jax.random.split(key)
    outs = generate(target, [prefix] * batch_size, max_query_tokens, temperature=temperature, rng=sub)
    for ids in outs:
      ids = [t for t in ids if t != chat.eos]
      query = chat.decode(ids).strip()
      if query:
        prompts.append(chat.prompt_ids(query))
    attempts += 1
    if attempts > 4 * (n // batch_size + 1):
      raise RuntimeError(f"the target produced only {len(prompts)} non-empty queries in {attempts} "
                         "batches: is it a chat model trained with this template?")
  return prompts[:n]

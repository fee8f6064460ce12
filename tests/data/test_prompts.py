"""Prompt sets of the three data scenarios, and prepare's reuse of what exists."""

import os

import numpy as np

from specdistill_jax import data
from specdistill_jax.data import prepare


def test_historical_queries_are_chat_prompts_from_the_domain(small_data):
  data_dir, chat, _ = small_data
  prompts = data.historical_queries(chat, "function_calling", "train", 5, data_dir, config="small")
  assert len(prompts) == 5
  for p in prompts:
    assert p[:2] == [chat.bos, chat.user] and p[-2:] == [chat.assistant] + chat.newline
  texts = [chat.decode(p) for p in prompts]
  assert all(("{" not in t) and t.strip() for t in texts)


def test_curated_documents_have_no_prompts(small_data):
  docs = data.curated_documents("python_code", "train", 4, small_data[0], config="small")
  assert len(docs) == 4 and all(d.lstrip().startswith(("def", "class", "async", "@")) for d in docs)
  api = data.curated_documents("function_calling", "train", 4, small_data[0], config="small")
  assert len(set(api)) == 4  # API documentation, deduplicated


def test_synthetic_prompts_come_from_the_generator_after_the_user_marker(small_data):
  chat = small_data[1]
  seen = []

  def stub_generate(model, prompts, max_new_tokens, temperature=0.0, rng=None):
    seen.append((prompts[0], max_new_tokens, temperature))
    return [chat.encode_text(f"how do I sort list {i}?") + [chat.eos] for i in range(len(prompts))]

  out = data.synthetic_prompts(None, chat, 6, rng=0, max_query_tokens=12, generate=stub_generate,
                               batch_size=4)
  assert len(out) == 6 and seen[0] == (chat.user_prefix_ids(), 12, 1.0)
  assert out[0] == chat.prompt_ids("how do I sort list 0?")


def test_synthetic_prompts_with_a_real_sampler(small_data):
  from specdistill_jax import models
  chat = small_data[1]
  target = models.create(models.preset("micro", chat.vocab_size, eos_token_ids=(chat.eos,)))
  out = data.synthetic_prompts(target, chat, 3, rng=1, max_query_tokens=8, batch_size=4)
  assert len(out) == 3 and all(p[-2:] == [chat.assistant] + chat.newline for p in out)


def test_prepare_reuses_what_exists(small_data):
  data_dir = small_data[0]
  tok = os.path.join(data_dir, "tokenizer", "tokenizer.json")
  before = os.path.getmtime(tok)
  _, stats, seconds = prepare.prepare(data_dir, ["function_calling"], "small", vocab_size=1024,
                                      with_stats=False)
  assert os.path.getmtime(tok) == before and seconds < 10
  assert small_data[2]["function_calling/train"]["tokens"] > 0

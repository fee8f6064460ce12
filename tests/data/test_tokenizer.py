"""Tokenizer: lossless round trip; our chat encoding equals the HF chat template; masks."""

import numpy as np
import pytest

from specdistill_jax import loading
from specdistill_jax.data import ChatFormat

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "def f(x):\n    return {'a': [1, 2]}  # code\n\tindent",
         "你好，世界！これは日本語です。한국어 텍스트", "emoji 🎉 and tabs\t\tend"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(small_data, text):
  chat = small_data[1]
  assert chat.tokenizer.decode(chat.encode_text(text)) == text


def test_saved_directory_loads_with_auto_tokenizer(small_data):
  tok = loading.load_tokenizer(f"{small_data[0]}/tokenizer")
  assert len(tok) == 1024 and tok.eos_token == "<|end|>" and tok.pad_token_id == 0


def test_chat_encoding_equals_hf_chat_template(small_data):
  chat = small_data[1]
  messages = [{"role": "user", "content": "What is 2+2?"}]
  hf = chat.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  hf = list(hf["input_ids"] if hasattr(hf, "keys") else hf)
  assert chat.prompt_ids("What is 2+2?") == hf


def test_mask_covers_the_response_only(small_data):
  chat = small_data[1]
  tokens, mask, plen = chat.example("Say hi.", "Hello there!", max_len=64)
  assert mask[:plen].sum() == 0 and mask[plen:].all()
  assert chat.decode(tokens[plen:]) == "Hello there!"
  assert tokens[-1] == chat.eos and tokens[plen - 1] == chat.newline[-1]
  # long prompts keep BOS and their end; responses are cut to max_len
  tokens, mask, plen = chat.example("word " * 200, "answer " * 200, max_len=48, max_prompt_len=16)
  assert len(tokens) == 48 and plen == 16 and tokens[0] == chat.bos
  marker = [chat.assistant] + chat.newline
  assert list(tokens[plen - len(marker):plen]) == marker


def test_document_loss_skips_only_bos(small_data):
  tokens, mask, plen = small_data[1].example(None, "import os\nprint(os.sep)", max_len=64)
  assert plen == 1 and mask[0] == 0 and mask[1:].all() and tokens[-1] == small_data[1].eos

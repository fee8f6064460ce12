"""Tokenizers: train a byte-level BPE on the bundled corpora, or load an HF tokenizer directory.

The trained tokenizer is saved as a directory `transformers.AutoTokenizer`
loads (tokenizer.json + config with special tokens and a chat template).
Special tokens: <|pad|> (0), <|bos|>, <|end|> (eos: ends every turn and
document), <|user|>, <|assistant|>. The chat format is

    <|bos|><|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>

`ChatFormat` turns (prompt, response) into token ids with a loss mask over the
response (and its closing <|end|>) only; a document (no prompt) is
<|bos|>{text}<|end|> with the loss over the text. Real checkpoints bring their
own tokenizer and chat template; `ChatFormat.from_tokenizer` uses them.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

PAD, BOS, END, USER, ASSISTANT = "<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, END, USER, ASSISTANT)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str, min_frequency: int = 2):
  """Train a byte-level BPE on `texts` and save it to `out_dir`; returns the HF tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  if vocab_size < 300:
    raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE (>= 300: 256 bytes "
                     "+ special tokens + merges)")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=END,
                                 pad_token=PAD, additional_special_tokens=[USER, ASSISTANT])
  fast.chat_template = CHAT_TEMPLATE
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return fast


class ChatFormat:
  """Encodes (prompt, response) pairs and documents with response-only loss masks."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    ids = tokenizer.convert_tokens_to_ids
    self.bos = tokenizer.bos_token_id
    self.eos = tokenizer.eos_token_id
    self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
    vocab = tokenizer.get_vocab()
    self.ours = USER in vocab and ASSISTANT in vocab  # our markers, else the tokenizer's template
    if self.ours:
      self.user, self.assistant, self.end = ids(USER), ids(ASSISTANT), ids(END)
      self.newline = self.encode_text("\n")

  @classmethod
  def from_dir(cls, path: str) -> "ChatFormat":
    from specdistill_jax.loading import load_tokenizer
    return cls(load_tokenizer(path))

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def encode_text(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def prompt_ids(self, prompt: str) -> list[int]:
    """The prompt up to and including the assistant marker (where generation starts)."""
    if self.ours:
      return ([self.bos, self.user] + self.encode_text("\n" + prompt) + [self.end] + self.newline +
              [self.assistant] + self.newline)
    out = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)

  def conversation_ids(self, messages) -> list[int]:
    """A multi-turn chat ({"role": "user"|"assistant", "content"} dicts) up to the next assistant marker."""
    if len(messages) == 1 and messages[0]["role"] == "user":
      return self.prompt_ids(messages[0]["content"])
    if self.ours:
      ids = [self.bos]
      for m in messages:
        marker = {"user": self.user, "assistant": self.assistant}[m["role"]]
        ids += [marker] + self.encode_text("\n" + m["content"]) + [self.end] + self.newline
      return ids + [self.assistant] + self.newline
    out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)

  def conversation_example(self, turns, max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens [<= max_len], loss mask, length before the first answer) of a whole conversation.

    turns: (user turn, assistant turn) pairs in order. Every assistant turn is a training
    target with the conversation so far as its context, through the chat template; the
    mask is 1 on the answers' tokens (and their end-of-turn token). Cut at max_len: turns
    that do not fit are dropped, a turn that fits in part keeps its first tokens.
    """
    tokens: list[int] = []
    mask: list[float] = []
    messages: list[dict] = []
    for prompt, response in turns:
      messages.append({"role": "user", "content": prompt})
      context = self.conversation_ids(messages)
      if context[:len(tokens)] != tokens:  # the template re-tokenised earlier text otherwise: restart there
        tokens, mask = [], []
      new = context[len(tokens):]
      answer = self.response_ids(response)
      tokens += new + answer
      mask += [0.0] * len(new) + [1.0] * len(answer)
      messages.append({"role": "assistant", "content": response})
      if len(tokens) >= max_len:
        break
    tokens, mask = tokens[:max_len], mask[:max_len]
    first = mask.index(1.0) if 1.0 in mask else len(mask)
    return np.asarray(tokens, np.int32), np.asarray(mask, np.float32), first

  def response_ids(self, response: str) -> list[int]:
    return self.encode_text(response) + [self.eos]

  def user_prefix_ids(self) -> list[int]:
    """What precedes a user query: the start of a Magpie-style synthetic prompt."""
    if self.ours:
      return [self.bos, self.user] + self.newline
    full = self.prompt_ids("\x00")
    text = self.tokenizer.decode(full)
    return self.encode_text(text.split("\x00")[0])

  def document_ids(self, text: str) -> list[int]:
    return ([self.bos] if self.bos is not None else []) + self.encode_text(text) + [self.eos]

  def example(self, prompt: Optional[str], response: str, max_len: int,
              max_prompt_len: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens [<= max_len], loss mask [same], prompt length) of one example.

    The prompt keeps its last `max_prompt_len` tokens (default max_len // 2) after
    the first (BOS) token; the response is cut to fit. A document (prompt None)
    is truncated to max_len, loss on everything after BOS.
    """
    if prompt is None:
      tokens = self.document_ids(response)[:max_len]
      mask = np.ones(len(tokens), np.float32)
      mask[0] = 0.0
      return np.asarray(tokens, np.int32), mask, 1
    p = self.prompt_ids(prompt)
    limit = max_prompt_len or max_len // 2
    if len(p) > limit:
      p = p[:1] + p[len(p) - limit + 1:]
    r = self.response_ids(response)[: max_len - len(p)]
    tokens = np.asarray(p + r, np.int32)
    mask = np.concatenate([np.zeros(len(p), np.float32), np.ones(len(r), np.float32)])
    return tokens, mask, len(p)

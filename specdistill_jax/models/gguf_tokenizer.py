"""The tokenizer a GGUF file describes, built from its metadata with `gguf` + `tokenizers` (no PyTorch).

`tokenizer_from_gguf(path)` returns a `transformers.PreTrainedTokenizerFast` (which needs
neither torch nor a hub) for a byte-level BPE vocabulary (`tokenizer.ggml.model == 'gpt2'`,
as SmolLM, Llama-3 and Qwen2 files carry):

* the vocabulary (`tokenizer.ggml.tokens`, ids = positions) and the merges
  (`tokenizer.ggml.merges`, "left right" strings) as a `tokenizers.models.BPE`;
* tokens the file types CONTROL (3) are special added tokens (kept whole in text, skipped
  by `decode(skip_special_tokens=True)`); USER_DEFINED (4) ones are plain added tokens;
* llama.cpp's pre-tokenizer named by `tokenizer.ggml.pre`: 'smollm' splits digits one by
  one, then GPT-2's byte-level regex; other names, GPT-2's regex alone;
* bos / eos / unk / pad from `tokenizer.ggml.*_token_id`, the chat template from
  `tokenizer.chat_template`, `add_bos_token` from the file (absent: no BOS).

Other tokenizer models (sentencepiece 'llama', 't5', ...) are a CheckpointFormatError
naming the model. tests/models/test_import_gguf.py checks ids, decoding and the chat
template against transformers' own GGUF tokenizer loading.
"""

from __future__ import annotations

CONTROL, USER_DEFINED = 3, 4
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}


def _field(reader, key: str, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _pre_tokenizer(name: str):
  from tokenizers import pre_tokenizers
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if name == "smollm":  # llama.cpp's "\p{N}" split, then GPT-2's regex
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  return byte_level


def tokenizer_from_gguf(path: str, reader=None):
  """A `PreTrainedTokenizerFast` with the file's vocabulary, merges, special tokens and chat template."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, processors
  from transformers import PreTrainedTokenizerFast

  from specdistill_jax.models.hf import CheckpointFormatError
  if reader is None:
    import gguf
    reader = gguf.GGUFReader(path)
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise CheckpointFormatError(f"{path}: tokenizer model {kind!r} is not supported by the importer (only "
                                "'gpt2', byte-level BPE: SmolLM, Llama-3, Qwen2 files)")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  merges = _field(reader, "tokenizer.ggml.merges")
  if not tokens or not merges:
    raise CheckpointFormatError(f"{path}: the GGUF metadata has no tokenizer.ggml.tokens / merges")
  types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
  vocab = {tok: i for i, tok in enumerate(tokens)}
  bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False,
                   byte_fallback=False)
  backend = Tokenizer(bpe)
  backend.pre_tokenizer = _pre_tokenizer(_field(reader, "tokenizer.ggml.pre", ""))
  backend.decoder = decoders.ByteLevel()
  add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
  bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
  backend.post_processor = processors.ByteLevel(trim_offsets=False)
  if add_bos and bos_id is not None:  # llama.cpp prepends BOS to every encoded text
    bos = (tokens[int(bos_id)], int(bos_id))
    backend.post_processor = processors.Sequence([
        backend.post_processor,
        processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos])])
  backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                              for t, ty in zip(tokens, types) if ty == CONTROL])
  backend.add_tokens([AddedToken(t, normalized=False, special=False)
                      for t, ty in zip(tokens, types) if ty == USER_DEFINED])
  special = {}
  for name, key in _SPECIAL_IDS.items():
    i = _field(reader, f"tokenizer.ggml.{key}")
    if i is not None:
      special[name] = tokens[int(i)]
  return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=_field(reader, "tokenizer.chat_template"),
                                 **special)

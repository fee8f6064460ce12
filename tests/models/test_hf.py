"""HF interop: logits match transformers' PyTorch models; save_hf loads in transformers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import models
from tests.tolerances import fp32_atol

transformers = pytest.importorskip("transformers")



def _tol(reference):
  """Two fp32 implementations (XLA vs PyTorch) of 2 layers + head reducing over <= 128 terms."""
  return fp32_atol(reference, reduction=128, depth=3)

COMMON = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              initializer_range=0.2, rms_norm_eps=1e-5)


def _torch_model(torch, kind, **kw):
  torch.manual_seed(0)
  cfg_cls, model_cls = {
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
      "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
      "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
  }[kind]
  model = model_cls(cfg_cls(**{**COMMON, **kw})).eval()
  with torch.no_grad():  # HF initialises biases and norms to constants: randomise them
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(torch.randn_like(p) * 0.3)
  return model


def _torch_logits(torch, model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


TOKENS = np.random.RandomState(0).randint(0, 101, size=(2, 12))

CASES = {
    "llama_gqa_llama3_rope": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}, eos_token_id=[2, 3])),
    "qwen2_bias_tied": ("qwen2", dict(tie_word_embeddings=True, eos_token_id=None)),
    "mistral_sliding_window": ("mistral", dict(sliding_window=4)),
    "llama_linear_rope_mha": ("llama", dict(num_key_value_heads=4, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_hf_matches_transformers_logits(torch, tmp_path, case):
  kind, kw = CASES[case]
  ref = _torch_model(torch, kind, **kw)
  ref.save_pretrained(tmp_path)
  model = models.load_hf(tmp_path)
  assert model.config.architecture == kind
  ours = np.asarray(model(jnp.asarray(TOKENS)))
  theirs = _torch_logits(torch, ref, TOKENS)
  np.testing.assert_allclose(ours, theirs, atol=_tol(theirs), rtol=0)


def test_eos_and_bos_come_from_the_config(torch, tmp_path):
  _torch_model(torch, "llama", eos_token_id=[2, 3], bos_token_id=1).save_pretrained(tmp_path / "a")
  _torch_model(torch, "qwen2", eos_token_id=None, bos_token_id=None).save_pretrained(tmp_path / "b")
  a, b = models.load_hf(tmp_path / "a"), models.load_hf(tmp_path / "b")
  assert a.config.eos_token_ids == (2, 3) and a.config.bos_token_id == 1
  assert b.config.eos_token_ids == () and b.config.bos_token_id is None


def test_sharded_safetensors_index_loads(torch, tmp_path):
  ref = _torch_model(torch, "llama")
  ref.save_pretrained(tmp_path, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  ours = np.asarray(models.load_hf(tmp_path)(jnp.asarray(TOKENS)))
  theirs = _torch_logits(torch, ref, TOKENS)
  np.testing.assert_allclose(ours, theirs, atol=_tol(theirs), rtol=0)


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": True, "tie_embeddings": True,
                                            "architecture": "qwen2"},
                                       {"architecture": "mistral", "sliding_window": 5}])
def test_save_hf_round_trip_through_transformers(torch, tmp_path, overrides):
  cfg = models.preset("tiny", 101, eos_token_ids=(7,), bos_token_id=1, **overrides)
  model = models.create(cfg, seed=3)
  models.save_hf(model, tmp_path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
  ours = np.asarray(model(jnp.asarray(TOKENS)))
  np.testing.assert_allclose(_torch_logits(torch, ref, TOKENS), ours, atol=_tol(ours), rtol=0)
  again = models.load_hf(tmp_path)
  assert again.config == cfg
  np.testing.assert_allclose(np.asarray(again(jnp.asarray(TOKENS))), ours, atol=1e-6)


def test_bf16_load_keeps_bf16_params(torch, tmp_path):
  _torch_model(torch, "llama").to(torch.bfloat16).save_pretrained(tmp_path)
  model = models.load_hf(tmp_path, dtype=jnp.bfloat16)
  assert model.embed[...].dtype == jnp.bfloat16
  assert bool(jnp.isfinite(model(jnp.asarray(TOKENS))).all())


def test_unsupported_architecture_is_named(tmp_path):
  cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50)
  cfg.architectures = ["GPT2LMHeadModel"]
  cfg.save_pretrained(tmp_path)
  with pytest.raises(models.CheckpointFormatError, match="GPT2LMHeadModel"):
    models.load_hf(tmp_path)


def test_missing_tensor_is_named(torch, tmp_path):
  from safetensors.numpy import load_file, save_file
  _torch_model(torch, "llama").save_pretrained(tmp_path)
  file = tmp_path / "model.safetensors"
  tensors = load_file(file)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(models.CheckpointFormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    models.load_hf(tmp_path)


def test_shape_mismatch_is_named(torch, tmp_path):
  _torch_model(torch, "llama").save_pretrained(tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["intermediate_size"] = 48
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(models.CheckpointFormatError, match="gate_proj.*shape"):
    models.load_hf(tmp_path)


def test_wrong_path_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    models.load_hf(tmp_path / "nope")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_named(tmp_path, damage):
  models.save_hf(models.create(models.preset("micro", 64)), tmp_path)
  file = tmp_path / "model.safetensors"
  if damage == "truncate":
    with open(file, "r+b") as fh:
      fh.truncate(file.stat().st_size // 2)
  else:
    file.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
  with pytest.raises(models.CheckpointFormatError, match=f"{file} is not a readable safetensors file"):
    models.load_hf(tmp_path)


def test_corrupt_config_json_is_named(tmp_path):
  models.save_hf(models.create(models.preset("micro", 64)), tmp_path)
  (tmp_path / "config.json").write_text("{ not json")
  with pytest.raises(models.CheckpointFormatError, match="config.json is not a readable"):
    models.load_hf(tmp_path)

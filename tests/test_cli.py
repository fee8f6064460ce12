"""Every documented command line, run as a user runs it: a subprocess on the micro world.

`data.prepare`, `train` (with model-shape overrides from the command line), `decode
--chat` and `evaluate` must exit 0 without library INFO logs; user errors must print one
line naming the problem, exit non-zero and show no traceback (unless --verbose).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from specdistill_jax import sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d", re.M)  # absl's INFO format


def run_cli(*args, timeout=240):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def assert_ok(proc):
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
  assert not INFO_LINE.search(proc.stderr + proc.stdout), "library INFO logs leaked:\n" + proc.stderr[:1500]


def assert_one_line_error(proc, match):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and re.search(match, errors[0]), proc.stderr[-2000:]


def test_prepare_cli(tmp_path):
  proc = run_cli("specdistill_jax.data.prepare", f"--data_dir={tmp_path}", "--corpora=function_calling",
                 "--config=small", "--vocab_size=400", "--tokenizer_chars=50000")
  assert_ok(proc)
  assert "data ready" in proc.stdout and os.path.exists(tmp_path / "tokenizer" / "tokenizer.json")


def test_train_cli_overrides_every_model_field_from_the_command_line(small_data, tmp_path):
  proc = run_cli("specdistill_jax.train", "--config=configs/distill.py:micro", f"--workdir={tmp_path}",
                 f"--config.data_dir={small_data[0]}", "--config.train.steps=2", "--config.train.eval_every=0",
                 "--config.data.source=fixed", "--config.draft.overrides.d_model=48",
                 "--config.draft.overrides.num_layers=2", "--config.draft.overrides.mlp_dim=96",
                 "--config.draft.overrides.rope_theta=500000.0", "--config.draft.overrides.tie_embeddings=True",
                 "--config.draft.param_dtype=bfloat16")
  assert_ok(proc)
  hf = json.load(open(tmp_path / "hf" / "config.json"))
  assert (hf["hidden_size"], hf["num_hidden_layers"], hf["intermediate_size"]) == (48, 2, 96)
  assert hf["tie_word_embeddings"] and hf["rope_parameters"]["rope_theta"] == 500000.0
  assert hf["dtype"] == "bfloat16"


def test_train_cli_rejects_overrides_of_a_loaded_model(small_data, tmp_path, micro_world):
  proc = run_cli("specdistill_jax.train", "--config=configs/distill.py:micro", f"--workdir={tmp_path}",
                 f"--config.data_dir={small_data[0]}",
                 f"--config.draft.hf_path={micro_world}/world/draft_generic/hf",
                 "--config.draft.overrides.d_model=48")
  assert_one_line_error(proc, r"draft.overrides \['d_model'\] apply to presets only")


def _world(micro_world, name):
  return str(micro_world / "world" / name / "hf")


def test_decode_chat_cli(micro_world, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("Write a haiku about caches.\n\nWhat is 2 + 2?\n")
  proc = run_cli("specdistill_jax.decode", "--target", _world(micro_world, "target_general"),
                 "--draft", _world(micro_world, "draft_generic"), "--prompts", str(prompts), "--chat",
                 "--max_new_tokens", "4", "--tree", "2:2:3")
  assert_ok(proc)
  assert "--- [1]" in proc.stdout and "speculative tokens/s" in proc.stdout and "speedup" in proc.stdout
  assert "tree nodes verified per round  3.0" in proc.stdout


def test_decode_tree_flag_is_checked():
  from specdistill_jax.decode import parse_tree
  assert parse_tree("4:2:8") == sampling.TreeSpec(4, 2, 8) and parse_tree(None) is None
  with pytest.raises(ValueError, match="--tree='4:2' must be depth:top_k:num_nodes"):
    parse_tree("4:2")


def test_evaluate_cli(micro_world, small_data):
  proc = run_cli("specdistill_jax.evaluate", "--target", _world(micro_world, "target_general"),
                 "--draft", _world(micro_world, "draft_generic"), "--corpus", "sharegpt_chat",
                 f"--data_dir={small_data[0]}", "--corpus_config=small", "--num_prompts=2",
                 "--max_new_tokens=4", "--gamma=2")
  assert_ok(proc)
  result = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert 0.0 <= result["alpha"] <= 1.0 and result["tau"] >= 1.0


@pytest.mark.parametrize("case", ["binary", "empty", "missing_model"])
def test_decode_user_errors_are_one_line(micro_world, tmp_path, case):
  prompts = tmp_path / "prompts.txt"
  target = _world(micro_world, "target_general")
  prompts.write_bytes({"binary": b"\xff\xfe\x00\x81garbage\n", "empty": b"\n\n",
                       "missing_model": b"[1, 2, 3]\n"}[case])
  if case == "missing_model":
    target = str(tmp_path / "no_such_model")
  match = {"binary": "not UTF-8 text", "empty": "no prompts in", "missing_model": "no_such_model"}[case]
  proc = run_cli("specdistill_jax.decode", "--target", target, "--draft", _world(micro_world, "draft_generic"),
                 "--prompts", str(prompts), "--max_new_tokens", "2")
  assert_one_line_error(proc, match)


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"), (b"[1, 2,\n", "line 1 of .* not a JSON list"),
    (b"hello\n[1, 2.5]\n", "line 2 of .* integer token ids"), (b"text\n", "no tokenizer was found")])
def test_prompts_file_errors_name_the_problem(tmp_path, content, match):
  from specdistill_jax.decode import read_prompts
  path = tmp_path / "prompts.txt"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    read_prompts(str(path), None if b"text" in (content or b"") else _FakeTokenizer(), chat=False)


class _FakeTokenizer:
  def encode(self, text, add_special_tokens=False):
    return [ord(c) % 50 for c in text]


def test_verbose_shows_the_traceback(tmp_path):
  proc = run_cli("specdistill_jax.decode", "--target", str(tmp_path), "--draft", str(tmp_path),
                 "--prompts", str(tmp_path / "missing.txt"), "--verbose")
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_decode_chat_prints_answers_without_the_end_of_turn_token(real_target, tmp_path):
  """SmolLM2 ends every answer with <|im_end|> (its eos): the printed text skips special tokens."""
  from specdistill_jax import models
  models.save_hf(models.first_layers(models.load_hf(real_target), 1), str(tmp_path / "cut"))
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("What is the capital of France? Answer in three words.\n")
  proc = run_cli("specdistill_jax.decode", "--target", real_target, "--draft", str(tmp_path / "cut"),
                 "--prompts", str(prompts), "--chat", "--max_new_tokens", "24", "--gamma", "2", "--nobaseline")
  assert_ok(proc)
  answer = proc.stdout.split("--- [0] ", 1)[1].split("\n")[0]
  assert "Paris" in answer and "<|im_end|>" not in proc.stdout and "<|im_start|>" not in proc.stdout

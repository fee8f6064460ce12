"""`function_calling`: a deterministic synthetic tool-use domain over standard-library APIs.

Tools are public functions of a fixed list of standard-library modules that
have a signature, a docstring and no positional-only parameters (so every
JSON call is executable as fn(**arguments)). Each example is a user request in words
(templates that name the function, or only describe it by its docstring's
first sentence, with argument values spelled out) -> the JSON call
{"name": "module.function", "arguments": {...}}. Argument names always come
from the real signature; values are drawn by a seeded RNG from the default's
type or the parameter's name. `documentation` (signature + docstring summary)
is the domain's curated text. Splits are by example.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
from typing import Iterator, Optional

import tensorflow_datasets as tfds

from specdistill_jax.data.builder import CorpusBuilder

MODULES = ("math", "statistics", "textwrap", "os.path", "json", "calendar", "operator", "shutil",
           "glob", "fnmatch", "difflib", "html", "urllib.parse", "base64", "binascii", "zlib",
           "functools", "heapq", "bisect", "re", "uuid", "secrets", "ipaddress", "unicodedata",
           "platform", "shlex", "locale", "gzip", "tarfile", "tempfile", "pprint", "struct",
           "codecs", "hashlib", "socket", "urllib.request", "email.utils", "mimetypes")
EXAMPLES_PER_TOOL = 32
WORDS = ("report", "alpha", "config", "summer", "data", "ledger", "harbor", "orange", "signal",
         "matrix", "garden", "photo", "budget", "rocket", "letter", "spring", "module", "token")
NUMBER_NAMES = {"x", "y", "a", "b", "n", "k", "i", "j", "number", "value", "start", "stop", "step",
                "size", "width", "count", "level", "base", "year", "month", "day", "p", "q", "exp",
                "ndigits", "lo", "hi", "length", "mode", "port", "bufsize", "compresslevel"}
STRING_NAMES = {"s", "string", "text", "pattern", "sep", "prefix", "suffix", "encoding", "errors",
                "word", "repl", "chars", "host", "hostname", "name", "address", "key", "msg"}
LIST_NAMES = {"data", "iterable", "seq", "items", "a_list", "list", "sequence", "values", "heap",
              "xs", "words", "iterables", "weights"}
PATH_HINTS = ("path", "file", "dir", "src", "dst", "root")
TEMPLATES = (
    "Call {name} with {args}.",
    "Use {name} to {summary}. Arguments: {args}.",
    "{Summary}, with {args}.",
    "I need to {summary}: {args}. Make the function call.",
    "Please run {short} from the {module} module on {args}.",
    "Invoke {name} ({args}).",
)


def tools() -> list[tuple[str, object, inspect.Signature, str]]:
  """(qualified name, function, signature, docstring) of every tool, in a fixed order."""
  out = []
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    for attr in sorted(dir(module)):
      if attr.startswith("_"):
        continue
      fn = getattr(module, attr)
      if not (inspect.isfunction(fn) or inspect.isbuiltin(fn)):
        continue
      doc = inspect.getdoc(fn)
      try:
        sig = inspect.signature(fn)
      except (ValueError, TypeError):
        continue
      kinds = {p.kind for p in sig.parameters.values()}
      params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
      if doc and params and inspect.Parameter.POSITIONAL_ONLY not in kinds:  # callable by keyword
        out.append((f"{module_name}.{attr}", fn, sig, doc))
  return out


def summary(doc: str) -> str:
  first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
  first = first.split(". ")[0].rstrip(".")
  return first[:160]


def value_for(param: inspect.Parameter, rng: random.Random):
  d = param.default
  name = param.name.lower()
  if isinstance(d, bool):
    return rng.random() < 0.5
  if isinstance(d, int) and d is not inspect.Parameter.empty:
    return rng.randint(0, 64)
  if isinstance(d, float):
    return round(rng.uniform(0, 10), 2)
  if isinstance(d, str):
    return rng.choice(WORDS)
  if any(h in name for h in PATH_HINTS):
    return f"/data/{rng.choice(WORDS)}_{rng.randint(1, 99)}.txt"
  if "url" in name:
    return f"https://example.com/{rng.choice(WORDS)}?id={rng.randint(1, 999)}"
  if name in LIST_NAMES:
    return [rng.randint(1, 50) for _ in range(rng.randint(2, 5))]
  if name in NUMBER_NAMES:
    return rng.randint(1, 100) if rng.random() < 0.6 else round(rng.uniform(0, 100), 2)
  if name in STRING_NAMES:
    return rng.choice(WORDS)
  return rng.choice(WORDS)


def _spell(args: dict, rng: random.Random) -> str:
  joiner = rng.choice((" = ", " set to ", ": "))
  parts = [f"{k}{joiner}{json.dumps(v)}" for k, v in args.items()]
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def tool_examples(limit: Optional[int] = None, seed: int = 0) -> Iterator:
  count = 0
  for name, _, sig, doc in tools():
    module, short = name.rsplit(".", 1)
    summ = summary(doc)
    documentation = f"{name}{sig}\n{doc.strip().split(chr(10) * 2)[0]}"
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p for p in params if p.default is inspect.Parameter.empty]
    optional = [p for p in params if p.default is not inspect.Parameter.empty]
    for i in range(EXAMPLES_PER_TOOL):
      if limit is not None and count >= limit:
        return
      rng = random.Random(f"{seed}:{name}:{i}")
      chosen = list(required[:4])
      if optional and (rng.random() < 0.5 or not chosen):
        chosen.append(rng.choice(optional))
      args = {p.name: value_for(p, rng) for p in chosen}
      template = TEMPLATES[rng.randrange(len(TEMPLATES))]
      s = summ[:1].lower() + summ[1:]
      prompt = template.format(name=name, short=short, module=module, summary=s,
                               Summary=summ[:1].upper() + summ[1:], args=_spell(args, rng))
      response = json.dumps({"name": name, "arguments": args})
      count += 1
      key = f"{name}#{i}"
      yield key, key, dict(id=key, prompt=prompt, response=response, function=name,
                           documentation=documentation)


class FunctionCalling(CorpusBuilder):
  """Synthetic tool use: a request in words -> a JSON call of a standard-library function."""

  FEATURES = dict(id=tfds.features.Text(), prompt=tfds.features.Text(),
                  response=tfds.features.Text(), function=tfds.features.Text(),
                  documentation=tfds.features.Text())

  def records(self, limit):
    return tool_examples(limit=limit)

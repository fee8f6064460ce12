"""`python_code`: the running interpreter's standard library, one example per top-level def/class.

Curated domain text for the code domain (documents, no prompts). Test suites,
IDLE and site-packages are left out. Splits are by module, so a module's
functions never straddle train and test. A source file that cannot be read or
parsed raises `DataSourceError` naming it.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from typing import Iterator, Optional

import tensorflow_datasets as tfds

from specdistill_jax.data.builder import CorpusBuilder, DataSourceError

SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "__pycache__", "lib2to3"}


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def module_files(root: str) -> list[tuple[str, str]]:
  """Sorted (module name, path) of the .py files under root, minus SKIP_DIRS."""
  files = []
  for d, dirs, names in os.walk(root):
    dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
    for name in sorted(names):
      if name.endswith(".py"):
        path = os.path.join(d, name)
        rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        files.append((rel.removesuffix(".__init__"), path))
  return sorted(files)


def definitions(path: str) -> list[tuple[str, str, str]]:
  """(name, 'function' | 'class', source) of each top-level definition in a file."""
  try:
    with open(path, encoding="utf-8") as fh:
      source = fh.read()
    tree = ast.parse(source, filename=path)
  except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
    raise DataSourceError(f"cannot read or parse Python source {path!r}: {type(e).__name__}: {e}") from e
  lines = source.splitlines()
  out = []
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
      code = "\n".join(lines[start:node.end_lineno]).strip("\n")
      kind = "class" if isinstance(node, ast.ClassDef) else "function"
      if code.strip():
        out.append((node.name, kind, code))
  return out


def code_examples(root: Optional[str] = None, limit: Optional[int] = None) -> Iterator:
  count = 0
  for module, path in module_files(root or stdlib_root()):
    for i, (name, kind, code) in enumerate(definitions(path)):
      if limit is not None and count >= limit:
        return
      count += 1
      yield f"{module}.{name}#{i}", module, dict(module=module, name=name, kind=kind, code=code)


class PythonCode(CorpusBuilder):
  """Top-level functions and classes of the Python standard library (source text)."""

  FEATURES = dict(module=tfds.features.Text(), name=tfds.features.Text(),
                  kind=tfds.features.Text(), code=tfds.features.Text())

  def records(self, limit):
    return code_examples(limit=limit)

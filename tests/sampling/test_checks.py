"""Bad decoding input fails on the host, before anything compiles, with the value and the fix.

JAX clamps an out-of-range index in a gather, so an unchecked token id >= vocab_size
would silently decode garbage; these checks are the only thing standing in between.
"""

import jax
import numpy as np
import pytest

from specdistill_jax import sampling
from specdistill_jax.sampling import compiled
from tests.sampling.helpers import tiny

PROMPTS = [[1, 5, 9], [2, 4]]
BAD = [
    (dict(prompts=[[1, 97]]), r"prompt 0 has token id 97 at position 1, outside \[0, vocab_size=97\)"),
    (dict(prompts=[[3], [-1, 2]]), r"prompt 1 has token id -1"),
    (dict(prompts=[[1.5, 2.0]]), r"prompt 0 must be a list of integer token ids; got float64"),
    (dict(prompts=[[True, False]]), r"prompt 0 must be a list of integer token ids; got bool"),
    (dict(prompts=np.ones((2, 3), np.float32), lengths=[3, 2]), r"integer token ids; got dtype float32"),
    (dict(prompts="hello"), r"not text"),
    (dict(temperature=float("inf")), r"temperature=inf must be a finite number"),
    (dict(temperature=float("nan")), r"temperature=nan must be a finite number"),
    (dict(temperature="hot"), r"temperature='hot' must be a number"),
    (dict(rng="abc"), r"rng='abc' must be an int seed or a key"),
    (dict(rng=1.5), r"rng=1.5 must be an int seed"),
    (dict(rng=jax.random.split(jax.random.PRNGKey(0), 3)), r"must be an int seed or a key"),
]


@pytest.fixture
def no_compilation(monkeypatch):
  def refuse(self, *args):
    raise AssertionError("a decoding program was compiled/run despite bad input")
  monkeypatch.setattr(compiled.CompiledProgram, "__call__", refuse)


@pytest.mark.parametrize("kwargs,match", BAD)
def test_generate_rejects_bad_input_before_compiling(no_compilation, kwargs, match):
  args = dict(prompts=PROMPTS, max_new_tokens=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.generate(tiny(), **args)


@pytest.mark.parametrize("kwargs,match", BAD)
def test_speculative_generate_rejects_bad_input_before_compiling(no_compilation, kwargs, match):
  args = dict(prompts=PROMPTS, max_new_tokens=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.speculative_generate(tiny(), tiny(preset="micro"), **args)


def test_every_documented_rng_form_works_and_seeds_agree():
  model = tiny()
  outs = [sampling.generate(model, PROMPTS, 5, temperature=1.0, rng=rng)
          for rng in (7, np.int64(7), jax.random.PRNGKey(7), jax.random.key(7))]
  assert all(o == outs[0] for o in outs)
  padded = np.asarray([[1, 5, 9], [2, 4, 0]], np.int32)
  assert sampling.generate(model, padded, 5, lengths=[3, 2]) == sampling.generate(model, PROMPTS, 5)

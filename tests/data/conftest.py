"""One small build of every bundled corpus and a small tokenizer, shared by the data tests."""

import pytest


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
  from specdistill_jax.data import prepare
  data_dir = str(tmp_path_factory.mktemp("data"))
  chat, stats, _ = prepare.prepare(data_dir, list(prepare.corpora.BUNDLED), "small", vocab_size=1024,
                                   tokenizer_chars=300_000)
  return data_dir, chat, stats

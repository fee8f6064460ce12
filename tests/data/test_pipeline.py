"""Pipeline: deterministic batches, exact resume, process slices, packing."""

import numpy as np
import pytest

from specdistill_jax import data
from specdistill_jax.data import BatchPipeline


@pytest.fixture(scope="module")
def source(small_data):
  return data.load("sharegpt_chat", "train", small_data[0], "small")


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_resume_at_step_k_sees_the_same_batches(small_data, source, mode):
  kw = dict(batch_size=4, max_len=64, seed=3, mode=mode)
  through = BatchPipeline(source, small_data[1], **kw)
  run = [b for _, b in zip(range(6), through)]
  resumed = BatchPipeline(source, small_data[1], **kw).iterate(4)
  for want in run[4:]:
    got = next(resumed)
    for k in data.BATCH_FIELDS:
      np.testing.assert_array_equal(got[k], want[k])


def test_epochs_reshuffle_and_seed_matters(small_data):
  src = data.TextSource.from_pairs([(f"q{i}", f"a{i}") for i in range(8)])
  p = BatchPipeline(src, small_data[1], batch_size=4, max_len=32, seed=0)
  order = [p.example_index(i) for i in range(16)]
  assert sorted(order[:8]) == list(range(8)) and sorted(order[8:]) == list(range(8))
  assert order[:8] != order[8:]
  q = BatchPipeline(src, small_data[1], batch_size=4, max_len=32, seed=1)
  assert [q.example_index(i) for i in range(8)] != order[:8]


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_process_slices_make_the_global_batch(small_data, source, mode):
  kw = dict(batch_size=8, max_len=64, seed=0, mode=mode)
  whole = BatchPipeline(source, small_data[1], **kw).batch(2)
  parts = [BatchPipeline(source, small_data[1], process_index=i, process_count=2, **kw).batch(2)
           for i in range(2)]
  for k in data.BATCH_FIELDS:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_pad_batches_mask_responses_only(small_data, source):
  chat = small_data[1]
  b = BatchPipeline(source, chat, batch_size=4, max_len=96, seed=0).batch(0)
  for r in range(4):
    plen, n = b["prompt_lengths"][r], b["lengths"][r]
    assert b["tokens"][r, plen - 1] == chat.newline[-1]
    assert b["loss_mask"][r, :plen].sum() == 0 and b["loss_mask"][r, plen:n].all()
    assert b["loss_mask"][r, n:].sum() == 0 and (b["segment_ids"][r, :n] == 1).all()


def test_packing_keeps_segments_apart_and_within_length(small_data, source):
  b = BatchPipeline(source, small_data[1], batch_size=4, max_len=128, seed=0, mode="pack",
                    pack_factor=8).batch(0)
  assert (b["lengths"] <= 128).all() and b["segment_ids"].max() > 1
  for r in range(4):
    seg, pos = b["segment_ids"][r], b["positions"][r]
    starts = np.nonzero((seg > 0) & (pos == 0))[0]
    assert len(starts) == seg.max()  # each segment starts at position 0
    assert (b["tokens"][r, starts] == small_data[1].bos).all()

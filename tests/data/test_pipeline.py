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


def test_whole_conversations_train_every_answer_with_its_context(small_data):
  """data.unit='conversation': the turns of one ShareGPT conversation, in order, every answer masked in."""
  chat = small_data[1]
  convs = data.corpora.load_conversations("sharegpt_chat", "train", small_data[0], "small")
  turns = data.load("sharegpt_chat", "train", small_data[0], "small")
  assert 0 < len(convs) < len(turns)  # conversations regroup the turns
  assert sum(len(convs[i]) for i in range(len(convs))) == len(turns)
  multi = next(i for i in range(len(convs)) if len(convs[i]) >= 2)
  conv = convs[multi]
  tokens, mask, first = chat.conversation_example(conv, max_len=100_000)
  # the tokens are the chat template of the whole conversation, answers closed by the end token
  messages = [m for p, r in conv for m in ({"role": "user", "content": p}, {"role": "assistant", "content": r})]
  assert tokens.tolist()[:first] == chat.prompt_ids(conv[0][0])
  assert tokens.tolist() == chat.conversation_ids(messages)[:len(tokens)]
  answers = [chat.response_ids(r) for _, r in conv]
  assert mask.sum() == sum(map(len, answers))
  runs = np.split(tokens[mask > 0], np.cumsum([len(a) for a in answers])[:-1])
  assert [r.tolist() for r in runs] == answers  # each answer, in order, nothing else
  # a later answer sees the earlier turns: its context holds the first answer's tokens
  second = np.nonzero(mask)[0][len(answers[0])]
  assert mask[:second].sum() == len(answers[0]) and mask[second - 1] == 0
  # cut at max_len: the mask stays aligned with the tokens
  cut, cut_mask, cut_first = chat.conversation_example(conv, max_len=first + 3)
  assert len(cut) == first + 3 and cut_mask.tolist() == [0.0] * first + [1.0] * 3 and cut_first == first
  b = BatchPipeline(convs, chat, batch_size=2, max_len=256, seed=0, mode="pack", pack_factor=4).batch(0)
  assert b["loss_mask"].sum() > 0 and (b["lengths"] <= 256).all()


def test_conversation_unit_refuses_corpora_without_conversations(small_data):
  with pytest.raises(ValueError, match="has no conversations"):
    data.corpora.load_conversations("math_word_problems", "train", small_data[0], "small")


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_unique_data_counts_each_placed_example_once(small_data, mode):
  # 6 pairs, each short enough to fit: over 5 steps of 4 rows every pair is seen, most twice or more
  src = data.TextSource.from_pairs([(f"question {i}", "answer " * (i + 1)) for i in range(6)])
  p = BatchPipeline(src, small_data[1], batch_size=4, max_len=64, seed=0, mode=mode, pack_factor=2)
  for step in range(5):  # placed() names exactly the examples whose loss tokens the batch holds
    assert p.batch(step)["loss_mask"].sum() == sum(p.encode(i)[1].sum() for i in p.placed(step))
  seen_twice = sum(p.batch(s)["loss_mask"].sum() for s in range(5))
  examples, tokens = p.unique_loss_tokens(5)
  assert examples == 6 and tokens == sum(p.encode(i)[1].sum() for i in range(6)) < seen_twice
  assert p.unique_loss_tokens(1)[0] == len(set(p.placed(0))) <= (4 if mode == "pad" else 6)

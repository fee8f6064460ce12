"""Every data source yields batches of the right shapes, with the loss on responses only."""

import os

import numpy as np
import pytest

from specdistill_jax.data import BATCH_FIELDS
from specdistill_jax.distill import components, teacher_cache
from tests.distill.helpers import micro_config

CASES = [("fixed", False, "online"), ("teacher_offline", False, "topk"), ("teacher_offline", True, "tokens"),
         ("teacher_online", False, "online"), ("teacher_online", True, "tokens"), ("on_policy", False, "online"),
         ("mixture", False, "online")]


@pytest.mark.parametrize("source,black_box,teacher", CASES)
def test_source_batches_have_shapes_and_response_masks(small_data, tmp_path, source, black_box, teacher):
  cfg = micro_config(small_data[0], source, "ce" if black_box else "fkl", black_box=black_box)
  parts = components.build(cfg, str(tmp_path))
  assert parts.source.teacher == teacher
  batch = parts.source.batch(3, parts.draft)
  b, t = cfg.data.batch_size, cfg.data.max_len
  for k in BATCH_FIELDS:
    assert batch[k].shape[0] == b
  assert batch["tokens"].shape == batch["loss_mask"].shape == (b, t)
  if teacher == "topk":
    assert batch["topk_values"].shape == batch["topk_indices"].shape == (b, t, cfg.data.top_k)
  else:
    assert "topk_values" not in batch
  chat = parts.chat
  for r in range(b):
    plen, n = int(batch["prompt_lengths"][r]), int(batch["lengths"][r])
    assert 0 < plen < n <= t
    assert batch["loss_mask"][r, :plen].sum() == 0 and batch["loss_mask"][r, n:].sum() == 0
    assert batch["loss_mask"][r, plen:n].all()
    marker = [chat.assistant] + chat.newline
    assert list(batch["tokens"][r, plen - len(marker):plen]) == marker  # prompt ends at the marker
  again = parts.source.batch(3, parts.draft)
  np.testing.assert_array_equal(again["tokens"], batch["tokens"])  # deterministic in the step


def test_mixture_rows_split_by_lambda(small_data, tmp_path):
  cfg = micro_config(small_data[0], "mixture", mixture_lambda=0.5)
  parts = components.build(cfg, str(tmp_path))
  mixed = parts.source.batch(2, parts.draft)
  fixed = parts.source.other.batch(2)
  np.testing.assert_array_equal(mixed["tokens"][2:], fixed["tokens"][2:])  # the rest: ground truth
  np.testing.assert_array_equal(mixed["prompt_lengths"][:2], fixed["prompt_lengths"][:2])  # same prompts
  assert not np.array_equal(mixed["tokens"][:2], fixed["tokens"][:2])  # but draft-written responses


def test_mixture_schedules_warm_start_from_target_generated_data(small_data, tmp_path):
  from specdistill_jax.distill import sources
  assert [sources.mixture_schedule("linear", 1.0, 5)(i) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert [sources.mixture_schedule("step", 0.5, 4, 0.5)(i) for i in range(4)] == [0.0, 0.0, 0.5, 0.5]
  with pytest.raises(ValueError, match="schedule 'cosine'"):
    sources.mixture_schedule("cosine", 0.5, 4)
  # warm start: target-generated rows for the first half of the run, then every row on-policy
  cfg = micro_config(small_data[0], "mixture", steps=4, mixture_lambda=1.0, mixture_schedule="step",
                     mixture_other="teacher_online", on_policy_temperature=0.5)
  parts = components.build(cfg, str(tmp_path))
  assert parts.source.on_policy.temperature == 0.5 and parts.source.other.temperature == 1.0
  assert [parts.source.rows_on_policy(i) for i in range(4)] == [0, 0, 4, 4]
  np.testing.assert_array_equal(parts.source.batch(1, parts.draft)["tokens"], parts.source.other.batch(1)["tokens"])
  late = parts.source.batch(3, parts.draft)
  np.testing.assert_array_equal(late["tokens"], parts.source.on_policy.batch(3, parts.draft)["tokens"])
  assert not np.array_equal(late["tokens"], parts.source.other.batch(3)["tokens"])
  cfg.data.mixture_other = "replay"
  with pytest.raises(ValueError, match="mixture_other='replay'"):
    components.build(cfg, str(tmp_path / "bad"))


def test_offline_cache_records_settings_and_costs_o_k(small_data, tmp_path):
  cfg = micro_config(small_data[0], "teacher_offline", gen_temperature=0.7)
  parts = components.build(cfg, str(tmp_path))
  meta = parts.source.cache.meta
  assert meta["temperature"] == 0.7 and meta["max_new_tokens"] == 12 and meta["top_k"] == 8
  assert parts.eval_temperature == 0.7  # evaluation reuses the generation temperature
  assert meta["bytes_per_token"] == 5 + 8 * (4 + 2) + 4
  assert meta["full_logits_bytes_per_token"] == 4 * parts.chat.vocab_size
  # a second build with the same settings reuses it; other settings are refused
  mtime = os.path.getmtime(os.path.join(tmp_path, "teacher_cache", "tokens.npy"))
  components.build(cfg, str(tmp_path))
  assert os.path.getmtime(os.path.join(tmp_path, "teacher_cache", "tokens.npy")) == mtime
  cfg.data.gen_temperature = 1.0
  with pytest.raises(ValueError, match="other settings"):
    components.build(cfg, str(tmp_path))


def test_top_k_cache_matches_the_target(small_data, tmp_path):
  cfg = micro_config(small_data[0], "teacher_offline")
  parts = components.build(cfg, str(tmp_path))
  batch = parts.source.batch(0)
  import jax.numpy as jnp
  logits = np.asarray(parts.target(jnp.asarray(batch["tokens"]), positions=jnp.asarray(batch["positions"]),
                                   segment_ids=jnp.asarray(batch["segment_ids"])))
  r, i = 0, int(batch["prompt_lengths"][0])
  np.testing.assert_allclose(batch["topk_values"][r, i], np.sort(logits[r, i])[::-1][:8], rtol=1e-5)
  np.testing.assert_allclose(batch["log_normalizer"][r, i], np.log(np.exp(logits[r, i]).sum()), rtol=1e-5)


def test_sequences_from_generation_masks_generated_part_only():
  out = teacher_cache.sequences_from_generation([[1, 2, 3], [4]], np.array([[7, 8, 0], [9, 0, 0]]),
                                                np.array([2, 1]), max_len=6, pad_id=0)
  np.testing.assert_array_equal(out["tokens"], [[1, 2, 3, 7, 8, 0], [4, 9, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["lengths"], [5, 2])


def test_teacher_cache_build_resumes_after_a_kill_and_keeps_prompt_order(tmp_path):
  """A build killed mid-way regenerates only the missing batches, and equals an uninterrupted build."""
  from specdistill_jax import models
  from specdistill_jax.sampling import generate_batch
  target = models.create(models.preset("tiny", vocab_size=97), seed=0)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 97, size=int(n)).tolist() for n in rng.integers(2, 20, size=11)]
  settings = dict(max_len=40, max_new_tokens=6, temperature=1.0, top_k=4, batch_size=3, seed=5)
  calls = []

  def generate(model, chunk, *args, **kw):
    calls.append([list(p) for p in chunk])
    if len(calls) == 3 and kill[0]:
      raise KeyboardInterrupt("killed")
    return generate_batch(model, chunk, *args, **kw)

  kill = [True]
  out = str(tmp_path / "cache")
  with pytest.raises(KeyboardInterrupt):
    teacher_cache.build_teacher_cache(out, target, prompts, generate=generate, **settings)
  assert not os.path.exists(out) and len(os.listdir(out + ".incomplete")) == 3  # 2 batches + settings
  kill[0], calls[:] = False, []
  teacher_cache.build_teacher_cache(out, target, prompts, generate=generate, **settings)
  assert len(calls) == 2  # batches 3 and 4 of 4 (11 prompts, 3 a batch): nothing generated twice
  assert not os.path.exists(out + ".incomplete")
  whole = str(tmp_path / "whole")
  teacher_cache.build_teacher_cache(whole, target, prompts, **settings)
  a, b = teacher_cache.TeacherCache(out), teacher_cache.TeacherCache(whole)
  for name in a.arrays:
    np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
  for i, p in enumerate(prompts):  # row i is prompt i, whatever batch its length put it in
    assert a.arrays["tokens"][i, :len(p)].tolist() == p and a.arrays["prompt_lengths"][i] == len(p)
  assert np.asarray(a.arrays["loss_mask"]).sum() > 0

"""The offline teacher cache: target generations, stored once, with per-token top-k logits.

`build_teacher_cache` has the target generate a response for every prompt and,
for white-box distillation (top_k > 0), runs one target forward over each
sequence and keeps per token the top-k logits, their token ids and the
log-normaliser (logsumexp over the whole vocabulary). Training then needs no
target and costs O(k) per token. Black-box caches (top_k = 0) keep tokens only.

On disk (one directory): meta.json (generation settings: temperature,
max_new_tokens, top_k, target description; reused at evaluation) and .npy
arrays memory-mapped at read time. The directory is written under a temporary
name and renamed when complete, so an interrupted build leaves nothing that
looks finished; rebuilding with the same settings reuses a finished cache.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from specdistill_jax.distill.divergences import TopKTeacher
from specdistill_jax.sampling.placement import to_host

ARRAYS = ("tokens", "loss_mask", "lengths", "prompt_lengths")
TOPK_ARRAYS = ("topk_values", "topk_indices", "log_normalizer")


def sequences_from_generation(prompts, generated, gen_lengths, max_len: int, pad_id: int) -> dict:
  """Batch dict for prompt + generated tokens, loss on the generated part (numpy).

  prompts: list of token lists; generated [B, N] with gen_lengths [B].
  """
  b = len(prompts)
  out = dict(tokens=np.full((b, max_len), pad_id, np.int32), loss_mask=np.zeros((b, max_len), np.float32),
             segment_ids=np.zeros((b, max_len), np.int32), positions=np.zeros((b, max_len), np.int32),
             prompt_lengths=np.zeros((b,), np.int32), lengths=np.zeros((b,), np.int32))
  generated, gen_lengths = np.asarray(generated), np.asarray(gen_lengths)
  for r, prompt in enumerate(prompts):
    p = list(prompt)[:max_len]
    g = generated[r, : int(gen_lengths[r])][: max_len - len(p)]
    n = len(p) + len(g)
    out["tokens"][r, : len(p)] = p
    out["tokens"][r, len(p):n] = g
    out["loss_mask"][r, len(p):n] = 1.0
    out["segment_ids"][r, :n] = 1
    out["positions"][r, :n] = np.arange(n)
    out["prompt_lengths"][r], out["lengths"][r] = len(p), n
  return out


@functools.lru_cache(maxsize=8)
def _topk_program(graphdef, k: int):
  @jax.jit
  def run(state, tokens, positions, segment_ids):
    logits = nnx.merge(graphdef, state)(tokens, positions=positions, segment_ids=segment_ids)
    values, indices = jax.lax.top_k(logits, k)
    return values, indices, jax.nn.logsumexp(logits, axis=-1)
  return run


def teacher_topk(target, batch: dict, k: int) -> TopKTeacher:
  """Top-k logits, ids and log-normaliser of the target on a batch [B, T]."""
  if not 0 < k <= target.config.vocab_size:
    raise ValueError(f"top_k={k} must be in [1, vocab_size={target.config.vocab_size}]")
  graphdef, state = nnx.split(target)
  v, i, lse = _topk_program(graphdef, int(k))(state, jnp.asarray(batch["tokens"]),
                                               jnp.asarray(batch["positions"]),
                                               jnp.asarray(batch["segment_ids"]))
  return TopKTeacher(v, i, lse)


def build_teacher_cache(out_dir: str, target, prompts: list[list[int]], *, max_len: int,
                        max_new_tokens: int, temperature: float, top_k: int, batch_size: int = 32,
                        seed: int = 0, description: str = "", generate=None) -> dict:
  """Generate with the target and store sequences (+ top-k logits). Returns the metadata."""
  from specdistill_jax.sampling import generate_batch

  generate = generate or generate_batch
  if top_k < 0 or top_k > target.config.vocab_size:
    raise ValueError(f"top_k={top_k} must be in [0, vocab_size={target.config.vocab_size}] "
                     "(0 = black-box: tokens only)")
  meta = dict(temperature=float(temperature), max_new_tokens=int(max_new_tokens), top_k=int(top_k),
              max_len=int(max_len), num_examples=len(prompts), seed=int(seed),
              vocab_size=target.config.vocab_size, target=description)
  existing = read_meta(out_dir)
  if existing is not None:
    if existing == meta:
      return existing
    core = lambda m: {k: v for k, v in m.items() if k not in ("top_k", "bytes_per_token")}  # noqa: E731
    if top_k == 0 and core(existing) == core(meta):  # tokens only: any cache of the same generations
      return existing
    raise ValueError(f"teacher cache {out_dir!r} exists with other settings {existing}; "
                     f"wanted {meta}: delete it or choose another directory")
  writer = jax.process_index() == 0  # generation is collective; process 0 writes
  tmp = out_dir.rstrip("/") + ".incomplete"
  if writer:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  n = len(prompts)
  idx_dtype = np.int16 if target.config.vocab_size <= np.iinfo(np.int16).max else np.int32
  shapes = dict(tokens=((n, max_len), np.int32), loss_mask=((n, max_len), np.uint8),
                lengths=((n,), np.int32), prompt_lengths=((n,), np.int32))
  if top_k:
    shapes.update(topk_values=((n, max_len, top_k), np.float32),
                  topk_indices=((n, max_len, top_k), idx_dtype), log_normalizer=((n, max_len), np.float32))
  arrays = {name: (np.lib.format.open_memmap(os.path.join(tmp, f"{name}.npy"), mode="w+", dtype=dt, shape=shape)
                   if writer else np.zeros((0,) + shape[1:], dt)) for name, (shape, dt) in shapes.items()}
  key = jax.random.PRNGKey(seed)
  pad = target.config.pad_token_id
  for start in tqdm(range(0, n, batch_size), desc=f"teacher cache ({'top-%d' % top_k if top_k else 'tokens'})"):
    chunk = prompts[start:start + batch_size]
    gen = generate(target, chunk, max_new_tokens, temperature=temperature,
                   rng=jax.random.fold_in(key, start))
    batch = sequences_from_generation(chunk, *to_host(gen.tokens, gen.lengths), max_len, pad)
    end = start + len(chunk)
    if top_k:
      t = teacher_topk(target, batch, top_k)
      batch.update(zip(TOPK_ARRAYS, to_host(t.values, t.indices, t.log_normalizer)))
    if writer:
      for name in arrays:
        arrays[name][start:end] = batch[name]
  if writer:
    for a in arrays.values():
      a.flush()
    # token (int32) + mask (uint8), plus k values (fp32) + k ids + the log-normaliser (fp32)
    meta["bytes_per_token"] = 5 + (top_k * (4 + np.dtype(idx_dtype).itemsize) + 4 if top_k else 0)
    meta["full_logits_bytes_per_token"] = 4 * target.config.vocab_size
    with open(os.path.join(tmp, "meta.json"), "w") as fh:
      json.dump(meta, fh, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
  if jax.process_count() > 1:  # the others wait for process 0's files
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"teacher cache {out_dir}")
  return meta if writer else read_meta(out_dir)


def read_meta(path: str) -> Optional[dict]:
  file = os.path.join(path, "meta.json")
  if not os.path.exists(file):
    return None
  with open(file) as fh:
    meta = json.load(fh)
  meta.pop("bytes_per_token", None)
  meta.pop("full_logits_bytes_per_token", None)
  return meta


class TeacherCache:
  """Read side: memory-mapped arrays and rows -> batch dicts."""

  def __init__(self, path: str):
    if not os.path.exists(os.path.join(path, "meta.json")):
      raise FileNotFoundError(f"no teacher cache at {path!r} (meta.json missing): build it with "
                              "build_teacher_cache / a config with source 'teacher_offline'")
    with open(os.path.join(path, "meta.json")) as fh:
      self.meta = json.load(fh)
    names = ARRAYS + (TOPK_ARRAYS if self.meta["top_k"] else ())
    try:
      self.arrays = {k: np.load(os.path.join(path, f"{k}.npy"), mmap_mode="r") for k in names}
    except (OSError, ValueError) as e:
      raise ValueError(f"teacher cache {path!r} is corrupt ({e}): delete and rebuild it") from e
    self.path = path

  def __len__(self) -> int:
    return int(self.meta["num_examples"])

  @property
  def white_box(self) -> bool:
    return bool(self.meta["top_k"])

  def rows(self, indices) -> dict:
    idx = np.asarray(indices)
    out = {k: np.asarray(self.arrays[k][idx]) for k in self.arrays}
    out["loss_mask"] = out["loss_mask"].astype(np.float32)
    t = out["tokens"].shape[1]
    valid = np.arange(t)[None, :] < out["lengths"][:, None]
    out["segment_ids"] = valid.astype(np.int32)
    out["positions"] = np.where(valid, np.arange(t)[None, :], 0).astype(np.int32)
    if self.white_box:
      out["topk_indices"] = out["topk_indices"].astype(np.int32)
    return out

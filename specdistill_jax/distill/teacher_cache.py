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
looks finished; rebuilding with the same settings reuses a finished cache, and an
interrupted build resumes from its finished batches.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
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


def _done_batches(shard_dir: str, count: int) -> np.ndarray:
  """Which batches already have a finished shard (process 0's view, shared with every process)."""
  done = np.array([os.path.exists(os.path.join(shard_dir, f"batch_{b:06d}.npz")) for b in range(count)])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    done = np.asarray(multihost_utils.broadcast_one_to_all(done))
  return done.astype(bool)


def build_teacher_cache(out_dir: str, target, prompts: list[list[int]], *, max_len: int,
                        max_new_tokens: int, temperature: float, top_k: int, batch_size: int = 32,
                        seed: int = 0, description: str = "", generate=None) -> dict:
  """Generate with the target and store sequences (+ top-k logits). Returns the metadata.

  Throughput: prompts are generated in batches of `batch_size` sorted by length (each batch
  pads to its own, similar, width: little padding, few program shapes); run the target in
  bf16 for speed (`target` as loaded). Resumable: every finished batch is written at once to
  OUT_DIR.incomplete/batch_NNNNNN.npz (atomically); a killed build rerun with the same
  settings generates only the missing batches (each batch's randomness depends on its index
  alone, so the result equals an uninterrupted build). When all batches exist the arrays are
  assembled in prompt order and the directory renamed to OUT_DIR. Multi-process: generation
  is one collective program over the global mesh (every process passes the same batch),
  process 0 writes, and the finished-batch list is broadcast from it.
  """
  from specdistill_jax.sampling import generate_batch

  generate = generate or generate_batch
  if top_k < 0 or top_k > target.config.vocab_size:
    raise ValueError(f"top_k={top_k} must be in [0, vocab_size={target.config.vocab_size}] "
                     "(0 = black-box: tokens only)")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
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
  settings = dict(meta, batch_size=int(batch_size))
  settings_file = os.path.join(tmp, "settings.json")
  if writer:
    try:
      with open(settings_file) as fh:
        resumable = json.load(fh) == settings
    except (OSError, ValueError):
      resumable = False
    if not resumable:  # another build's (or a corrupt) partial directory: start over
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
      with open(settings_file, "w") as fh:
        json.dump(settings, fh)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"teacher cache settings {out_dir}")
  n = len(prompts)
  order = np.argsort([len(p) for p in prompts], kind="stable")  # length buckets
  batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
  done = _done_batches(tmp, len(batches))
  key = jax.random.PRNGKey(seed)
  pad = target.config.pad_token_id
  idx_dtype = np.int16 if target.config.vocab_size <= np.iinfo(np.int16).max else np.int32
  generated = seconds = 0.0
  bar = tqdm(total=len(batches), initial=int(done.sum()),
             desc=f"teacher cache ({'top-%d' % top_k if top_k else 'tokens'})")
  for b, rows in enumerate(batches):
    if done[b]:
      continue
    chunk = [prompts[int(r)] for r in rows]
    t0 = time.perf_counter()
    gen = generate(target, chunk, max_new_tokens, temperature=temperature, rng=jax.random.fold_in(key, b))
    batch = sequences_from_generation(chunk, *to_host(gen.tokens, gen.lengths), max_len, pad)
    generated += float(np.sum(to_host(gen.lengths)[0]))
    # generation time without compilation (the first batch of each prompt width compiles)
    seconds += getattr(gen, "wall_seconds", time.perf_counter() - t0)
    if top_k:
      t = teacher_topk(target, batch, top_k)
      batch.update(zip(TOPK_ARRAYS, to_host(t.values, t.indices, t.log_normalizer)))
      batch["topk_indices"] = batch["topk_indices"].astype(idx_dtype)
    if writer:
      path = os.path.join(tmp, f"batch_{b:06d}.npz")
      with open(path + ".part", "wb") as fh:
        np.savez(fh, rows=np.asarray(rows), **{k: batch[k] for k in ARRAYS + (TOPK_ARRAYS if top_k else ())})
      os.replace(path + ".part", path)
    bar.update(1)
    bar.set_postfix(generated_tok_s=f"{generated / max(seconds, 1e-9):.0f}")
  bar.close()
  if writer:
    shapes = dict(tokens=((n, max_len), np.int32), loss_mask=((n, max_len), np.uint8),
                  lengths=((n,), np.int32), prompt_lengths=((n,), np.int32))
    if top_k:
      shapes.update(topk_values=((n, max_len, top_k), np.float32),
                    topk_indices=((n, max_len, top_k), idx_dtype), log_normalizer=((n, max_len), np.float32))
    arrays = {name: np.lib.format.open_memmap(os.path.join(tmp, f"{name}.npy"), mode="w+", dtype=dt, shape=shape)
              for name, (shape, dt) in shapes.items()}
    for b in range(len(batches)):
      with np.load(os.path.join(tmp, f"batch_{b:06d}.npz")) as shard:
        rows = shard["rows"]
        for name in arrays:
          arrays[name][rows] = shard[name]
    for a in arrays.values():
      a.flush()
    for b in range(len(batches)):
      os.remove(os.path.join(tmp, f"batch_{b:06d}.npz"))
    os.remove(settings_file)
    # token (int32) + mask (uint8), plus k values (fp32) + k ids + the log-normaliser (fp32)
    meta["bytes_per_token"] = 5 + (top_k * (4 + np.dtype(idx_dtype).itemsize) + 4 if top_k else 0)
    meta["full_logits_bytes_per_token"] = 4 * target.config.vocab_size
    meta["generated_tokens_per_s"] = round(generated / seconds, 1) if seconds else None
    with open(os.path.join(tmp, "meta.json"), "w") as fh:
      json.dump(meta, fh, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
  if jax.process_count() > 1:  # the others wait for process 0's files
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"teacher cache {out_dir}")
  return read_meta(out_dir)


def read_meta(path: str) -> Optional[dict]:
  file = os.path.join(path, "meta.json")
  if not os.path.exists(file):
    return None
  with open(file) as fh:
    meta = json.load(fh)
  for k in ("bytes_per_token", "full_logits_bytes_per_token", "generated_tokens_per_s"):
    meta.pop(k, None)
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

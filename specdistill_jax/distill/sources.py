"""Where training sequences come from: one interface, `source.batch(step, draft) -> dict`.

Every source returns a host batch (see `data.pipeline`: tokens, loss_mask over
the response, segment_ids, positions, prompt_lengths, lengths) for global step
`step`, deterministically, so a resumed run sees the same data. `teacher` says
what teacher signal the train step uses with it:
  'online'  the target scores the batch inside the train step (white-box);
  'topk'    the batch carries the target's cached top-k logits (offline white-box);
  'tokens'  no logits: train on the tokens (black-box / plain LM).

* FixedSource          ground-truth (prompt, response) text from a dataset
* TeacherOfflineSource target generations stored once (teacher_cache), top-k or tokens
* TeacherOnlineSource  the target generates responses each step (or scores fixed text)
* OnPolicySource       the current draft generates responses each step (jitted sampler)
* MixtureSource        a fraction lambda of each batch on-policy (GKD), the rest from another;
                       lambda may follow a schedule (`mixture_schedule`: warm starts, ramps)
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np

from specdistill_jax.data.pipeline import BatchPipeline
from specdistill_jax.distill.divergences import check_unit_interval
from specdistill_jax.distill.teacher_cache import TeacherCache, sequences_from_generation

TEACHERS = ("online", "topk", "tokens")


class Source:
  """Interface. name: for logs; teacher: 'online' | 'topk' | 'tokens'."""

  name = "source"
  teacher = "online"
  batch_size = 0

  def batch(self, step: int, draft=None) -> dict:
    raise NotImplementedError

  def describe(self) -> dict:
    return {"source": self.name, "teacher": self.teacher}

  def unique_data(self, steps: int) -> Optional[tuple[int, int]]:
    """(distinct examples, their loss tokens) that steps 0..steps-1 train on; None for sources
    that generate every batch afresh (no example repeats)."""
    return None


def pipeline_prompts(pipeline: BatchPipeline) -> Callable[[int], list[list[int]]]:
  """Prompts (token lists up to the assistant marker) of a pad-mode pipeline's step batch."""
  if pipeline.mode != "pad":
    raise ValueError("prompts need a pad-mode pipeline (one example per row)")

  def at(step: int) -> list[list[int]]:
    b = pipeline.batch(step)
    return [b["tokens"][r, : b["prompt_lengths"][r]].tolist() for r in range(len(b["tokens"]))]

  return at


class PromptSet:
  """A fixed list of prompts served in seeded, per-epoch shuffled batches (host-local rows)."""

  def __init__(self, prompts: list[list[int]], batch_size: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    if not prompts:
      raise ValueError("empty prompt set")
    self.prompts, self.batch_size, self.seed = prompts, batch_size, seed
    self.rows = batch_size // process_count
    self.first = process_index * self.rows
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:
        del self._perms[min(self._perms)]
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
    return self._perms[epoch]

  def __call__(self, step: int) -> list[list[int]]:
    n = len(self.prompts)
    out = []
    for r in range(self.rows):
      epoch, offset = divmod(step * self.batch_size + self.first + r, n)
      out.append(self.prompts[int(self._perm(epoch)[offset])])
    return out


def gather_prompts(prompts: list[list[int]], width: int) -> list[list[int]]:
  """The prompts of every process, in process order (identical on all of them)."""
  if jax.process_count() == 1:
    return prompts
  from jax.experimental import multihost_utils
  tokens = np.zeros((len(prompts), width), np.int32)
  lengths = np.zeros((len(prompts),), np.int32)
  for r, p in enumerate(prompts):
    tokens[r, : len(p)], lengths[r] = p[:width], min(len(p), width)
  tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
  lengths = np.asarray(multihost_utils.process_allgather(lengths, tiled=True))
  return [tokens[r, : lengths[r]].tolist() for r in range(len(tokens))]


class FixedSource(Source):
  name = "fixed"

  def __init__(self, pipeline: BatchPipeline, teacher: str = "online"):
    if teacher not in TEACHERS:
      raise ValueError(f"teacher={teacher!r} must be one of {TEACHERS}")
    self.pipeline, self.teacher, self.batch_size = pipeline, teacher, pipeline.batch_size

  def batch(self, step, draft=None):
    return self.pipeline.batch(step)

  def unique_data(self, steps):
    return self.pipeline.unique_loss_tokens(steps)


class TeacherOfflineSource(Source):
  name = "teacher_offline"

  def __init__(self, cache: TeacherCache, batch_size: int, seed: int = 0, white_box: bool = True,
               process_index: int = 0, process_count: int = 1):
    if white_box and not cache.white_box:
      raise ValueError(f"teacher cache {cache.path!r} holds tokens only (top_k=0): white-box "
                       "distillation needs a cache built with top_k > 0")
    self.cache, self.batch_size, self.seed = cache, batch_size, seed
    self.teacher = "topk" if white_box else "tokens"
    self._rows = PromptSet(list(range(len(cache))), batch_size, seed, process_index, process_count)

  def batch(self, step, draft=None):
    out = self.cache.rows(self._rows(step))
    if self.teacher == "tokens":
      for k in ("topk_values", "topk_indices", "log_normalizer"):
        out.pop(k, None)
    return out

  def describe(self):
    return {**super().describe(), "generation": dict(self.cache.meta)}

  def unique_data(self, steps):
    rows = PromptSet(list(range(len(self.cache))), self.batch_size, self.seed)  # every process's rows
    seen = sorted({i for step in range(steps) for i in rows(step)})
    mask = self.cache.arrays["loss_mask"]
    return len(seen), int(sum(float(np.sum(mask[i])) for i in seen))


class _GeneratingSource(Source):
  """Shared by sources whose responses are sampled each step."""

  def __init__(self, prompts: Callable[[int], list[list[int]]], batch_size: int, max_len: int,
               max_new_tokens: int, temperature: float, seed: int, pad_id: int):
    self.prompts, self.batch_size, self.max_len = prompts, batch_size, max_len
    self.max_new_tokens, self.temperature = max_new_tokens, float(temperature)
    self.key = jax.random.PRNGKey(seed)
    self.pad_id = pad_id

  def _generate(self, model, step: int, prompts=None) -> dict:
    """Sample responses for this process's prompts.

    Sampling is one collective program over the global mesh, so every process
    passes the same global batch: the host-local prompts are gathered from all
    processes (a no-op in a single process) and each process keeps its rows.
    """
    from specdistill_jax.sampling import generate_batch
    prompts = prompts if prompts is not None else self.prompts(step)
    everyone = gather_prompts(prompts, self.max_len)
    room = max(1, min(self.max_new_tokens, self.max_len - max(map(len, everyone))))
    gen = generate_batch(model, everyone, room, self.temperature, rng=jax.random.fold_in(self.key, step))
    from specdistill_jax.sampling.placement import to_host
    tokens, lengths = to_host(gen.tokens, gen.lengths)
    first = jax.process_index() * len(prompts)
    mine = slice(first, first + len(prompts))
    return sequences_from_generation(prompts, tokens[mine], lengths[mine], self.max_len, self.pad_id)

  def describe(self):
    return {**super().describe(), "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens}


class TeacherOnlineSource(_GeneratingSource):
  """The target generates each step's responses (generate=True) and scores them online."""

  name = "teacher_online"

  def __init__(self, target, prompts, batch_size, max_len, max_new_tokens, temperature, seed=0,
               white_box: bool = True):
    super().__init__(prompts, batch_size, max_len, max_new_tokens, temperature, seed,
                     target.config.pad_token_id)
    self.target = target
    self.teacher = "online" if white_box else "tokens"

  def batch(self, step, draft=None):
    return self._generate(self.target, step)


class OnPolicySource(_GeneratingSource):
  """The current draft samples each step's responses; the target scores them online."""

  name = "on_policy"
  teacher = "online"

  def batch(self, step, draft=None):
    if draft is None:
      raise ValueError("the on-policy source needs the current draft model")
    return self._generate(draft, step)


MIXTURE_SCHEDULES = ("constant", "linear", "step")


def mixture_schedule(kind: str, lam: float, total_steps: int, warm_fraction: float = 0.5) -> Callable[[int], float]:
  """lambda(step): 'constant' lam; 'linear' 0 -> lam over the run; 'step' 0 for the first
  warm_fraction of the run, then lam (a warm start: teacher data first, then on-policy)."""
  lam = check_unit_interval("lambda", lam)
  check_unit_interval("mixture warm fraction", warm_fraction)
  if kind not in MIXTURE_SCHEDULES:
    raise ValueError(f"mixture schedule {kind!r} must be one of {MIXTURE_SCHEDULES}")
  if total_steps < 1:
    raise ValueError(f"total_steps={total_steps} must be >= 1 for a mixture schedule")
  if kind == "constant":
    return lambda step: lam
  if kind == "linear":
    return lambda step: lam * min(1.0, step / max(total_steps - 1, 1))
  switch = int(round(warm_fraction * total_steps))
  return lambda step: lam if step >= switch else 0.0


class MixtureSource(Source):
  """Rows [0, round(lambda(step) * B)) on-policy, the rest from `other` (GKD's mixture).

  lam: a fraction, or a schedule step -> fraction (`mixture_schedule`). `other` is fixed data or
  target-generated data (any source the target scores online); with a generating `other`, rows
  that go on-policy are not generated by it at all.
  """

  name = "mixture"
  teacher = "online"

  def __init__(self, on_policy: OnPolicySource, other: Source, lam):
    self.lam = lam if callable(lam) else mixture_schedule("constant", lam, 1)
    if other.teacher != "online":
      raise ValueError(f"a mixture needs a source the target can score online; {other.name!r} "
                       f"has teacher={other.teacher!r}")
    self.on_policy, self.other, self.batch_size = on_policy, other, other.batch_size
    self.temperature = on_policy.temperature

  def rows_on_policy(self, step: int) -> int:
    return int(round(self.lam(step) * self.batch_size))

  def batch(self, step, draft=None):
    k = self.rows_on_policy(step)
    if k == 0:
      return self.other.batch(step, draft)
    if isinstance(self.other, _GeneratingSource):  # generate only the rows that stay with `other`
      prompts = self.other.prompts(step)
      mixed = self.on_policy._generate(draft, step, prompts[:k])
      if k == len(prompts):
        return mixed
      base = self.other._generate(self.other.target, step, prompts[k:])
      return {name: np.concatenate([mixed[name], base[name]]) for name in mixed}
    base = self.other.batch(step, draft)
    prompts = [base["tokens"][r, : base["prompt_lengths"][r]].tolist() for r in range(k)]
    mixed = self.on_policy._generate(draft, step, prompts)
    return {name: np.concatenate([mixed[name], base[name][k:]]) for name in base}

  def describe(self):
    return {"source": self.name, "teacher": self.teacher, "lambda_first": self.lam(0),
            "other": self.other.describe(), "on_policy": self.on_policy.describe()}

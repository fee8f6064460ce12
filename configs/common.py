"""Shared pieces of experiment configs (ml_collections), and the `get_config(arg)` convention.

Every file in configs/ defines `get_config(arg=None) -> ConfigDict`. `arg` is the
text after the colon in `--config=configs/x.py:arg`: a preset name optionally
followed by comma-separated overrides, e.g. `cpu`, `micro`, `gpu,seed=3`.
Any field can also be overridden on the command line: `--config.train.steps=100`.
"""

from __future__ import annotations

import ast
import os
from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from specdistill_jax.models.config import OVERRIDE_TYPES
from specdistill_jax.sharding import DEFAULT_RULES


def parse_arg(arg: Optional[str], default_preset: str, presets: tuple[str, ...]) -> tuple[str, dict]:
  """'cpu,seed=3' -> ('cpu', {'seed': 3}); an unknown preset is an error naming the known ones."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  name = default_preset
  overrides: dict[str, Any] = {}
  for part in parts:
    if "=" in part:
      key, value = part.split("=", 1)
      try:
        overrides[key.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        overrides[key.strip()] = value.strip()
    else:
      name = part
  if name not in presets:
    raise ValueError(f"unknown config preset {name!r}; choose one of {presets}")
  return name, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Set dotted keys ('train.steps': 10) on a ConfigDict; unknown keys are errors."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config has no field {key!r}")
    node[leaf] = value
  return config


def world(*parts: str) -> str:
  """A path inside the CPU-scale model world (experiments/build_world.py builds it).

  Root: $SPECDISTILL_WORLD, default ./workdir/world.
  """
  return os.path.join(os.environ.get("SPECDISTILL_WORLD", os.path.join("workdir", "world")), *parts)


def data_dir() -> str:
  """Prepared corpora: $SPECDISTILL_DATA_DIR, default ./workdir/data."""
  return os.environ.get("SPECDISTILL_DATA_DIR", os.path.join("workdir", "data"))


def mesh(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh sizes for ('data', 'fsdp', 'tensor'); -1 takes the rest of the devices."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def sharding_rules() -> tuple:
  """The logical-axis rules table (logical name -> mesh axes); fork to change a layout."""
  return DEFAULT_RULES


# dtype and param_dtype are fields of the model spec itself
_SPEC_FIELDS = ("dtype", "param_dtype")


def model_overrides(**values) -> ml_collections.ConfigDict:
  """One typed placeholder per ModelConfig field (None = the preset's value), some set.

  Typed placeholders let `--config.draft.overrides.d_model=768` (or any other field)
  work from the command line: ml_collections cannot add keys or parse into None.
  """
  unknown = sorted(set(values) - set(OVERRIDE_TYPES))
  if unknown:
    raise KeyError(f"unknown model override(s) {unknown}; ModelConfig fields: {sorted(OVERRIDE_TYPES)}")
  fields = {}
  for name, kind in OVERRIDE_TYPES.items():
    if name in _SPEC_FIELDS:
      continue
    value = values.get(name)
    fields[name] = config_dict.placeholder(kind) if value is None else config_dict.FieldReference(
        tuple(value) if kind is tuple else kind(value), field_type=kind)
  return ml_collections.ConfigDict(fields)


def feature(num_layers: int = 1, feature_layers: tuple = (), draft_vocab_size: int = 0,
            vocab_batches: int = 32, verifier: str = "", head_from_target: bool = True,
            block_size: int = 8, mask_token_id: int = -1) -> ml_collections.ConfigDict:
  """A draft that reads target features: an EAGLE-3 head (models.create_feature_draft) for a spec
  with kind='feature', a DFlash block drafter (models.create_block_draft) for kind='block'.

  feature_layers: target layer ids (() = EAGLE-3's low/middle/high); draft_vocab_size: 0 = the
  full vocabulary, else the most frequent tokens of the first `vocab_batches` training batches;
  verifier: the target's name written into the speculators export (default: its hf_path);
  head_from_target: start the LM head (draft vocabulary rows) and final norm from the target's
  (a block drafter always does: its head stays the target's);
  block_size / mask_token_id (kind='block'): tokens per block (the anchor and block_size - 1
  drafts), the id at the drafted slots (-1: the target's pad id).
  """
  return ml_collections.ConfigDict(dict(num_layers=num_layers, feature_layers=tuple(feature_layers),
                                        draft_vocab_size=draft_vocab_size, vocab_batches=vocab_batches,
                                        verifier=verifier, head_from_target=head_from_target,
                                        block_size=block_size, mask_token_id=mask_token_id))


def model(preset: str = "", hf_path: str = "", checkpoint: str = "", dtype: str = "float32",
          param_dtype: str = "float32", seed: int = 0, target_layers: int = 0, kind: str = "token",
          **overrides) -> ml_collections.ConfigDict:
  """Where a model comes from: an HF directory, an orbax model checkpoint, or a preset.

  The first that is set wins (hf_path, then checkpoint, then target_layers, then preset).
  target_layers=N (drafts only) cuts the draft from the target: its first N layers with
  the target's embedding, final norm and head (models.first_layers). A preset
  takes its vocabulary from the tokenizer; `overrides` change preset fields (every
  ModelConfig field is there, None meaning the preset's value).
  dtype is the compute dtype (bfloat16 = mixed precision: bf16 matmuls with fp32
  accumulation); param_dtype the storage dtype of the parameters.
  kind='feature' (drafts only): an EAGLE-3 draft that reads the target's hidden states,
  described by the `feature` fields (hf_path may then name a speculators eagle3 export);
  kind='block': a DFlash block drafter, likewise (hf_path: a speculators dflash export).
  """
  return ml_collections.ConfigDict(dict(
      preset=preset, hf_path=hf_path, checkpoint=checkpoint, dtype=dtype, param_dtype=param_dtype,
      seed=seed, target_layers=target_layers, kind=kind, feature=feature(),
      overrides=model_overrides(**overrides)))


def train_config() -> ml_collections.ConfigDict:
  """Every field the train entry point reads, with defaults; studies fork and override it.

  Model specs (`target`, `draft`, `reference`) use `model()`; an empty spec means
  "none" (no target: plain LM training with loss 'ce').
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = ""  # default: $SPECDISTILL_DATA_DIR or ./workdir/data
  c.tokenizer = ""  # default: {data_dir}/tokenizer
  c.target = model()  # the frozen teacher
  c.draft = model()  # the model being trained
  c.reference = model()  # AdaSPEC's reference draft
  c.data = ml_collections.ConfigDict(dict(
      corpora="sharegpt_chat",  # comma-separated bundled or TFDS corpora, concatenated
      corpus_config="full",  # 'full' or 'small' (bundled corpora)
      split="train",
      documents=False,  # train on documents (no prompts): the curated-text scenario
      max_examples=0,  # 0 = all; else the first N (data-scaling curves)
      unit="turn",  # 'turn' (one user turn -> its answer) or 'conversation' (every assistant turn of a
      # ShareGPT conversation, the conversation so far as its context; sharegpt corpora only)
      max_len=128,
      max_prompt_len=64,
      mode="pad",  # 'pad' (one example per row) or 'pack'
      pack_factor=4,
      loss_on_prompt=False,  # LM pretraining: loss on every token
      batch_size=16,
      # fixed | teacher_offline | teacher_online | on_policy | mixture
      source="fixed",
      prompts="dataset",  # generating sources: 'dataset' (historical queries) or 'synthetic' (Magpie)
      num_prompts=1024,  # prompts in the offline cache / synthetic set
      mixture_lambda=0.5,  # fraction of each batch on-policy (source 'mixture')
      mixture_schedule="constant",  # lambda over the run: constant | linear (0 -> lambda) | step (warm start)
      mixture_warm_fraction=0.5,  # schedule 'step': lambda is 0 for this fraction of the steps
      mixture_other="fixed",  # the rest of a mixture batch: fixed (ground truth) | teacher_online
      on_policy_temperature=-1.0,  # the draft's sampling temperature for on-policy rows (< 0: gen_temperature)
      gen_temperature=1.0,  # sampling temperature of generated data
      max_new_tokens=64,
      gen_batch_size=32,  # teacher_offline: prompts per generation batch (sorted by length)
      black_box=False,  # generated data without logits: loss must be 'ce'
      top_k=16,  # top-k logits kept by the offline cache
      offline_cache="",  # default: {workdir}/teacher_cache
      eval_corpora="",  # default: corpora
      eval_split="validation",
  ))
  c.objective = ml_collections.ConfigDict(dict(
      loss="fkl",  # fkl | rkl | jsd | tvd | ce | adaspec
      beta=0.5,  # generalized JSD beta
      temperature=1.0,
      adaspec_fraction=0.4,
      chunk_tokens=128,  # tokens per loss chunk (logits never materialised for all tokens); 0 = off
      ttt_steps=3,  # feature drafts: positions unrolled ahead in training (training-time test)
      ttt_decay=1.0,  # feature drafts: weight of unrolled step s is ttt_decay**s (normalised)
      ttt_inputs="data",  # feature drafts: 'data' (teacher forcing) or 'draft' (on-policy, Draft-OPD)
      ttt_temperature=1.0,  # feature drafts, on-policy: sampling temperature of the proposals
      num_anchors=0,  # block drafts: blocks per training row (0: max_len // block_size)
      block_decay=4.0,  # block drafts: drafted slot i weighs exp(-i / block_decay) (normalised)
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=50, weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.95,
      final_fraction=0.1))
  c.train = ml_collections.ConfigDict(dict(
      steps=500, log_every=10, eval_every=100, eval_batches=4, checkpoint_every=100, keep=2,
      async_checkpoints=True))
  c.eval = ml_collections.ConfigDict(dict(
      speculative=True,  # alpha/tau from a short real speculative run at each eval
      gamma=4,
      temperature=-1.0,  # < 0: the generated data's temperature (or 0 for fixed data)
      num_prompts=8,
      max_new_tokens=32,
  ))
  c.mesh = mesh()
  c.sharding_rules = sharding_rules()
  c.export_hf = "hf"  # HF directory (relative to workdir) written at the end; '' = none
  return c


def models_dir(*parts: str) -> str:
  """Local directory of real HF checkpoints for GPU/TPU presets: $MODELS_DIR (default /models)."""
  return os.path.join(os.environ.get("MODELS_DIR", "/models"), *parts)


def study_config(scale: str) -> ml_collections.ConfigDict:
  """Fields every study config shares; `scale` is cpu, micro or gpu."""
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.data_dir = data_dir()
  c.tokenizer = ""  # default: {data_dir}/tokenizer (gpu presets: the target's directory)
  c.corpus_config = "small" if scale == "micro" else "full"
  c.workdir = os.path.join(os.environ.get("SPECDISTILL_RUNS", os.path.join("workdir", "runs")), scale)
  c.results_dir = ""  # default: experiments/results (micro runs: pass a temporary directory)
  c.seeds = 1 if scale == "micro" else 3
  c.gamma = 4
  c.temperatures = (1.0,) if scale == "micro" else (0.0, 1.0)
  c.num_prompts = 2 if scale == "micro" else 32
  c.max_prompt_tokens = 24 if scale == "micro" else 64
  c.max_new_tokens = 6 if scale == "micro" else 48
  return c


def distill_cell(scale: str, target: str, draft: str, corpus: str, steps: int) -> ml_collections.ConfigDict:
  """The train config a study cell starts from: draft <- target on `corpus`, no eval during training."""
  c = train_config()
  c.data_dir = data_dir()
  c.target = model(hf_path=target, dtype="bfloat16")
  c.draft = model(hf_path=draft, dtype="bfloat16")
  c.data.corpora = corpus
  if scale == "micro":
    c.data.update(corpus_config="small", batch_size=4, max_len=48, max_prompt_len=24, max_new_tokens=8,
                  num_prompts=8)
    c.train.update(steps=2, eval_every=0, checkpoint_every=2, log_every=1)
  elif scale == "gpu":
    c.data.update(batch_size=32, max_len=1024, max_prompt_len=512, max_new_tokens=256, num_prompts=8192)
    c.train.update(steps=steps, eval_every=0, checkpoint_every=max(steps // 4, 1), log_every=10)
    c.optim.update(lr=2e-5, warmup_steps=max(steps // 20, 1))
  else:
    c.data.update(batch_size=16, max_len=128, max_prompt_len=64, max_new_tokens=48, num_prompts=1024)
    c.train.update(steps=steps, eval_every=0, checkpoint_every=steps, log_every=10)
    c.optim.update(lr=1e-3, warmup_steps=max(steps // 10, 1))
  c.train.async_checkpoints = False
  c.export_hf = "hf"
  return c

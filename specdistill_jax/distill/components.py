"""From an experiment config to the objects a run needs: tokenizer, models, data source, objective.

Models come from a spec (see configs/common.model): an HF directory, an
orbax model checkpoint, or a named preset sized to the tokenizer. The data
source and the objective are chosen together (the source decides whether the
teacher signal is online logits, cached top-k logits or tokens only), and every
inconsistent combination raises a clear error naming the config fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np

from specdistill_jax import loading, models
from specdistill_jax.data import corpora, prompts as prompt_sets
from specdistill_jax.data.corpora import TextSource
from specdistill_jax.data.pipeline import BatchPipeline
from specdistill_jax.data.tokenizer import ChatFormat
from specdistill_jax.distill import sources as src
from specdistill_jax.distill.step import Objective
from specdistill_jax.distill.teacher_cache import TeacherCache, build_teacher_cache

SOURCES = ("fixed", "teacher_offline", "teacher_online", "on_policy", "mixture")


@dataclasses.dataclass
class Components:
  chat: ChatFormat
  tokenizer_dir: str
  draft: models.Transformer
  target: Optional[models.Transformer]
  reference: Optional[models.Transformer]
  source: src.Source
  objective: Objective
  eval_pipeline: BatchPipeline
  eval_prompts: list
  eval_temperature: float


def spec_is_set(spec) -> bool:
  return bool(spec.hf_path or spec.checkpoint or spec.preset or spec.get("target_layers", 0)
              or draft_kind(spec) != "token")


KINDS = {"token": "a small LM", "feature": "an EAGLE-3 head", "block": "a DFlash block drafter"}


def draft_kind(spec) -> str:
  kind = spec.get("kind", "token") or "token"
  if kind not in KINDS:
    raise ValueError(f"draft.kind={kind!r} must be one of " + ", ".join(f"'{k}' ({v})" for k, v in KINDS.items()))
  return kind


def is_feature(spec) -> bool:
  """Whether the draft reads the target's features (an EAGLE-3 head or a block drafter)."""
  return draft_kind(spec) != "token"


def token_counts(source: src.Source, vocab: int, batches: int) -> np.ndarray:
  """How often each token id is a training target in the source's first `batches` batches."""
  counts = np.zeros((vocab,), np.int64)
  for i in range(max(int(batches), 1)):
    b = source.batch(i)
    counts += np.bincount(np.asarray(b["tokens"])[np.asarray(b["loss_mask"]) > 0], minlength=vocab)[:vocab]
  return counts


_CLASSES = {"feature": (models.FeatureDraft, "eagle3"), "block": (models.BlockDraft, "dflash")}


def build_feature_draft(spec, target, source: src.Source, what: str = "draft"):
  """An EAGLE-3 head or a block drafter for `target`: loaded from spec.hf_path (its speculators
  export), or new."""
  kind = draft_kind(spec)
  if target is None:
    raise ValueError(f"{what}.kind={kind!r} reads the target's hidden states: set config.target")
  cls, fmt = _CLASSES[kind]
  if spec.hf_path:
    draft = loading.load_model(spec.hf_path, dtype=spec.dtype, param_dtype=spec.param_dtype)
    if not isinstance(draft, cls):
      raise ValueError(f"{what}.hf_path={spec.hf_path!r} is not a speculators {fmt} export, which "
                       f"{what}.kind={kind!r} needs")
    return draft
  f = spec.feature
  size = int(f.draft_vocab_size) or None
  counts = token_counts(source, target.config.vocab_size, f.vocab_batches) if size else None
  if kind == "block":
    mask_id = int(f.get("mask_token_id", -1))
    return models.create_block_draft(target.config, num_layers=f.num_layers, block_size=int(f.get("block_size", 8)),
                                     feature_layers=tuple(f.feature_layers) or None, draft_vocab_size=size,
                                     seed=spec.seed, target=target, token_counts=counts,
                                     mask_token_id=None if mask_id < 0 else mask_id, dtype=spec.dtype,
                                     param_dtype=spec.param_dtype)
  return models.create_feature_draft(target.config, num_layers=f.num_layers,
                                     feature_layers=tuple(f.feature_layers) or None, draft_vocab_size=size,
                                     seed=spec.seed, target=target, token_counts=counts, dtype=spec.dtype,
                                     param_dtype=spec.param_dtype,
                                     head_from_target=bool(f.get("head_from_target", True)))


def set_overrides(spec) -> dict:
  """The model spec's overrides that are set (not None)."""
  return {k: v for k, v in dict(spec.get("overrides") or {}).items() if v is not None}


def build_model(spec, chat: ChatFormat, what: str, target=None) -> Optional[models.Transformer]:
  """The model a spec describes, or None if the spec is empty.

  Precedence: hf_path, checkpoint, target_layers (cut from `target`), preset.
  """
  overrides = set_overrides(spec)
  if overrides and (spec.hf_path or spec.checkpoint):
    raise ValueError(f"{what}.overrides {sorted(overrides)} apply to presets only, but {what}."
                     f"{'hf_path' if spec.hf_path else 'checkpoint'} is set and wins over the preset")
  if spec.hf_path:
    return loading.load_model(spec.hf_path, dtype=spec.dtype, param_dtype=spec.param_dtype)
  if spec.checkpoint:
    return loading.load_model(spec.checkpoint, dtype=spec.dtype, param_dtype=spec.param_dtype)
  layers = int(spec.get("target_layers", 0) or 0)
  if layers:
    if target is None:
      raise ValueError(f"{what}.target_layers={layers} cuts the {what} from the target, but config.target "
                       "is empty")
    return models.first_layers(target, layers, spec.dtype, spec.param_dtype)
  if spec.preset:
    vocab = overrides.pop("vocab_size", chat.vocab_size)
    fields = dict(eos_token_ids=(chat.eos,), bos_token_id=chat.bos, pad_token_id=chat.pad,
                  dtype=spec.dtype, param_dtype=spec.param_dtype)
    fields.update(overrides)
    cfg = models.preset(spec.preset, vocab, **fields)
    return models.create(cfg, seed=spec.seed)
  return None


def check_vocab(chat: ChatFormat, named: dict) -> None:
  for name, model in named.items():
    if model is not None and model.config.vocab_size < chat.vocab_size:
      raise ValueError(f"{name} vocab_size={model.config.vocab_size} is smaller than the tokenizer's "
                       f"{chat.vocab_size}: use the tokenizer the model was trained with (config.tokenizer)")
  sizes = {n: m.config.vocab_size for n, m in named.items() if m is not None}
  if len(set(sizes.values())) > 1:
    raise ValueError(f"vocabulary mismatch between models {sizes}: draft, target and reference must "
                     "share one vocabulary (same tokenizer)")


def text_source(config, chat: ChatFormat, corpora_names: str, split: str, limit: int = 0) -> TextSource:
  d = config.data
  unit = d.get("unit", "turn")
  if unit not in ("turn", "conversation"):
    raise ValueError(f"data.unit={unit!r} must be 'turn' (one user turn and its answer) or 'conversation' "
                     "(every assistant turn of a whole conversation)")
  if unit == "conversation" and d.documents:
    raise ValueError("data.unit='conversation' trains on chats: it cannot be combined with data.documents=True")

  def one(name):
    if unit == "conversation":
      return corpora.load_conversations(name, split, config.data_dir or None, d.corpus_config)
    return corpora.load(name, split, config.data_dir or None, d.corpus_config, d.documents)

  parts = [one(name.strip()) for name in corpora_names.split(",") if name.strip()]
  if not parts:
    raise ValueError("config.data.corpora is empty")
  if len(parts) == 1:
    source = parts[0]
  else:
    offsets = np.cumsum([0] + [len(p) for p in parts])

    def get(i):
      k = int(np.searchsorted(offsets, i, side="right") - 1)
      return parts[k][i - offsets[k]]

    source = TextSource(get, int(offsets[-1]), "+".join(p.name for p in parts), unit == "conversation")
  if limit:
    order = np.random.default_rng(config.seed).permutation(len(source))[:limit]
    base = source
    source = TextSource(lambda i: base[int(order[i])], len(order), f"{base.name}[:{limit}]", base.conversations)
  return source


def pipeline(config, chat, text: TextSource, seed: int, mode: Optional[str] = None) -> BatchPipeline:
  d = config.data
  return BatchPipeline(text, chat, d.batch_size, d.max_len, seed=seed, mode=mode or d.mode,
                       max_prompt_len=d.max_prompt_len, loss_on_prompt=d.loss_on_prompt,
                       pack_factor=d.pack_factor, process_index=jax.process_index(),
                       process_count=jax.process_count())


def _prompt_list(config, chat, target, fixed: BatchPipeline, workdir: str) -> list[list[int]]:
  d = config.data
  if d.prompts == "dataset":  # the same global list on every process (its batches are split later)
    at = src.pipeline_prompts(BatchPipeline(fixed.source, chat, d.batch_size, d.max_len, seed=config.seed,
                                            max_prompt_len=d.max_prompt_len))
    out: list[list[int]] = []
    step = 0
    while len(out) < d.num_prompts:
      out += at(step)
      step += 1
    return out[: d.num_prompts]
  if d.prompts != "synthetic":
    raise ValueError(f"config.data.prompts={d.prompts!r} must be 'dataset' or 'synthetic'")
  if target is None:
    raise ValueError("synthetic (Magpie) prompts need a target model to write them")
  path = os.path.join(workdir, "synthetic_prompts.json")
  if os.path.exists(path):
    with open(path) as fh:
      return json.load(fh)
  made = prompt_sets.synthetic_prompts(target, chat, d.num_prompts, rng=config.seed,
                                       max_query_tokens=d.max_prompt_len // 2)
  made = [p[-d.max_prompt_len:] if len(p) > d.max_prompt_len else p for p in made]
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as fh:
      json.dump(made, fh)
  return made


def build_source(config, chat, target, workdir: str, needs_logits: bool, tokens_only: bool = False) -> src.Source:
  """The configured data source; tokens_only: generated data without logits (feature drafts)."""
  d = config.data
  if d.source not in SOURCES:
    raise ValueError(f"unknown data source {d.source!r}; choose one of {SOURCES}")
  fixed = pipeline(config, chat, text_source(config, chat, d.corpora, d.split, d.max_examples), config.seed)
  if d.source == "fixed":
    return src.FixedSource(fixed, teacher="online" if (needs_logits and target is not None) else "tokens")
  if target is None:
    raise ValueError(f"data source {d.source!r} needs a target model (config.target)")
  if not 0 < d.max_new_tokens < d.max_len:
    raise ValueError(f"max_new_tokens={d.max_new_tokens} must be in [1, max_len={d.max_len})")
  prompt_list = _prompt_list(config, chat, target, fixed, workdir)
  prompts = src.PromptSet(prompt_list, d.batch_size, config.seed, jax.process_index(), jax.process_count())
  gen = dict(batch_size=d.batch_size, max_len=d.max_len, max_new_tokens=d.max_new_tokens,
             temperature=d.gen_temperature, seed=config.seed)
  if d.source == "teacher_offline":
    path = d.offline_cache or os.path.join(workdir, "teacher_cache")
    top_k = 0 if (d.black_box or tokens_only) else d.top_k
    build_teacher_cache(path, target, prompt_list, max_len=d.max_len, max_new_tokens=d.max_new_tokens,
                        temperature=d.gen_temperature, top_k=top_k, seed=config.seed,
                        batch_size=int(d.get("gen_batch_size", 32)),
                        description=json.dumps(target.config.to_dict(), sort_keys=True)[:200])
    return src.TeacherOfflineSource(TeacherCache(path), d.batch_size, config.seed,
                                    white_box=not (d.black_box or tokens_only), process_index=jax.process_index(),
                                    process_count=jax.process_count())
  if d.source == "teacher_online":
    return src.TeacherOnlineSource(target, prompts, white_box=not (d.black_box or tokens_only), **gen)
  on_policy_temperature = d.get("on_policy_temperature", -1.0)
  on_policy = src.OnPolicySource(prompts, pad_id=target.config.pad_token_id,
                                 **dict(gen, temperature=d.gen_temperature if on_policy_temperature < 0
                                        else on_policy_temperature))
  if d.source == "on_policy":
    return on_policy
  other_kind = d.get("mixture_other", "fixed")
  if other_kind not in ("fixed", "teacher_online"):
    raise ValueError(f"data.mixture_other={other_kind!r} must be 'fixed' (ground truth) or 'teacher_online' "
                     "(target-generated)")
  other = (src.FixedSource(fixed, "online") if other_kind == "fixed"
           else src.TeacherOnlineSource(target, prompts, **gen))
  lam = src.mixture_schedule(d.get("mixture_schedule", "constant"), d.mixture_lambda, config.train.steps,
                             d.get("mixture_warm_fraction", 0.5))
  return src.MixtureSource(on_policy, other, lam)


def build(config, workdir: str) -> Components:
  data_dir = config.data_dir or corpora.default_data_dir()
  tokenizer_dir = config.tokenizer or os.path.join(data_dir, "tokenizer")
  chat = ChatFormat(loading.load_tokenizer(tokenizer_dir))
  if not spec_is_set(config.draft):
    raise ValueError("config.draft is empty: set draft.preset, draft.hf_path or draft.checkpoint")
  target = build_model(config.target, chat, "target")
  feature = is_feature(config.draft)
  loss = config.objective.loss
  if feature:
    if config.data.source in ("on_policy", "mixture"):
      raise ValueError(f"data.source={config.data.source!r} samples from the draft alone, which a feature "
                       "draft cannot do: use 'fixed', 'teacher_offline' or 'teacher_online'")
    # the step runs the target for features and logits anyway: generated data needs tokens only
    source = build_source(config, chat, target, workdir, needs_logits=False, tokens_only=True)
    draft = build_feature_draft(config.draft, target, source)
    reference = build_feature_draft(config.reference, target, source, "reference") if loss == "adaspec" else None
    if reference is not None and not config.reference.hf_path:
      raise ValueError("loss 'adaspec' with a feature draft needs config.reference.hf_path (an eagle3 export "
                       "of the draft after plain KD)")
  else:
    draft = build_model(config.draft, chat, "draft", target)
    reference = build_model(config.reference, chat, "reference") if loss == "adaspec" else None
  if loss == "adaspec" and reference is None:
    raise ValueError("loss 'adaspec' needs config.reference (the draft after plain KD)")
  check_vocab(chat, {"draft": draft, "target": target, "reference": reference})
  if not feature:
    source = build_source(config, chat, target, workdir, needs_logits=loss != "ce")
  o = config.objective
  objective = Objective(loss=loss, teacher="online" if feature else source.teacher, beta=o.beta,
                        temperature=o.temperature, adaspec_fraction=o.adaspec_fraction, feature=feature,
                        ttt_steps=int(o.get("ttt_steps", 3)), ttt_decay=float(o.get("ttt_decay", 1.0)),
                        ttt_inputs=o.get("ttt_inputs", "data"), ttt_temperature=float(o.get("ttt_temperature", 1.0)),
                        block=draft_kind(config.draft) == "block", num_anchors=int(o.get("num_anchors", 0)),
                        block_decay=float(o.get("block_decay", 4.0)))
  if objective.needs_target and target is None:
    raise ValueError(f"loss {loss!r} on source {config.data.source!r} needs a target (config.target)")
  eval_text = text_source(config, chat, config.data.eval_corpora or config.data.corpora,
                          config.data.eval_split)
  eval_pipe = pipeline(config, chat, eval_text, seed=1234, mode="pad")
  # speculative evaluation is one collective program: the same (global) prompts everywhere
  every_row = BatchPipeline(eval_text, chat, config.data.batch_size, config.data.max_len, seed=1234,
                            max_prompt_len=config.data.max_prompt_len)
  eval_prompts = [p[-config.data.max_prompt_len:] for p in src.pipeline_prompts(every_row)(0)]
  eval_prompts = (eval_prompts * (config.eval.num_prompts // max(len(eval_prompts), 1) + 1))[:config.eval.num_prompts]
  temperature = config.eval.temperature
  if temperature < 0:  # evaluate at the temperature the data was generated at
    temperature = getattr(source, "temperature", None)
    if temperature is None and hasattr(source, "cache"):
      temperature = source.cache.meta["temperature"]
    temperature = float(temperature or 0.0)
  return Components(chat, tokenizer_dir, draft, target, reference, source, objective, eval_pipe,
                    eval_prompts, temperature)

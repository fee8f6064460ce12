"""What one proposal costs, for every kind of drafter of the real target, against its bandwidth bound.

    python experiments/bench_draft_cost.py [--model DIR] [--caches 512,1024] [--gammas 1,4]
        [--dtype bfloat16] [--layout auto]

A draft's cost does not depend on its training, so every drafter here is built untrained
from the real target (SmolLM2-135M-Instruct, default workdir/models/smollm2-135m-instruct):
* `eagle3`: an EAGLE-3 head as configs/eagle3.py builds it (1 decoder layer over the target's
  layers 2, 15, 27, an 8192-token head; `models.create_feature_draft`);
* `layers2`: the target's first 2 layers with its embedding, final norm and head
  (`models.first_layers`, configs/real.py's independent draft);
* `block`: a DFlash-style block drafter as configs/dflash.py builds it (2 layers, blocks of
  8, the same 8192-token head; `models.create_block_draft`): one pass drafts 7 tokens;
* `prompt_lookup`: `sampling.prompt_lookup(3, 1)` (no model).
In one run, B=1, the target and drafts in that dtype and layout, each cache a quarter full:
the target's one-token step (ms), and per drafter r(gamma) = one proposal round of gamma
drafts / the target step (`evaluate.round_seconds`: the pending token fed, then gamma draft
steps or one block pass) and c = r(gamma) / gamma, the cost per drafted token the speedup
formula tau / (gamma c + v) uses. `bound` is the round's weight bytes (every matmul weight a
round reads, once per draft step; an embedding table only as the tied head) at the read
bandwidth measured in the same run, over the same target step: the c a draft at the memory
limit would have. Writes experiments/results/draft_cost.md.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import evaluate, models, sampling  # noqa: E402
from specdistill_jax.models import backend_layout, import_gguf  # noqa: E402
from specdistill_jax.sampling import proposer  # noqa: E402
from bench_target import read_bandwidth  # noqa: E402
from studylib import write_text  # noqa: E402

DRAFTERS = ("eagle3", "layers2", "block", "prompt_lookup")


def build(kind: str, target, dtype: str, draft_vocab: int = 8192, cut_layers: int = 2):
  """An untrained drafter of `kind` for `target`, in `dtype`."""
  c = target.config
  draft_vocab = min(draft_vocab, c.vocab_size)
  if kind == "eagle3":
    return models.create_feature_draft(c, draft_vocab_size=draft_vocab, target=target, dtype=dtype, param_dtype=dtype)
  if kind == "layers2":
    return models.first_layers(target, cut_layers, dtype=dtype)
  if kind == "block":
    return models.create_block_draft(c, num_layers=2, block_size=8, draft_vocab_size=draft_vocab, target=target,
                                     dtype=dtype, param_dtype=dtype)
  if kind == "prompt_lookup":
    return sampling.prompt_lookup(3, 1).for_target(target)
  raise ValueError(f"unknown drafter {kind!r}: pick from {', '.join(DRAFTERS)}")


def step_weight_bytes(draft) -> int:
  """Bytes of the weights one draft step reads: every parameter but embedding tables, which a
  step gathers one row of, unless the table is also the (tied) head."""
  if not isinstance(draft, nnx.Module):
    return 0
  tied = bool(getattr(draft.config, "tie_embeddings", False)) and not hasattr(draft, "lm_head")
  total = 0
  for path, leaf in nnx.to_flat_state(nnx.state(draft, nnx.Param)):
    name = "/".join(map(str, path))
    if "embed" in name.split("/")[0] and not (tied and name.split("/")[0] == "embed"):
      continue
    total += leaf[...].nbytes
  return total


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=import_gguf.default_out_dir())
  p.add_argument("--caches", default="512,1024")
  p.add_argument("--gammas", default="1,4")
  p.add_argument("--drafters", default=",".join(DRAFTERS))
  p.add_argument("--draft_vocab", type=int, default=8192, help="the EAGLE-3 head's and block drafter's head rows")
  p.add_argument("--cut_layers", type=int, default=2, help="layers of the independent draft cut from the target")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--layout", default="auto", choices=backend_layout.LAYOUTS)
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "draft_cost.md"))
  args = p.parse_args(argv)
  kinds = [k for k in args.drafters.split(",") if k]
  for k in kinds:
    if k not in DRAFTERS:
      p.error(f"unknown drafter {k!r}: pick from {', '.join(DRAFTERS)}")
  if not os.path.exists(os.path.join(args.model, "config.json")):
    import_gguf.import_gguf(args.model)
  bw = read_bandwidth()
  target = models.load_hf(args.model, dtype=jnp.dtype(args.dtype))
  drafts = {k: build(k, target, args.dtype, args.draft_vocab, args.cut_layers) for k in kinds}
  target = backend_layout.for_decoding(target, args.layout)
  drafts = {k: backend_layout.for_decoding(d, args.layout) if isinstance(d, nnx.Module) else d
            for k, d in drafts.items()}
  gammas = [int(g) for g in args.gammas.split(",")]
  lines, rows = [], []
  for cache in [int(s) for s in args.caches.split(",")]:
    step = evaluate.step_seconds(target, 1, cache)
    for kind, draft in drafts.items():
      nbytes = step_weight_bytes(draft)
      for g in gammas:
        if kind == "block" and g > 7:
          continue
        r = evaluate.round_seconds(draft, g, cache) / step
        passes = proposer.passes_per_round(draft, g)
        bound = nbytes * passes / bw / step
        rows.append(dict(cache=cache, drafter=kind, gamma=g, r=r, c=r / g, bound_c=bound / g, weight_bytes=nbytes))
        lines.append(f"| {cache} | {step * 1e3:.1f} | {kind} | {nbytes / 1e6:.1f} | {g} | {r:.3f} | {r / g:.3f} | "
                     f"{bound / g:.3f} |")
        print(lines[-1], flush=True)
  text = "\n".join([
      "# What one proposal costs, per drafter, on the real target", "",
      f"Command: `python experiments/bench_draft_cost.py --caches {args.caches} --gammas {args.gammas} "
      f"--drafters {args.drafters} --draft_vocab {args.draft_vocab} --cut_layers {args.cut_layers} --dtype {args.dtype} --layout {args.layout} --out {os.path.relpath(args.out, ROOT)}`", "",
      f"Machine: {backend_layout.describe_cpu()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
      f"({jax.devices()[0].platform}); read bandwidth measured in this run: {bw / 1e9:.1f} GB/s. "
      f"Target and drafts in {args.dtype}, layout {backend_layout.resolve(args.layout, jnp.dtype(args.dtype))}; "
      "the drafts are untrained (a draft's cost does not depend on its weights' values); B=1, each cache a quarter full.", "",
      "r(gamma) = one proposal round of gamma drafts (the pending token fed, then gamma draft steps, "
      "or one block pass) / the target's one-token step; c = r / gamma (per drafted token, as in "
      "tau / (gamma c + v)); bound = the c of a draft reading its weights at the measured bandwidth "
      "(weight MB per step x passes per round / bandwidth / target step / gamma).", "",
      "| cache slots | target step ms | drafter | weight MB per step | gamma | r(gamma) | c | bound c |",
      "|---:|---:|---|---:|---:|---:|---:|---:|", *lines, ""])
  write_text(args.out, text)
  return rows


if __name__ == "__main__":
  main()

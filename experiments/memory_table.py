"""Memory per device for a 7B target + 0.5B draft as the fsdp and tensor mesh sizes vary.

    python experiments/memory_table.py [--out experiments/results/memory.md]

Computed from the model configs (Qwen2.5-7B-Instruct target, Qwen2.5-0.5B-Instruct draft;
the public config.json values, written out below so nothing is downloaded) and this
project's sharding rules (`sharding.DEFAULT_RULES`, with indivisible dimensions
replicated exactly as `logical_to_spec` does). Per device:
* target: frozen bf16 parameters (2 B/param);
* draft: fp32 parameters + fp32 gradients + AdamW's two fp32 moments (16 B/param);
* KV caches for speculative decoding (bf16, both models), for a decode batch of 32 rows x
  4096 positions, split over data x fsdp (batch) and tensor (kv heads, where they divide).
Activations are not included: with chunked losses (distill/step.py) the [B, T, V] logits
are never materialised, and the rest scales with the per-device micro-batch.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from specdistill_jax import models, sharding  # noqa: E402
from studylib import write_text  # noqa: E402

QWEN25_7B = models.ModelConfig(vocab_size=152064, d_model=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                               head_dim=128, mlp_dim=18944, architecture="qwen2", rope_theta=1e6,
                               qkv_bias=True, tie_embeddings=False, max_seq_len=32768,
                               dtype="bfloat16", param_dtype="bfloat16")
QWEN25_05B = models.ModelConfig(vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2,
                                head_dim=64, mlp_dim=4864, architecture="qwen2", rope_theta=1e6,
                                qkv_bias=True, tie_embeddings=True, max_seq_len=32768)
MESHES = ((1, 1, 1), (1, 8, 1), (1, 4, 2), (1, 2, 4), (1, 1, 8), (2, 4, 1), (1, 16, 1), (1, 8, 2),
          (4, 8, 1), (1, 32, 1), (1, 64, 4))


class _Mesh:
  """Just the axis sizes `logical_to_spec` reads."""

  def __init__(self, data, fsdp, tensor):
    self.shape = {"data": data, "fsdp": fsdp, "tensor": tensor}


def sharded_bytes(config: models.ModelConfig, mesh, bytes_per_param: float) -> float:
  """Largest per-device share of the parameters (x bytes/param) under the rules."""
  _, state = nnx.split(nnx.eval_shape(lambda: models.Transformer(config, rngs=nnx.Rngs(0))))
  total = 0.0
  for var in nnx.to_flat_state(state):
    v = var[1]
    shape = v.get_value().shape
    spec = sharding.logical_to_spec(v.get_metadata()["logical_axes"], shape, mesh)
    shard = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      shard *= dim // int(np.prod([mesh.shape[a] for a in axes] or [1]))
    total += shard * bytes_per_param
  return total


def kv_bytes(config: models.ModelConfig, mesh, batch: int, positions: int) -> float:
  batch_split = mesh.shape["data"] * mesh.shape["fsdp"]
  heads = config.num_kv_heads
  head_split = mesh.shape["tensor"] if heads % mesh.shape["tensor"] == 0 else 1
  rows = int(np.ceil(batch / batch_split))
  return 2 * config.num_layers * rows * positions * (heads // head_split) * config.head_dim * 2


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--positions", type=int, default=4096)
  p.add_argument("--out", default="experiments/results/memory.md")
  args = p.parse_args(argv)
  gib = 2.0 ** 30
  rows = []
  for data, fsdp, tensor in MESHES:
    mesh = _Mesh(data, fsdp, tensor)
    t = sharded_bytes(QWEN25_7B, mesh, 2)
    d = sharded_bytes(QWEN25_05B, mesh, 16)
    kv = kv_bytes(QWEN25_7B, mesh, args.batch, args.positions) + kv_bytes(QWEN25_05B, mesh, args.batch,
                                                                          args.positions)
    rows.append(f"| {data} x {fsdp} x {tensor} | {data * fsdp * tensor} | {t / gib:.2f} | {d / gib:.2f} | "
                f"{kv / gib:.2f} | {(t + d + kv) / gib:.2f} |")
  text = "\n".join([
      "# Memory per device: 7B target + 0.5B draft", "",
      f"Command: `python experiments/memory_table.py --batch {args.batch} --positions {args.positions}`", "",
      f"Target Qwen2.5-7B ({QWEN25_7B.num_params() / 1e9:.2f}B params, frozen, bf16); draft Qwen2.5-0.5B "
      f"({QWEN25_05B.num_params() / 1e9:.2f}B params, trained: fp32 params + grads + AdamW moments = 16 B/param); "
      f"KV caches of both for {args.batch} rows x {args.positions} positions in bf16. GiB per device, from the "
      "sharding rules (embed over fsdp; heads, kv heads, mlp and vocab over tensor; indivisible dims replicated).",
      "", "| mesh data x fsdp x tensor | devices | target params | draft train state | KV caches | total |",
      "|---|---:|---:|---:|---:|---:|", *rows, "",
      "Reading: fsdp and tensor both divide the parameter and optimizer memory; data does not (it replicates "
      "them) but divides the batch, hence the KV cache. Qwen2.5-7B has 4 kv heads, so tensor > 4 stops "
      "splitting its KV cache; the 0.5B draft's 2 kv heads stop at tensor 2.", ""])
  write_text(args.out, text)


if __name__ == "__main__":
  main()

"""The decode kernels for B=1 decoding on CPUs with AVX512-BF16 (cpu_gemv.cc), in bf16 and fp32.

Three kernels: the matmul of a decode step's few token rows, or of a prefill's (`matmul`), the
cached attention of a few new tokens with the cache write fused in (`cached_attention`), and the
embedding's row gather of a bf16 table (`rows`: XLA:CPU runs a bf16 gather in fp32 and converts
the whole table for it, once per decode call).

XLA:CPU runs a bf16 dot of a few token rows against a weight matrix at 0.3-0.5 of the memory
bandwidth on such a CPU (`python ../shared/bench/xla_cpu_dots.py`); decoding is such dots. This
kernel reads each weight once, as one sequential stream per thread, from a packed copy (`pack`:
blocks of 64, 32 or 16 rows whose input pairs follow each other), multiplies it with up to 6
token rows per load (vdpbf16ps of 16 outputs x one input pair, fp32 accumulation in the lanes;
fp32 weights: FMAs) and splits the row blocks over XLA's own intra-op threads. `python experiments/bench_target.py` times the target's
pass with it (layout `kernel`) against XLA's dots (`fused`, `standard`) in one run.

It is compiled on first use with the C++ compiler on PATH (`g++ -O3 -march=native` against
jaxlib's XLA FFI headers, ~3 s) into ~/.cache/specdistill_jax (or $SPECDISTILL_KERNEL_CACHE),
keyed by the source, jax's version and the CPU, and registered as an XLA FFI custom call.
`available()` is False, and decoding keeps XLA's dots, where the CPU lacks avx512_bf16, the
backend is not the CPU, no compiler is found or the build fails (the reason: `unavailable_reason()`).
Only `models/layers.py` calls them (`mm_left` for the fused-layout weights, `Attention.cached`
for the cache, with the rotary embedding of q and k done in the kernel), for a model that `models/backend_layout.py` put in the `kernel` layout.

The attention kernel: XLA:CPU spends ~150 us per layer on a one-token attention over a few
hundred cached slots (the mask, the bucket switch, transposes of the cache slice, softmax) and
~60 us on the two cache scatters, ~6.4 of the real target's 21.7 ms one-token pass (30 layers,
`/tmp` subtraction profile, this CPU); the work itself is a few microseconds. The kernel writes
the new keys/values in place (the cache buffers are aliased to its outputs) and attends each
query over the filled prefix only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_gemv.cc")
_TARGETS = {"bfloat16": "specdistill_cpu_gemv_bf16", "float32": "specdistill_cpu_gemv_f32"}
_ATTENTION_TARGETS = {"bfloat16": "specdistill_cpu_attention_bf16", "float32": "specdistill_cpu_attention_f32"}
_ROWS_TARGET = "specdistill_cpu_rows_bf16"
MAX_ROWS = 4096  # token rows per call (a prefill's too; kMaxM in cpu_gemv.cc); more: XLA's dot
ROW_BLOCK = 16  # `pack` takes weights whose row count is a multiple of this (blocks of 64, 32 or 16 rows)
MAX_ATTENTION_ROWS = 32  # new tokens per row; a prefill's attention is XLA's (batched dots win there)
MAX_HEAD_DIM = 256  # the attention kernel's largest head (kMaxHeadDim in cpu_gemv.cc)


def _cache_dir() -> str:
  return os.environ.get("SPECDISTILL_KERNEL_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "specdistill_jax"))


def _build(cpu_flags: frozenset) -> str:
  """Path of the compiled library (built now unless a build of the same source exists)."""
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise RuntimeError("no C++ compiler on PATH (g++ or $CXX)")
  include = jax.ffi.include_dir()
  with open(_SOURCE, "rb") as fh:
    key = hashlib.sha256(fh.read() + jax.__version__.encode() + " ".join(sorted(cpu_flags)).encode()
                         + compiler.encode()).hexdigest()[:16]
  out = os.path.join(_cache_dir(), f"cpu_gemv_{key}.so")
  if os.path.exists(out):
    return out
  os.makedirs(_cache_dir(), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
  os.close(fd)
  cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}",
         _SOURCE, "-o", tmp]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
  os.replace(tmp, out)  # atomic: concurrent builders (test workers) each write their own temp file
  return out


@functools.lru_cache(maxsize=1)
def _load() -> str | None:
  """Build and register the kernel once per process; None on success, else why not."""
  from specdistill_jax.models import backend_layout  # the one place that reads the CPU's flags
  if jax.default_backend() != "cpu":
    return f"the backend is {jax.default_backend()}, not the CPU"
  flags = backend_layout.cpu_flags()
  if "avx512_bf16" not in flags:
    return "this CPU has no avx512_bf16"
  try:
    lib = ctypes.cdll.LoadLibrary(_build(flags))
    for name in (*_TARGETS.values(), *_ATTENTION_TARGETS.values(), _ROWS_TARGET):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  except (OSError, RuntimeError, AttributeError) as e:
    return f"building the kernel failed: {e}"
  return None


def available() -> bool:
  """True if the kernel is built and registered for this process (see the module docstring)."""
  return _load() is None


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True)."""
  return _load()


def packable(w) -> bool:
  """True if a [N, K] weight can be packed for `matmul` (N a multiple of ROW_BLOCK, K even)."""
  return w.ndim == 2 and w.shape[0] % ROW_BLOCK == 0 and w.shape[1] % 2 == 0


def block_rows(n: int) -> int:
  """Rows per block of `pack` for N rows: 64, 32 or 16, the largest that divides N."""
  for b in (64, 32, ROW_BLOCK):
    if n % b == 0:
      return b
  raise ValueError(f"cpu_gemv.pack: {n} rows is not a multiple of {ROW_BLOCK} (check `packable` first)")


def pack(w):
  """w [N, K] -> [N / NB, K / 2, NB, 2] (NB = `block_rows(N)`), `matmul`'s weight: a block's input
  pairs one after another, each holding the block's NB rows side by side, so the kernel reads a
  block as one stream and one vector holds 16 outputs x 2 inputs (call `packable` first)."""
  n, k = w.shape
  nb = block_rows(n)
  return w.reshape(n // nb, nb, k // 2, 2).transpose(0, 2, 1, 3)


def unpack(p):
  """The [N, K] weight a `pack` result holds (what XLA's dots and the standard layout read)."""
  nb, kc, r, c = p.shape
  return p.transpose(0, 2, 1, 3).reshape(nb * r, kc * c)


def is_packed(w) -> bool:
  return w.ndim == 4


def _kernel_dtype(*dtypes) -> str | None:
  """'bfloat16' / 'float32' if every dtype is that one (the kernels' two element types), else None."""
  names = {jnp.dtype(d).name for d in dtypes}
  return names.pop() if len(names) == 1 and names <= set(_TARGETS) else None


def applies(rows: int, x_dtype, w) -> bool:
  """True if `matmul` runs a [rows, K] x packed w product (bf16 or fp32, both the same) (else XLA's dot)."""
  return 1 <= rows <= MAX_ROWS and is_packed(w) and _kernel_dtype(x_dtype, w.dtype) is not None and available()


def matmul(x, w_packed):
  """x [M, K] times the packed [N, K] weight (`pack`) transposed -> [M, N] fp32, both bf16 (products
  exact in fp32) or both fp32 (call `applies` first)."""
  if not available():
    raise RuntimeError(f"cpu_gemv is unavailable: {unavailable_reason()}")
  out = jax.ShapeDtypeStruct((x.shape[0], w_packed.shape[0] * w_packed.shape[2]), jnp.float32)
  target = _TARGETS[_kernel_dtype(x.dtype, w_packed.dtype)]
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(x, w_packed)


def attention_applies(q, keys) -> bool:
  """True if the cached attention kernel runs queries q [B, T, H, D] (or the heads [B, T, H + 2 Hkv, D]
  of `cached_attention_qkv`) against this cache (T <= MAX_ATTENTION_ROWS, D even and <= MAX_HEAD_DIM,
  a bf16 or fp32 cache)."""
  return (q.shape[1] <= MAX_ATTENTION_ROWS and q.shape[-1] <= MAX_HEAD_DIM and q.shape[-1] % 2 == 0
          and _kernel_dtype(keys.dtype) is not None and available())


def cached_attention_qkv(qkv, keys, values, slots, mask, cos, sin, num_heads: int):
  """The attention of a layer's projected heads qkv [B, T, H + 2 Hkv, D] (q, k, v in turn, before the
  rotary embedding) over the cache keys/values [B, S, Hkv, D]: q and k rotated by the tables cos/sin
  [B, T, D] (rope.apply_rotary's arithmetic, fp32, rounded to the cache's dtype), k and v written at
  slots [B, T] (slots >= S dropped), then each query attends over the slots its mask [B, T, S] allows,
  up to the row's last written slot. Returns (out [B, T, H, D], keys', values') in the cache's dtype;
  the cache buffers are updated in place where XLA can donate them. Call `attention_applies` first."""
  if not available():
    raise RuntimeError(f"cpu_gemv is unavailable: {unavailable_reason()}")
  dt = keys.dtype
  b, t, _, d = qkv.shape
  outs = (jax.ShapeDtypeStruct((b, t, num_heads, d), dt), jax.ShapeDtypeStruct(keys.shape, dt),
          jax.ShapeDtypeStruct(values.shape, dt))
  call = jax.ffi.ffi_call(_ATTENTION_TARGETS[_kernel_dtype(dt)], outs, vmap_method="sequential",
                          input_output_aliases={3: 1, 4: 2})
  return call(qkv.astype(dt), cos.astype(jnp.float32), sin.astype(jnp.float32), keys, values,
              slots.astype(jnp.int32), mask.astype(jnp.bool_))


def cached_attention(q, k, v, keys, values, slots, mask):
  """`cached_attention_qkv` of already rotated q [B, T, H, D], k/v [B, T, Hkv, D] (the tables cos = 1,
  sin = 0 leave them as they are)."""
  dt = keys.dtype
  tables = jnp.ones(q.shape[:2] + q.shape[-1:], jnp.float32)
  qkv = jnp.concatenate([q.astype(dt), k.astype(dt), v.astype(dt)], axis=2)
  return cached_attention_qkv(qkv, keys, values, slots, mask, tables, jnp.zeros_like(tables), q.shape[2])


def rows_applies(table) -> bool:
  """True if `rows` gathers from this table (a bf16 [V, D] table)."""
  return table.ndim == 2 and table.dtype == jnp.bfloat16 and available()


def rows(table, ids):
  """table [V, D] (bf16) rows at ids [...] (int; clamped to [0, V)) -> [..., D], copied without
  converting the table (call `rows_applies` first)."""
  if not available():
    raise RuntimeError(f"cpu_gemv is unavailable: {unavailable_reason()}")
  flat = ids.reshape(-1).astype(jnp.int32)
  out = jax.ShapeDtypeStruct((flat.shape[0], table.shape[1]), table.dtype)
  return jax.ffi.ffi_call(_ROWS_TARGET, out, vmap_method="sequential")(table, flat).reshape(*ids.shape, -1)

"""models/cpu_gemv.py: the bf16 small-M matmul kernel computes XLA's product, in any row count.

The kernel multiplies bf16 values (their products are exact in fp32) and accumulates in fp32 in
another order than XLA: it agrees with an fp64 reference to fp32 reduction-order tolerance. A
wrong tail mask, row offset or thread split moves whole outputs by O(1). Each output element
is computed by the same instructions whatever the number of token rows, so a k-token pass
gives exactly the one-token pass's numbers (greedy SD == greedy AR in bf16 wherever the dots
run in the kernel). Skipped where the kernel cannot be built (no avx512_bf16 or no compiler).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import models, sampling
from specdistill_jax.models import backend_layout, cpu_gemv
from tests.tolerances import EPS32

pytestmark = pytest.mark.skipif(not cpu_gemv.available(), reason=f"cpu_gemv: {cpu_gemv.unavailable_reason()}")


def _bf16(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(jnp.bfloat16)


def test_pack_round_trips_and_refuses_shapes_it_cannot_take():
  w = jnp.arange(128 * 6, dtype=jnp.float32).reshape(128, 6)
  p = cpu_gemv.pack(w)
  assert p.shape == (2, 3, 64, 2)
  np.testing.assert_array_equal(np.asarray(p[1, 2, 5]), np.asarray(w[64 + 5, 4:6]))  # row 64 + 5, third pair
  np.testing.assert_array_equal(np.asarray(cpu_gemv.unpack(p)), np.asarray(w))
  assert [cpu_gemv.pack(w[:n]).shape[2] for n in (96, 48)] == [32, 16]
  assert cpu_gemv.packable(w) and not cpu_gemv.packable(w[:7]) and not cpu_gemv.packable(w[:, :5])


# every block width (64, 32, 16 rows), a K that is not a multiple of 32, and the fp32 weights
@pytest.mark.parametrize("n,k,dtype", [(80, 96, jnp.bfloat16), (96, 34, jnp.bfloat16), (4160, 576, jnp.bfloat16),
                                       (48, 1536, jnp.bfloat16), (4160, 576, jnp.float32), (96, 34, jnp.float32)])
def test_matmul_equals_the_exact_product_for_every_row_count(n, k, dtype):
  rng = np.random.default_rng(n)
  w = _bf16(rng, n, k).astype(dtype)
  x = _bf16(rng, 100, k).astype(dtype)  # a prefill's rows: groups of rows re-read each block
  xf, wf = np.asarray(x, np.float64), np.asarray(w, np.float64)
  w = cpu_gemv.pack(w)
  full = np.asarray(jax.jit(cpu_gemv.matmul)(x, w))
  exact = xf @ wf.T
  atol = 8 * EPS32 * np.sqrt(k) * (np.abs(xf) @ np.abs(wf).T)
  assert np.all(np.abs(full - exact) <= atol)
  for m in range(1, 17):  # a decode step's rows: each row's numbers do not depend on the other rows
    np.testing.assert_array_equal(np.asarray(jax.jit(cpu_gemv.matmul)(x[:m], w)), full[:m])
  assert cpu_gemv.applies(cpu_gemv.MAX_ROWS, x.dtype, w) and not cpu_gemv.applies(cpu_gemv.MAX_ROWS + 1, x.dtype, w)


def test_matmul_runs_inside_loops_and_conditionals():
  rng = np.random.default_rng(1)
  w, x = cpu_gemv.pack(_bf16(rng, 304, 64)), _bf16(rng, 2, 64)

  @jax.jit
  def f(x, w):
    def body(i, acc):
      y = jax.lax.cond(i % 2 == 0, lambda: cpu_gemv.matmul(x, w), lambda: -cpu_gemv.matmul(x, w))
      return acc + y
    return jax.lax.fori_loop(0, 3, body, jnp.zeros((2, 304), jnp.float32))

  np.testing.assert_array_equal(np.asarray(f(x, w)), np.asarray(cpu_gemv.matmul(x, w)))


def test_rows_gathers_the_embedding_without_converting_the_table():
  rng = np.random.default_rng(2)
  table = _bf16(rng, 97, 64)
  ids = jnp.asarray([[0, 96, 5], [5, 3, 1]], jnp.int32)
  np.testing.assert_array_equal(np.asarray(jax.jit(cpu_gemv.rows)(table, ids), np.float32),
                                np.asarray(jnp.take(table, ids, axis=0), np.float32))
  # a bf16 decode loop: XLA's own gather converts the whole [V, D] table to fp32 (hoisted out of
  # the loop: 113 MB per call for the real target); the kernel layout's embedding does not
  target = models.create(models.preset("tiny", 97, dtype="bfloat16", param_dtype="bfloat16"), seed=3)  # as loaded
  table = f"f32[{target.config.vocab_size},{target.config.d_model}]"
  assert table in _decode_hlo(backend_layout.for_decoding(target, "fused"))  # XLA's gather
  assert table not in _decode_hlo(backend_layout.for_decoding(target, "kernel"))


def _decode_hlo(model) -> str:
  """The optimised HLO of greedy `generate`'s decode loop after one 4-token prompt."""
  from flax import nnx
  graphdef, state = nnx.split(model)
  (cache, logits), _ = sampling.autoregressive._prefill_program(graphdef, 32)(
      state, jnp.asarray([[1, 2, 3, 4]], jnp.int32), jnp.asarray([4], jnp.int32))
  program = sampling.autoregressive._program(graphdef, 8, 32, True, None, None, (), 0)
  return program._jit.lower(state, cache, logits, jax.random.PRNGKey(0), jnp.float32(1.0)).compile().as_text()


def _bf16_target():
  return models.create(models.preset("tiny", 97, dtype="bfloat16", tie_embeddings=False), seed=3)


def test_kernel_layout_decodes_like_xla_and_sd_equals_ar_exactly():
  target = _bf16_target()
  fused, kernel = (backend_layout.for_decoding(target, name) for name in ("fused", "kernel"))
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (1, 6)), jnp.int32)
  outs = []
  for model in (fused, kernel):
    cache = model.init_cache(1, 32)
    logits, cache, _ = model.forward_cached(tokens, cache)
    step, _, _ = model.forward_cached(tokens[:, :1], cache)
    outs.append((np.asarray(logits, np.float32), np.asarray(step, np.float32)))
  for a, b in zip(*outs):
    # bf16 activations: a different fp32 sum may round one bf16 ulp the other way, layer after layer
    scale = np.abs(a).max()
    assert np.abs(a - b).max() <= 4 * 2.0 ** -8 * target.config.num_layers * scale
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  draft = backend_layout.for_decoding(models.create(models.preset("micro", 97, dtype="bfloat16"), seed=1), "kernel")
  expected = sampling.generate(kernel, prompts, 12)
  out, _ = sampling.speculative_generate(kernel, draft, prompts, 12, gamma=3)
  assert out == expected


@pytest.mark.parametrize("vocab,tied", [(96, True), (97, False)])
def test_kernel_layout_packs_the_weights_and_converts_back_exactly(vocab, tied):
  from flax import nnx
  target = models.create(models.preset("tiny", vocab, dtype="bfloat16", tie_embeddings=tied), seed=3)
  kernel = backend_layout.for_decoding(target, "kernel")
  flat = dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(kernel))))
  for name in ("qkv", "o"):  # the kernel reads the packed copy, XLA's longer dots the [out, in] weight
    packed, plain = flat[("layers", 0, "attn", f"{name}_p")], flat[("layers", 0, "attn", f"{name}_t")]
    np.testing.assert_array_equal(np.asarray(cpu_gemv.unpack(packed), np.float32), np.asarray(plain, np.float32))
  head = ("embed_p",) if tied else ("lm_head_p",)
  assert (head in flat) == (vocab % cpu_gemv.ROW_BLOCK == 0)  # 97 rows: no copy, XLA's dot
  back = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(backend_layout.standard(kernel))))
  ref = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(target)))
  assert sorted(back) == sorted(ref)
  for key in ref:
    np.testing.assert_array_equal(np.asarray(back[key], np.float32), np.asarray(ref[key], np.float32))
  # a prefill's dots run in the kernel too: the fused layout's (XLA's dots) up to fp32 sums' order
  # and the bf16 roundings that follow them, layer after layer
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, vocab, (2, 20)), jnp.int32)
  fused = backend_layout.for_decoding(target, "fused")
  a, b = np.asarray(kernel(tokens), np.float32), np.asarray(fused(tokens), np.float32)
  assert np.abs(a - b).max() <= 4 * 2.0 ** -8 * target.config.num_layers * np.abs(b).max()


def _attention_reference(q, keys, values, mask):
  """fp64 attention of bf16 inputs: what the kernel computes before its bf16 output rounding."""
  q, keys, values = (np.asarray(a, np.float64) for a in (q, keys, values))
  b, t, h, d = q.shape
  group = h // keys.shape[2]
  kk, vv = np.repeat(keys, group, axis=2), np.repeat(values, group, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, kk) / np.sqrt(d)
  scores = np.where(np.asarray(mask)[:, None], scores, -np.inf)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", p, vv)


@pytest.mark.parametrize("t,size,tree,dtype", [(1, 40, False, jnp.bfloat16), (3, 40, True, jnp.bfloat16),
                                              (8, 512, False, jnp.bfloat16), (3, 40, True, jnp.float32)])
def test_cached_attention_writes_the_cache_and_attends_over_what_each_query_may_see(t, size, tree, dtype):
  """Ragged rows (one near the end of the cache, its last slots dropped), a causal or a random
  tree mask; the 512-slot case runs on the pool threads. Each query equals the fp64 attention
  up to the rounding of its output (bf16, or fp32), and equals the same query run alone bitwise."""
  from specdistill_jax.models import kv_cache as kvc
  rng = np.random.default_rng(t)
  b, h, hkv, d = 2, 9, 3, 64
  arrays = (_bf16(rng, *shape).astype(dtype) for shape in ((b, t, h, d), (b, t, hkv, d), (b, t, hkv, d),
                                                           (b, size, hkv, d), (b, size, hkv, d)))
  q, k, v, keys, values = arrays
  slots = kvc.write_positions(jnp.asarray([5, size - 2]), t)
  mask = np.array(kvc.cached_attention_mask(slots, size))
  if tree:  # a query sees a random subset of the earlier slots, and always itself
    mask &= rng.random(mask.shape) < 0.5
    mask[np.arange(b)[:, None], np.arange(t)[None, :], np.minimum(np.asarray(slots), size - 1)] = True
  out, keys2, values2 = jax.jit(cpu_gemv.cached_attention)(q, k, v, keys, values, slots, jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(keys2), np.asarray(kvc.scatter_rows(keys, k, slots)))
  np.testing.assert_array_equal(np.asarray(values2), np.asarray(kvc.scatter_rows(values, v, slots)))
  exact = _attention_reference(q, keys2, values2, mask)
  err = np.abs(np.asarray(out, np.float64) - exact)
  rounding = 2.0 ** -8 if dtype == jnp.bfloat16 else EPS32
  assert out.dtype == dtype
  assert np.all(err <= rounding * np.abs(exact) + 64 * EPS32 * np.abs(np.asarray(values2, np.float64)).max())
  one, _, _ = jax.jit(cpu_gemv.cached_attention)(q[:, -1:], k[:, -1:], v[:, -1:], keys2, values2,
                                                  slots[:, -1:], jnp.asarray(mask[:, -1:]))
  np.testing.assert_array_equal(np.asarray(one), np.asarray(out[:, -1:]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_hidden_slots_between_visible_ones_change_nothing(dtype):
  """A tree node attends to its prefix, the root and its ancestors, with its siblings' slots hidden
  in between; a chain or one-token steps hold the same tokens side by side. The query must get the
  same numbers in both layouts (the softmax denominator sums the visible slots by rank, not by slot):
  greedy trees equal greedy AR bit for bit. Summed by slot lane, 59 of the 576 bf16 outputs differed."""
  from specdistill_jax.models import kv_cache as kvc
  rng = np.random.default_rng(5)
  h, hkv, d, size, prefix = 9, 3, 64, 64, 37
  q = _bf16(rng, 4, 1, h, d).astype(dtype)  # four queries, one token each
  kv = [_bf16(rng, 1, 48, hkv, d).astype(dtype) for _ in range(2)]  # the tokens' keys and values
  # tree layout: the prefix, then 11 nodes of which the query sees slots prefix+1, +4, +9 (its path)
  path = [prefix + 1, prefix + 4, prefix + 9]
  gaps = [prefix + 2, prefix + 3, prefix + 5]
  for n in range(1, 4):  # the path's first n nodes (the query is the n-th)
    spread = [*range(prefix + 1), *path[:n]]
    tree_cache = [jnp.zeros((1, size, hkv, d), dtype).at[:, spread].set(x[:, :len(spread)]) for x in kv]
    tree_cache = [c.at[:, gaps].set(x[:, 40:43]) for c, x in zip(tree_cache, kv)]  # the siblings' entries
    mask = np.zeros((1, 1, size), bool)
    mask[0, 0, spread] = True
    slot = jnp.asarray([[spread[-1]]], jnp.int32)
    x = [c[:, spread[-1]:spread[-1] + 1] for c in tree_cache]  # the query's own k/v, written again
    tree_out = cpu_gemv.cached_attention(q[n][None], *x, *tree_cache, slot, jnp.asarray(mask))[0]
    side = [jnp.zeros((1, size, hkv, d), dtype).at[:, :len(spread)].set(c[:, spread]) for c in tree_cache]
    slot = jnp.asarray([[len(spread) - 1]], jnp.int32)
    chain_out = cpu_gemv.cached_attention(q[n][None], *x, *side, slot, kvc.cached_attention_mask(slot, size))[0]
    np.testing.assert_array_equal(np.asarray(tree_out, np.float32), np.asarray(chain_out, np.float32))


def test_cached_attention_qkv_applies_the_rotary_embedding_like_rope():
  """The layer's call: q/k/v heads before the rotary embedding, rotated in the kernel. The keys it
  writes equal rope.apply_rotary's (up to one bf16 rounding: XLA may fuse the multiply-add), the
  values are copied, and each query attends like the fp64 attention of the rotated q and keys. A
  rotation by the wrong half, sign or table row moves keys by O(1)."""
  from specdistill_jax.models import kv_cache as kvc, rope
  rng = np.random.default_rng(11)
  b, t, h, hkv, d, size = 2, 5, 9, 3, 64, 40
  heads = _bf16(rng, b, t, h + 2 * hkv, d)
  keys, values = _bf16(rng, b, size, hkv, d), _bf16(rng, b, size, hkv, d)
  config = models.preset("tiny", 97, head_dim=d, num_heads=h, num_kv_heads=hkv)
  positions = jnp.asarray([[3, 4, 5, 6, 7], [30, 31, 32, 33, 34]], jnp.int32)
  cos, sin = rope.rotary_tables(config, positions)
  slots = positions
  mask = kvc.cached_attention_mask(slots, size)
  out, keys2, values2 = jax.jit(cpu_gemv.cached_attention_qkv, static_argnums=7)(
      heads, keys, values, slots, mask, cos, sin, h)
  q, k, v = heads[:, :, :h], heads[:, :, h:h + hkv], heads[:, :, h + hkv:]
  want_keys = np.asarray(kvc.scatter_rows(keys, rope.apply_rotary(k, cos, sin), slots), np.float64)
  np.testing.assert_allclose(np.asarray(keys2, np.float64), want_keys, rtol=2.0 ** -8, atol=1e-30)
  np.testing.assert_array_equal(np.asarray(values2), np.asarray(kvc.scatter_rows(values, v, slots)))
  exact = _attention_reference(rope.apply_rotary(q, cos, sin), keys2, values2, np.asarray(mask))
  err = np.abs(np.asarray(out, np.float64) - exact)
  assert np.all(err <= 2 * 2.0 ** -8 * np.abs(exact) + 64 * EPS32 * np.abs(np.asarray(values2, np.float64)).max())


def test_cached_attention_updates_a_loop_carried_cache():
  """Tokens written step by step inside a fori_loop (the decode loop's carry: XLA aliases the
  buffers) are each seen by the next step, as in the same steps run one call at a time."""
  from specdistill_jax.models import kv_cache as kvc
  rng = np.random.default_rng(7)
  size, steps = 16, 5
  q, k, v = (_bf16(rng, steps, 1, 1, 4, 32) for _ in range(3))
  q = _bf16(rng, steps, 1, 1, 8, 32)
  cache = (jnp.zeros((1, size, 4, 32), jnp.bfloat16),) * 2

  def step(i, carry):
    keys, values, acc = carry
    slots = jnp.full((1, 1), i, jnp.int32)
    out, keys, values = cpu_gemv.cached_attention(q[i], k[i], v[i], keys, values, slots,
                                                  kvc.cached_attention_mask(slots, size))
    return keys, values, acc.at[i].set(out)

  acc = jnp.zeros((steps, 1, 1, 8, 32), jnp.bfloat16)
  looped = jax.jit(lambda: jax.lax.fori_loop(0, steps, step, (*cache, acc)))()
  carry = (*cache, acc)
  for i in range(steps):
    carry = step(i, carry)
  for a, b in zip(looped, carry):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(looped[2][-1], np.float32)).max() > 0


def test_greedy_sd_equals_ar_on_near_ties_after_a_long_prompt():
  """Prompts of 40 tokens prefill through XLA's attention (more new tokens than the attention
  kernel takes), the decode through the kernels. AR must feed the last prompt token as a
  decode-sized pass, as SD's first round does: if AR took its first logits from the prefill (the
  prompt's last token through XLA), a head scaled down to make near-ties common flips greedy
  tokens (5 of these 48 rows did)."""
  target = _bf16_target()
  target.lm_head[...] = target.lm_head[...] * 0.001
  kernel = backend_layout.for_decoding(target, "kernel")
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 97, 40)) for _ in range(48)]
  expected = sampling.generate(kernel, prompts, 24)
  out, _ = sampling.speculative_generate(kernel, sampling.prompt_lookup(), prompts, 24, gamma=3)
  assert out == expected


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_pass_of_many_tokens_computes_every_row_as_one_token_passes_do(dtype):
  """Batch invariance of the whole cached pass in the kernel layout, what greedy SD == AR rests
  on: feeding 13 tokens at once gives, bit for bit, the features of every layer and the logits of
  feeding them one at a time. The dots and the attention run in the kernels; between them only
  the RMS norms sum. XLA:CPU emits a row reduction over 8 or more rows another way than over
  fewer, in another order: with the norms summed by `jnp.mean`, 28739 of these 37440 fp32 feature
  values differed (bf16 rounds most such differences away, not all: on the 30-layer real target
  greedy tree SD, 9-token passes, departed from AR on 9 of 16 MT-Bench prompts)."""
  config = models.preset("tiny", 97, dtype=dtype, param_dtype=dtype, tie_embeddings=True, d_model=576,
                         num_heads=9, num_kv_heads=3, head_dim=64, mlp_dim=1536, num_layers=4)
  model = backend_layout.for_decoding(models.create(config, seed=3), "kernel")
  tokens, layers = 13, tuple(range(config.num_layers + 1))
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 97, (1, 30 + tokens)), jnp.int32)
  step = jax.jit(lambda x, c: model.forward_cached(x, c, feature_layers=layers))
  cache = step(ids[:, :30], model.init_cache(1, 64)).cache
  together = step(ids[:, 30:], cache)
  one_by_one = []
  for j in range(tokens):
    out = step(ids[:, 30 + j:31 + j], cache)
    cache = out.cache
    one_by_one.append(out)
  for name in ("features", "logits"):
    want = np.concatenate([np.asarray(getattr(o, name), np.float32) for o in one_by_one], axis=1)
    np.testing.assert_array_equal(np.asarray(getattr(together, name), np.float32), want, err_msg=name)

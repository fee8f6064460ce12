"""models/backend_layout.py: the fused decode layout computes what the standard layout does.

The fused layout stores q/k/v and gate/up as single [out, in] matrices (weights as the left
operand); it is a different reduction order of the same sums, so every comparison is at
fp32 tolerance, and a conversion that mixed up heads or swapped gate and up moves the
logits by O(1).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from specdistill_jax import models, sampling
from specdistill_jax.models import backend_layout, cpu_gemv
from tests.tolerances import fp32_atol

TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 9)), jnp.int32)


def _target(**kw):
  return models.create(models.preset("tiny", 97, **kw), seed=3)


def _close(a, b, depth):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(b, a, rtol=0, atol=fp32_atol(a, 256, depth))


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "qkv_bias": True}])
def test_fused_forwards_equal_standard(kw):
  standard = _target(**kw)
  fused = backend_layout.for_decoding(standard, "fused")
  assert backend_layout.is_fused(fused) and not backend_layout.is_fused(standard)
  assert "qkv_t" in nnx.to_pure_dict(nnx.state(fused))["layers"][0]["attn"]
  depth = standard.config.num_layers
  _close(standard(TOKENS), fused(TOKENS), depth)
  outs = []
  for model in (standard, fused):
    cache = model.init_cache(2, 32)
    logits, cache, feats = model.forward_cached(TOKENS, cache, jnp.asarray([9, 4]), feature_layers=(1,))
    step, cache, _ = model.forward_cached(TOKENS[:, :1], cache)  # one token: the two-row trick
    outs.append((logits, feats, step, cache.keys[-1]))
  for a, b in zip(outs[0], outs[1]):
    _close(a, b, depth)


def test_round_trip_and_export_are_exact(tmp_path):
  standard = _target(tie_embeddings=False)
  back = backend_layout.standard(backend_layout.for_decoding(standard, "fused"))
  a, b = nnx.to_pure_dict(nnx.state(standard)), nnx.to_pure_dict(nnx.state(back))
  for x, y in zip(sorted(nnx.traversals.flatten_mapping(a).items()), sorted(nnx.traversals.flatten_mapping(b).items())):
    assert x[0] == y[0]
    np.testing.assert_array_equal(np.asarray(x[1]), np.asarray(y[1]))
  # save_hf writes the standard layout whatever it is given
  models.save_hf(backend_layout.for_decoding(standard, "fused"), str(tmp_path))
  loaded = models.load_hf(str(tmp_path))
  np.testing.assert_array_equal(np.asarray(loaded(TOKENS)), np.asarray(standard(TOKENS)))


def test_decoding_is_unchanged_for_every_kind_of_draft():
  target = _target()
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  expected = sampling.generate(target, prompts, 10)
  fast_target = backend_layout.for_decoding(target, "fused")
  assert sampling.generate(fast_target, prompts, 10) == expected
  drafts = [models.create(models.preset("micro", 97), seed=1),
            models.create_feature_draft(target.config, num_layers=1, target=target, seed=2),
            models.create_block_draft(target.config, block_size=4, target=target, seed=2)]
  for draft in drafts:
    fast_draft = backend_layout.for_decoding(draft, "fused")
    assert backend_layout.is_fused(fast_draft)
    plain, _ = sampling.speculative_generate(target, draft, prompts, 10, gamma=3)
    fast, _ = sampling.speculative_generate(fast_target, fast_draft, prompts, 10, gamma=3)
    assert plain == fast == expected


def test_auto_is_the_kernel_then_fused_with_amx_then_standard(monkeypatch):
  bf16 = _target(dtype="bfloat16")
  monkeypatch.setattr(cpu_gemv, "available", lambda: False)
  monkeypatch.setattr(backend_layout, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "amx_tile"}))
  assert backend_layout.resolve("auto", jnp.bfloat16) == "fused"
  assert backend_layout.is_fused(backend_layout.for_decoding(bf16))
  assert not backend_layout.is_fused(backend_layout.for_decoding(_target()))  # fp32: standard is faster
  assert backend_layout.resolve("auto") == "standard"  # no weights (prompt lookup): nothing to convert
  monkeypatch.setattr(backend_layout, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))  # AMD EPYC
  assert not backend_layout.is_fused(backend_layout.for_decoding(bf16))
  assert backend_layout.resolve("fused", jnp.float32) == "fused"  # an explicit layout is kept
  monkeypatch.setattr(cpu_gemv, "available", lambda: True)  # the kernels build: they win on either CPU
  assert backend_layout.resolve("auto", jnp.bfloat16) == "kernel"
  assert backend_layout.resolve("auto", jnp.float32) == "kernel"
  assert backend_layout.resolve("auto", jnp.float16) == "standard"  # no kernel for it, and no AMX here


def test_kernel_layout_where_it_cannot_build_is_refused(monkeypatch):
  monkeypatch.setattr(cpu_gemv, "available", lambda: False)
  monkeypatch.setattr(cpu_gemv, "unavailable_reason", lambda: "this CPU has no avx512_bf16")
  with pytest.raises(ValueError, match="layout='kernel' is unavailable here .this CPU has no avx512_bf16"):
    backend_layout.for_decoding(_target(dtype="bfloat16"), "kernel")


def test_unknown_layout_is_refused():
  with pytest.raises(ValueError, match="layout='cpu' is not one of"):
    backend_layout.for_decoding(_target(), "cpu")


def test_draft_heads_convert_and_compute_the_same():
  target = _target()
  feature = models.create_feature_draft(target.config, num_layers=1, target=target, seed=2, draft_vocab_size=40)
  fused = backend_layout.for_decoding(feature, "fused")
  pure = nnx.to_pure_dict(nnx.state(fused))
  assert {"fc_t", "lm_head_t"} <= set(pure) and not {"fc", "lm_head"} & set(pure)
  states = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, target.config.d_model)), jnp.float32)
  feats = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, feature.feature_dim)), jnp.float32)
  _close(feature.draft_logits(states), fused.draft_logits(states), 1)
  _close(feature.project_features(feats), fused.project_features(feats), 1)

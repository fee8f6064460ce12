"""Training a DFlash block drafter: anchors inside sequences, per-slot weights, the loss falls
through the Trainer, the export is speculators' dflash, and training raises SD acceptance."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from specdistill_jax import models, sampling
from specdistill_jax.distill import block_loss
from specdistill_jax.distill import step as step_lib
from specdistill_jax.distill.train import Trainer
from tests.distill.helpers import micro_config
from tests.sampling.helpers import tiny


def test_anchors_are_drawn_where_the_next_token_is_a_response_token():
  seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
  loss_mask = jnp.asarray([[0, 0, 1, 1, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1, 1]], jnp.float32)
  tokens = jnp.zeros((2, 8), jnp.int32)
  allowed = [{1, 2, 4, 5}, {0, 1, 2, 3, 4, 5, 6}]  # a + 1 in a's sequence and a response token
  seen = [set(), set()]
  for k in range(40):
    anchors, real = block_loss.sample_anchors(jax.random.PRNGKey(k), tokens, seg, loss_mask, 3)
    for r in range(2):
      picked = [int(a) for a, ok in zip(anchors[r], real[r]) if ok]
      assert len(set(picked)) == len(picked) == 3 and set(picked) <= allowed[r] and picked == sorted(picked)
      seen[r] |= set(picked)
  assert seen == allowed  # every allowed anchor is drawn at some step
  anchors, real = block_loss.sample_anchors(jax.random.PRNGKey(0), tokens, seg, loss_mask, 6)
  assert int(real[0].sum()) == 4  # fewer allowed positions than anchors: the rest are masked


def test_slot_weights_decay_and_average_one():
  w = block_loss.slot_weights(8, 4.0)
  assert w.shape == (7,) and abs(w.mean() - 1) < 1e-6 and np.all(np.diff(w) < 0)
  np.testing.assert_allclose(w[1] / w[0], np.exp(-0.25), rtol=1e-6)
  with pytest.raises(ValueError, match="block_decay=0.0 must be > 0"):
    step_lib.Objective(feature=True, block=True, block_decay=0.0)


def test_adaspec_and_on_policy_are_refused_for_a_block_draft():
  with pytest.raises(ValueError, match="block draft trains with fkl"):
    step_lib.Objective(loss="adaspec", feature=True, block=True)
  with pytest.raises(ValueError, match="not defined for a block draft"):
    step_lib.Objective(feature=True, block=True, ttt_inputs="draft")


def _batch(target, prompts, new=30):
  seqs = [p + o for p, o in zip(prompts, sampling.generate(target, prompts, new))]
  width = max(map(len, seqs))
  tokens = jnp.asarray([s + [0] * (width - len(s)) for s in seqs], jnp.int32)
  seg = jnp.asarray([[1] * len(s) + [0] * (width - len(s)) for s in seqs], jnp.int32)
  return dict(tokens=tokens, segment_ids=seg, loss_mask=seg.astype(jnp.float32),
              positions=jnp.broadcast_to(jnp.arange(width), tokens.shape))


def test_training_on_the_targets_outputs_raises_acceptance():
  """A block draft fitted on the target's greedy continuations is accepted more in greedy SD,
  deeper slots included."""
  target = tiny(vocab=12, preset="micro", seed=1)
  prompts = [[3, 1, 4, 1, 5], [9], [2, 7]]
  draft = models.create_block_draft(target.config, num_layers=2, block_size=4, target=target, seed=3)
  batch = _batch(target, prompts)
  objective = step_lib.Objective(feature=True, block=True, num_anchors=8)
  graphdef, params = nnx.split(draft, nnx.Param)
  target_split = nnx.split(target, nnx.Param)
  tx = optax.adam(1e-2)
  frozen = lambda path, _: str(path[0]).startswith("frozen_")  # noqa: E731

  @jax.jit
  def train(params, opt, key):
    grads = jax.grad(lambda p: step_lib.compute_loss(objective, graphdef, p, batch, target_split, key=key)[0])(params)
    grads = jax.tree_util.tree_map_with_path(lambda p, g: jnp.zeros_like(g) if frozen(
        [getattr(k, "key", k) for k in p], g) else g, grads)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  before = sampling.speculative_generate(target, draft, prompts, 30)[1]
  opt = tx.init(params)
  for i in range(80):
    params, opt = train(params, opt, jax.random.PRNGKey(i))
  fitted = nnx.merge(graphdef, params)
  out, after = sampling.speculative_generate(target, fitted, prompts, 30)
  assert out == sampling.generate(target, prompts, 30)
  assert after["alpha"] > before["alpha"] + 0.2 and after["tau"] > before["tau"], (before["alpha"], after["alpha"])
  assert after["position_acceptance"][2] > 0.3  # the third slot, read from mask tokens only


def test_block_draft_trains_through_the_trainer_and_exports_dflash(small_data, tmp_path):
  cfg = micro_config(small_data[0], "teacher_offline", "fkl", steps=6)
  probe = Trainer(cfg, str(tmp_path / "probe"))  # the micro target, saved as the verifier
  models.save_hf(probe.parts.target, str(tmp_path / "target"))
  probe.close()
  cfg.target = type(cfg.target)(dict(cfg.target, hf_path=str(tmp_path / "target")))
  cfg.draft.kind = "block"
  cfg.draft.feature.block_size = 4
  cfg.draft.feature.draft_vocab_size = 512
  cfg.draft.feature.vocab_batches = 4
  cfg.export_hf = "hf"
  cfg.eval.speculative = False
  trainer = Trainer(cfg, str(tmp_path / "run"))
  draft = trainer.draft_model()
  assert isinstance(draft, models.BlockDraft) and draft.block_size == 4 and draft.draft_vocab_size == 512
  head = np.asarray(draft.frozen_lm_head[...])
  batch = {k: jnp.asarray(v) for k, v in trainer.parts.source.batch(0).items()}
  target = (trainer.target_graphdef, trainer.target_params)
  loss_of = lambda p: float(step_lib.compute_loss(trainer.parts.objective, trainer.graphdef, p, batch,  # noqa: E731
                                                  target, key=jax.random.PRNGKey(0))[0])
  before = loss_of(jax.device_get(trainer.state.params))
  result = trainer.run()
  after = loss_of(jax.device_get(trainer.state.params))
  assert after < before, (before, after)
  assert 0 < trainer.evaluate()["acceptance_proxy"] < 1
  np.testing.assert_array_equal(trainer.draft_model().frozen_lm_head[...], head)  # the target's head, frozen
  trainer.close()
  assert result["step"] == cfg.train.steps
  meta = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
  assert meta["speculators_model_type"] == "dflash" and meta["block_size"] == 4
  loaded = models.load_hf(str(tmp_path / "run" / "hf"))
  assert isinstance(loaded, models.BlockDraft) and loaded.draft_ids == trainer.draft_model().draft_ids

"""Training an EAGLE-3 feature draft through the Trainer: the TTT loss falls, the shared target
embedding stays frozen, and the export is the speculators eagle3 format."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import models
from specdistill_jax.distill import step as step_lib
from specdistill_jax.distill.train import Trainer
from tests.distill.helpers import micro_config


def _feature_config(data_dir, source, loss, steps=6):
  cfg = micro_config(data_dir, source, loss, steps=steps)
  cfg.draft.kind = "feature"
  cfg.draft.feature.draft_vocab_size = 512
  cfg.draft.feature.vocab_batches = 4
  cfg.objective.ttt_steps = 3
  return cfg


@pytest.mark.parametrize("source,loss,inputs", [("teacher_offline", "fkl", "data"), ("fixed", "tvd", "draft")])
def test_feature_draft_training_lowers_the_unrolled_loss(small_data, tmp_path, source, loss, inputs):
  """Teacher-forced TTT with export; on-policy TTT (the draft's own proposals, Draft-OPD)."""
  cfg = _feature_config(small_data[0], source, loss)
  cfg.objective.ttt_inputs = inputs
  cfg.export_hf = "hf" if source == "teacher_offline" else ""
  cfg.eval.speculative = False  # the eval step's feature objective; SD with feature drafts: tests/sampling
  trainer = Trainer(cfg, str(tmp_path))
  draft = trainer.draft_model()
  assert isinstance(draft, models.FeatureDraft) and draft.draft_vocab_size == 512
  embed = np.asarray(trainer.parts.target.embed[...])
  np.testing.assert_array_equal(draft.frozen_embed[...], embed)
  batch = {k: jnp.asarray(v) for k, v in trainer.parts.source.batch(0).items()}
  target = (trainer.target_graphdef, trainer.target_params)

  def loss_of(params):  # on-policy: the same proposals' randomness before and after
    return float(step_lib.compute_loss(trainer.parts.objective, trainer.graphdef, params, batch, target,
                                       key=jax.random.PRNGKey(0))[0])

  before = loss_of(jax.device_get(trainer.state.params))
  result = trainer.run()
  after = loss_of(jax.device_get(trainer.state.params))
  assert after < before, (before, after)
  if cfg.export_hf:
    assert 0 < trainer.evaluate()["acceptance_proxy"] < 1
  np.testing.assert_array_equal(trainer.draft_model().frozen_embed[...], embed)  # never updated
  if cfg.export_hf:
    meta = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert meta["speculators_model_type"] == "eagle3" and meta["draft_vocab_size"] == 512
    loaded = models.load_hf(str(tmp_path / "hf"))
    assert loaded.draft_ids == trainer.draft_model().draft_ids
  trainer.close()
  assert result["step"] == cfg.train.steps


def test_feature_draft_with_a_draft_only_source_is_named(small_data, tmp_path):
  cfg = _feature_config(small_data[0], "on_policy", "fkl")
  with pytest.raises(ValueError, match="samples from the draft alone"):
    Trainer(cfg, str(tmp_path))


def test_every_loss_is_defined_for_a_feature_draft():
  """ce and AdaSPEC's selective KD (a reference feature draft) on the unrolled steps."""
  from flax import nnx
  from tests.sampling.helpers import tiny
  target = tiny(vocab=40)
  make = lambda seed: models.create_feature_draft(target.config, draft_vocab_size=30, target=target,  # noqa: E731
                                                  token_counts=np.arange(40), seed=seed)
  draft, reference = make(1), make(2)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 40, (2, 12)), jnp.int32)
  batch = dict(tokens=tokens, segment_ids=jnp.ones_like(tokens), loss_mask=jnp.ones(tokens.shape),
               positions=jnp.broadcast_to(jnp.arange(12), tokens.shape))
  graphdef, params = nnx.split(draft, nnx.Param)
  for loss in ("ce", "adaspec"):  # fkl and tvd: the training tests above; jsd shares their path
    objective = step_lib.Objective(loss=loss, feature=True, ttt_steps=2, ttt_decay=0.8, adaspec_fraction=0.5)
    value, metrics = step_lib.compute_loss(objective, graphdef, params, batch, nnx.split(target, nnx.Param),
                                           nnx.split(reference, nnx.Param))
    assert np.isfinite(float(value)) and float(value) > 0, loss
    if loss == "adaspec":
      assert 0.45 <= float(metrics["selected_fraction"]) <= 0.6
  with pytest.raises(ValueError, match="ttt_inputs='draft'"):
    step_lib.Objective(loss="ce", feature=True, ttt_inputs="draft")

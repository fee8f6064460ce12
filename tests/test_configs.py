"""The get_config(arg) convention: presets, inline overrides, and clear errors."""

import pytest

from configs import common


def test_parse_arg_preset_and_overrides():
  assert common.parse_arg(None, "cpu", ("cpu", "micro")) == ("cpu", {})
  assert common.parse_arg("micro,seed=3,name=x", "cpu", ("cpu", "micro")) == (
      "micro", {"seed": 3, "name": "x"})


def test_unknown_preset_names_the_choices():
  with pytest.raises(ValueError, match="'gpu'.*cpu"):
    common.parse_arg("gpu", "cpu", ("cpu", "micro"))


def test_apply_overrides_rejects_unknown_fields():
  cfg = common.mesh()
  common.apply_overrides(cfg, {"tensor": 2})
  assert cfg.tensor == 2
  with pytest.raises(KeyError, match="tensr"):
    common.apply_overrides(cfg, {"tensr": 2})


def test_every_model_field_has_a_typed_override():
  """`--config.draft.overrides.FIELD=...` works for every ModelConfig field (dtype and
  param_dtype are the spec's own fields); the train CLI test drives it end to end."""
  import dataclasses

  from specdistill_jax.models import ModelConfig
  spec = common.model(preset="micro", d_model=48)
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  assert set(spec.overrides) | {"dtype", "param_dtype"} == fields
  assert spec.overrides.d_model == 48 and spec.overrides.num_layers is None
  spec.overrides.num_layers = 3  # an unset placeholder takes a value of its type
  with pytest.raises(TypeError):
    spec.overrides.num_layers = "three"
  with pytest.raises(KeyError, match="d_modle"):
    common.model(preset="micro", d_modle=48)


def test_preset_takes_tuple_rope_scaling_and_rejects_unknown_fields():
  from specdistill_jax import models
  cfg = models.preset("micro", 64, rope_scaling=("linear", 2.0), eos_token_ids=[3])
  assert cfg.rope_scaling.kind == "linear" and cfg.eos_token_ids == (3,)
  with pytest.raises(ValueError, match="unknown ModelConfig field"):
    models.preset("micro", 64, depth=3)


def test_dflash_config_is_the_eagle3_recipe_with_a_block_draft():
  from configs import dflash, eagle3
  c, e = dflash.get_config("cpu,block_size=6,steps=7"), eagle3.get_config("cpu,steps=7")
  assert c.draft.kind == "block" and c.draft.feature.block_size == 6 and c.draft.feature.num_layers == 2
  assert (c.data.to_dict(), c.train.to_dict()) == (e.data.to_dict(), e.train.to_dict())  # equal training data
  assert c.draft.feature.verifier == ""  # the export names the local target, which holds the embedding
  with pytest.raises(ValueError, match="unknown config preset"):
    dflash.get_config("gpu")

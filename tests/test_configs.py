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

"""Our eagle3 export, loaded by speculators' own Eagle3DraftModel: same logits (fp32, < 1e-4)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file

from specdistill_jax import models
from tests.sampling.helpers import tiny

try:
  from speculators.models import eagle3 as speculators_eagle3
except ImportError as e:  # the README's test command installs it
  raise ImportError("speculators is missing: pip install -r requirements-test.txt && "
                    "pip install --no-deps -r requirements-speculators.txt") from e


def _random_norms(draft, seed=0):
  """Norm weights away from 1, so a norm applied to the wrong input changes the logits."""
  state = nnx.state(draft, nnx.Param)
  rng = np.random.RandomState(seed)
  flat = nnx.to_flat_state(state)
  for path, var in flat:
    if path[-1] == "weight" and var.get_value().ndim == 1:
      var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, var.get_value().shape), var.get_value().dtype))
  nnx.update(draft, state)
  return draft


@pytest.mark.parametrize("layers,draft_vocab", [(1, 30), (2, None)])
def test_speculators_loads_our_export_and_computes_the_same_logits(tmp_path, layers, draft_vocab):
  target = tiny(vocab=50, seed=0)
  models.save_hf(target, str(tmp_path / "target"))
  counts = np.random.RandomState(1).rand(50)
  draft = _random_norms(models.create_feature_draft(target.config, num_layers=layers, draft_vocab_size=draft_vocab,
                                                    target=target, token_counts=counts, seed=2))
  out = tmp_path / "eagle3"
  models.save_hf(draft, str(out), verifier=str(tmp_path / "target"))
  meta = json.loads((out / "config.json").read_text())
  assert meta["speculators_model_type"] == "eagle3"
  assert meta["speculators_config"]["verifier"] == {"name_or_path": str(tmp_path / "target"),
                                                    "architectures": ["LlamaForCausalLM"]}

  # speculators' own classes: the config class, the model, strict loading of our tensors
  config = speculators_eagle3.Eagle3SpeculatorConfig.from_pretrained(str(out))
  config.transformer_layer_config._attn_implementation = "eager"  # CPU: no flex attention
  theirs = speculators_eagle3.Eagle3DraftModel(config)
  missing, unexpected = theirs.load_state_dict(load_file(str(out / "model.safetensors")), strict=False)
  assert not unexpected and sorted(missing) == ["verifier_lm_head.weight", "verifier_norm.weight"]
  theirs.eval()

  tokens = jnp.asarray(np.random.RandomState(3).randint(0, 50, (1, 10)), jnp.int32)
  _, feats = target.hidden(tokens, feature_layers=draft.feature_layers)
  steps = 3
  ours, _, _ = draft.unroll(tokens, feats, steps)  # [S, 1, 9, Vd]
  seen = []
  hook = theirs.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.detach().numpy()))
  with torch.no_grad():
    theirs(hidden_states=torch.from_numpy(np.array(feats[:, :-1])), input_ids=torch.from_numpy(
        np.asarray(tokens[:, 1:], np.int64)), document_ids=torch.zeros((1, 9), dtype=torch.long), ttt_steps=steps)
  hook.remove()
  assert len(seen) == steps
  for s in range(steps):
    np.testing.assert_allclose(seen[s][0], np.asarray(ours[s, 0]), atol=1e-4, rtol=0)

  # and back: load_hf reads the export as the same draft
  again = models.load_hf(str(out))
  assert again.draft_ids == draft.draft_ids and again.feature_layers == draft.feature_layers
  flat = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
  for a, b in zip(flat(draft), flat(again)):
    np.testing.assert_array_equal(a, b)

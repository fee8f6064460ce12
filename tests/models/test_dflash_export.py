"""Our dflash export, loaded by speculators' own DFlashDraftModel: same logits (fp32, < 1e-4)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file

from specdistill_jax import models
from tests.models.test_eagle3_export import _random_norms
from tests.sampling.helpers import tiny

try:
  from speculators.models.dflash import DFlashSpeculatorConfig
  from speculators.models.dflash.core import DFlashDraftModel
except ImportError as e:  # the README's test command installs it
  raise ImportError("speculators is missing: pip install -r requirements-test.txt && "
                    "pip install --no-deps -r requirements-speculators.txt") from e


@pytest.mark.parametrize("layers,draft_vocab", [(2, None), (1, 30)])
def test_speculators_loads_our_export_and_computes_the_same_logits(tmp_path, layers, draft_vocab):
  target = tiny(vocab=50, seed=0)
  models.save_hf(target, str(tmp_path / "target"))
  counts = np.random.RandomState(1).rand(50)
  draft = _random_norms(models.create_block_draft(target.config, num_layers=layers, block_size=4,
                                                  draft_vocab_size=draft_vocab, target=target,
                                                  token_counts=counts, seed=2))
  out = tmp_path / "dflash"
  models.save_hf(draft, str(out), verifier=str(tmp_path / "target"))
  meta = json.loads((out / "config.json").read_text())
  assert meta["speculators_model_type"] == "dflash" and meta["block_size"] == 4
  assert meta["aux_hidden_state_layer_ids"] == list(draft.feature_layers)
  assert meta["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3

  # speculators' own classes: config, model, our tensors, then the verifier's embedding / head
  config = DFlashSpeculatorConfig.from_pretrained(str(out))
  config.transformer_layer_config._attn_implementation = "eager"  # CPU: no flex attention
  theirs = DFlashDraftModel(config)
  missing, unexpected = theirs.load_state_dict(load_file(str(out / "model.safetensors")), strict=False)
  verifier_owned = ["embed_tokens.weight", "verifier_lm_head.weight", "verifier_norm.weight"]
  assert not unexpected and sorted(missing) == sorted(verifier_owned + (["lm_head.weight"] if draft_vocab is None
                                                                        else []))
  theirs.load_verifier_weights()
  theirs.eval()

  t = 12
  tokens = jnp.asarray(np.random.RandomState(3).randint(0, 50, (1, t)), jnp.int32)
  hidden, feats = target.hidden(tokens, feature_layers=draft.feature_layers)
  torch.manual_seed(0)
  with torch.no_grad():
    _, logits, _, _, index = theirs._backbone_forward(
        hidden_states=torch.from_numpy(np.array(feats)), input_ids=torch.from_numpy(np.asarray(tokens, np.int64)),
        loss_mask=torch.ones((1, t), dtype=torch.long), verifier_last_hidden_states=torch.from_numpy(np.array(hidden)),
        document_ids=torch.zeros((1, t), dtype=torch.long), max_anchors=3)
  anchors = index.numpy()[::4]  # speculators draws its anchors; ours are set to the same
  ours, valid = draft.block_logits(tokens, feats, jnp.asarray(anchors[None], jnp.int32))
  theirs_logits = logits.numpy().reshape(1, 3, 4, -1)[:, :, 1:]  # slot 0 is the anchor
  assert bool(valid.all())
  np.testing.assert_allclose(theirs_logits, np.asarray(ours), atol=1e-4, rtol=0)

  # and back: load_hf reads the export (embedding and head from the verifier) as the same draft
  again = models.load_hf(str(out))
  assert isinstance(again, models.BlockDraft) and again.draft_ids == draft.draft_ids
  assert (again.block_size, again.mask_token_id, again.feature_layers) == (4, draft.mask_token_id,
                                                                            draft.feature_layers)
  flat = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
  for a, b in zip(flat(draft), flat(again)):
    np.testing.assert_array_equal(a, b)


def test_export_refuses_a_draft_whose_embedding_is_not_the_verifiers(tmp_path):
  target = tiny(vocab=50, seed=0)
  models.save_hf(target, str(tmp_path / "target"))
  draft = models.create_block_draft(target.config, block_size=4)  # random embedding and head
  with pytest.raises(ValueError, match="embedding / head are not those of the verifier"):
    models.save_hf(draft, str(tmp_path / "dflash"), verifier=str(tmp_path / "target"))


def test_load_without_a_local_verifier_is_named(tmp_path):
  target = tiny(vocab=50, seed=0)
  models.save_hf(target, str(tmp_path / "target"))
  draft = models.create_block_draft(target.config, block_size=4, target=target)
  models.save_hf(draft, str(tmp_path / "dflash"), verifier="org/not-here")
  with pytest.raises(models.CheckpointFormatError, match="takes its embedding from its verifier"):
    models.load_hf(str(tmp_path / "dflash"))

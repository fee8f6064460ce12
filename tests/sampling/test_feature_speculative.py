"""Speculative decoding with a feature draft (EAGLE-3): greedy == target, exact sampling, and
acceptance exactly as the training-time-test unroll predicts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from specdistill_jax import models, sampling
from specdistill_jax.distill import step as step_lib
from tests.sampling.helpers import FALSE_ALARM, chi_square_pvalue, exact_joint, tiny

PROMPTS = [[1, 2, 3], [4], [7, 8, 9, 10, 11, 12, 13], [20, 21]]


def _feature_draft(target, draft_vocab=None, seed=3, layers=1):
  vocab = target.config.vocab_size
  counts = np.random.RandomState(seed).rand(vocab)
  return models.create_feature_draft(target.config, num_layers=layers, draft_vocab_size=draft_vocab,
                                     target=target, token_counts=counts, seed=seed)


@pytest.mark.parametrize("tree", [None, sampling.TreeSpec(3, 2, 5)])
def test_greedy_feature_draft_equals_greedy_target_batched_ragged(tree):
  target = tiny(eos=(5,))
  draft = _feature_draft(target, draft_vocab=60)
  want = sampling.generate(target, PROMPTS, 17)
  out, stats = sampling.speculative_generate(target, draft, PROMPTS, 17, gamma=3, tree=tree)
  assert out == want
  # identical rows behave identically (no cross-row leakage in the ragged batch)
  same, stats = sampling.speculative_generate(target, draft, [PROMPTS[2]] * 4, 17, gamma=3, tree=tree)
  assert same == [want[2]] * 4 and len(set(stats["tau_per_row"])) == 1


def test_feature_and_token_drafts_routed_and_merged_equal_greedy_target():
  """A feature draft and a token draft behind one interface: routed chains, merged tree."""
  target = tiny(eos=(5,))
  drafts = [_feature_draft(target, draft_vocab=60), tiny(preset="micro", seed=1, eos=(5,))]
  want = sampling.generate(target, PROMPTS, 12)
  routed, _ = sampling.routed_speculative_generate(target, drafts, PROMPTS, 12, gamma=3)
  merged, stats = sampling.routed_speculative_generate(target, drafts, PROMPTS, 12,
                                                       tree=sampling.TreeSpec(3, 2, 4))
  assert routed == want and merged == want and len(stats["merged_share"]) == 2


def _unroll_predictions(target, draft, seqs, gamma):
  """[rows, gamma, T-1] the unroll's greedy drafts at every position, for every sequence in one
  jitted pass (sequences end-padded to one width: causal, so padding changes no earlier position)."""
  width = max(map(len, seqs))
  tokens = jnp.asarray([s + [0] * (width - len(s)) for s in seqs], jnp.int32)
  graphs = nnx.split(target), nnx.split(draft)

  @jax.jit
  def predict(states, tokens):
    t, d = nnx.merge(graphs[0][0], states[0]), nnx.merge(graphs[1][0], states[1])
    _, feats = t.hidden(tokens, feature_layers=d.feature_layers)
    logits, _, _ = d.unroll(tokens, feats, gamma)
    return jnp.moveaxis(jnp.argmax(logits, -1), 1, 0)  # [gamma, B, T-1] -> [B, gamma, T-1], draft vocabulary

  pred = predict((graphs[0][1], graphs[1][1]), tokens)
  return np.asarray(draft.draft_ids)[np.asarray(pred)]


def _offline_acceptance(pred, prompt, generated, gamma):
  """Greedy rounds replayed from the unroll's drafts `pred` [gamma, T-1]: (accepted, tested) a
  gamma-chain must report."""
  seq = list(prompt) + list(generated)
  accepted = tested = deep = 0
  p = len(prompt) - 1  # the last verified token's position
  while p + 1 < len(seq):
    left = len(seq) - 1 - p  # tokens still to emit
    n = 0
    for s in range(min(gamma, left)):
      tested += 1
      if pred[s, p - 1] != seq[p + 1 + s]:
        break
      n += 1
    accepted += n
    deep += max(n - 1, 0)
    p += n + 1
  return accepted, tested, deep


def _fitted(target, draft, prompts, steps=60):
  """The draft after a few hundred Adam steps of the TTT loss on the target's greedy outputs."""
  seqs = [p + o for p, o in zip(prompts, sampling.generate(target, prompts, 30))]
  width = max(map(len, seqs))
  tokens = jnp.asarray([s + [0] * (width - len(s)) for s in seqs], jnp.int32)
  seg = jnp.asarray([[1] * len(s) + [0] * (width - len(s)) for s in seqs], jnp.int32)
  batch = dict(tokens=tokens, segment_ids=seg, loss_mask=seg.astype(jnp.float32),
               positions=jnp.broadcast_to(jnp.arange(width), tokens.shape))
  objective = step_lib.Objective(feature=True, ttt_steps=3)
  graphdef, params = nnx.split(draft, nnx.Param)
  target_split = nnx.split(target, nnx.Param)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt):
    grads = jax.grad(lambda p: step_lib.compute_loss(objective, graphdef, p, batch, target_split)[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  opt = tx.init(params)
  for _ in range(steps):
    params, opt = step(params, opt)
  return nnx.merge(graphdef, params)


def test_greedy_acceptance_is_what_the_unroll_predicts():
  """Each round's proposals read the target's features of the accepted tokens and the draft's
  own states after them: replaying the rounds with `unroll` gives the same counts."""
  target = tiny(vocab=12, preset="micro", seed=1)
  prompts = [[3, 1, 4, 1, 5], [9], [2, 7]]
  draft = _fitted(target, _feature_draft(target, draft_vocab=10, seed=3, layers=2), prompts)
  for gamma in (3,):
    out, stats = sampling.speculative_generate(target, draft, prompts, 40, gamma=gamma)
    preds = _unroll_predictions(target, draft, [p + o for p, o in zip(prompts, out)], gamma)
    replay = np.sum([_offline_acceptance(pr, p, o, gamma) for pr, p, o in zip(preds, prompts, out)], axis=0)
    assert (stats["accepted"], stats["tested"]) == tuple(replay[:2])
    assert 0 < replay[0] < replay[1]
    assert gamma == 1 or replay[2] > 0  # some accepted proposals read draft states


@pytest.mark.parametrize("tree", [None, sampling.TreeSpec(2, 3, 5)])
def test_sampled_feature_draft_has_target_distribution(tree):
  """Chi-square on the first two tokens' joint, 3000 rows; the draft vocabulary leaves out
  two of the eight tokens (q = 0 there), and the output is still the target's."""
  target = tiny(vocab=8, preset="micro", seed=2)
  draft = _feature_draft(target, draft_vocab=6, seed=7)
  prompts = [[1, 2, 3]] * 3000
  out, stats = sampling.speculative_generate(target, draft, prompts, 2, gamma=2, temperature=1.0, rng=11,
                                             tree=tree)
  samples = np.asarray([o[:2] for o in out])
  assert 1.05 < stats["tau"] < 2.9
  assert chi_square_pvalue(samples, exact_joint(target, [1, 2, 3])) > FALSE_ALARM


def test_lenient_feature_draft_accepts_more():
  target = tiny(eos=(5,))
  draft = _feature_draft(target)
  strict = sampling.speculative_generate(target, draft, PROMPTS, 24, gamma=3, temperature=1.0, rng=1)[1]
  lenient = sampling.speculative_generate(target, draft, PROMPTS, 24, gamma=3, temperature=1.0, rng=1,
                                          lenience=("lin", 0.1))[1]
  assert lenient["alpha"] > strict["alpha"]


def test_feature_draft_for_another_target_is_named():
  target = tiny()
  draft = _feature_draft(tiny(preset="micro"))  # built for a 1-layer d=32 target
  with pytest.raises(ValueError, match="feature draft was built for a 1-layer target"):
    sampling.speculative_generate(target, draft, PROMPTS, 4)

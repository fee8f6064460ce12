"""prompt_lookup: the n-gram drafter's proposals, greedy == target greedy, exact sampling at T > 0."""

import jax.numpy as jnp
import numpy as np
import pytest

from specdistill_jax import sampling
from specdistill_jax.sampling import acceptance
from specdistill_jax.sampling.prompt_lookup import prompt_lookup
from tests.sampling.helpers import FALSE_ALARM, after_first_token, chi_square_pvalue, tiny, with_bug


def _propose(history, max_ngram=3, min_ngram=1, size=16):
  drafter = prompt_lookup(max_ngram, min_ngram)
  h = jnp.zeros((size,), jnp.int32).at[: len(history)].set(jnp.asarray(history, jnp.int32))
  return int(drafter.propose(h, jnp.int32(len(history))))


@pytest.mark.parametrize("history, want", [
    ([5, 6, 7, 1, 5, 6], 7),            # trigram-less: "5 6" seen before, continued by 7
    ([5, 6, 7, 9, 6, 8, 5, 6], 7),      # the bigram "5 6" beats the later unigram "6 -> 8"
    ([1, 2, 9, 1, 2, 4, 3, 1, 2], 4),   # two matches of "1 2": the most recent wins
    ([3, 1, 2, 4, 8, 1, 2, 5, 3, 1, 2], 4),  # the trigram "3 1 2" beats the more recent bigram
    ([4, 5, 6, 7], 7),                  # no earlier occurrence: the last token again
])
def test_proposes_the_continuation_of_the_longest_most_recent_match(history, want):
  assert _propose(history) == want


def test_min_ngram_ignores_shorter_matches():
  assert _propose([5, 6, 7, 9, 6], min_ngram=1) == 7
  assert _propose([5, 6, 7, 9, 6], min_ngram=2) == 6  # "9 6" never occurred: fallback


PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [4], [7, 8, 9, 7, 8, 9, 10, 11], [20, 21, 20]]


@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_equals_greedy_target_batched_ragged(gamma):
  target = tiny(eos=(5,))
  want = sampling.generate(target, PROMPTS, 24)
  out, stats = sampling.speculative_generate(target, sampling.prompt_lookup(), PROMPTS, 24, gamma=gamma)
  assert out == want
  # greedy decoding of a small random model falls into loops: lookup must catch them
  assert stats["alpha"] > 0.3, stats["alpha"]


def test_routed_with_a_token_draft_equals_greedy_target():
  target, draft = tiny(eos=(5,)), tiny(preset="micro", seed=1, eos=(5,))
  want = sampling.generate(target, PROMPTS, 16)
  out, stats = sampling.routed_speculative_generate(target, [draft, sampling.prompt_lookup()], PROMPTS, 16,
                                                    gamma=2)
  assert out == want
  # lookup wins the rounds it proposes in (q = 1); without a match it proposed nothing and the token
  # draft must get the round (scoring its empty proposal as a point mass gave the lookup every round)
  share = stats["drafter_share"]
  assert len(share) == 2 and share[1] > 0 and share[0] > 0, share


@pytest.mark.parametrize("bug", [False, True])
def test_sampling_keeps_the_target_distribution(monkeypatch, bug):
  """T=1, gamma 2, 3 new tokens from 6000 rows: tokens 2-3 given token 1 against the exact law.
  q is a point mass, so a rejection's replacement must come from p without the draft; the
  same test rejects drawing it from p itself."""
  target = tiny(vocab=8, preset="micro", seed=2)
  done = with_bug(monkeypatch, acceptance, "correction", lambda p, q: p) if bug else (lambda: None)
  prompt = [1, 2, 3, 1, 2]
  try:
    out, stats = sampling.speculative_generate(target, sampling.prompt_lookup(), [prompt] * 6000, 3, gamma=2,
                                               temperature=1.0, rng=5)
  finally:
    done()
  assert 0.05 < stats["alpha"] < 0.95
  rows, exact = after_first_token(out, prompt, target)
  p = chi_square_pvalue(rows, exact)
  assert (p < FALSE_ALARM) if bug else (p > FALSE_ALARM), p


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_ngram=0), "max_ngram=0"),
    (dict(min_ngram=4, max_ngram=3), "min_ngram=4 > max_ngram=3"),
    (dict(min_ngram=1.5), "min_ngram=1.5"),
])
def test_bad_ngram_sizes_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sampling.prompt_lookup(**kwargs)


def test_trees_alone_and_merged_with_a_token_draft_equal_greedy_target():
  """In a tree its point mass leaves one child per node (a chain); merged with a token draft's
  tree (TAPS) both supply accepted paths."""
  target, draft = tiny(eos=(5,)), tiny(preset="micro", seed=1, eos=(5,))
  want = sampling.generate(target, PROMPTS, 16)
  spec = sampling.TreeSpec(depth=3, top_k=2, num_nodes=5)
  out, stats = sampling.speculative_generate(target, sampling.prompt_lookup(), PROMPTS, 16, tree=spec)
  assert out == want and stats["alpha"] > 0.3
  assert stats["nodes_per_round"] <= spec.depth  # one valid child per node
  out, stats = sampling.routed_speculative_generate(target, [draft, sampling.prompt_lookup()], PROMPTS, 16,
                                                    tree=spec)
  assert out == want and stats["merged_share"][1] > 0


def test_tree_sampling_keeps_the_target_distribution():
  target = tiny(vocab=8, preset="micro", seed=2)
  prompt = [1, 2, 3, 1, 2]
  out, stats = sampling.speculative_generate(target, sampling.prompt_lookup(), [prompt] * 6000, 3,
                                             temperature=1.0, rng=6,
                                             tree=sampling.TreeSpec(depth=2, top_k=2, num_nodes=3))
  assert 0.05 < stats["alpha"] < 0.95
  rows, exact = after_first_token(out, prompt, target)
  assert chi_square_pvalue(rows, exact) > FALSE_ALARM


def test_history_rolls_back_with_lengths():
  """The drafter's cache is the token history: moving lengths back and writing again overwrites."""
  drafter = prompt_lookup().for_target(tiny())
  cache = drafter.init_cache(1, 8)
  cache = drafter.forward_cached(jnp.asarray([[3, 4, 5, 3]], jnp.int32), cache).cache
  assert np.asarray(cache.lengths).tolist() == [4]
  logits = drafter.forward_cached(jnp.asarray([[4]], jnp.int32), cache).logits
  assert int(jnp.argmax(logits[0, 0])) == 5  # "3 4" -> 5
  cache = drafter.forward_cached(jnp.asarray([[9]], jnp.int32), cache.with_lengths(jnp.asarray([3]))).cache
  logits = drafter.forward_cached(jnp.asarray([[3]], jnp.int32), cache).logits
  assert int(jnp.argmax(logits[0, 0])) == 4  # history is now 3 4 5 9 3: "3" -> 4


def test_a_round_without_a_match_is_a_one_token_pass(monkeypatch):
  """Distinct prompt tokens: the first round's lookup matches nothing, so it verifies no draft
  (a one-token pass): the output is the target's and nothing counts as tested."""
  from specdistill_jax.sampling import rounds, speculative
  widths, verify = [], rounds._verify
  monkeypatch.setattr(rounds, "_verify", lambda ctx, s, tokens, **kw: widths.append(tokens.shape[1])
                      or verify(ctx, s, tokens, **kw))
  speculative.clear_programs()  # trace the round here
  target = tiny(eos=(5,))
  prompt = [[10, 11, 12, 13, 14, 15, 16, 17]]
  out, stats = sampling.speculative_generate(target, sampling.prompt_lookup(), prompt, 1, gamma=4)
  assert sorted(widths) == [1, 5]  # the round holds both passes; lax.cond runs one
  assert out == sampling.generate(target, prompt, 1)
  assert stats["rounds"] == 1 and stats["tested"] == 0 and stats["nodes_per_round"] == 0
  # with matches the chain is verified: proposals are tested and counted as nodes
  out, stats = sampling.speculative_generate(target, sampling.prompt_lookup(), PROMPTS, 24, gamma=4)
  assert out == sampling.generate(target, PROMPTS, 24)
  assert stats["tested"] > 0 and 0 < stats["nodes_per_round"] < 4


@pytest.mark.parametrize("bug", [False, True])
def test_no_proposal_past_the_lengths_draws_from_p(bug):
  """acceptance.stochastic with lengths: past a row's proposals there is no draft, so t ~ p at
  that position (q := 0), not the rejection residual norm(max(0, p - q)) that ignoring the
  lengths would draw from."""
  import jax
  rows, v = 20000, 8
  p = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).standard_normal(v), jnp.float32) * 1.5)
  log_p = jnp.broadcast_to(jnp.log(p), (rows, 3, v))
  drafts = jnp.full((rows, 2), int(jnp.argmax(p)), jnp.int32)  # the likeliest token, as a point mass
  log_q = jnp.where(jax.nn.one_hot(drafts, v, dtype=jnp.bool_), 0.0, -1e30)
  lengths = None if bug else jnp.zeros((rows,), jnp.int32)
  n, t, _ = acceptance.stochastic(jax.random.PRNGKey(1), drafts, log_q, log_p, lengths=lengths)
  if not bug:
    assert int(jnp.max(n)) == 0
  first = np.where(np.asarray(n) == 0, np.asarray(t), -1)  # what the round emits first
  first = first[first >= 0]
  pval = chi_square_pvalue([(int(x),) for x in first], {(i,): float(x) for i, x in enumerate(np.asarray(p))})
  assert (pval < FALSE_ALARM) if bug else (pval > FALSE_ALARM), pval
  n, _ = acceptance.greedy(drafts, jnp.log(p)[None, None].repeat(rows, 0).repeat(3, 1), jnp.full((rows,), 1))
  assert int(jnp.max(n)) == 1  # greedy: never past the proposals either (both drafts are the argmax)

"""The benchmark command on the micro world: the protocol's numbers, its files, and that its printed
command rewrites them."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from specdistill_jax.bench import __main__ as bench_cli
from specdistill_jax import sampling
from specdistill_jax.bench import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(world, data_dir, tmp, *extra):
  return ["--target", f"{world}/target_general/hf", "--draft", f"{world}/draft_generic/hf",
          "--suite", "mt_bench,mt_bench_turn2", "--gammas", "1,3", "--trees", "2:2:3",
          "--temperatures", "0,1", "--max_new_tokens", "6", "--limit", "3", "--dtype", "float32",
          "--data_dir", data_dir, "--corpus_config", "small", "--cache_dir", str(tmp / "cache"),
          "--peers", "transformers", "--max_prompt_tokens", "40", "--pair", "micro/pair",
          "--out", str(tmp / "b.md"), "--json", str(tmp / "b.json"), "--drafters", "draft", *extra]


@pytest.fixture(scope="module")
def bench_run(micro_world, small_data, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bench")
  with open(tmp / "b.json", "w") as fh:  # a row of the old one-prompt protocol, and another pair's row
    json.dump([{"pair": "old/pair", "gamma": 2}, {"pair": "other", "prompt_set": "humaneval", "gamma": 1}], fh)
  bench_cli.main(_args(os.environ["SPECDISTILL_WORLD"], small_data[0], tmp))
  return tmp


def test_every_prompt_decoded_and_greedy_sd_equals_greedy_ar_in_fp32(bench_run):
  rows = json.load(open(bench_run / "b.json"))
  assert [r["pair"] for r in rows].count("old/pair") == 0 and rows[0]["pair"] == "other"
  mine = [r for r in rows if r["pair"] == "micro/pair"]
  assert len(mine) == 2 * 3 * 2  # sets x methods x temperatures
  for r in mine:
    assert r["num_prompts"] == 3 and r["batch"] == 1 and r["dtype"] == "float32"
    assert 0 < r["new_tokens"] <= 3 * 6 and len(r["speedup_ci"]) == 2
    assert r["speedup_ci"][0] <= r["speedup"] <= r["speedup_ci"][1]
    assert {"ar_tokens_per_s", "sd_tokens_per_s", "predicted_speedup", "alpha", "tau", "c", "v"} <= set(r)
    assert len(r["position_acceptance"]) == r["gamma"]
    if r["temperature"] == 0.0:
      assert r["greedy_differs"] == 0, r
  assert {r["prompt_set"] for r in mine} == {"mt_bench", "mt_bench_turn2"}
  assert {(r["gamma"], r["tree"]) for r in mine} == {(1, None), (3, None), (2, "depth=2,top_k=2,num_nodes=3")}
  text = open(bench_run / "b.md").read()
  assert "## mt_bench: 3 prompts (--limit 3)" in text and "| 0/3 |" in text
  assert "transformers assisted generation" in text and "identical to our greedy AR on 3/3" in text
  assert os.path.getsize(bench_run / "b.png") > 1000
  assert len(os.listdir(bench_run / "cache")) == 1  # the turn-1 answers, generated once


def test_the_printed_command_rewrites_the_file_with_the_same_acceptance(bench_run, tmp_path):
  text = open(bench_run / "b.md").read()
  command = text.split("Command: `", 1)[1].split("`", 1)[0]
  argv = shlex.split(command)
  assert argv[:3] == ["python", "-m", "specdistill_jax.bench"]
  before = {(r["prompt_set"], r["gamma"], r["tree"], r["temperature"]): (r["alpha"], r["tau"])
            for r in json.load(open(bench_run / "b.json")) if r["pair"] == "micro/pair"}
  out = argv.index("--out") + 1
  argv[out] = str(tmp_path / "again.md")  # the same command, writing beside the first file
  argv[argv.index("--json") + 1] = str(tmp_path / "again.json")
  bench_cli.main(argv[3:])
  after = {(r["prompt_set"], r["gamma"], r["tree"], r["temperature"]): (r["alpha"], r["tau"])
           for r in json.load(open(tmp_path / "again.json"))}
  assert after == before  # the same tau / alpha (T=0 and, with the same seeds, T=1)


def test_round_robin_limit_takes_every_category_in_turn():
  from specdistill_jax.bench import suite
  from specdistill_jax.data import suites
  picked = suite.round_robin(suites.mt_bench(), 16)
  counts = {}
  for p in picked:
    counts[p.category] = counts.get(p.category, 0) + 1
  assert len(counts) == 8 and set(counts.values()) == {2}
  assert suite.round_robin(suites.humaneval(), None) == suites.humaneval()


def test_bootstrap_interval_covers_the_ratio_and_widens_with_noise():
  ar = [protocol.Record(i, "c", 10, 1.0, []) for i in range(40)]
  steady = [protocol.Record(i, "c", 10, 0.5, []) for i in range(40)]
  noisy = [protocol.Record(i, "c", 10, 0.5 * (1.5 if i % 2 else 0.5), []) for i in range(40)]
  assert protocol.bootstrap_ci(steady, ar) == [2.0, 2.0]
  lo, hi = protocol.bootstrap_ci(noisy, ar)
  assert lo < 2.0 < hi and hi - lo > 0.3


def test_user_errors_are_one_line(micro_world):
  world = os.environ["SPECDISTILL_WORLD"]
  for extra, message in ((["--suite", "mtbench"], "unknown prompt set"), (["--gammas", "0"], "--gammas"),
                         (["--trees", "2:2"], "depth:top_k:num_nodes")):
    proc = subprocess.run([sys.executable, "-m", "specdistill_jax.bench", "--target", f"{world}/target_general/hf",
                           "--draft", f"{world}/draft_generic/hf", *extra], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr


def test_prompt_lookup_is_a_draft_of_the_benchmark(micro_world, small_data, tmp_path):
  """--draft prompt_lookup:2: rows like a model draft's (greedy SD == greedy AR in fp32), and the
  transformers peer is its own prompt lookup decoding on the same prompts; transformers' plain
  decoding is a peer of its own (same ids as ours), llama.cpp's lookup decoding one that says why it
  was skipped where llama-cpp-python is not installed."""
  world = os.environ["SPECDISTILL_WORLD"]
  args = _args(world, small_data[0], tmp_path, "--draft", "prompt_lookup:2", "--suite", "sharegpt_chat",
               "--gammas", "2", "--trees", "", "--temperatures", "0", "--pair", "micro/lookup",
               "--peers", "transformers,transformers_plain,llama_cpp_lookup")
  bench_cli.main(args)
  rows = [r for r in json.load(open(tmp_path / "b.json")) if r["pair"] == "micro/lookup"]
  assert [r["gamma"] for r in rows] == [2] and all(r["greedy_differs"] == 0 for r in rows)
  assert all(0.0 <= r["alpha"] <= 1.0 and r["c"] < 0.5 for r in rows)
  text = open(tmp_path / "b.md").read()
  assert "transformers prompt lookup decoding" in text and "identical to our greedy AR on 3/3" in text
  assert "transformers plain decoding" in text and text.count("identical to our greedy AR on 3/3") == 2
  assert "llama.cpp prompt lookup decoding" in text
  with pytest.raises(ValueError, match="prompt_lookup:3:1"):
    bench_cli.main(_args(world, small_data[0], tmp_path, "--draft", "prompt_lookup:x"))


def test_lookup_rows_and_the_draft_with_lookup_decode_like_greedy_ar(micro_world, small_data, tmp_path):
  """--drafters draft,lookup,draft+lookup: prompt lookup alone and with the draft (chains routed;
  trees merged, as sampling's tests check) are rows of their own (pairs named by drafter), each
  greedy-equal to AR in fp32."""
  world = os.environ["SPECDISTILL_WORLD"]
  args = _args(world, small_data[0], tmp_path, "--suite", "sharegpt_chat", "--gammas", "2", "--trees", "",
               "--temperatures", "0", "--limit", "2", "--pair", "micro/combo", "--peers", "",
               "--drafters", "draft,lookup,draft+lookup")
  bench_cli.main(args)
  rows = [r for r in json.load(open(tmp_path / "b.json")) if r["pair"].startswith("micro/combo")]
  assert sorted(r["pair"] for r in rows) == ["micro/combo", "micro/combo [draft+lookup]", "micro/combo [lookup]"]
  assert all(r["greedy_differs"] == 0 and r["num_prompts"] == 2 for r in rows)
  # (r(gamma) of draft+lookup is a sum of two timings: not asserted, timings are noisy)
  assert {r["drafter"] for r in rows} == {"draft", "lookup", "draft+lookup"}
  text = open(tmp_path / "b.md").read()
  for label in ("prompt lookup, chain gamma=2", "draft + lookup routed, chain gamma=2"):
    assert f"| {label} |" in text
  assert protocol.Method(2, sampling.TreeSpec(2, 2, 3), "draft+lookup").verified == 1 + 2 * 3  # merged trees
  with pytest.raises(ValueError, match="--drafters: .*'lokup'"):
    protocol.parse_methods("1", "", "draft,lokup")
  with pytest.raises(ValueError, match="prompt lookup itself"):
    bench_cli.main(_args(world, small_data[0], tmp_path, "--draft", "prompt_lookup", "--drafters", "draft+lookup"))


def test_a_failing_peer_becomes_a_failed_row_not_a_lost_run():
  """Another library's error in a peer (llama-cpp-python raised a broadcast error after a 12-minute
  run) is reported in the peer's row; the run's own measurements are kept."""
  from specdistill_jax.bench import suite

  def broken(*args):
    raise ValueError("could not broadcast input array from shape (11,) into shape (10,)\nmore")

  row = suite._peer("llama_cpp_lookup", broken, 1, 2)
  assert row["system"] == "llama_cpp_lookup" and row["tokens_per_second"] is None
  assert row["note"] == "failed: ValueError: could not broadcast input array from shape (11,) into shape (10,)"
  assert suite._peer("x", lambda a: dict(system="x", tokens_per_second=a, note=""), 3.0)["tokens_per_second"] == 3.0


def test_a_prompt_that_compiles_its_program_is_timed_on_a_second_run(monkeypatch):
  """A new executable's first run is 0.3-0.5 s slower than the next on the real target (a prompt
  opening a new width bucket): the protocol times such a prompt's second run, for AR and SD alike.
  Before, one such prompt gave a head's gamma-1 row 0.90x [0.65, 1.13] where its neighbours were
  1.05-1.15x."""
  import types

  import numpy as np

  compiled = set()

  def run(kind, width):
    first = (kind, width) not in compiled
    compiled.add((kind, width))
    return (9.0 if first else 1.0), (5.0 if first else 0.0)

  def generate_batch(target, rows, max_new, temperature, rng, lengths, cache_size):
    wall, comp = run("ar", int(lengths[0]) // 16)
    return sampling.autoregressive.Generation(np.ones((1, 2), np.int32), np.asarray([2]), wall, comp)

  def speculative_generate(target, draft, rows, max_new, gamma, **kw):
    wall, comp = run("sd", int(kw["lengths"][0]) // 16)
    return [[1, 1]], dict(tokens=2, wall_seconds=wall, compile_seconds=comp, accepted=1, tested=1, row_rounds=1,
                          position_accepted=[1], position_tested=[1])

  monkeypatch.setattr(sampling, "generate_batch", generate_batch)
  monkeypatch.setattr(sampling, "speculative_generate", speculative_generate)
  target = types.SimpleNamespace(config=types.SimpleNamespace(pad_token_id=0))
  prompts = [[1] * 5, [1] * 20, [1] * 6, [1] * 40]  # widths 0, 1, 0, 2 (in 16s): two prompts open a bucket
  recs = protocol.decode_set(target, object(), prompts, ["c"] * 4, [protocol.Method(1)], 0.0, 2)
  assert [r.seconds for r in recs[None]] == [1.0] * 4
  assert [r.seconds for r in recs[protocol.Method(1)]] == [1.0] * 4

"""Every study driver, the quick study and the benchmark scripts run end to end on micro presets.

The micro world (tiny models, a few steps on the small corpora; tests/conftest.py) is
built once with the same code as the CPU world; each driver then writes its table and
plot to a temp dir.
"""

import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

# taps runs as taps:math, its superset (a third drafter and the answer-accuracy table)
STUDIES = ("domain_shift", "divergence_grid", "domain_draft", "adaspec", "lossy", "feature_drafters",
           "model_garden", "onpolicy_ablation", "taps:math", "draft_scaling")


@pytest.mark.parametrize("study", STUDIES)
def test_study_driver_writes_table_and_plot(micro_world, tmp_path, study):
  study, _, variant = study.partition(":")
  config = importlib.import_module(f"configs.{study}").get_config("micro" + (f",{variant}=True" if variant else ""))
  config.results_dir = str(tmp_path)
  path = importlib.import_module(study).run(config)
  text = open(path).read()
  assert "|---" in text and "Against the paper" in text and "Command: `python experiments/" in text
  name = f"{study}_{variant}" if variant else study
  assert os.path.basename(path) == f"{name}.md" and os.path.getsize(tmp_path / f"{name}.png") > 1000
  if variant == "math":
    assert "mixed drafter" in text and "answer accuracy" in text and "f_lin eps=0.5" in text


def test_quick_study_runs(micro_world, small_data, tmp_path):
  import quick_world
  path = quick_world.main(["--scale", "micro", "--workdir", str(tmp_path), "--data_dir", small_data[0],
                          "--distill_steps", "2"])
  text = open(path).read()
  assert "before (generic draft)" in text and "after (distilled)" in text


def test_benchmark_scripts_run(micro_world, tmp_path):
  import bench_model
  import bench_train
  bench_model.main(["--preset", "micro", "--vocab", "64", "--seq", "16", "--cache", "32",
                    "--decode_steps", "4", "--out", str(tmp_path / "m.md")])
  bench_train.main(["--target", "tiny", "--draft", "micro", "--vocab", "64", "--batch", "2", "--seq", "16", "--dtypes", "float32",
                    "--top_k", "4", "--steps", "1", "--out", str(tmp_path / "t.md")])
  world = os.environ["SPECDISTILL_WORLD"]
  import bench_features
  bench_features.main(["--model", f"{world}/target_general/hf", "--dtypes", "float32", "--tokens", "1",
                       "--out", str(tmp_path / "f.md")])
  import bench_draft_cost
  rows = bench_draft_cost.main(["--model", f"{world}/target_general/hf", "--caches", "64", "--gammas", "1,2",
                                "--draft_vocab", "32", "--cut_layers", "1", "--dtype", "float32",
                                "--layout", "standard", "--out", str(tmp_path / "d.md")])
  assert sorted({(r["drafter"], r["gamma"]) for r in rows}) == sorted(
      (k, g) for k in bench_draft_cost.DRAFTERS for g in (1, 2))
  by = {(r["drafter"], r["gamma"]): r for r in rows}
  assert all(r["r"] > 0 for r in rows) and by[("prompt_lookup", 1)]["weight_bytes"] == 0
  # the bound counts one pass per drafted token, but one pass per round for the block drafter
  assert abs(by[("eagle3", 2)]["bound_c"] - by[("eagle3", 1)]["bound_c"]) < 1e-12
  assert abs(2 * by[("block", 2)]["bound_c"] - by[("block", 1)]["bound_c"]) < 1e-12
  for name in ("m", "t", "f", "d"):
    assert "|---" in open(tmp_path / f"{name}.md").read()


def test_target_benchmark_runs_on_the_real_target(real_target, tmp_path):
  import json

  import bench_target
  bench_target.main(["--model", real_target, "--ks", "1,2", "--dtypes", "float32", "--layouts", "fused",
                     "--steps", "2", "--out", str(tmp_path / "t.md"), "--json", str(tmp_path / "t.json")])
  rows = json.load(open(tmp_path / "t.json"))
  assert [(r["model"], r["dtype"], r["layout"], r["tokens"]) for r in rows] == [
      ("smollm2-135m-instruct", "float32", "fused", 1), ("smollm2-135m-instruct", "float32", "fused", 2)]
  assert all(r["ms"] > 0 and r["limit_ms"] > 0 for r in rows)
  assert "fraction of the limit" in open(tmp_path / "t.md").read()


def test_main_job_runs_on_the_real_target(real_target, small_data, tmp_path):
  import quickstart
  path = quickstart.main(["--scale", "micro", "--workdir", str(tmp_path), "--data_dir", small_data[0],
                          "--target_dir", real_target])
  text = open(path).read()
  assert "| chain gamma=1 | 0 |" in text and "| chain gamma=1 | 1 |" in text
  assert "| prompt lookup, chain gamma=1 | 0 |" in text  # the zero-cost baseline beside the head
  assert "predicted speedup = tau / (r(gamma) + v(gamma + 1))" in text and "an EAGLE-3 head" in text
  assert "MT-Bench turn 1 (2 prompts, --limit 2)" in text
  assert "--scale micro --gammas 1 --drafters draft,lookup --num_prompts 2" in text
  assert ("Greedy speculative ids differ from greedy plain ids on 0/2 (chain gamma=1), "
          "0/2 (prompt lookup, chain gamma=1) prompts") in text  # fp32
  # the head is saved with save_hf (speculators eagle3) where the README says
  import json
  with open(os.path.join(tmp_path, "draft", "config.json")) as fh:
    assert json.load(fh)["speculators_model_type"] == "eagle3"

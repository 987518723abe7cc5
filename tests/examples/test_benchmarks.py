"""Benchmark scripts run end to end with tiny budgets and print one JSON line of results."""

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> dict:
    cmd = [sys.executable, str(ROOT / "examples" / "benchmarks" / script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mappo_baseline_writes_curves(tmp_path):
    out = _run("mappo_baseline.py", "--env-id", "mpe:simple_spread_v3", "--total-steps", "400", "--num-envs", "2",
               "--eval-every", "200", "--rate-seconds", "0.3", "--seeds", "0", "1", "--out", str(tmp_path))  # fmt: skip
    assert out["raw_agent_steps_per_s"] > 0 and out["train_env_steps_per_s"] > 0
    assert -200 < out["random_policy_return"] < 0, "random MPE spread returns are negative"
    random = _benchmark_module("report").random_returns("mpe:simple_spread_v3", 50, 0)  # 50 episodes, not the rate's
    assert out["random_policy_return"] == pytest.approx(np.mean(random), abs=1e-3)
    data = json.loads((tmp_path / "mpe_simple_spread_v3.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    assert [s for s, _ in data["runs"][0]["eval_returns"]] == [0, 200, 400]
    assert (tmp_path / "mpe_simple_spread_v3.png").stat().st_size > 10_000


def test_mappo_baseline_refuses_references_outside_smax(tmp_path):
    cmd = [sys.executable, str(ROOT / "examples/benchmarks/mappo_baseline.py"), "--env-id", "mpe:simple_spread_v3",
           "--total-steps", "10", "--rate-seconds", "0.1", "--reference-episodes", "2", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--reference-episodes: only for smax:<map> env ids" in proc.stderr


def test_mappo_baseline_merges_separate_seed_runs(tmp_path):
    common = ["--env-id", "mpe:simple_spread_v3", "--total-steps", "200", "--num-envs", "2", "--eval-every", "200",
              "--rate-seconds", "0.2"]  # fmt: skip
    for seed in ("3", "1"):
        _run("mappo_baseline.py", *common, "--seeds", seed, "--out", str(tmp_path / seed))
    parts = [str(tmp_path / s / "mpe_simple_spread_v3.json") for s in ("3", "1")]
    out = _run("mappo_baseline.py", "--merge", *parts, "--out", str(tmp_path / "all"))
    assert out["seeds"] == [1, 3]
    single = [json.loads(open(p).read())["summary"] for p in parts]
    assert abs(out["final_eval_return_mean"] - sum(s["final_eval_return_mean"] for s in single) / 2) < 1e-3
    assert (tmp_path / "all" / "mpe_simple_spread_v3.png").is_file()
    assert "last_tenth_train_metrics" not in out  # MPE's episodes report no metrics
    # runs whose episodes report metrics (Flatland's % arrived): each seed's mean over its last tenth of the steps
    for p, values in zip(parts, ([0.2, 0.4, 0.8], [0.0, 1.0, 0.5])):
        part = json.loads(Path(p).read_text())
        part["runs"][0]["train_metrics"] = [[step, {"arrived_fraction": v}] for step, v in zip((100, 190, 200), values)]
        Path(p).write_text(json.dumps(part))
    with_metrics = _run("mappo_baseline.py", "--merge", *parts, "--out", str(tmp_path / "metrics"))
    assert with_metrics["last_tenth_train_metrics"] == [{"arrived_fraction": 0.75}, {"arrived_fraction": 0.6}]
    other = _run("mappo_baseline.py", *common[:2], "--total-steps", "100", *common[4:], "--out", str(tmp_path / "o"))
    assert other["total_steps"] == 100
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "benchmarks" / "mappo_baseline.py"), "--merge", parts[0],
         str(tmp_path / "o" / "mpe_simple_spread_v3.json"), "--out", str(tmp_path / "bad")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "at 100 steps, expected" in proc.stderr


def test_vec_env_compares_backends():
    out = _run("vec_env.py", "--env-ids", "mpe:simple_spread_v3", "--num-envs", "2", "--seconds", "0.3")
    r = out["results"]["mpe:simple_spread_v3"]
    assert r["sync_agent_steps_per_s"] > 0 and r["subproc_agent_steps_per_s"] > 0
    assert abs(r["subproc_over_sync"] - r["subproc_agent_steps_per_s"] / r["sync_agent_steps_per_s"]) < 1e-2


def test_policies_benchmark_compares_actors_and_merges(tmp_path):
    common = ["--env-id", "mpe:simple_spread_v3", "--total-steps", "200", "--num-envs", "2", "--eval-every", "100",
              "--inference-batches", "1", "4", "--inference-seconds", "0.05", "--train.mappo.epochs", "1"]  # fmt: skip
    a = _run("policies.py", *common, "--policies", "gru", "sp-mamba", "--seeds", "0", "--out", str(tmp_path / "a"))
    assert set(a["policies"]) == {"gru", "sp-mamba"}
    for kind in ("gru", "sp-mamba"):
        p = a["policies"][kind]
        assert p["seeds"] == [0] and p["us_per_agent_step_b1"] > 0 and p["us_per_agent_step_b4"] > 0 and p["params"] > 0
    _run("policies.py", *common, "--policies", "mamba", "--seeds", "0", "1", "--out", str(tmp_path / "b"))
    parts = [str(tmp_path / x / "mpe_simple_spread_v3.json") for x in ("a", "b")]
    merged = _run("policies.py", "--merge", *parts, "--out", str(tmp_path / "all"))
    assert list(merged["policies"]) == ["gru", "mamba", "sp-mamba"] and merged["policies"]["mamba"]["seeds"] == [0, 1]
    data = json.loads((tmp_path / "all" / "mpe_simple_spread_v3.json").read_text())
    assert [(r["policy"], r["seed"]) for r in data["runs"]] == [("gru", 0), ("mamba", 0), ("mamba", 1), ("sp-mamba", 0)]
    assert [s for s, _ in data["runs"][0]["eval_returns"]] == [0, 100, 200]
    assert (tmp_path / "all" / "mpe_simple_spread_v3.png").stat().st_size > 10_000
    with pytest.raises(AssertionError, match="appears twice"):
        _run("policies.py", "--merge", parts[0], parts[0], "--out", str(tmp_path / "dup"))


def test_onnx_step_benchmark_times_torch_and_onnxruntime(tmp_path):
    out = _run("onnx_step.py", "--policies", "gru", "sp-mamba", "--batches", "1", "8", "--seconds", "0.05",
               "--out", str(tmp_path / "o.json"))  # fmt: skip
    assert json.loads((tmp_path / "o.json").read_text()) == out
    for kind in ("gru", "sp-mamba"):
        for b in ("b1", "b8"):
            row = out["results"][kind][b]
            assert (
                row["torch_us"] > 0 and row["ort_us"] > 0 and abs(row["ort_speedup"] - row["torch_us"] / row["ort_us"]) < 0.01
            )
        assert out["results"][kind]["b1"]["onnx_agent_us"] > 0
    assert out["results"]["wm:gru"]["b1"]["ort_us"] > 0  # the world-model agent (small preset) by default
    assert set(out["goal"]) == {"sp_mamba_b1_ort_us", "le_50us", "ge_5x_torch", "wm_small_b1_ort_us", "wm_le_100us"}
    assert out["goal"]["wm_le_100us"] == (out["results"]["wm:gru"]["b1"]["ort_us"] <= 100.0)


def test_mamba_training_benchmark_times_every_scan_against_the_gru(tmp_path):
    out = _run("mamba_training.py", "--batches", "6", "--length", "4", "--repeats", "1", "--policies", "mamba",
               "--out", str(tmp_path / "m.json"))  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text()) == out
    (r,) = out["results"]
    assert r["B"] == 6 and set(r["ms"]) == {"gru", "mamba_blocked", "mamba_loop", "mamba_compiled"}
    for name, x in r["x_gru"].items():
        assert x == pytest.approx(r["ms"][name] / r["ms"]["gru"], rel=0.02)
    assert r["compiled_speedup_vs_blocked"]["mamba"] == pytest.approx(
        r["ms"]["mamba_blocked"] / r["ms"]["mamba_compiled"], rel=0.02
    )
    assert set(r["first_call_s"]) == {"mamba_compiled"}


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_dream_throughput_benchmark_reports_ratios(tmp_path, kind):
    """Plain dream rates for both kinds; MAMBA's run also measures MAG's planner (L = 3, H = 2) beside them."""
    mag = ["--mag-candidates", "3", "--mag-lookahead", "2"] if kind == "mamba" else []
    out = _run("dream_throughput.py", "--env-id", "mpe:simple_spread_v3", "--model-kind", kind, "--model", "small",
               "--batches", "4", "16", "--seconds", "0.1", "--matmul-size", "128", *mag,
               "--out", str(tmp_path / "t.json"))  # fmt: skip
    assert json.loads((tmp_path / "t.json").read_text()) == out and out["model_kind"] == kind
    assert out["real_agent_steps_per_s"] > 0 and out["matmul_gflops"] > 0
    for b in ("4", "16"):
        r = out["results"][b]
        assert r["agent_steps_per_s"] > 0 and r["gflops"] > 0
        assert abs(r["vs_real_env"] - r["agent_steps_per_s"] / out["real_agent_steps_per_s"]) < 0.01 * (1 + r["vs_real_env"])
        if kind == "mamba":
            planned = r["mag"]
            assert planned["agent_steps_per_s"] > 0
            assert planned["vs_plain"] == pytest.approx(planned["agent_steps_per_s"] / r["agent_steps_per_s"], rel=0.01)
        else:
            assert "mag" not in r and out["mag"] is None


def test_dream_vs_reality_benchmark_runs_a_mabl_model_with_mag(tmp_path):
    """MABL's model, and MAG's planned imagination of the same windows beside the plain one."""
    out = _run("dream_vs_reality.py", "--model-kind", "mabl", "--train-steps", "300", "--heldout-steps", "150",
               "--fit-steps", "5", "--windows", "4", "--horizon", "5", "--mag-candidates", "3", "--mag-lookahead", "2",
               "--mag-predictor-steps", "4", "--out", str(tmp_path))  # fmt: skip
    assert out["model_kind"] == "mabl" and np.isfinite(out["errors"]["obs_model"]).all()
    mag = out["mag"]
    assert (mag["candidates"], mag["lookahead"], mag["selection"]) == (3, 2, "per_world")
    assert all(len(v) == 5 and np.isfinite(v).all() for v in mag["errors"].values())
    assert mag["errors"]["obs_model"] != out["errors"]["obs_model"]  # other picks than the plain samples
    assert mag["events"]["arrival"]["real"] == out["events"]["arrival"]["real"]  # the same windows


def test_dream_vs_reality_benchmark_writes_errors_and_plot(tmp_path):
    out = _run("dream_vs_reality.py", "--train-steps", "300", "--heldout-steps", "150", "--fit-steps", "10",
               "--windows", "4", "--horizon", "5", "--reward-head", "twohot", "--event-rate", "0.5",
               "--arrival-threshold", "-100", "--deadlock-threshold", "-0.5", "--out", str(tmp_path))  # fmt: skip
    errors = out["errors"]
    assert set(errors) == {"obs_model", "obs_copy_last", "obs_mean", "reward_model", "reward_zero"}
    assert all(len(v) == 5 and all(np.isfinite(x) and x > 0 for x in v) for v in errors.values())
    # the mean of the unrounded errors, rounded: equal to the mean of the printed (rounded) ones up to the rounding
    assert out["mean_over_horizon"] == pytest.approx({k: float(np.mean(v)) for k, v in errors.items()}, abs=2e-5)
    # random actions move the agents: copying the last context observation gets worse with the horizon
    assert errors["obs_copy_last"][-1] > errors["obs_copy_last"][0]
    assert (tmp_path / "mpe_simple_spread_v3.png").stat().st_size > 10_000
    assert out["reward_head"] == "twohot" and out["event_rate"] == 0.5
    events = out["events"]
    assert events["arrival"]["threshold"] == -100 and events["deadlock"]["threshold"] == -0.5
    # every reward is above -100: all 4 windows × 5 steps × 3 agents are real and predicted "arrivals"
    arrival = {"threshold": -100, "real": 60, "predicted": 60, "matched": 60, "recall": 1.0, "precision": 1.0}
    assert events["arrival"] == arrival
    low = events["deadlock"]  # MPE's spread rewards are below -0.5 at most steps; 10 fit steps from 0 predict none
    assert low["real"] > 10 and low["predicted"] == low["matched"] == 0 and low["recall"] == 0.0 and low["precision"] is None
    for key in ("events_one_step", "events_filtered"):  # the same 60 agent-steps, seen up to / including the row
        assert out[key]["arrival"] == arrival and out[key]["deadlock"]["real"] == low["real"]
    assert out == json.loads((tmp_path / "mpe_simple_spread_v3.json").read_text())
    assert out["mag"] is None  # no planner asked for


def test_dream_vs_reality_event_scores_by_hand():
    """Recall = matched / real, precision = matched / predicted, at the same position; None when nothing to divide by."""
    dvr = _benchmark_module("dream_vs_reality")
    real = np.array([[10.0, 0.0, -5.0, 10.2], [0.01, 9.0, -4.9, 0.0]])
    pred = np.array([[6.0, 5.5, -1.0, 5.0], [0.0, 8.0, -3.0, -2.6]])
    assert dvr.event_scores(real, pred, above=5.0) == {
        "real": 3,
        "predicted": 3,
        "matched": 2,
        "recall": 0.6667,
        "precision": 0.6667,
    }  # fmt: skip (5.0 is not above 5)
    assert dvr.event_scores(real, pred, below=-2.5) == {
        "real": 2, "predicted": 2, "matched": 1, "recall": 0.5, "precision": 0.5}  # fmt: skip
    assert dvr.event_scores(np.zeros(3), np.zeros(3), above=5.0) == {
        "real": 0, "predicted": 0, "matched": 0, "recall": None, "precision": None}  # fmt: skip
    with pytest.raises(ValueError, match=r"^above, below: expected exactly one threshold"):
        dvr.event_scores(real, pred, above=1.0, below=-1.0)


def _benchmark_module(name: str):
    """``examples/benchmarks/<name>.py`` imported (its sibling ``report`` importable while it loads)."""
    sys.path.insert(0, str(ROOT / "examples" / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_model_based_compare_counts_steps_to_each_level():
    mb = _benchmark_module("model_based")
    np.testing.assert_allclose(mb.smooth(np.array([0.0, 3.0, 6.0, 9.0])), [0.0, 1.5, 3.0, 6.0])
    reference = {
        "summary": {"random_policy_return": -30.0},
        "runs": [{"seed": s, "eval_returns": [[0, -50.0 + s], [100, -25.0], [200, -21.0], [300, -20.0], [400, -20.0]]}
                 for s in (0, 1)],
    }  # fmt: skip
    runs = [{"seed": 0, "eval_returns": [[0, -10.0], [10, -26.0], [20, -22.0], [30, -21.0]]}]
    out = mb.compare(runs, [reference])
    assert out["target"] == -20.333 and out["steps_to_target_model_free"] == 400.0  # smoothed: -22 at 300
    assert out["steps_to_target_model_based"] is None  # the step-0 evaluation (-10) never counts
    assert out["mb_best_smoothed"] == -23.0 and out["mf_at_same_steps"] == -42.15  # -49.5 + 0.3 * 24.5
    levels = {row["return"]: row for row in out["levels"]}
    assert set(levels) == {-27.583, -25.167, -23.0}  # quarter and half of random -> target, and the best
    assert levels[-25.167] == {"return": -25.167, "steps_model_based": 20.0, "steps_model_free": 100.0, "ratio": 5.0,
                               "ratio_is_upper_bound": True}  # fmt: skip
    assert levels[-23.0]["steps_model_based"] == 30.0 and levels[-23.0]["steps_model_free"] == 200.0
    assert not levels[-23.0]["ratio_is_upper_bound"]
    lower = mb.compare(runs, [reference], random=-40.0)  # levels from a given random return instead
    assert [row["return"] for row in lower["levels"]] == [-35.083, -30.167, -25.25, -23.0]  # -40 + k/4 * 19.667
    # a short model-free run evaluated every 25 steps resolves the early curve; the long one keeps the target
    early_curve = [[0, -50.0], [25, -30.0], [50, -25.0], [75, -25.0], [100, -25.0]]
    early = {"summary": {"random_policy_return": -30.0}, "runs": [{"seed": 0, "eval_returns": early_curve}]}
    both = mb.compare(runs, [early, reference])
    assert both["target"] == out["target"] and both["model_free_total_steps"] == 400
    rows = {row["return"]: row for row in both["levels"]}
    assert rows[-27.583]["steps_model_free"] == 50.0 and not rows[-27.583]["ratio_is_upper_bound"]  # (-30-25)/2
    assert rows[-25.167]["steps_model_free"] == 100.0 and rows[-23.0]["steps_model_free"] == 200.0
    assert both["mf_at_same_steps"] == -29.0  # at the budget, 30 steps, on the early run: -30 + 5 / 25 * 5


def test_model_based_plot_names_the_world_model_the_runs_used():
    mb = _benchmark_module("model_based")
    assert mb.curve_label({"model_kind": "mabl", "model": "small", "rollout": "sample"}) == (
        "model-based, MABL world model (small)")  # fmt: skip
    assert mb.curve_label({"model_kind": "mamba", "model": "smac", "rollout": "mag"}) == (
        "model-based, MAMBA world model (smac, MAG rollouts)")  # fmt: skip
    assert mb.curve_label({"model": "small"}) == "model-based, MAMBA world model (small)"  # JSONs from before the kinds


def test_model_based_benchmark_runs_seeds_and_merges(tmp_path):
    common = ["--run.iterations", "1", "--run.real-steps", "50", "--run.num-envs", "2", "--run.fit.steps", "3",
              "--run.fit.batch-size", "2", "--run.dream-worlds", "4", "--run.dream-updates", "1",
              "--run.eval-episodes", "1"]  # fmt: skip
    for seed, keep in (("3", []), ("1", ["--run.keep-every", "50", "--run.keep-checkpoints", "3"])):
        _run("model_based.py", *common, *keep, "--seeds", seed, "--out", str(tmp_path / seed))
    parts = [str(tmp_path / s / "mpe_simple_spread_v3.json") for s in ("3", "1")]
    out = _run("model_based.py", "--merge", *parts, "--out", str(tmp_path / "all"))  # kept checkpoints may differ
    assert out["seeds"] == [1, 3] and out["mb_budget_steps"] == 50 and out["model_free_seeds"] == [0, 1, 2]
    assert out["run"]["real_steps"] == 50 and "sp_mamba" not in out["run"]  # only the trained actor's config
    assert (tmp_path / "all" / "mpe_simple_spread_v3.png").stat().st_size > 10_000
    assert "last3_real_metrics" not in out  # MPE's episodes report no metrics
    # runs whose real episodes report metrics: each seed's mean over its last 3 iterations that reported any
    for s, values in {"3": [0.1, 0.2, 0.3, 0.7], "1": [0.5]}.items():
        part = json.loads((tmp_path / s / "mpe_simple_spread_v3.json").read_text())
        part["runs"][0]["real_metrics"] = [[50 * (i + 1), {"arrived_fraction": v}] for i, v in enumerate(values)]
        (tmp_path / s / "mpe_simple_spread_v3.json").write_text(json.dumps(part))
    with_metrics = _run("model_based.py", "--merge", *parts, "--out", str(tmp_path / "metrics"))
    assert with_metrics["last3_real_metrics"] == [{"arrived_fraction": 0.5}, {"arrived_fraction": 0.4}]
    with pytest.raises(AssertionError, match="a seed appears twice"):
        _run("model_based.py", "--merge", parts[0], str(tmp_path / "all" / "mpe_simple_spread_v3.json"),
             "--out", str(tmp_path / "x"))  # fmt: skip
    other = json.loads(Path(parts[0]).read_text())
    other["summary"]["run"]["real_steps"], other["runs"][0]["seed"] = 60, 5  # another protocol
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(AssertionError, match="was made with other settings than .*: run.real_steps 60, expected 50"):
        _run("model_based.py", "--merge", parts[1], str(tmp_path / "other.json"), "--out", str(tmp_path / "y"))
    # a setting added after a JSON was written counts as its default there (the behaviour of then), nothing else
    mb, older = _benchmark_module("model_based"), json.loads(Path(parts[0]).read_text())["summary"]
    newer = json.loads(json.dumps(older))
    del older["run"]["explore"], older["run"]["fit"]["compile"]
    assert mb.protocol(older) == mb.protocol(newer)
    newer["run"]["explore"] = 0.05
    assert [d[0] for d in mb.differences(mb.protocol(older), mb.protocol(newer))] == ["run.explore"]


def test_model_based_benchmark_checks_its_model_free_references_before_running(tmp_path):
    """A reference for other env keywords, a missing one or an unreadable one is refused before any run starts."""
    mb = _benchmark_module("model_based")
    reference = tmp_path / "mf.json"
    reference.write_text(json.dumps({"summary": {"env_id": "flatland:5", "env_kwargs": {"dense_reward": True}}}))
    kw = {"env_id": "flatland:5", "env_kwargs": {"dense_reward": True, "actions": "decisions"}, "out": str(tmp_path / "o")}
    with pytest.raises(ValueError, match=r"model_free: .*mf.json is for flatland:5 \{'dense_reward': True\}, expected"):
        mb.main(mb.Args(model_free=[str(reference)], **kw))
    with pytest.raises(ValueError, match=r"model_free: .*absent.json is not a readable mappo_baseline.py result JSON"):
        mb.main(mb.Args(model_free=[str(tmp_path / "absent.json")], **kw))
    reference.write_text("{")
    with pytest.raises(ValueError, match=r"model_free: .*mf.json is not a readable"):
        mb.main(mb.Args(model_free=[str(reference)], **kw))
    assert not (tmp_path / "o").exists()
    ok = {"summary": {"env_id": "flatland:5", "env_kwargs": kw["env_kwargs"]}}
    assert mb.load_references([], "flatland:5", {}) == []
    reference.write_text(json.dumps(ok))
    assert mb.load_references([str(reference)], "flatland:5", kw["env_kwargs"]) == [ok]


def test_loop_profile_reports_consistent_phases(tmp_path):
    out = _run("loop_profile.py", "--run.real-steps", "100", "--run.num-envs", "2", "--run.fit-steps", "2",
               "--run.fit.batch-size", "4", "--run.dream-updates", "1", "--run.dream-worlds", "4", "--run.eval-episodes", "1",
               "--run.mappo.epochs", "1", "--matmul-size", "64", "--matmul-seconds", "0.1", "--run.replay-value", "0.3",
               "--run.replay-value-windows", "4", "--run.real-ppo", "1", "--run.verdict.coef", "1",
               "--run.verdict.cells", "2", "--run.verdict.starts", "2", "--run.verdict.samples", "1",
               "--out", str(tmp_path / "p.json"))  # fmt: skip
    assert json.loads((tmp_path / "p.json").read_text()) == out
    # the last three: the critic's real targets, PPO on the real episodes (its updates are not in "ppo") and the
    # dream's verdict at cells (its term in the actor's loss is in "ppo")
    phases = {"collect", "fit", "dream", "ppo", "eval", "checkpoint", "replay_value", "real_ppo", "verdict"}
    ms, ref = out["cpu_ms_per_real_step"], out["matmul_gflops"]
    assert set(ms) == set(out["wall_ms_per_real_step"]) == set(out["ms_x_matmul"]) == phases
    assert all(v > 0 for v in ms.values()) and ref > 0
    assert out["real_steps"] == 100 and out["fit_steps"] == 2 and out["dream_rollouts"] == 1
    rows = 2 * 4 * 20  # fit steps x windows x rows per window (MPE episodes are 25 rows)
    assert out["train_ratio"] == pytest.approx(rows / 100, rel=1e-3)
    assert out["dream_ratio"] == pytest.approx(4 * 15 * 3 / 100, rel=1e-3)
    assert out["total_cpu_ms_per_real_step"] == pytest.approx(sum(ms.values()), abs=1e-3)
    fixed = sum(ms.values()) + ms["fit"] * (out["fixed_train_ratio"] / out["train_ratio"] - 1)
    assert out["total_cpu_ms_at_fixed_train_ratio"] == pytest.approx(fixed, rel=1e-3)
    for k, v in ms.items():
        assert out["ms_x_matmul"][k] == pytest.approx(v * ref, rel=1e-2, abs=0.02)
    assert set(out["flops"]) == {"fit_step", "dream_reset", "dream_rollout", "ppo_update"}
    assert all(v > 0 for v in out["flops"].values())
    for k in ("fit", "dream", "ppo"):
        assert out["vs_matmul"][k] == pytest.approx(out["gflops"][k] / ref, rel=1e-2, abs=1e-3)
    work = out["flops"]["fit_step"] * 2 / 1e9
    assert out["gflops"]["fit"] == pytest.approx(work / (ms["fit"] * 100 / 1e3), rel=2e-2)


def test_loop_profile_counts_flops_on_an_env_with_action_masks():
    # the FLOP count's dream rollout once started from a stale reset, whose masks the dream then refused
    out = _run("loop_profile.py", "--schedule", "mamba-flatland", "--warmup", "0", "--run.model", "small",
               "--run.fit-steps", "2", "--run.dream-updates", "1", "--run.dream-worlds", "8", "--run.eval-episodes", "1",
               "--run.mappo.num-minibatches", "1", "--matmul-size", "64", "--matmul-seconds", "0.1")  # fmt: skip
    assert out["schedule"] == "mamba-flatland" and out["env_id"] == "flatland:5" and out["basis"] == "cpu"
    assert out["fit_steps"] == 2 and out["dream_rollouts"] == 1
    assert all(out["flops"][k] > 0 for k in ("fit_step", "dream_reset", "dream_rollout", "ppo_update"))


def test_loop_profile_starts_from_a_named_schedule(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "benchmarks"))
    loop_profile = importlib.import_module("loop_profile")
    args = loop_profile.cli(["--schedule", "mamba-flatland", "--run.device", "cuda", "--warmup", "2"])
    assert args.run.schedule == "mamba-flatland" and args.run.env_id == "flatland:5" and args.run.model == "flatland"
    assert args.run.device == "cuda" and args.warmup == 2 and not args.run.progress and args.run.torch_threads == 1
    assert loop_profile.cli([]).run.schedule == "cpu"
    with pytest.raises(SystemExit):
        loop_profile.cli(["--schedule", "nope"])


def test_eval_scalars_collects_every_eval_scalar_of_the_runs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for seed, arrived in ((0, [0.0, 0.1, 0.2, 0.3]), (1, [0.0, 0.3, 0.2, 0.1])):
        with SummaryWriter(str(tmp_path / f"run{seed}")) as w:
            for i, a in enumerate(arrived):
                w.add_scalar("eval/arrived_fraction", a, i * 100)
                w.add_scalar("eval/episode_return", -a, i * 100)
                w.add_scalar("train/loss", 1.0, i * 100)  # not an evaluation: left out
    out = _run("eval_scalars.py", "--runs", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(tmp_path / "e.json"))
    assert set(out["scalars"]) == {"arrived_fraction", "episode_return"}
    arrived = out["scalars"]["arrived_fraction"]
    assert arrived["steps"] == [0, 100, 200, 300] and arrived["mean"] == pytest.approx([0.0, 0.2, 0.2, 0.2])
    assert arrived["last3_per_run"] == pytest.approx([0.2, 0.2]) and arrived["last3_mean"] == pytest.approx(0.2)
    assert json.loads((tmp_path / "e.json").read_text()) == out
    train = _run("eval_scalars.py", "--runs", str(tmp_path / "run0"), str(tmp_path / "run1"), "--prefix", "train/")
    assert set(train["scalars"]) == {"loss"} and train["scalars"]["loss"]["mean"] == [1.0] * 4


def test_flatland_reference_plays_every_policy_on_both_interfaces(tmp_path):
    args = ["--episodes", "2", "--env-kwargs", "dense_reward", "True", "max_episode_steps", "40"]
    out = _run("flatland_reference.py", *args, "--out", str(tmp_path / "ref.json"))
    assert set(out["results"]) == {"flatland", "decisions"}
    for interface in out["results"].values():
        assert set(interface) == {"random", "stop", "drive_on", "shortest_path"}
        for r in interface.values():
            assert r["episodes"] == 2 and 0 <= r["arrived_pct"] <= 100 and r["mean_length"] == 40
            assert r["arrived_pct_95"][0] <= r["arrived_pct"] <= r["arrived_pct_95"][1]
        stop = interface["stop"]  # nobody departs: no progress, no arrival, no deadlock
        assert stop["return_per_agent"] == 0 and stop["arrived_pct"] == 0 and stop["deadlocked_pct"] == 0
        assert interface["shortest_path"]["return_per_agent"] > 0  # every train moves towards its target at first
    assert json.loads((tmp_path / "ref.json").read_text()) == out
    script = str(ROOT / "examples" / "benchmarks" / "flatland_reference.py")
    bad = subprocess.run([sys.executable, script, "--policies", "stop", "greedy", "--episodes", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "policies: expected each of" in bad.stderr and "['greedy']" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl not installed (extra [smax])")
def test_smax_reference_and_jax_backend_rates():
    out = _run("smax_reference.py", "--maps", "3m", "--episodes", "3")
    for policy in ("random", "heuristic"):
        r = out["results"]["3m"][policy]
        assert r["episodes"] == 3 and 0 <= r["win_rate"] <= 1 and r["win_rate_95"][0] <= r["win_rate"] <= r["win_rate_95"][1]
        assert 1 <= r["mean_length"] <= 101
    rates = _run("vec_env.py", "--env-ids", "smax:3m", "--backends", "jax", "--num-envs", "2", "--seconds", "0.3")
    r = rates["results"]["smax:3m"]
    assert r["jax_agent_steps_per_s"] > 0 and "subproc_agent_steps_per_s" not in r
    assert abs(r["jax_over_sync"] - r["jax_agent_steps_per_s"] / r["sync_agent_steps_per_s"]) < 1e-2


@pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl not installed (extra [smax])")
def test_mappo_baseline_plays_the_smax_references_in_the_same_run(tmp_path):
    args = ["--env-id", "smax:3m", "--total-steps", "64", "--num-envs", "2", "--eval-every", "64", "--rate-seconds", "0.2",
            "--train.mappo.rollout-length", "32", "--train.eval-episodes", "1", "--train.backend", "jax",
            "--reference-episodes", "2"]  # fmt: skip
    out = _run("mappo_baseline.py", *args, "--out", str(tmp_path))
    refs = json.loads((tmp_path / "smax_3m.json").read_text())["raw_rate"]["references"]
    assert set(refs) == {"random", "heuristic"} and all(r["episodes"] == 2 for r in refs.values())
    assert out["reference_win_rates"] == {p: refs[p]["win_rate"] for p in refs}
    merged = _run("mappo_baseline.py", "--merge", str(tmp_path / "smax_3m.json"), "--out", str(tmp_path / "m"))
    assert merged["reference_win_rates"] == out["reference_win_rates"]


def test_soak_reports_memory_growth_of_both_phases(tmp_path):
    out = _run("soak.py", "--dream-steps", "3000", "--dream-worlds", "8", "--real-steps", "400", "--eval-every", "200",
               "--checkpoint-every", "200", "--sample-seconds", "0.02", "--out", str(tmp_path / "soak.json"))  # fmt: skip
    assert out["dream"]["imagined_agent_steps"] == 3000 and out["model_free"]["real_steps"] == 400
    for phase in ("dream", "model_free"):
        r = out[phase]
        assert r["samples"] >= 2 and 0 < r["rss_warm_mib"] <= r["rss_max_mib"]
        assert r["growth_max_mib"] >= r["growth_end_mib"] and isinstance(r["within_bound"], bool)
    assert json.loads((tmp_path / "soak.json").read_text()) == out


def test_soak_growth_summary_by_hand():
    soak = _benchmark_module("soak")
    # 100 MiB until 10 %, then 1 MiB more per 10 % of the phase: a leak of 9 MiB after warm-up
    samples = [(p, 100.0 + max(0.0, p - 0.1) * 10) for p in np.linspace(0, 1, 101)]
    r = soak.growth(samples, warmup=0.1, bound=8.0, seconds=1.0)
    assert r["rss_warm_mib"] == 100.0 and r["growth_end_mib"] == 9.0 and r["slope_mib_per_10pct"] == 1.0
    assert not r["within_bound"] and soak.growth(samples, 0.1, 9.5, 1.0)["within_bound"]


def test_env_snapshot_reports_bytes_and_times_per_copy(tmp_path):
    out = _run("env_snapshot.py", "--env-ids", "gym:CartPole-v1", "mpe:simple_spread_v3", "--num-envs", "2", "--steps",
               "3", "--out", str(tmp_path / "snap.json"))  # fmt: skip
    assert set(out["envs"]) == {"gym:CartPole-v1", "mpe:simple_spread_v3"} and out["num_envs"] == 2
    for r in out["envs"].values():
        assert r["bytes_per_copy"] > 1000 and r["save_ms_per_copy"] > 0 and r["restore_over_one_step"] > 0
    assert json.loads((tmp_path / "snap.json").read_text()) == out


def test_fit_ddp_reports_one_and_two_process_throughput(tmp_path):
    out = _run("fit_ddp.py", "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--out", str(tmp_path / "ddp.json"))
    assert out["processes"] == 2 and out["params"] > 10_000 and out["windows_per_s_1"] > 0 and out["windows_per_s_2"] > 0
    assert out["speedup"] == pytest.approx(out["windows_per_s_2"] / out["windows_per_s_1"], rel=1e-2)
    assert out["allreduce_ms_per_step"] > 0


def test_cluster_projection_by_hand(tmp_path):
    """MPE spread (N = 3): sync 3,000 agent-steps/s -> t_env = 1 ms per copy-step. E = 8 copies: 1 actor at 1,200
    agent-steps/s -> T = 20 ms, round trip 20 - 8 = 12 ms; 2 actors at 1,600 -> T = 15 ms, 15 - 4 = 11 ms: the line
    13 - K falls with K, so the model takes a flat round trip, their mean 11.5 ms."""
    for w, rate in ((1, 1200.0), (2, 1600.0)):
        rates = {"sync_agent_steps_per_s": 3000.0, "ray_agent_steps_per_s": rate}
        run = {"benchmark": "vec_env", "num_envs": [8], "num_workers": w, "results": {"mpe:simple_spread_v3": rates}}
        (tmp_path / f"v{w}.json").write_text(json.dumps(run))
    (tmp_path / "f.json").write_text(json.dumps({"benchmark": "fit_ddp", "params": 125_000, "batch_per_rank": 16,
                                                 "step_ms_1": 60.0, "allreduce_ms_per_step": 4.0}))  # fmt: skip
    out = _run("cluster_projection.py", "--vec-env", str(tmp_path / "v1.json"), str(tmp_path / "v2.json"), "--fit-ddp",
               str(tmp_path / "f.json"), "--workers", "1", "4", "--network-gbps", "8")  # fmt: skip
    mpe = out["collection_agent_steps_per_s"]["mpe:simple_spread_v3"]
    assert mpe["t_env_ms"] == pytest.approx(1.0) and mpe["round_trip_ms_measured"] == {"1": 12.0, "2": 11.0}
    assert mpe["round_trip_ms_model"] == {"fixed": 11.5, "per_actor": 0.0}
    assert mpe["4"] == pytest.approx(4 * 4 * 3 / ((4 * 1.0 + 11.5) / 1e3), rel=1e-3)
    fit = out["fit_windows_per_s"]
    # 4 ranks: 2·3/4 · 500,000 bytes · 8 bits / 8 Gbit/s = 0.75 ms of transfer + 2·3 hops of 2 ms = 12.75 ms
    assert fit["4"]["allreduce_ms"] == pytest.approx(12.75) and fit["1"]["allreduce_ms"] == 0
    assert fit["4"]["windows_per_s"] == pytest.approx(4 * 16 / (72.75 / 1e3), rel=1e-3)
    assert "not measured" in out["projection"]


def test_drama_world_model_benchmark_projects_from_measured_costs(tmp_path):
    pytest.importorskip("ale_py")
    out = _run("drama_world_model.py", "--env-id", "atari:Breakout", "--presets", "cpu-small", "--real-steps", "200",
               "--batch-size", "2", "--seq-len", "4", "--worlds", "4", "--context", "2", "--horizon", "2",
               "--repeats", "1", "--total-steps", "1000", "--matmul-size", "128",
               "--out", str(tmp_path / "d.json"))  # fmt: skip
    assert json.loads((tmp_path / "d.json").read_text()) == out
    r = out["presets"]["cpu-small"]
    assert r["params"] > 0 and r["fit_step_s"] > 0 and r["imagine_batch_s"] > 0 and r["fit_gflops"] > 0
    hours = 1000 * (r["fit_step_s"] + r["imagine_batch_s"] + 1 / out["env_steps_per_s"]) / 3600
    assert r["projected_hours"] == pytest.approx(hours, abs=0.006)  # rounded to 2 decimals from unrounded inputs


def test_drama_atari_runs_each_sampler_and_seed_and_reports_them_paired(tmp_path):
    pytest.importorskip("ale_py")
    tiny = ["--run.env-kwargs", "screen_size", "16", "--run.iterations", "2", "--run.real-steps", "32",
            "--run.warmup-steps", "32", "--run.fit-steps", "1", "--run.batch-size", "2", "--run.seq-len", "16",
            "--run.ac-updates", "1", "--run.worlds", "4", "--run.context", "2", "--run.ac.horizon", "3",
            "--run.ac.layers", "1", "--run.ac.actor-hidden", "8", "--run.ac.critic-hidden", "8",
            "--run.eval-max-steps", "10", "--random-episodes", "2", "--heldout-steps", "64", "--heldout-windows", "3",
            "--out", str(tmp_path)]  # fmt: skip
    out = _run("drama_atari.py", "--games", "Breakout", "--seeds", "3", *tiny)
    data = json.loads((tmp_path / "drama_atari.json").read_text())
    assert data["summary"] == out and out["unfinished"] == []
    breakout = out["games"]["Breakout"]
    assert breakout["paper"] is None  # not in DRAMA's Table 1 as quoted
    runs = {(r["sampler"], r["seed"]): r for r in data["runs"]["Breakout"]}
    assert sorted(runs) == [("dfs", 3), ("uniform", 3)]
    final = {k: float(np.mean([v for _, v in r["eval_returns"][-3:]])) for k, r in runs.items()}
    paired = breakout["final_dfs_minus_uniform_by_seed"]
    assert paired == {"3": pytest.approx(final["dfs", 3] - final["uniform", 3], abs=0.006)}
    dfs = breakout["samplers"]["dfs"]
    assert dfs["seeds"] == [3] and dfs["env_steps"] == 64 and dfs["final_mean"] == pytest.approx(final["dfs", 3], abs=0.006)
    assert dfs["cpu_s_per_1k_steps"]["fit"] > 0 and dfs["cpu_s_per_1k_steps"]["total"] > 0
    # whether the actor moved: its last entropy beside the uniform policy's (Breakout: 4 actions), training episodes
    assert breakout["uniform_actor_entropy"] == pytest.approx(np.log(4), abs=1e-4)
    assert 0 < dfs["actor_entropy_final_by_seed"][0] <= np.log(4) + 1e-4
    assert runs["dfs", 3]["actor"]["actor_entropy_final"] == dfs["actor_entropy_final_by_seed"][0]
    assert dfs["training_episodes_by_seed"] == [len(runs["dfs", 3]["training_returns"])]
    report = _benchmark_module("report")
    random = [report.random_returns("atari:Breakout", 1, 1_000_000 + e, screen_size=16)[0] for e in range(2)]
    assert breakout["random_mean"] == pytest.approx(np.mean(random), abs=0.006)
    # each run's final world model scored on the same held-out random-play windows: every loss term, paired by seed
    held = {k: r["heldout_loss"] for k, r in runs.items()}
    assert all(
        set(h) == {"loss", "obs", "reward", "cont", "kl", "kl_rep"} and all(np.isfinite(list(h.values())))
        for h in held.values()
    )
    assert dfs["heldout_loss_mean"] == held["dfs", 3]
    assert breakout["heldout_loss_dfs_minus_uniform_by_seed"] == {
        "3": pytest.approx(held["dfs", 3]["loss"] - held["uniform", 3]["loss"], abs=2e-4)
    }
    # runs of one game made with other settings are not averaged together
    da = _benchmark_module("drama_atari")
    result = tmp_path / "parts" / "Breakout_uniform_seed3" / "result.json"
    result.write_text(result.read_text().replace('"fit_steps": 1,', '"fit_steps": 3,'))
    with pytest.raises(ValueError, match=r"Breakout_uniform_seed3/result.json was made with other settings .*"
                                         r"fit_steps 3, expected 1"):  # fmt: skip
        da.main(tyro.cli(da.Args, args=["--report-only", *tiny]))
    # a finished run is read, not run again; a run without its result is reported as unfinished, with its steps
    stamp = (tmp_path / "parts" / "Breakout_dfs_seed3" / "result.json").stat().st_mtime_ns
    result.unlink()
    again = da.main(tyro.cli(da.Args, args=["--games", "Breakout", "--seeds", "3", "--samplers", "dfs", *tiny]))
    assert again["unfinished"] == ["Breakout_uniform_seed3 (64 env steps)"]
    assert list(again["games"]["Breakout"]["samplers"]) == ["dfs"]
    assert again["games"]["Breakout"]["samplers"]["dfs"]["heldout_loss_mean"] == held["dfs", 3], "scored differently twice"
    assert (tmp_path / "parts" / "Breakout_dfs_seed3" / "result.json").stat().st_mtime_ns == stamp


def test_drama_atari_reads_a_resumed_runs_actor_numbers_as_tensorboard_does(tmp_path):
    """Events of an interrupted run (to step 768 and an episode ended at 700) and of its resume from the 512-step
    checkpoint (``purge_step`` 513, as the loop opens its writer): what the restart purged is not read."""
    from torch.utils.tensorboard import SummaryWriter

    da = _benchmark_module("drama_atari")
    first = SummaryWriter(str(tmp_path))
    for step, h in [(256, 2.0), (512, 1.9), (768, 1.8)]:
        first.add_scalar("actor_critic/entropy", h, step)
    first.add_scalar("charts/real_episode_return", 5.0, 300)
    first.add_scalar("charts/real_episode_return", 7.0, 700)
    first.close()
    resumed = SummaryWriter(str(tmp_path), purge_step=513)
    resumed.add_scalar("actor_critic/entropy", 1.5, 768)
    resumed.add_scalar("actor_critic/entropy", 1.25, 1024)
    resumed.add_scalar("charts/real_episode_return", 9.0, 900)
    resumed.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    curves = da.training_curves(tmp_path)
    assert curves["entropy"] == [(256, 2.0), (512, pytest.approx(1.9)), (768, 1.5), (1024, 1.25)]
    assert curves["episode_return"] == [(300, 5.0), (900, 9.0)]
    numbers = da.actor_numbers(curves)
    assert numbers == {"actor_entropy_final": 1.25, "training_return_last3": 7.0, "training_episodes": 2}
    (tmp_path / "silent").mkdir()  # a run that logged nothing yet
    assert da.actor_numbers(da.training_curves(tmp_path / "silent")) == {
        "actor_entropy_final": None,
        "training_return_last3": None,
        "training_episodes": 0,
    }


def test_drama_actor_probe_continues_the_checkpoint_actor_in_its_frozen_dream(tmp_path):
    pytest.importorskip("ale_py")
    from agents.drama_loop import DRAMALoopConfig, run
    from agents.dreamer_ac import DreamerACConfig

    cfg = DRAMALoopConfig(env_id="atari:Breakout", env_kwargs={"screen_size": 16}, iterations=2, real_steps=32,
                          warmup_steps=32, fit_steps=1, batch_size=2, seq_len=16, ac_updates=1, worlds=4, context=2,
                          ac=DreamerACConfig(horizon=3, layers=1, actor_hidden=8, critic_hidden=8), eval_max_steps=30,
                          run_dir=str(tmp_path / "run"), progress=False)  # fmt: skip
    result = run(cfg)
    out = _run("drama_actor_probe.py", "--run-dir", str(tmp_path / "run"), "--lrs", "1e-3", "1e-2", "--updates", "2",
               "--eval-every", "1", "--eval-episodes", "1", "--out", str(tmp_path / "p.json"))  # fmt: skip
    assert json.loads((tmp_path / "p.json").read_text()) == out
    assert out["checkpoint"] == "step_000000000064" and out["ac_updates_before"] == 2 and out["worlds"] == 4
    for curve in out["curves"].values():
        assert [p["updates"] for p in curve] == [0, 1, 2]
        # before any probe update: the run's own actor, evaluated as the run did (same env seed, one episode)
        assert curve[0]["greedy_return"] == result["eval_returns"][-1][1]
        assert curve[0]["entropy"] is None and curve[0]["dream_reward_per_step"] is None  # no probe update yet
        assert curve[1]["entropy"] > 0 and curve[2]["cpu_s"] >= curve[1]["cpu_s"]
    da = _benchmark_module("drama_actor_probe")
    with pytest.raises(ValueError, match=r"step: no checkpoint 100 in .*found \['step_000000000032', 'step_000000000064'\]"):
        da.checkpoint(tmp_path / "run", 100)


def test_event_visibility_probes_score_every_input(tmp_path):
    """Flatland's dense-reward events: a probe per input and event, scored on held-out rows, written as JSON."""
    out = _run("event_visibility.py", "--train-steps", "600", "--heldout-steps", "400", "--epochs", "2",
               "--hidden", "16", "--out", str(tmp_path))  # fmt: skip
    assert json.loads((tmp_path / "flatland_5.json").read_text()) == out
    assert out["train_rows"] > 1000 and out["heldout_rows"] > 500
    deadlock = out["results"]["deadlock"]
    assert out["train_events"]["deadlock"] > 0 and set(deadlock) == {"now", "before", "both", "state"}
    for scores in deadlock.values():
        assert scores["real"] > 0 and 0 <= scores["matched"] <= min(scores["real"], scores["predicted"])
        assert 0 < scores["average_precision"] <= 1
        assert scores["base_rate"] == pytest.approx(scores["real"] / out["heldout_rows"], abs=1e-6)


def test_average_precision_by_hand():
    """Positives ranked 1st and 3rd: (1/1 + 2/3) / 2; no positive: None; a perfect ranking: 1."""
    module = _benchmark_module("event_visibility")
    scores, labels = np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, False, True, False])
    assert module.average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2)
    assert module.average_precision(scores, np.zeros(4, bool)) is None
    assert module.average_precision(scores, np.array([True, True, False, False])) == 1.0


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray not installed: pip install "wmenv[ray]"')
def test_overlap_benchmark_times_both_modes(tmp_path, one_ray_cluster):
    out = _run("overlap.py", "--run.iterations", "2", "--run.real-steps", "60", "--run.num-envs", "2", "--run.fit-steps", "3",
               "--run.dream-updates", "1", "--run.dream-worlds", "8", "--run.eval-episodes", "1",
               "--out", str(tmp_path / "o.json"))  # fmt: skip
    assert set(out["results"]) == {"off", "ray"} and out["speedup"] > 0
    assert 0 < out["inline_collection_share"] < 1 and out["results"]["off"]["collect_wait_s"] > 0
    assert json.loads((tmp_path / "o.json").read_text()) == out


def test_dream_gap_plays_the_loops_evaluation_and_imagines_from_its_first_observations(tmp_path):
    """dream_gap's real episodes are the loop's greedy evaluation (same seeds: the same return as `evaluate_metrics`
    with the latent actor); imagined rewards stop at each episode's length; the JSON holds every horizon."""
    from agents.model_based import ModelBasedConfig, run
    from agents.train import evaluate_metrics, latest_checkpoint, policy_from_checkpoint
    from wmenv.envs import make
    from wmenv.fit import FitConfig, load_model

    run(ModelBasedConfig(iterations=1, real_steps=60, num_envs=2, fit_steps=3, dream_updates=1, dream_worlds=4,
                         eval_episodes=1, fit=FitConfig(batch_size=2, progress=False), run_dir=str(tmp_path / "r"),
                         progress=False))  # fmt: skip
    module = _benchmark_module("dream_gap")
    ckpt = latest_checkpoint(tmp_path / "r")
    policy, train = policy_from_checkpoint(ckpt)
    _, spec = make("mpe:simple_spread_v3")
    model = load_model(ckpt / "world_model", spec, kind="mamba").eval()
    real = module.real_episodes(model, policy, True, "mpe:simple_spread_v3", {}, 3, 11)
    assert real["actions"].shape == (3, 25, 3) and real["lengths"].tolist() == [25, 25, 25]

    class Greedy:  # evaluate_metrics' agent interface around the same policy
        device = torch.device("cpu")

        def __init__(self, policy):
            self.policy = policy

        def act(self, obs, state, resets, mask, deterministic):
            logits, state = self.policy.step(obs, state, resets)
            return module.greedy(logits, mask, spec, len(obs) // spec.n_agents), None, state

        def env_actions(self, actions, episodes):
            return actions.view(episodes, -1).numpy()

    expected = evaluate_metrics(Greedy(policy), "mpe:simple_spread_v3", 3, 11, True, model)["episode_return"]
    assert real["rewards"].mean(-1).sum(-1).mean() == pytest.approx(expected, rel=1e-6)
    short = {**real, "lengths": np.array([25, 3, 1])}
    rewards = module.imagined_rewards(model, policy, True, short, True, 0)
    assert rewards.shape == (3, 25) and not rewards[1, 3:].any() and not rewards[2, 1:].any() and rewards[1, :3].all()
    out = _run("dream_gap.py", "--runs", str(tmp_path / "r"), "--episodes", "3", "--all-checkpoints", "--out",
               str(tmp_path / "g.json"), "--scripted", "still:1,0,0,0,-1", "--horizons", "2", "20", "40")  # fmt: skip
    result, still = out["results"]
    assert set(result["by_horizon"]) == {"2", "20", "25"} and result["real_steps"] == 60  # 40 > the episode: left out
    assert module.Args().horizons == [1, 5, 15]
    with pytest.raises(ValueError, match=r"^horizons\[1\]: expected an integer >= 1, got 0$"):
        module.Args(horizons=[5, 0])
    with pytest.raises(ValueError, match=r"^horizons: expected at least one step count, got \[\]$"):
        module.Args(horizons=[])
    assert result["by_horizon"]["25"]["real"] == result["real"] and result["actor_input"] == "latent"
    assert json.loads((tmp_path / "g.json").read_text()) == out
    # a scripted policy: the same episodes' seeds, always its most preferred available action (MPE: all available)
    assert (result["policy"], still["policy"], still["checkpoint"]) == ("actor", "still", result["checkpoint"])
    (prefer,) = module.parse_scripted(["still:1,0,0,0,-1"], spec).values()
    scripted = module.real_episodes(None, prefer, False, "mpe:simple_spread_v3", {}, 3, 7_000_000)
    assert not scripted["actions"].any() and still["real"] == pytest.approx(
        scripted["rewards"].mean(-1).sum(-1).mean(), abs=1e-3
    )
    assert still["dream_policy"] == still["dream_real_actions"]  # in the dream it takes the same (always available) action
    for bad in ("still:1,0,0", "still:a,b,c,d,e", ":1,0,0,0,0"):
        with pytest.raises(ValueError, match="scripted: expected 'name:p_0,...,p_4'"):
            module.parse_scripted([bad], spec)
    assert module.correlation(np.zeros(3), np.arange(3.0)) is None  # a constant sample: no correlation, not NaN
    assert module.correlation(np.array([1.0, 2, 4]), np.array([3.0, 2, 1])) == pytest.approx(-0.9820, abs=1e-3)


def test_dream_gap_judges_with_the_mean_of_consecutive_world_models(tmp_path):
    """``--average K``: each checkpoint with K kept ones up to it is also judged in the model whose weights are their
    mean; the mean of one model with itself judges exactly as that model; a mismatched config is refused."""
    from agents.model_based import ModelBasedConfig, run
    from agents.train import policy_from_checkpoint
    from wmenv.envs import make
    from wmenv.fit import FitConfig, load_model, save_model
    from wmenv.models.registry import build_model

    run(ModelBasedConfig(iterations=2, real_steps=60, num_envs=2, fit_steps=3, dream_updates=1, dream_worlds=4,
                         eval_episodes=1, fit=FitConfig(batch_size=2, progress=False), run_dir=str(tmp_path / "r"),
                         progress=False))  # fmt: skip
    module = _benchmark_module("dream_gap")
    first, second = sorted((tmp_path / "r" / "checkpoints").glob("step_*"))
    _, spec = make("mpe:simple_spread_v3")
    a, b = (load_model(c / "world_model", spec, kind="mamba") for c in (first, second))
    mean = module.mean_model([first, second], spec, "mamba")
    for (name, pa), pb, pm in zip(a.named_parameters(), b.parameters(), mean.parameters(), strict=True):
        assert torch.allclose(pm, (pa + pb) / 2, atol=1e-7), name
    assert any(not torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))  # two fits
    policy, _ = policy_from_checkpoint(second)
    real = module.real_episodes(b.eval(), policy.eval(), True, "mpe:simple_spread_v3", {}, 3, 11)
    args = module.Args(horizons=[5])
    same = module.mean_model([second, second], spec, "mamba")
    assert module.verdict(same, policy, True, real, args) == module.verdict(b.eval(), policy, True, real, args)
    assert module.verdict(mean, policy, True, real, args) != module.verdict(b.eval(), policy, True, real, args)
    out = _run("dream_gap.py", "--runs", str(tmp_path / "r"), "--episodes", "3", "--all-checkpoints", "--average", "2")
    early, late = out["results"]
    assert "averaged" not in early and late["averaged"]["models"] == 2
    assert set(late["averaged"]) == {"models", "dream_policy", "dream_real_actions", "gap_policy", "gap_real_actions",
                                     "by_horizon"}  # fmt: skip
    assert late["averaged"]["dream_real_actions"] != late["dream_real_actions"]  # judged by another model
    with pytest.raises(ValueError, match=r"^average: expected an integer >= 1, got 0$"):
        module.Args(average=0)
    bigger = tmp_path / "big" / "step_000000000001"
    save_model(bigger / "world_model", build_model("mamba", spec, "smac"))  # the run's is the `small` preset
    with pytest.raises(ValueError, match="^folders: .* holds a world model of config"):
        module.mean_model([bigger, second], spec, "mamba")


def test_dream_gap_replays_the_loops_evaluation_with_continuous_actions(tmp_path):
    """With a Gaussian actor, dream_gap's greedy episodes (the mean, clipped to the bounds) are the loop's own last
    evaluation: same seed, same return; the imagined returns cover the whole episode, actions replayed or not."""
    from agents.model_based import ModelBasedConfig, run
    from agents.train import latest_checkpoint, policy_from_checkpoint
    from wmenv.envs import make
    from wmenv.fit import FitConfig, load_model

    result = run(ModelBasedConfig(env_id="gym:Pendulum-v1", iterations=1, real_steps=400, num_envs=2, fit_steps=3,
                                  dream_updates=1, dream_worlds=4, eval_episodes=1, run_dir=str(tmp_path / "r"),
                                  fit=FitConfig(batch_size=2, progress=False), progress=False))  # fmt: skip
    module = _benchmark_module("dream_gap")
    ckpt = latest_checkpoint(tmp_path / "r")
    policy, train = policy_from_checkpoint(ckpt)
    _, spec = make("gym:Pendulum-v1")
    model = load_model(ckpt / "world_model", spec, kind="mamba").eval()
    real = module.real_episodes(model, policy, True, "gym:Pendulum-v1", {}, 1, 1_000_000)  # the loop's eval seed
    assert real["actions"].shape == (1, 200, 1, 1) and real["actions"].dtype == np.float32
    assert np.abs(real["actions"]).max() <= 2.0  # Pendulum's torque bounds
    assert real["rewards"].sum() == pytest.approx(result["eval_returns"][-1][1], rel=1e-6)
    for replay in (True, False):
        rewards = module.imagined_rewards(model, policy, True, real, replay, 0)
        assert rewards.shape == (1, 200) and np.isfinite(rewards).all() and rewards.any()


def test_dream_gap_measures_a_model_free_run_with_the_same_episodes(tmp_path):
    """A model-free run's checkpoint (no world model) gets the same greedy episodes and its real return only: with
    the run's evaluation seed, the return the run logged last."""
    from agents.train import TrainConfig, train

    result = train(TrainConfig(total_steps=400, num_envs=2, eval_every=400, eval_episodes=2, checkpoint_every=0,
                               run_dir=str(tmp_path / "mf"), progress=False))  # fmt: skip
    out = _run("dream_gap.py", "--runs", str(tmp_path / "mf"), "--episodes", "2", "--seed", "1000000")
    (measured,) = out["results"]
    assert measured["real"] == pytest.approx(result.eval_returns[-1][1], abs=1e-3)  # rounded to 3 decimals
    assert measured["real_steps"] == 400 and measured["actor_input"] == "obs" and "dream_policy" not in measured


def test_softmax_benchmark_times_torch_against_the_hand_written_path(tmp_path):
    out = _run("softmax.py", "--shapes", "ppo_actions_5", "twohot_255", "--calls", "2", "--rounds", "1",
               "--out", str(tmp_path / "s.json"))  # fmt: skip
    assert json.loads((tmp_path / "s.json").read_text()) == out
    few, many = out["results"]["ppo_actions_5"], out["results"]["twohot_255"]
    assert few["hand_written"] and not many["hand_written"]
    for row in (few, many):
        for op in ("log_softmax", "softmax"):
            r = row[op]
            assert r["speedup"] == pytest.approx(r["torch_ms"] / r["ours_ms"], rel=0.05) and r["max_abs_diff"] < 1e-5
    assert many["softmax"]["max_abs_diff"] == 0.0  # many classes: torch's own kernel


def test_optimizer_step_benchmark_times_the_adam_implementations(tmp_path):
    out = _run("optimizer_step.py", "--models", "mamba:small", "--steps", "2", "--rounds", "1", "--fit-steps", "1",
               "--fit-compile", "off", "--out", str(tmp_path / "o.json"))  # fmt: skip
    assert json.loads((tmp_path / "o.json").read_text()) == out
    row = out["models"]["mamba:small"]
    assert row["tensors"] > 10 and row["parameters"] > 10_000
    assert row["default_over_fused"] == pytest.approx(row["default_ms"] / row["fused_ms"], rel=0.05)
    assert row["max_abs_diff_after_10_steps"] < 1e-6  # the same update to rounding
    fit_ms = row["fit_step_ms"]
    assert row["fit_step_default_over_fused"] == pytest.approx(fit_ms["default"] / fit_ms["fused"], rel=0.05)
    assert min(fit_ms.values()) > row["fused_ms"]  # a whole fit step costs more than its optimizer step


def test_a_benchmark_script_imports_the_library_of_its_own_checkout(tmp_path):
    """A script run from another checkout (a worktree at another commit) imports that checkout's library, not the
    installed one: `report` puts its checkout's root first on sys.path."""
    bench = tmp_path / "checkout" / "examples" / "benchmarks"
    bench.mkdir(parents=True)
    (bench / "report.py").write_text((ROOT / "examples" / "benchmarks" / "report.py").read_text())
    (tmp_path / "checkout" / "wmenv").mkdir()
    (tmp_path / "checkout" / "wmenv" / "__init__.py").write_text("")
    (bench / "where.py").write_text("import report  # noqa: F401\nimport wmenv\n\nprint(wmenv.__file__)\n")
    proc = subprocess.run([sys.executable, str(bench / "where.py")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == tmp_path / "checkout" / "wmenv" / "__init__.py"


def test_mag_selection_statistics_by_hand():
    mod = _benchmark_module("mag_selection")
    # L = 2 candidates, B = 3 worlds; sums over worlds 6 and 5: per batch keeps candidate 1 for all
    score = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 1.0]])
    stats = mod.selection_stats(score)
    assert stats["agreement"] == pytest.approx(2 / 3)  # worlds 1 and 2 have candidate 1 as their own argmin
    std = score.std(0)  # per world: |difference| / sqrt(2)
    mean = score.mean(0)
    assert stats["gain_per_world"] == pytest.approx(float(((mean - score.min(0).values) / std).mean()))
    assert stats["gain_per_batch"] == pytest.approx(float(((mean - score[1]) / std).mean()))
    assert stats["gain_per_batch"] < stats["gain_per_world"]
    tied = mod.selection_stats(torch.tensor([[1.0, 2.0], [1.0, 3.0]]))  # world 0's candidates tie: out of the gains
    assert tied["gain_per_world"] == pytest.approx(float((2.5 - 2.0) / torch.tensor([2.0, 3.0]).std()))


def test_mag_selection_benchmark_compares_both_picks_on_the_dreams_scores(tmp_path):
    out = _run("mag_selection.py", "--train-steps", "300", "--fit-steps", "5", "--worlds", "16", "--lookahead", "2",
               "--steps", "2", "--out", str(tmp_path / "m.json"))  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text()) == out
    assert out["steps"] == 2 and len(out["per_step"]) == 2 and out["chance_agreement"] == 0.25
    assert 0.0 <= out["agreement"] <= 1.0
    assert out["gain_per_world"] >= out["gain_per_batch"]  # per world keeps each world's minimum


def test_choice_profile_summarizes_choice_rows_per_mask_pattern(tmp_path):
    """profile: per pattern of available actions its share, mean probabilities and normalized entropy; the script
    profiles a run's real (sampled) episodes and a dream rollout from its replay."""
    from agents.model_based import ModelBasedConfig, run
    from wmenv.fit import FitConfig

    module = _benchmark_module("choice_profile")
    probs = np.array([[0.5, 0.0, 0.5], [0.9, 0.1, 0.0], [0.2, 0.0, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    masks = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=bool)
    out = module.profile(probs, masks)
    h = lambda p: -sum(x * np.log(x) for x in p if x > 0)  # noqa: E731
    assert out["rows"] == 4 and [p["mask"] for p in out["patterns"]] == ["101", "110", "111"]
    first = out["patterns"][0]
    assert first["share"] == 0.5 and first["probs"] == [0.35, 0.0, 0.65]
    assert first["normalized_entropy"] == pytest.approx((1.0 + h([0.2, 0.8]) / np.log(2)) / 2, abs=1e-4)
    assert out["patterns"][2]["normalized_entropy"] == pytest.approx(1.0, abs=1e-4)
    want = (1.0 + h([0.9, 0.1]) / np.log(2) + h([0.2, 0.8]) / np.log(2) + 1.0) / 4
    assert out["normalized_entropy"] == pytest.approx(want, abs=1e-4)
    tagged = module.profile(probs, masks, np.array(["1", "3", "3", "?"]))
    assert [(p["mask"], p["share"]) for p in tagged["patterns"]] == [
        ("101|1", 0.25), ("101|3", 0.25), ("110|3", 0.25), ("111|?", 0.25)
    ]  # fmt: skip
    assert tagged["patterns"][0]["probs"] == [0.5, 0.0, 0.5] and tagged["normalized_entropy"] == out["normalized_entropy"]
    infos = [{"a": {"state": 1}, "b": {}}, {}]
    assert module.info_tags(infos, ("a", "b"), "state", (2, 2)).tolist() == [["1", "?"], ["?", "?"]]
    with pytest.raises(ValueError, match=r"^tags: expected shape \(4,\), got \(3,\)$"):
        module.profile(probs, masks, np.array(["1", "2", "3"]))
    with pytest.raises(ValueError, match="more than one available action"):
        module.profile(probs, np.eye(3, dtype=bool)[[0, 1, 2, 0]])
    with pytest.raises(ValueError, match=r"^probs, masks: expected the same \(R, A\) shape"):
        module.profile(probs, masks[:, :2])
    run(ModelBasedConfig(iterations=1, real_steps=60, num_envs=2, fit_steps=3, dream_updates=1, dream_worlds=4,
                         eval_episodes=1, fit=FitConfig(batch_size=2, progress=False), run_dir=str(tmp_path / "r"),
                         progress=False))  # fmt: skip
    result = _run("choice_profile.py", "--runs", str(tmp_path / "r"), "--episodes", "2", "--worlds", "4", "--out",
                  str(tmp_path / "c.json"))["results"][0]  # fmt: skip
    # MPE: every action always available, so every living row is a choice row of one pattern (the young model ends
    # some imagined agents early: their rows do not count)
    assert result["real"]["rows"] == 2 * 25 * 3 and 0 < result["dream"]["rows"] <= 4 * 15 * 3
    for side in ("real", "dream"):
        (pattern,) = result[side]["patterns"]
        assert pattern["mask"] == "11111" and pattern["share"] == 1.0 and sum(pattern["probs"]) == pytest.approx(1, abs=1e-3)
        assert 0 < result[side]["normalized_entropy"] <= 1
    assert json.loads((tmp_path / "c.json").read_text())["results"][0] == result
    # a model-free run: its actor on observations, in reality only
    from agents.mappo import MAPPOConfig
    from agents.train import TrainConfig, train

    train(TrainConfig(total_steps=100, num_envs=2, eval_every=0, progress=False, mappo=MAPPOConfig(epochs=1),
                      checkpoint_every=50, run_dir=str(tmp_path / "mf")))  # fmt: skip
    free = _run("choice_profile.py", "--runs", str(tmp_path / "mf"), "--episodes", "2")["results"][0]
    assert free["dream"] is None and free["real"]["rows"] == 2 * 25 * 3 and free["real_steps"] == 100


def test_choice_verdict_compares_each_actions_real_and_imagined_futures(tmp_path):
    """verdicts: relative values per action over the actions scored in both, best-action agreement, correlation, the
    actor's agreement; the script branches a run's real episodes at cells and imagines the same cells."""
    from agents.model_based import ModelBasedConfig, run
    from wmenv.fit import FitConfig

    module = _benchmark_module("choice_verdict")
    cells = [  # go (0) vs stop (2) on one-way cells; a switch where the dream does not offer action 1
        {"available": [True, False, True], "tag": "3", "probs": [0.9, 0.0, 0.1], "real": [1.0, None, 0.0],
         "real_se": [0.1, None, 0.3], "dream": [0.0, None, 0.5], "real_halves": [[1.2, None, 0.0], [0.8, None, 0.0]]},
        {"available": [True, False, True], "tag": "3", "probs": [0.2, 0.0, 0.8], "real": [2.0, None, 1.0],
         "real_se": [0.2, None, 0.2], "dream": [1.0, None, 0.0], "real_halves": [[2.0, None, 1.0], [2.0, None, 1.0]]},
        {"available": [True, True, True], "tag": "4", "probs": [0.1, 0.8, 0.1], "real": [0.0, 3.0, 1.0],
         "real_se": [0.1, 0.1, 0.1], "dream": [2.0, None, 0.0]},
        {"available": [True, True, False], "tag": "4", "probs": [0.5, 0.5, 0.0], "real": [0.0, 1.0, None],
         "real_se": [0.1, 0.1, None], "dream": [0.0, None, None]},
    ]  # fmt: skip
    out = module.verdicts(cells)
    assert list(out) == ["all", "101|3", "110|4", "111|4"]
    one_way = out["101|3"]
    assert (one_way["cells"], one_way["compared"], one_way["not_compared"]) == (2, 2, 0)
    assert one_way["real"] == [0.5, None, -0.5] and one_way["dream"] == [0.125, None, -0.125]
    assert one_way["best_agree"] == 0.5 and one_way["actor_real_best"] == 0.5 and one_way["actor_dream_best"] == 0.0
    assert one_way["real_se"] == pytest.approx(0.2) and one_way["corr"] == pytest.approx(0.316, abs=1e-3)
    # halves (0.6, -0.6) | (0.4, -0.4) and (0.5, -0.5) | (0.5, -0.5) after centering; no dream halves given
    assert one_way["real_split_corr"] == pytest.approx(0.980, abs=1e-3) and one_way["dream_split_corr"] is None
    switch = out["111|4"]  # action 1 is not in the dream's mask: go and stop compared, relative to their mean
    assert switch["real"] == [-0.5, None, 0.5] and switch["dream"] == [1.0, None, -1.0] and switch["best_agree"] == 0.0
    assert switch["corr"] is None  # two pairs: too few for a correlation
    lone = out["110|4"]  # one action scored in both: nothing to compare
    assert (lone["compared"], lone["not_compared"], lone["best_agree"], lone["real"]) == (0, 1, None, [None] * 3)
    assert (out["all"]["cells"], out["all"]["compared"]) == (4, 3)
    with pytest.raises(ValueError, match=r"^rate: expected a probability in \(0, 1\], got 0.0$"):
        module.Args(rate=0.0)
    with pytest.raises(ValueError, match=r"^samples: expected an integer >= 1, got 0$"):
        module.Args(samples=0)
    run(ModelBasedConfig(iterations=1, real_steps=60, num_envs=2, fit_steps=3, dream_updates=1, dream_worlds=4,
                         eval_episodes=1, fit=FitConfig(batch_size=2, progress=False), run_dir=str(tmp_path / "r"),
                         progress=False))  # fmt: skip
    args = ["--runs", str(tmp_path / "r"), "--episodes", "2", "--cells", "3", "--rate", "0.2", "--samples", "2",
            "--dream-samples", "3"]  # fmt: skip
    result = _run("choice_verdict.py", *args, "--steps", "30", "--to-end", "--out", str(tmp_path / "v.json"))["results"][0]
    assert json.loads((tmp_path / "v.json").read_text())["results"][0] == result
    assert len(result["cells"]) == 3 and result["steps"] == 30 and result["verdicts"]["all"]["cells"] == 3
    assert (result["samples"], result["dream_samples"]) == (2, 3)
    for cell in result["cells"]:  # MPE: all 5 actions available; 30 steps outlast the 25-step episode
        assert cell["available"] == [True] * 5 and 0 <= cell["t"] < 25 and sum(cell["probs"]) == pytest.approx(1, abs=1e-3)
        assert cell["real"] == cell["real_end"] and all(v is not None for v in cell["real"])
        for a, (x, y) in enumerate(zip(*cell["real_halves"])):  # two samples: each half is one of them
            assert (x + y) / 2 == pytest.approx(cell["real"][a], abs=2e-4)
        assert len(cell["dream"]) == 5 and any(v is not None for v in cell["dream"])
        offered = [v is not None for v in cell["dream_own"]]
        assert offered == [v is not None for v in cell["dream_value_own"]] == cell["dream_offered"]
        assert all(v is None or 0 <= v <= 1 for v in cell["dream_own_ended"])  # a fraction of the futures
        assert all(v is None or v <= min(0.0, d) for v, d in zip(cell["dream_own_negative"], cell["dream_own"]))
    assert set(result["verdicts_value"]) == set(result["verdicts"]) and "verdicts_team" in result
    assert len({tuple(c["real"]) for c in result["cells"]}) == 3  # other cells, other futures
    short = _run("choice_verdict.py", *args, "--steps", "2")["results"][0]
    assert [c["t"] for c in short["cells"]] == [c["t"] for c in result["cells"]]  # the same episodes and cells
    assert "real_end" not in short["cells"][0] and short["steps"] == 2
    # two imagined steps: agents reach the horizon alive, and the critic's value of their last state is added
    assert any(c["dream_value_own"] != c["dream_own"] for c in short["cells"])


def test_reward_fit_scores_the_checkpoints_head_and_fresh_variants_on_the_newest_episodes(tmp_path):
    """reward_fit: the checkpoint model's R² on its replay's newest episodes is the R² of its own predictions there;
    variants are fitted without those episodes, with their overrides; malformed variants are refused up front."""
    from agents.model_based import ModelBasedConfig, run
    from agents.train import latest_checkpoint
    from wmenv.data.replay import EpisodeReplay
    from wmenv.envs import make
    from wmenv.fit import FitConfig, load_model

    run(ModelBasedConfig(iterations=2, real_steps=100, num_envs=2, fit_steps=3, dream_updates=1, dream_worlds=4,
                         eval_episodes=1, fit=FitConfig(batch_size=2, progress=False), run_dir=str(tmp_path / "r"),
                         progress=False))  # fmt: skip
    module = _benchmark_module("reward_fit")
    ckpt = latest_checkpoint(tmp_path / "r")
    _, spec = make("mpe:simple_spread_v3")
    replay = EpisodeReplay.load_segments(ckpt / "replay.json", tmp_path / "r" / "replay", spec)
    held, episodes = module.newest_episodes(replay, 2)
    assert held == [replay.num_episodes - 2, replay.num_episodes - 1] and episodes["reward"].shape == (2, 26, 3)
    model = load_model(ckpt / "world_model", spec, kind="mamba")
    scored = module.score(model, episodes, 0)
    with torch.no_grad():  # the posterior R² by hand: the head on every row's posterior, rows 1..T
        posts = model.observe_rows(episodes["obs"].float(), episodes["action"], torch.arange(26).eq(0).expand(2, 26),
                                   torch.Generator().manual_seed(0), episodes["alive"].bool())  # fmt: skip
        pred = model._reward(model.features(posts))[:, 1:].numpy()
    assert scored["r2_posterior"] == module.r2(pred, episodes["reward"][:, 1:].numpy())
    assert scored["r2_one_step"] <= 1 and scored["r2_posterior_agent_mean"] <= 1
    out = _run("reward_fit.py", "--runs", str(tmp_path / "r"), "--held-out", "2", "--fit-steps", "2",
               "--variants", "as_is:", "narrow:head_hidden=16,rssm.dropout=0", "--probe-steps", "3",
               "--out", str(tmp_path / "f.json"))  # fmt: skip
    (result,) = out["results"]
    assert result["observation_probe_r2"] <= 1
    assert result["checkpoint_model"] == scored and json.loads((tmp_path / "f.json").read_text()) == out
    as_is, narrow = result["variants"]
    assert (as_is["name"], as_is["overrides"], narrow["overrides"]) == ("as_is", {}, {"head_hidden": 16, "rssm.dropout": 0})
    assert narrow["parameters"] < as_is["parameters"] == sum(p.numel() for p in model.parameters())
    assert module.parse_variant("m:preset=medium,lr=0.001") == ("m", "medium", {"lr": 0.001})
    assert [module.parse_value(v) for v in ("3", "0.5", "True", "mse")] == [3, 0.5, True, "mse"]
    for bad in ("heads", ":head_hidden=3", "h:head_hidden", "h:=3"):
        with pytest.raises(ValueError, match="variants: expected 'name:key=value,...'"):
            module.Args(runs=[tmp_path], variants=[bad])
    assert module.r2(np.zeros(3), np.ones(3)) is None and module.r2(np.array([1.0, 2]), np.array([1.0, 3])) == 0.5


def _gap_rows(path: Path, run: str, points: dict[int, float], std: float = 4.0, episodes: int = 16,
              env_id: str = "mpe:simple_spread_v3") -> None:  # fmt: skip
    """A `dream_gap.py` result JSON holding one run's actor rows (and a scripted policy's, which must be skipped)."""
    rows = [{"run": run, "real_steps": s, "env_id": env_id, "policy": "actor", "real": v, "real_return_std": std,
             "episodes": episodes} for s, v in points.items()]  # fmt: skip
    if "/mb/" in run:  # a model-based run's rows also hold the dream's verdict, and a scripted policy's rows
        rows = [{**row, "dream_policy": row["real"] + 1.0} for row in rows]
        rows += [{**rows[0], "policy": "forward", "real": 99.0}]
    path.write_text(json.dumps({"benchmark": "dream_gap", "results": rows}))


def test_fresh_curves_compares_both_learners_budget_by_budget(tmp_path):
    """Budgets where both learners were evaluated, means and standard errors over runs by hand, the ahead / behind
    counts, the target from the longer model-free runs; a model-based run missing a budget drops it for all."""
    mb = {0: {2000: -30.0, 4000: -22.0, 6000: -21.0, 8000: -20.0}, 1: {2000: -32.0, 4000: -24.0, 6000: -21.0}}
    mf = {0: {4000: -26.0, 6000: -20.0, 8000: -19.0}, 1: {4000: -28.0, 6000: -21.0, 8000: -19.0}}
    for learner, runs in (("mb", mb), ("mf", mf)):
        for seed, points in runs.items():
            _gap_rows(tmp_path / f"{learner}{seed}.json", f"r/{learner}/mpe_simple_spread_v3_seed{seed}", points)
    _gap_rows(tmp_path / "target.json", "r/long/mpe_simple_spread_v3_seed0", {950_000: -18.0, 1_000_000: -19.0})
    mixed = json.loads((tmp_path / "target.json").read_text())  # model-based milestones in the same file are skipped
    mixed["results"] += json.loads((tmp_path / "mb0.json").read_text())["results"]
    (tmp_path / "target.json").write_text(json.dumps(mixed))
    out = _run("fresh_curves.py", "--random", "-26.0", "--window", "4000", "100000", "--out", str(tmp_path / "o"),
               "--model-based", str(tmp_path / "mb0.json"), str(tmp_path / "mb1.json"),
               "--model-free", str(tmp_path / "mf0.json"), str(tmp_path / "mf1.json"),
               "--target", str(tmp_path / "target.json"))  # fmt: skip
    budgets = {row["steps"]: row for row in out["budgets"]}
    assert set(budgets) == {4000, 6000}  # 2000: model-free not evaluated; 8000: model-based seed 1 not evaluated
    assert budgets[4000]["model_based"] == -23.0 and budgets[4000]["model_free"] == -27.0
    assert budgets[4000]["model_based_se"] == 1.0 and budgets[4000]["difference"] == 4.0  # std(ddof 1) √2 / √2
    assert budgets[6000]["model_based_se"] == 0.0 and budgets[6000]["model_free_se"] == 0.5
    assert budgets[6000]["difference"] == -0.5 and budgets[6000]["difference_se"] == 0.5
    assert (out["ahead"], out["behind"], out["behind_beyond_2se"]) == (1, 1, 0)
    assert out["compare"]["target"] == -18.5 and out["target_runs"] == ["r/long/mpe_simple_spread_v3_seed0"]
    assert out["model_based_runs"] == ["r/mb/mpe_simple_spread_v3_seed0", "r/mb/mpe_simple_spread_v3_seed1"]
    assert (tmp_path / "o" / "mpe_simple_spread_v3.png").stat().st_size > 0
    assert json.loads((tmp_path / "o" / "mpe_simple_spread_v3.json").read_text())["budgets"] == out["budgets"]
    # one run each: the episodes' standard errors (4 / √16 and 0.4 / √16); the target from the model-free run
    _gap_rows(tmp_path / "tight.json", "r/tight/mpe_simple_spread_v3_seed0", {4000: -26.0, 6000: -18.5}, std=0.4)
    one = _run("fresh_curves.py", "--random", "-26.0", "--model-based", str(tmp_path / "mb1.json"), "--window", "0",
               "6000", "--model-free", str(tmp_path / "tight.json"))  # fmt: skip
    assert [(r["steps"], r["model_based_se"], r["model_free_se"], r["difference"]) for r in one["budgets"]] == [
        (4000, 1.0, 0.1, 2.0), (6000, 1.0, 0.1, -2.5)]  # fmt: skip
    assert one["budgets"][1]["difference_se"] == 1.005 and one["behind_beyond_2se"] == 1  # -2.5 < -2 × √(1 + 0.01)
    assert one["compare"]["target"] == -22.25 and one["target_runs"] == []


def test_fresh_curves_compares_an_arm_with_a_baseline_of_model_based_runs(tmp_path):
    """``--baseline``: the arm's means against another model-based arm's, budget by budget, beside the model-free rows;
    the baseline's curve in the plot; a baseline on another env is refused."""
    arm = {0: {2000: -30.0, 4000: -20.0, 6000: -19.0}, 1: {2000: -32.0, 4000: -22.0, 6000: -21.0}}
    base = {0: {4000: -21.0, 6000: -18.0}, 1: {4000: -23.0, 6000: -19.0}, 2: {4000: -22.0, 6000: -20.0}}
    for name, runs in (("arm", arm), ("base", base)):
        for seed, points in runs.items():
            _gap_rows(tmp_path / f"{name}{seed}.json", f"r/mb/{name}/mpe_simple_spread_v3_seed{seed}", points)
    _gap_rows(tmp_path / "mf.json", "r/mf/mpe_simple_spread_v3_seed0", {2000: -30.0, 4000: -25.0, 6000: -22.0})
    args = ["--random", "-26.0", "--window", "0", "100000", "--model-free", str(tmp_path / "mf.json"),
            "--model-based", str(tmp_path / "arm0.json"), str(tmp_path / "arm1.json")]  # fmt: skip
    alone = _run("fresh_curves.py", *args)
    assert "baseline" not in alone
    out = _run("fresh_curves.py", *args, "--out", str(tmp_path / "o"), "--baseline-label", "default loop",
               "--baseline", *(str(tmp_path / f"base{s}.json") for s in range(3)))  # fmt: skip
    assert {k: v for k, v in out.items() if k != "baseline"} == {**alone, "machine": out["machine"]}
    against = out["baseline"]
    assert against["runs"] == [f"r/mb/base/mpe_simple_spread_v3_seed{s}" for s in range(3)]
    rows = {r["steps"]: r for r in against["budgets"]}
    assert set(rows) == {4000, 6000}  # the baseline was not evaluated at 2000
    assert rows[4000]["model_based"] == -21.0 and rows[4000]["baseline"] == -22.0 and rows[4000]["difference"] == 1.0
    assert rows[6000]["baseline"] == -19.0 and rows[6000]["difference"] == -1.0
    assert rows[6000]["baseline_se"] == round(1 / np.sqrt(3), 3)  # std (ddof 1) 1 over √3 runs
    assert rows[6000]["difference_se"] == round(float(np.hypot(1.0, 1 / np.sqrt(3))), 3)
    assert (against["ahead"], against["behind"], against["behind_beyond_2se"]) == (1, 1, 0)
    assert (tmp_path / "o" / "mpe_simple_spread_v3.png").stat().st_size > 0
    _gap_rows(tmp_path / "other.json", "r/mb/x_seed0", {4000: -21.0}, env_id="mpe:simple_reference_v3")
    fc = _benchmark_module("fresh_curves")
    with pytest.raises(ValueError, match=r"^baseline: expected runs on mpe:simple_spread_v3 .* got mpe:simple_ref"):
        fc.main(fc.Args(model_based=[tmp_path / "arm0.json"], model_free=[tmp_path / "mf.json"], random=-26.0,
                        baseline=[tmp_path / "other.json"]))  # fmt: skip


def test_fresh_curves_refuses_what_it_cannot_compare(tmp_path):
    fc = _benchmark_module("fresh_curves")
    _gap_rows(tmp_path / "a.json", "r/mb/a_seed0", {1000: -20.0})
    _gap_rows(tmp_path / "f.json", "r/mf/f_seed0", {1000: -20.0})
    _gap_rows(tmp_path / "b.json", "r/mf/b_seed0", {1000: -21.0}, env_id="mpe:simple_reference_v3")
    _gap_rows(tmp_path / "c.json", "r/mb/c_seed0", {2000: -21.0})
    _gap_rows(tmp_path / "d.json", "r/mb/d_seed0", {1000: -21.0}, env_id="mpe:simple_reference_v3")
    (tmp_path / "bad.json").write_text("{}")
    ok = {"model_based": [tmp_path / "a.json"], "model_free": [tmp_path / "f.json"], "random": -26.0}
    with pytest.raises(ValueError, match=r"^random: expected .* got nan"):
        fc.main(fc.Args(**{**ok, "random": float("nan")}))
    with pytest.raises(ValueError, match=r"^model_free: expected runs on mpe:simple_spread_v3 .* got mpe:simple_ref"):
        fc.main(fc.Args(**{**ok, "model_free": [tmp_path / "b.json"]}))
    with pytest.raises(ValueError, match=r"^model_based: expected runs of one env"):
        fc.main(fc.Args(**{**ok, "model_based": [tmp_path / "a.json", tmp_path / "d.json"]}))
    with pytest.raises(ValueError, match=r"^model_based: no real-step budget at which every run"):
        fc.main(fc.Args(**{**ok, "model_based": [tmp_path / "a.json", tmp_path / "c.json"]}))
    with pytest.raises(ValueError, match=r"^target: .*bad.json is not a readable dream_gap.py result JSON"):
        fc.main(fc.Args(**{**ok, "target": [tmp_path / "bad.json"]}))
    with pytest.raises(ValueError, match=r"^model_based: no actor row of a model-based run in"):
        fc.main(fc.Args(**{**ok, "model_based": [tmp_path / "f.json"]}))  # a model-free run's rows only
    with pytest.raises(ValueError, match=r"^model_free: no actor row of a model-free run in"):
        fc.main(fc.Args(**{**ok, "model_free": [tmp_path / "a.json"]}))
    with pytest.raises(ValueError, match=r"^model_free: expected at least one"):
        fc.main(fc.Args(**{**ok, "model_free": []}))
    with pytest.raises(ValueError, match=r"^window: no budget in \(5000, 100000\)"):
        fc.main(fc.Args(**ok))
    with pytest.raises(ValueError, match=r"^window: expected 0 <= first <= last"):
        fc.main(fc.Args(**{**ok, "window": (10, 5)}))

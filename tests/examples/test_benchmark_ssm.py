"""The SSM benchmark runs end to end with a tiny budget and prints one JSON line of consistent results."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("gru", "mamba", "mamba2", "mamba_step_loop", "mamba2_step_loop")


def test_ssm_benchmark_measures_every_model(tmp_path):
    cmd = [sys.executable, "examples/benchmarks/ssm.py", "--lengths", "8", "16", "--d-models", "16", "--batch", "2",
           "--seconds", "0.05", "--out", str(tmp_path / "ssm.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "ssm.json").read_text()) == out
    assert out["batch"] == 2 and out["threads"] == 1 and out["machine"] and out["torch"]
    assert out["configs"]["16"]["mamba2"]["d_state"] == 64
    assert [(r["d_model"], r["L"]) for r in out["results"]] == [(16, 8), (16, 16)]
    for r in out["results"]:
        rate = r["tokens_per_s"]
        assert all(rate[m] > 0 for m in MODELS), rate
        for block in ("mamba", "mamba2"):
            for key, ref in ((f"{block}_vs_gru", "gru"), (f"{block}_vs_step_loop", f"{block}_step_loop")):
                assert abs(r[key] - rate[block] / rate[ref]) <= 1e-3 * (1 + r[key]), (key, r)
    assert out["goals"]["by_d_model"] == {}, "no result at the goal length L = 256"
    (scan,) = out["scan_only"]  # the SSM core alone, at the goal length
    assert scan["L"] == 256 and all(v > 0 for v in scan["tokens_per_s"].values())
    assert (
        abs(scan["mamba_scan_vs_loop"] - scan["tokens_per_s"]["mamba_scan"] / scan["tokens_per_s"]["mamba_scan_loop"]) < 1e-2
    )


def test_ssm_benchmark_skips_long_step_loops():
    cmd = [sys.executable, "examples/benchmarks/ssm.py", "--lengths", "4", "--d-models", "16", "--batch", "2",
           "--seconds", "0.01", "--step-loop-max-len", "2", "--goal-length", "4", "--models", "gru", "mamba",
           "mamba_step_loop", "--no-scan-only"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    r, goals = out["results"][0], out["goals"]["by_d_model"]["16"]
    assert r["tokens_per_s"]["gru"] > 0 and r["tokens_per_s"]["mamba"] > 0
    assert r["tokens_per_s"]["mamba_step_loop"] is None and r["tokens_per_s"]["mamba2"] is None
    assert r["mamba_vs_step_loop"] is None and r["mamba2_vs_gru"] is None and r["mamba_vs_gru"] > 0
    assert goals["mamba_vs_step_loop_ok"] is None and isinstance(goals["mamba_vs_gru_ok"], bool)

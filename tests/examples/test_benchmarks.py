"""Benchmark scripts run end to end with tiny budgets and print one JSON line of results."""

import json
import subprocess
import sys
from pathlib import Path

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
    data = json.loads((tmp_path / "mpe_simple_spread_v3.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    assert [s for s, _ in data["runs"][0]["eval_returns"]] == [0, 200, 400]
    assert (tmp_path / "mpe_simple_spread_v3.png").stat().st_size > 10_000


def test_vec_env_compares_backends():
    out = _run("vec_env.py", "--env-ids", "mpe:simple_spread_v3", "--num-envs", "2", "--seconds", "0.3")
    r = out["results"]["mpe:simple_spread_v3"]
    assert r["sync_agent_steps_per_s"] > 0 and r["subproc_agent_steps_per_s"] > 0
    assert abs(r["subproc_over_sync"] - r["subproc_agent_steps_per_s"] / r["sync_agent_steps_per_s"]) < 1e-2

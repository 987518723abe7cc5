"""Issue 18, item 2: a model-free and a model-based run, killed with SIGKILL at random points (some of them while a
checkpoint is being written) and resumed each time, end exactly as the same run never interrupted: the same weights,
curves and episode counts. Every checkpoint left behind by a kill is readable.

``WMENV_KILLS`` sets the number of kills per run (CI: 4; BENCHMARKS.md reports a run with more).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.resume import load_run_state
from agents.train import latest_checkpoint, policy_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("WMENV_KILLS", "4"))

# Run first by every child: with DIE_AT_TEMPORARY="n:delay" set, the child SIGKILLs itself ``delay`` seconds after it
# has made its nth temporary file or folder of a checkpoint or replay write (0: at once, so mid-write for sure). An
# outside process polling for temporaries misses millisecond-long writes on a loaded machine (CI did).
PRELUDE = """
import os, signal, tempfile, threading
from pathlib import Path
_n, _delay = (float(x) for x in os.environ.get("DIE_AT_TEMPORARY", "0:0").split(":"))
_made = 0
def _counting(make):
    def made(*args, **kwargs):
        global _made
        out = make(*args, **kwargs)
        path = Path(out[1] if isinstance(out, tuple) else out)
        if path.parent.name in ("checkpoints", "replay") and path.name.endswith(".tmp"):
            _made += 1
            if _made == _n:
                if _delay:
                    threading.Timer(_delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
        return out
    return made
if _n:
    tempfile.mkstemp, tempfile.mkdtemp = _counting(tempfile.mkstemp), _counting(tempfile.mkdtemp)
"""

MODEL_FREE = """
import sys
from agents.mappo import MAPPOConfig
from agents.train import TrainConfig, train
print("ready", flush=True)
train(TrainConfig(total_steps=320, num_envs=2, eval_every=80, eval_episodes=1, progress=False, checkpoint_every=40,
                  mappo=MAPPOConfig(rollout_length=20, chunk_length=10, epochs=2), run_dir=sys.argv[1], resume=True))
"""
# 20-step rollouts of 25-step MPE episodes: most checkpoints fall mid-episode

MODEL_BASED = """
import sys
from agents.model_based import ModelBasedConfig, run
from wmenv.fit import FitConfig
print("ready", flush=True)
run(ModelBasedConfig(iterations=6, real_steps=60, num_envs=2, fit_steps=4, dream_updates=1, dream_worlds=8,
                     fit=FitConfig(batch_size=4, progress=False, compile="off"), eval_episodes=1,
                     run_dir=sys.argv[1], progress=False, resume=True))
"""
# 30 steps per copy and iteration: every checkpoint but the last falls mid-episode, with unfinished episodes recorded


def _start(code: str, run_dir: Path, die_at: str = "0:0") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DIE_AT_TEMPORARY": die_at}
    p = subprocess.Popen([sys.executable, "-u", "-c", PRELUDE + code, str(run_dir)], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    assert p.stdout.readline().strip() == "ready"
    return p


def _temporaries(run_dir: Path) -> set[str]:
    """The temporary files and folders of checkpoint and replay-segment writes under way (or left by a kill)."""
    folders = (run_dir / "checkpoints", run_dir / "replay")
    return {f"{d.name}/{p.name}" for d in folders if d.is_dir() for p in d.iterdir() if p.name.endswith(".tmp")}


def _run_uninterrupted(code: str, run_dir: Path) -> float:
    """Run to the end; returns the seconds it ran after its imports."""
    p = _start(code, run_dir)
    start = time.monotonic()
    out = p.communicate(timeout=900)[0]
    assert p.returncode == 0, out[-3000:]
    return time.monotonic() - start


def _run_killed(code: str, run_dir: Path, duration: float, iterations: int, rng: np.random.Generator) -> dict[str, int]:
    """Start, kill and restart the run ``KILLS`` times, then let it finish; after every kill the latest checkpoint
    must be readable. The first kill lands anywhere in the first half of the run (imports, env making, the first
    iteration); then they alternate between a random moment within about an iteration of the last checkpoint, and
    the child's own SIGKILL when it has made its nth temporary file or folder of a checkpoint or replay write (n in
    1..3; at once the first time, up to 10 ms later after that)."""
    stats = {"kills": 0, "during_writes": 0, "resumed": 0}
    iteration = duration / iterations
    for k in range(KILLS):
        stale = _temporaries(run_dir)  # left by the previous kill; the run removes them when it starts
        resumes = latest_checkpoint(run_dir) is not None
        if k % 2 == 0:
            p = _start(code, run_dir)
            start = time.monotonic()
            while k and latest_checkpoint(run_dir) is None and p.poll() is None and time.monotonic() < start + duration:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, duration / 2 if k == 0 else 1.5 * iteration))
            if p.poll() is not None:  # it finished before the kill: the run is complete
                break
            os.kill(p.pid, signal.SIGKILL)
            out = p.communicate()[0]
            assert p.returncode == -signal.SIGKILL, out[-3000:]
        else:
            delay = 0.0 if k == 1 else rng.uniform(0, 0.01)
            p = _start(code, run_dir, die_at=f"{int(rng.integers(1, 4))}:{delay}")
            out = p.communicate(timeout=900)[0]
            if p.returncode == 0:  # it finished before its nth temporary: the run is complete
                break
            assert p.returncode == -signal.SIGKILL, out[-3000:]
        stats["kills"] += 1
        stats["during_writes"] += bool(_temporaries(run_dir) - stale)  # what the killed write left behind
        stats["resumed"] += resumes
        assert "statistical" not in out, out[-3000:]
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:  # never unreadable, whatever the moment of the kill
            policy_from_checkpoint(ckpt)
            assert load_run_state(ckpt) is not None
    p = _start(code, run_dir)
    out = p.communicate(timeout=900)[0]
    assert p.returncode == 0 and "statistical" not in out, out[-3000:]
    assert not _temporaries(run_dir), "what the kills left half-written was removed"
    return stats


def _scalars(run_dir: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir)).Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), f"{a.name}: {k} differs"


@pytest.mark.parametrize("loop", ["model-free", "model-based"])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, loop):
    code = MODEL_FREE if loop == "model-free" else MODEL_BASED
    duration = _run_uninterrupted(code, tmp_path / "reference")
    iterations = 8 if loop == "model-free" else 6
    stats = _run_killed(code, tmp_path / "killed", duration, iterations, np.random.default_rng(KILLS))
    assert stats["kills"] >= 2 and stats["resumed"] >= 1 and stats["during_writes"] >= 1, stats
    ref, got = latest_checkpoint(tmp_path / "reference"), latest_checkpoint(tmp_path / "killed")
    assert ref.name == got.name
    _same_tensors(ref / "model.safetensors", got / "model.safetensors")  # actor, critic, optimizer, sampling stream
    counters = [json.loads((c / "config.json").read_text())["counters"] for c in (ref, got)]
    for c in counters:
        c.pop("wall_clock_s", None)
    assert counters[0] == counters[1], "no episode lost or counted twice"
    tags = ["eval/episode_return"] + (["charts/episode_return"] if loop == "model-free" else ["charts/real_episode_return"])
    curves = [_scalars(tmp_path / r, tags) for r in ("reference", "killed")]
    assert curves[0] == curves[1] and len(curves[0]["eval/episode_return"]) >= 5
    if loop == "model-based":
        _same_tensors(ref / "world_model" / "model.safetensors", got / "world_model" / "model.safetensors")
        loops = [json.loads((c / "loop.json").read_text()) for c in (ref, got)]
        assert loops[0]["eval_returns"] == loops[1]["eval_returns"] and loops[0]["real_returns"] == loops[1]["real_returns"]
    print(loop, stats)

"""examples/01_collect.py: a subprocess smoke run, and its sampler never takes a masked action."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from wmenv.data import EpisodeReplay
from wmenv.envs import make

ROOT = Path(__file__).resolve().parents[2]


def _load_example(name: str):
    """Import ``examples/<name>.py`` as a module (its dataclasses need it registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


collect = _load_example("01_collect")


def test_random_available_never_masked():
    rng = np.random.default_rng(0)
    mask = rng.random((64, 5, 7)) < 0.3
    mask[..., 3] = True  # at least one available action per row
    counts = np.zeros(7)
    for _ in range(50):
        a = collect.random_available(mask, rng)
        assert np.take_along_axis(mask, a[..., None], -1).all()
        np.add.at(counts, a.ravel(), 1)
    assert (counts > 0).sum() == 7, "every action that is sometimes available gets sampled"


def test_collect_flatland_subprocess(tmp_path):
    out = tmp_path / "replay.safetensors"
    cmd = [sys.executable, str(ROOT / "examples" / "01_collect.py"), "--env-id", "flatland:5", "--steps", "300",
           "--num-envs", "2", "--env-kwargs", "max_episode_steps", "60", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    spec = make("flatland:5", max_episode_steps=60)[1]
    replay = EpisodeReplay.load(out, spec=spec)
    assert replay.num_episodes == summary["episodes"] >= 4
    for i in replay.episode_ids:
        ep = replay.episode(i)
        acting = ep["alive"][:-1] & ~(ep["terminated"][:-1] | ep["truncated"][:-1])  # (T, N)
        taken = np.take_along_axis(ep["action_mask"][:-1], ep["action"][:-1][..., None], -1)[..., 0]
        assert taken[acting].all(), "a masked action was stored as taken"

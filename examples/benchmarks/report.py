"""What every benchmark script shares: the machine line and printing (and saving) its one JSON line.

Importing it also puts this checkout's root first on ``sys.path``, so a script imports the library of the checkout it
lies in (a worktree pinned to a commit, a copy of older code) rather than whatever an editable install points at; the
scripts import this module before the library. (Before 2026-12-03 a script run from another checkout used the
installed library unless ``PYTHONPATH`` named the checkout.)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[2]
"""The repository root this script lies in."""
if str(CHECKOUT) not in sys.path[:1]:
    sys.path.insert(0, str(CHECKOUT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from wmenv.data.collect import random_actions  # noqa: E402
from wmenv.envs.vector import VecEnv  # noqa: E402


def machine() -> str:
    """``"<arch>, <n> CPUs"`` of this machine."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def wall_clock(device: str | torch.device = "cpu") -> Callable[[], float]:
    """Wall time in seconds, read after waiting for the queued kernels when ``device`` is a GPU."""
    if torch.device(device).type != "cuda":
        return time.perf_counter

    def wall() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return wall


def clock(device: str | torch.device = "cpu") -> Callable[[], float]:
    """The clock a benchmark on ``device`` reads, in seconds: this process's CPU time on the CPU (the machine is
    shared), `wall_clock` on a GPU (CPU time there counts only the launches)."""
    return time.process_time if torch.device(device).type != "cuda" else wall_clock(device)


def matmul_gflops(n: int, seconds: float, device: str | torch.device = "cpu") -> float:
    """GFLOP/s of a float32 (n × n) @ (n × n) on ``device`` (by `clock`: per CPU second of this process on the CPU):
    the reference that benchmarks measure in the same run to report a machine-independent fraction."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    now = clock(device)
    reps, start, begin = 0, time.perf_counter(), now()
    while time.perf_counter() - start < seconds or reps == 0:
        a @ b
        reps += 1
    return 2 * n**3 * reps / max(now() - begin, 1e-9) / 1e9


def flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` counted by `FlopCounterMode` (matmuls, convolutions and attention; elementwise work is not
    counted, so rates computed from it are lower bounds)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def emit(summary: dict, out: Path | None) -> dict:
    """Print ``summary`` as one JSON line, also write it to ``out`` when given; returns ``summary``."""
    line = json.dumps(summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    print(line)
    return summary


def load_parts(paths: list[str]) -> list[dict]:
    """Result JSONs of one benchmark to merge; all must be for the same env, env kwargs and step budget.

    Raises:
        ValueError: a file for another env, kwargs or budget, naming it.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]["summary"]
    key = (first["env_id"], first["env_kwargs"], first["total_steps"])
    for p, part in zip(paths, parts):
        s = part["summary"]
        if (s["env_id"], s["env_kwargs"], s["total_steps"]) != key:
            raise ValueError(f"merge: {p} is for {s['env_id']} {s['env_kwargs']} at {s['total_steps']} steps, "
                             f"expected {key[0]} {key[1]} at {key[2]} steps")  # fmt: skip
    return parts


RANDOM_EPISODES = 50
"""Episodes behind a recorded ``random_policy_return`` (50 Flatland-5 episodes of 573 steps: −0.98 ± 0.57 per agent,
where the 4–5 episodes that once ended in a rate measurement gave −0.45)."""


def random_returns(env_id: str, episodes: int, seed: int, **kwargs: object) -> list[float]:
    """Return per agent of each of ``episodes`` episodes of uniformly random available (or in-bounds continuous)
    actions, the env seeded with ``seed``."""
    rng, returns = np.random.default_rng(seed), []
    with VecEnv(env_id, num_envs=1, seed=seed, **kwargs) as vec:
        step = vec.reset()
        while len(returns) < episodes:
            step = vec.step(random_actions(vec.spec, step.action_mask, rng))
            returns += step.episode_return[step.done].mean(-1).tolist()
    return returns[:episodes]


def random_return(env_id: str, episodes: int, seed: int, **kwargs: object) -> float:
    """Mean of `random_returns`."""
    return float(np.mean(random_returns(env_id, episodes, seed, **kwargs)))

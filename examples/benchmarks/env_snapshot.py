"""Env snapshots: bytes and time per env copy of `VecEnv.get_state` / `set_state` (issue 18, item 2).

What a checkpoint's run state costs for the real envs: each env is made with ``num_envs`` copies, stepped
``steps`` times with random available (or in-bounds) actions, then saved and restored; the baseline is one
``step`` of all copies, timed in the same run, so the ratios hold on a busy machine. Prints one JSON line.

Usage:
    python examples/benchmarks/env_snapshot.py --out benchmarks/env_snapshot/cpu2.json
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro
from report import emit, machine

from wmenv.data.collect import random_actions
from wmenv.envs.vector import VecEnv


@dataclass
class Args:
    env_ids: list[str] = field(
        default_factory=lambda: ["mpe:simple_spread_v3", "flatland:5", "mamujoco:HalfCheetah:2x3", "gym:CartPole-v1"]
    )
    """The envs to measure (`wmenv.envs.make` ids)."""
    num_envs: int = 4
    """Copies per env."""
    steps: int = 10
    """Steps before the snapshot (mid-episode)."""
    out: Path | None = None
    """Also write the JSON line here."""


def measure(env_id: str, num_envs: int, steps: int) -> dict[str, float]:
    """Bytes, save and restore ms per copy, and their ratio to one step of all copies."""
    vec = VecEnv(env_id, num_envs=num_envs, seed=0)
    rng = np.random.default_rng(0)
    step = vec.reset()
    for _ in range(steps):
        t = time.perf_counter()
        step = vec.step(random_actions(vec.spec, step.action_mask, rng))
        step_s = time.perf_counter() - t
    t = time.perf_counter()
    states = vec.get_state()
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    vec.set_state(states)
    restore_s = time.perf_counter() - t
    vec.close()
    return {
        "bytes_per_copy": int(np.mean([len(s) for s in states])),
        "save_ms_per_copy": round(save_s / num_envs * 1000, 2),
        "restore_ms_per_copy": round(restore_s / num_envs * 1000, 2),
        "save_over_one_step": round(save_s / step_s, 1),
        "restore_over_one_step": round(restore_s / step_s, 1),
    }


def main(args: Args) -> dict:
    results = {e: measure(e, args.num_envs, args.steps) for e in args.env_ids}
    return emit({"benchmark": "env_snapshot", "machine": machine(), "num_envs": args.num_envs, "envs": results}, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))

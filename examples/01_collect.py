"""Collect real multi-agent episodes into an episode replay file (the first stage of the model-based pipeline).

Steps ``--num-envs`` copies of a real env with uniformly random *available* actions (masked actions are
never taken), records whole episodes (observations, global state, actions, rewards, terminations,
alive and action masks) and saves them atomically as one replay file that `EpisodeReplay.load` reads.

Usage:
    python examples/01_collect.py --env-id mpe:simple_spread_v3 --steps 5000 --out runs/replay_mpe.safetensors
    python examples/01_collect.py --env-id flatland:5 --steps 2000 --env-kwargs dense_reward True --backend subproc
    python examples/01_collect.py --help
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from wmenv.data import EpisodeReplay, ReplayConfig
from wmenv.data.collect import collect, random_available
from wmenv.envs.vector import VecEnv


@dataclass
class Args:
    """Collection settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id."""
    steps: int = 5_000
    """Env steps to take in total (one step of one copy counts 1); unfinished episodes are dropped."""
    num_envs: int = 4
    """Env copies stepped together."""
    seed: int = 0
    """Seeds the envs (copy i gets seed + i) and the action sampling."""
    backend: Literal["sync", "subproc", "ray", "jax"] = "sync"
    """`VecEnv` backend."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    capacity: int = 1_000_000
    """Replay capacity in rows; the oldest episodes are evicted beyond it."""
    out: str = "runs/replay.safetensors"
    """Replay file to write (atomically)."""


def main(args: Args) -> dict:
    """Collect, save, print a JSON summary."""
    rng = np.random.default_rng(args.seed)
    replay = None
    start = time.perf_counter()
    with VecEnv(args.env_id, num_envs=args.num_envs, seed=args.seed, backend=args.backend, **args.env_kwargs) as vec:
        if not vec.spec.discrete:
            raise ValueError(f"env_id: 01_collect samples discrete actions; {args.env_id} has continuous ones")
        replay = EpisodeReplay(ReplayConfig(capacity=args.capacity, seed=args.seed), spec=vec.spec)
        returns = collect(vec, replay, args.steps, lambda step: random_available(step.action_mask, rng), progress=True)
    wall = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    replay.save(args.out)
    summary = {
        "env_id": args.env_id,
        "episodes": replay.num_episodes,
        "env_steps_stored": replay.num_steps,
        "mean_return_per_agent": float(np.mean(returns)) if returns else None,
        "wall_clock_s": round(wall, 2),
        "out": args.out,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))

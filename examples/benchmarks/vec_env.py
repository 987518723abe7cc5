"""VecEnv throughput: the in-process ("sync") backend vs worker processes ("subproc") and, for JAX envs (SMAX),
one jitted batch ("jax"), in one run.

Steps E copies with uniformly random available actions for a fixed time per backend and reports
agent-steps per second and each backend's ratio to sync, so the README's advice (subprocesses for slow
envs such as Flatland, in-process for fast ones such as MPE, the jitted batch for SMAX) rests on a
measurement. Prints one JSON line.

Usage:
    python examples/benchmarks/vec_env.py --env-ids mpe:simple_spread_v3 flatland:5 --num-envs 8 --seconds 20
    python examples/benchmarks/vec_env.py --env-ids smax:3m --backends sync jax --num-envs 1 8 64 --seconds 10
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import report  # noqa: F401 - this checkout's library first on sys.path
import tyro

from wmenv.envs.vector import JAX_BATCHES, VecEnv


@dataclass
class Args:
    """Benchmark settings."""

    env_ids: list[str] = field(default_factory=lambda: ["mpe:simple_spread_v3", "flatland:5"])
    """`wmenv.envs.make` ids to measure."""
    num_envs: list[int] = field(default_factory=lambda: [8])
    """E, env copies (one measurement per value)."""
    backends: list[str] = field(default_factory=lambda: ["sync", "subproc", "jax"])
    """Backends to compare with "sync" (always measured); "jax" only where the env family has one; "ray" (Ray
    actors, ``num_workers`` of them) where Ray is installed."""
    num_workers: int = 2
    """Worker processes of the subproc backend."""
    seconds: float = 20.0
    """Measuring time per (env, backend, E), after one warm-up step (which includes a JAX env's compiling)."""


def rate(env_id: str, backend: str, num_envs: int, num_workers: int, seconds: float) -> float:
    """Agent-steps per second of random available actions, resets included."""
    rng = np.random.default_rng(0)
    with VecEnv(env_id, num_envs=num_envs, seed=0, backend=backend, num_workers=num_workers) as vec:
        s = vec.reset()
        s = vec.step((rng.random(s.action_mask.shape) * s.action_mask).argmax(-1))
        agent_steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent_steps += int(s.alive.sum())
            s = vec.step((rng.random(s.action_mask.shape) * s.action_mask).argmax(-1))
        return agent_steps / (time.perf_counter() - start)


def main(args: Args) -> dict:
    """Measure every env with both backends; print and return the JSON summary."""
    results: dict[str, dict] = {}
    for env_id in args.env_ids:
        backends = [b for b in args.backends if b != "sync" and (b != "jax" or env_id.partition(":")[0] in JAX_BATCHES)]
        for E in args.num_envs:
            sync = rate(env_id, "sync", E, args.num_workers, args.seconds)
            row = {"sync_agent_steps_per_s": round(sync, 1)}
            for backend in backends:
                r = rate(env_id, backend, E, args.num_workers, args.seconds)
                row.update({f"{backend}_agent_steps_per_s": round(r, 1), f"{backend}_over_sync": round(r / sync, 3)})
            results[env_id if len(args.num_envs) == 1 else f"{env_id} E={E}"] = row
    summary = {
        "benchmark": "vec_env",
        "num_envs": args.num_envs,
        "num_workers": args.num_workers,
        "results": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))

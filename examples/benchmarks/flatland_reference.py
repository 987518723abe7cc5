"""Flatland floors and references: return and % of trains arrived of fixed policies, per action interface.

Every learner's Flatland curve reads against these: uniformly random allowed actions, never departing, driving on
(Flatland's actions: FORWARD wherever allowed; the decision interface: always the leftmost way) and each train's
own shortest path (`wmenv.envs.flatland.FlatlandEnv.shortest_path_actions`: departs at once, never stops, ignores
the other trains). Both action interfaces (``actions="flatland"`` / ``"decisions"``, the latter the one the MAMBA
and MABL code train on) play the same maps: episode i is ``reset(seed=seed + i)``, and the default seed is the
first greedy evaluation episode of a seed-0 run. Prints one JSON line: per interface and policy the mean return per
agent, the mean % arrived with a 95 % interval (normal, over episodes), the fraction of trains that deadlocked and
the mean episode length; ``--out`` also writes it to a file.

Usage:
    python examples/benchmarks/flatland_reference.py --env-kwargs dense_reward True --episodes 100 \\
        --out benchmarks/flatland_reference/flatland_5.json
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tyro
from report import emit, machine

from wmenv.envs import make
from wmenv.envs.flatland import ACTION_INTERFACES
from wmenv.envs.flatland_obs import LEFTMOST, MOVE_FORWARD, STOP, STOP_MOVING

POLICIES = ("random", "stop", "drive_on", "shortest_path")


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "flatland:5"
    """A Flatland preset."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """`FlatlandConfig` fields (``dense_reward True`` for the shaped reward; ``actions`` is set per interface)."""
    interfaces: list[str] = field(default_factory=lambda: list(ACTION_INTERFACES))
    """Action interfaces to play."""
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    """Policies to play (`POLICIES`)."""
    episodes: int = 100
    """Episodes per interface and policy."""
    seed: int = 1_000_000
    """Episode i is reset with ``seed + i``; random actions draw from ``seed`` too."""
    out: Path | None = None
    """Also write the JSON here."""


def choose(env: Any, policy: str, interface: str, rng: np.random.Generator) -> dict[str, int]:
    """Every live agent's action under ``policy`` (each falls back to an allowed action where its own is masked)."""
    if policy == "shortest_path":
        return env.shortest_path_actions()
    stop = STOP if interface == "decisions" else STOP_MOVING
    drive = LEFTMOST if interface == "decisions" else MOVE_FORWARD
    actions = {}
    for a in env.agents:
        allowed = np.flatnonzero(env.action_mask(a))
        if policy == "random":
            actions[a] = int(rng.choice(allowed))
        else:
            preferred = stop if policy == "stop" else drive
            actions[a] = preferred if preferred in allowed else int(allowed[0])
    return actions


def play(args: Args, interface: str, policy: str) -> dict:
    """Mean return per agent, % arrived (95 % interval), deadlocked fraction and length over ``args.episodes``."""
    env, spec = make(args.env_id, **{**args.env_kwargs, "actions": interface})
    rng = np.random.default_rng(args.seed)
    returns, arrived, deadlocked, lengths, start = [], [], [], [], time.perf_counter()
    for i in range(args.episodes):
        _, infos = env.reset(seed=args.seed + i)
        total, length, stuck = 0.0, 0, set()
        while env.agents:
            _, rew, _, _, infos = env.step(choose(env, policy, interface, rng))
            total, length = total + sum(rew.values()), length + 1
            stuck |= {a for a, info in infos.items() if info["deadlocked"]}
        returns.append(total / spec.n_agents)
        arrived.append(env.episode_metrics()["arrived_fraction"])
        deadlocked.append(len(stuck) / spec.n_agents)
        lengths.append(length)
    half = 1.96 * float(np.std(arrived, ddof=1)) / np.sqrt(len(arrived)) if len(arrived) > 1 else float("nan")
    mean = float(np.mean(arrived))
    return {
        "return_per_agent": round(float(np.mean(returns)), 4),
        "return_sem": round(float(np.std(returns, ddof=1) / np.sqrt(len(returns))), 4) if len(returns) > 1 else None,
        "arrived_pct": round(100 * mean, 2), "arrived_pct_95": [round(100 * (mean - half), 2), round(100 * (mean + half), 2)],
        "deadlocked_pct": round(100 * float(np.mean(deadlocked)), 2), "mean_length": float(np.mean(lengths)),
        "episodes": args.episodes, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main(args: Args) -> dict:
    """Play every interface with every policy; print and return the JSON summary."""
    for name, values, choices in (("policies", args.policies, POLICIES), ("interfaces", args.interfaces, ACTION_INTERFACES)):
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise ValueError(f"{name}: expected each of {list(choices)}, got {unknown}")
    results = {i: {p: play(args, i, p) for p in args.policies} for i in args.interfaces}
    summary = {
        "benchmark": "flatland_reference", "env_id": args.env_id, "env_kwargs": args.env_kwargs, "seed": args.seed,
        "results": results, "machine": machine(),
    }  # fmt: skip
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))

"""SMAX floors and references: win rate of random play and of JaxMARL's heuristic driving the allies, per map.

Every learner's SMAX win rate reads against these two: uniformly random available actions (the floor) and the
SMAC-style heuristic that drives the enemy team (attack the closest unit in range, else advance), here driving
our team (`wmenv.envs.smax.SMAXEnv.heuristic_actions`). Episode i of a map is ``reset(seed=seed + i)`` for both
policies, so they fight the same starting positions. Prints one JSON line: per map and policy the win rate with
its 95 % Wilson interval, the mean team return and episode length; ``--out`` also writes it to a file.

Usage:
    python examples/benchmarks/smax_reference.py --maps 3m 2s3z 3s_vs_3z 3s_vs_5z 5m_vs_6m --episodes 200
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro
from report import machine

from wmenv.envs import make


@dataclass
class Args:
    """Benchmark settings."""

    maps: list[str] = field(default_factory=lambda: ["3m", "2s3z", "3s_vs_3z", "3s_vs_5z", "5m_vs_6m"])
    """SMAX maps (`wmenv.envs.smax.known_maps`)."""
    episodes: int = 200
    """Episodes per map and policy."""
    seed: int = 0
    """Episode i is reset with ``seed + i``; random actions and the heuristic draw from ``seed`` too."""
    out: str | None = None
    """Also write the JSON here."""


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a win rate (sensible at 0 and n wins, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def play(map_name: str, policy: str, episodes: int, seed: int) -> dict:
    """Win rate, mean team return and length of ``episodes`` battles with ``policy`` ("random" or "heuristic")."""
    env, _ = make(f"smax:{map_name}")
    rng = np.random.default_rng(seed)
    wins, returns, lengths, start = 0, [], [], time.perf_counter()
    for i in range(episodes):
        env.reset(seed=seed + i)
        ret, length = 0.0, 0
        while env.agents:
            if policy == "heuristic":
                actions = env.heuristic_actions(seed)
            else:
                actions = {a: int(rng.choice(np.flatnonzero(env.action_mask(a)))) for a in env.agents}
            _, rew, *_ = env.step(actions)
            ret, length = ret + next(iter(rew.values())), length + 1
        wins += int(env.episode_metrics()["won"])
        returns.append(ret)
        lengths.append(length)
    lo, hi = wilson(wins, episodes)
    return {
        "win_rate": wins / episodes, "win_rate_95": [round(lo, 4), round(hi, 4)], "episodes": episodes,
        "mean_return": float(np.mean(returns)), "mean_length": float(np.mean(lengths)),
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main(args: Args) -> dict:
    """Play every map with both policies; print and return the JSON summary."""
    results = {m: {p: play(m, p, args.episodes, args.seed) for p in ("random", "heuristic")} for m in args.maps}
    summary = {"benchmark": "smax_reference", "seed": args.seed, "results": results, "machine": machine()}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))

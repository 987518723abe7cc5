"""Helpers for the episode / replay tests: a hand-built spec and a scripted multi-agent run.

The scripted run is what a PettingZoo parallel env returns for three heterogeneous agents (different
observation widths and action counts, with action masks) where ``c`` terminates early and the others
are truncated (or terminated) at the end.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from wmenv.envs.spec import EnvSpec

AGENTS = ("a", "b", "c")
OBS = {"a": 4, "b": 4, "c": 3}
ACT = {"a": 3, "b": 3, "c": 2}


def make_spec(discrete: bool = True, id: str = "hand:three") -> EnvSpec:
    """N=3, D=4 (``c`` has 3 features), S=5; discrete A=3 (``c`` has 2) with masks, or continuous A=2 (``c`` has 1)."""
    obs = {a: gym.spaces.Box(-10, 10, (OBS[a],), np.float32) for a in AGENTS}
    if discrete:
        act: dict[str, gym.Space] = {a: gym.spaces.Discrete(ACT[a]) for a in AGENTS}
    else:
        act = {a: gym.spaces.Box(-1, 1, (ACT[a] - 1,), np.float32) for a in AGENTS}
    return EnvSpec(
        id=id,
        agents=AGENTS,
        observation_spaces=obs,
        action_spaces=act,
        state_space=gym.spaces.Box(-10, 10, (5,), np.float32),
        action_masked=discrete,
        episode_limit=4,
    )


def scripted_run(spec: EnvSpec, seed: int = 0, steps: int = 4, c_ends: int = 2, terminate_all: bool = False) -> dict[str, Any]:
    """PettingZoo-style dicts of one episode.

    Returns ``{"reset": (obs, infos, state), "steps": [(actions, obs, rew, term, trunc, infos, state), ...]}``.

    ``c`` terminates on step ``c_ends``; ``a`` and ``b`` end on step ``steps`` (truncated, or
    terminated when ``terminate_all``).
    """
    rng = np.random.default_rng(seed)

    def obs_of(live: list[str]) -> dict[str, np.ndarray]:
        return {a: rng.normal(size=OBS[a]).astype(np.float32) for a in live}

    def infos_of(live: list[str]) -> dict[str, dict[str, Any]]:
        if not spec.discrete:
            return {a: {} for a in live}
        out = {}
        for a in live:
            m = rng.random(ACT[a]) < 0.6
            m[rng.integers(ACT[a])] = True
            out[a] = {"action_mask": m.astype(np.int8)}
        return out

    live = list(AGENTS)
    obs, infos = obs_of(live), infos_of(live)
    run: dict[str, Any] = {"reset": (obs, infos, rng.normal(size=5).astype(np.float32)), "steps": []}
    for t in range(1, steps + 1):
        if spec.discrete:
            actions = {a: int(rng.choice(np.flatnonzero(infos[a]["action_mask"]))) for a in live}
        else:
            actions = {a: rng.uniform(-1, 1, size=ACT[a] - 1).astype(np.float32) for a in live}
        obs = obs_of(live)
        rew = {a: float(rng.normal()) for a in live}
        term = {a: (a == "c" and t == c_ends) or (terminate_all and t == steps) for a in live}
        trunc = {a: not term[a] and t == steps for a in live}
        infos = infos_of(live)
        run["steps"].append((actions, obs, rew, term, trunc, infos, rng.normal(size=5).astype(np.float32)))
        live = [a for a in live if not (term[a] or trunc[a])]
    return run

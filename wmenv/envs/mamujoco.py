"""MaMuJoCo (multi-agent MuJoCo) from ``gymnasium-robotics`` through `PettingZooAdapter`.

``make("mamujoco:Humanoid:9|8")`` = ``gymnasium_robotics.mamujoco_v1.parallel_env("Humanoid", "9|8")``:
each agent controls a partition of the robot's joints (continuous ``Box`` actions), observes its
joints and their ``agent_obsk``-hop neighbours, and all agents share the robot's reward. ``state()``
is the underlying single-agent MuJoCo observation; ``spec.episode_limit`` is its ``TimeLimit``
(1000 steps for the standard scenarios). A name without a configuration (``"mamujoco:Hopper"``)
gives the single-agent task (one agent controlling every joint).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from wmenv.envs.pettingzoo import PettingZooAdapter, split_adapter_kwargs

INSTALL_HINT = 'pip install "wmenv[mamujoco]" (or: pip install gymnasium-robotics)'


def _episode_limit(single: gym.Env) -> int | None:
    if single.spec is not None and single.spec.max_episode_steps is not None:
        return int(single.spec.max_episode_steps)
    limit = getattr(single, "_max_episode_steps", None)
    return int(limit) if limit is not None else None


def make_mamujoco(name: str, **kwargs: Any) -> PettingZooAdapter:
    """Make a MaMuJoCo env from ``"<scenario>:<agent_conf>"``, e.g. ``"Humanoid:9|8"`` or ``"HalfCheetah:2x3"``.

    Args:
        name: scenario and agent configuration separated by ``":"`` (configuration optional).
        **kwargs: ``masked_action`` goes to the adapter; the rest (``agent_obsk``, ...) to ``mamujoco_v1.parallel_env``.

    Raises:
        gymnasium.error.DependencyNotInstalled: ``gymnasium-robotics`` / ``mujoco`` are missing.
        ValueError: an unknown scenario or agent configuration.
    """
    try:
        from gymnasium_robotics import mamujoco_v1
        from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import _MUJOCO_GYM_ENVIROMENTS
    except ImportError as e:
        raise gym.error.DependencyNotInstalled(f"MaMuJoCo needs gymnasium-robotics and mujoco ({e}): {INSTALL_HINT}") from e
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected '<scenario>:<agent_conf>' such as 'Humanoid:9|8', got {name!r}")
    scenario, _, conf = name.partition(":")
    scenarios = [*_MUJOCO_GYM_ENVIROMENTS, "ManySegmentSwimmer", "ManySegmentAnt", "CoupledHalfCheetah"]
    if scenario not in scenarios:
        raise ValueError(f"name: unknown MaMuJoCo scenario {scenario!r}; expected one of {scenarios}")
    own, env_kwargs = split_adapter_kwargs(kwargs)
    if "episode_limit" in own:
        raise TypeError("episode_limit: MaMuJoCo's limit comes from the scenario's TimeLimit; it cannot be set here")
    try:
        env = mamujoco_v1.parallel_env(scenario, conf or None, **env_kwargs)
    except NotImplementedError as e:
        raise ValueError(f"name: scenario {scenario!r} is not supported by gymnasium-robotics: {e}") from e
    except Exception as e:
        if type(e) is Exception and "partitioning" in str(e):  # gymnasium-robotics raises bare Exceptions here
            raise ValueError(f"name: agent configuration {conf!r} is not defined for {scenario!r}: {e}") from e
        raise
    single = env.single_agent_env
    extra = {"scenario": scenario, "agent_conf": conf or None, "agent_obsk": env.agent_obsk}
    return PettingZooAdapter(
        env,
        id=f"mamujoco:{name}",
        state_space=single.observation_space,
        episode_limit=_episode_limit(single),
        extra=extra,
        **own,
    )

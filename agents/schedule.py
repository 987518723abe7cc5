"""How much the model-based loop learns per real env step: the pure arithmetic of its schedule.

A schedule fixes how often the loop updates (every ``real_steps`` env steps, or every ``real_episodes``
finished episodes) and how much it learns per real env step: the *train ratio* (replayed world-model
window rows per real env step, DreamerV3's term) and the *dream ratio* (imagined agent-steps per real
env step). Each update adds whole fit steps and whole dream PPO iterations; keeping the cumulative
counts on target makes the achieved ratios exact in the long run whatever one update rounds to.
"""

from __future__ import annotations

from typing import Any


def scheduled_units(ratio: float, real_steps: int, done: int, unit: int) -> int:
    """How many more units of ``unit`` items bring ``done + n * unit`` nearest to ``ratio * real_steps`` (at least 0).

    Args:
        ratio: target items per real env step.
        real_steps: real env steps taken so far.
        done: items done so far (replayed rows, imagined agent-steps).
        unit: items per unit (rows per fit step: B x T; agent-steps per dream PPO iteration: worlds x horizon x N).
    """
    if unit < 1:
        raise ValueError(f"unit: expected a positive number of items per unit, got {unit}")
    return max(0, round((ratio * real_steps - done) / unit))


def achieved_ratios(counters: dict[str, int]) -> dict[str, float]:
    """The train and dream ratios achieved so far from the loop's ``replayed_steps`` / ``imagined_agent_steps`` counters."""
    real = max(counters["env_steps"], 1)
    return {"train_ratio": counters["replayed_steps"] / real, "dream_ratio": counters["imagined_agent_steps"] / real}


def collect_for_update(
    collector: Any, act: Any, steps: int, episodes: int, num_envs: int
) -> tuple[list[float], int, list[dict[str, float]]]:
    """One update's real data from a `wmenv.data.collect.Collector`: ``steps`` env steps, or, if ``episodes`` > 0,
    whole steps of all ``num_envs`` copies until that many episodes have ended.

    Returns:
        The mean return per agent of each episode that ended, the env steps taken (all copies), and each ended
        episode's `episode_metrics` (in the order of the returns).
    """
    if not episodes:
        returns, taken = collector(steps, act), -(-steps // num_envs) * num_envs
    else:
        returns, taken = [], 0
        while len(returns) < episodes:
            returns += collector(num_envs, act)  # one step of every copy
            taken += num_envs
    return returns, taken, collector.take_metrics()

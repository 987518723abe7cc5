"""Generalized advantage estimation (Schulman et al., 2016) with per-agent ends and truncation bootstrap.

Glossary: T time (rollout steps); any further dimensions (E envs, N agents, ...) are batch and are
handled together, so one call covers a whole ``(T, E, N)`` rollout.

A trajectory that *terminated* after step t has no future: its next value is 0. One that was
*truncated* (time limit, or its env's episode was cut) still has one, so its next value is the
critic's estimate of the state it was cut in (``bootstrap_values[t]``), not the value of the next
stored step, which already belongs to a new episode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wmenv.checks import check_unit_interval


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
    last_values: Tensor,
    gamma: float,
    lam: float,
    discounts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Advantages and λ-returns of a rollout.

    Args:
        rewards: (T, ...) float, reward of step t.
        values: (T, ...) float, V(s_t) of the state the action of step t was taken in.
        dones: (T, ...) bool, the trajectory ended on step t (terminated or truncated); the value at
            t + 1 then belongs to a new trajectory and is not used.
        truncated: (T, ...) bool, the trajectory ended on step t by truncation; implies ``dones``.
            There the next value is ``bootstrap_values[t]``; on termination it is 0.
        bootstrap_values: (T, ...) float, V of the state the trajectory was cut in; read only where
            ``truncated``.
        last_values: (...) float, V(s_T) of the state after the rollout's last step.
        gamma: discount in [0, 1].
        lam: GAE λ in [0, 1].
        discounts: (T, ...) in [0, 1], of the values' dtype, or None (all 1): a per-step factor d_t on γ, the
            probability that the trajectory goes on after step t (a world model's predicted continuation: MAMBA's
            and MABL's code weigh their λ-returns with it instead of ending imagined trajectories).

    Returns:
        advantages: (T, ...) float, ``A_t = δ_t + γλ d_t (1 - done_t) A_{t+1}`` with
            ``δ_t = r_t + γ d_t V_next,t - V_t``.
        returns: (T, ...) float, ``advantages + values`` (the critic's regression targets).

    Raises:
        ValueError: mismatched shapes, ``truncated`` where not ``dones``, or ``gamma`` / ``lam``
            outside [0, 1].
    """
    if rewards.dim() < 1:
        raise ValueError(f"rewards: expected shape (T, ...), got {tuple(rewards.shape)}")
    shape = rewards.shape
    for name, x in (("values", values), ("dones", dones), ("truncated", truncated), ("bootstrap_values", bootstrap_values)):
        if x.shape != shape:
            raise ValueError(f"{name}: expected shape {tuple(shape)} (as rewards), got {tuple(x.shape)}")
    if discounts is not None:
        if discounts.shape != shape:
            raise ValueError(f"discounts: expected shape {tuple(shape)} (as rewards), got {tuple(discounts.shape)}")
        if discounts.dtype != values.dtype:
            raise TypeError(f"discounts: expected dtype {values.dtype} (as values), got {discounts.dtype}")
        if not bool(((discounts >= 0) & (discounts <= 1)).all()):
            raise ValueError(f"discounts: expected values in [0, 1], got {float(discounts.min())} .. {float(discounts.max())}")
    if last_values.shape != shape[1:]:
        raise ValueError(f"last_values: expected shape {tuple(shape[1:])}, got {tuple(last_values.shape)}")
    check_unit_interval("gamma", gamma, what="a value")
    check_unit_interval("lam", lam, what="a value")
    dones, truncated = dones.bool(), truncated.bool()
    if (truncated & ~dones).any():
        raise ValueError("truncated: expected truncated steps to be done as well, got truncated=True where dones=False")

    # V_next,t: the next stored value, or the bootstrap value on truncation, or 0 on termination.
    next_values = torch.cat([values[1:], last_values.unsqueeze(0)], dim=0)
    next_values = torch.where(dones, torch.where(truncated, bootstrap_values, torch.zeros_like(values)), next_values)
    carry = (gamma * lam) * (~dones).to(values.dtype)
    if discounts is not None:  # multiplied in apart from γ, so that all-ones discounts change no bit
        next_values = discounts * next_values
        carry = carry * discounts
    deltas = rewards + gamma * next_values - values
    advantages = torch.empty_like(values)
    running = torch.zeros_like(last_values)
    for t in range(shape[0] - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages, advantages + values

"""The critic's replay value loss: λ-returns of real replay windows beside the dream's targets (DreamerV3).

Glossary: W windows, T rows per window, N agents, C critic features.

A critic trained in the dream alone learns the dream's returns, and the dream's λ-returns end on its values: where the
world model misjudges what follows (Flatland's rare arrivals and deadlocks, BENCHMARKS.md), nothing real corrects
them. DreamerV3's final version (Hafner et al., 2023/2025, "critic replay loss", weight 0.3) also regresses the critic
on replay trajectories. Here, as there, the targets are λ-returns over a window's *real* rewards and terminations; the
values they bootstrap from are the critic's own on the window's filtered posteriors (DreamerV3 annotates each replay
row with the imagined return of a rollout started there instead; we start rollouts from a subset of rows only). The
replay's actions are an earlier actor's, so the targets are off-policy by as much as the actor has changed since.

Rows follow the episode format (`wmenv.data.episode`): row t's reward and terminations are those received on arriving
at row t, so the return of acting at row t starts with row t + 1's reward. Windows stay inside one stored episode;
each is valued as a dream rollout is, from a fresh critic state at its first row (rollouts start at a posterior with a
zero critic state), which is why a window defaults to ``horizon + 1`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor

from agents.critic import CentralCritic
from agents.gae import gae
from wmenv.data.replay import EpisodeReplay
from wmenv.models.world_model import WorldModel, flat_rows


@dataclass
class ValueTargets:
    """Extra regression targets for the critic: rows of its inputs with targets in return units (`MAPPO.update`).

    Rows come as MAPPO's: N consecutive rows value one state for agents 0..N-1.
    """

    state: Tensor
    """(B, T, C) critic inputs, B = W·N."""
    agent: Tensor
    """(B,) int64, the agent each row values."""
    resets: Tensor
    """(B, T) bool, the critic's recurrent state restarts there."""
    targets: Tensor
    """(B, T) float, in return units (normalized by the critic's `ValueNorm` when the loss is taken)."""
    valid: Tensor
    """(B, T) bool, rows whose target counts."""
    weight: float
    """Weight of this loss beside MAPPO's value loss."""
    bias: float
    """Mean of the critic's value minus the target over valid rows when the targets were made (its optimism about
    real states; for logging)."""


def replay_lambda_returns(
    reward: Tensor, terminated: Tensor, truncated: Tensor, live: Tensor, values: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """λ-returns of acting at each row of real windows, bootstrapped from ``values``.

    ``G_t = r_{t+1} + γ (1 - term_{t+1}) ((1 - λ) V_{t+1} + λ G_{t+1})``, where an agent truncated on arriving at row
    t + 1 ends the recursion with ``G_{t+1} = V_{t+1}`` (it is alive there, so its posterior exists) and the last row
    gives ``G_{T-1} = V_{T-1}``.

    Args:
        reward: (W, T, N) float, received on arriving at row t.
        terminated: (W, T, N) bool, the agent terminated on arriving at row t.
        truncated: (W, T, N) bool, the agent was truncated on arriving at row t.
        live: (W, T, N) bool, the agent acts at row t (alive and not ended there).
        values: (W, T, N) float, V of each row's state, in return units.
        gamma: discount.
        lam: λ.

    Returns:
        targets: (W, T, N) float, G_t (the last row: its value).
        valid: (W, T, N) bool, rows with a return: live, and not the window's last row.
    """
    shape = reward.shape
    if len(shape) != 3 or shape[1] < 2:
        raise ValueError(f"reward: expected shape (W, T, N) with T >= 2, got {tuple(shape)}")
    for name, x in (("terminated", terminated), ("truncated", truncated), ("live", live), ("values", values)):
        if x.shape != shape:
            raise ValueError(f"{name}: expected shape {tuple(shape)} (as reward), got {tuple(x.shape)}")
    tm = lambda x: rearrange(x, "w t n -> t w n")  # noqa: E731
    term, trunc = terminated.bool(), truncated.bool()
    _, returns = gae(
        tm(reward[:, 1:]), tm(values[:, :-1]), tm(term[:, 1:] | trunc[:, 1:]), tm(trunc[:, 1:]), tm(values[:, 1:]),
        values[:, -1], gamma, lam,
    )  # fmt: skip
    targets = torch.cat([rearrange(returns, "t w n -> w t n"), values[:, -1:]], dim=1)
    valid = live.bool().clone()
    valid[:, -1] = False
    return targets, valid


@torch.no_grad()
def replay_value_targets(
    model: WorldModel,
    critic: CentralCritic,
    replay: EpisodeReplay,
    windows: int,
    length: int,
    gamma: float,
    lam: float,
    weight: float,
    seed: int,
) -> ValueTargets:
    """Sample W real windows of ``length`` rows, filter them through ``model`` and make the critic's λ-return targets.

    Args:
        model: the fitted world model whose `critic_features` the critic reads.
        critic: the critic, for the bootstrap values (in its `ValueNorm`'s units, denormalized here).
        replay: the real data (windows inside one stored episode).
        windows: W.
        length: T >= 2.
        gamma, lam: the discount and λ of the returns.
        weight: `ValueTargets.weight`.
        seed: seeds the windows and the posterior samples (the same seed, the same targets).
    """
    if length < 2:
        raise ValueError(f"length: expected windows of at least 2 rows (a return needs a next row), got {length}")
    device = next(critic.parameters()).device
    w = replay.sample(windows, length, generator=seed, device=device)
    terminated, truncated, alive = w["terminated"].bool(), w["truncated"].bool(), w["alive"].bool()
    was_training = model.training
    model.eval()
    try:
        rows = model.observe_rows(
            w["obs"], w["action"], w["reset"], generator=torch.Generator(device).manual_seed(seed), alive=alive,
            global_state=w.get("state"),
        )  # fmt: skip
        features = rearrange(model.critic_features(flat_rows(rows)), "(w t) c -> w t c", w=windows)
    finally:
        model.train(was_training)
    n = alive.shape[-1]
    state = repeat(features, "w t c -> (w n) t c", n=n)
    agent = torch.arange(n, device=device).repeat(windows)
    resets = torch.zeros(windows * n, length, dtype=torch.bool, device=device)
    resets[:, 0] = True
    values = critic.value_norm.denormalize(critic.forward_sequence(state, agent, resets, critic.initial_state(len(agent))))
    values = rearrange(values, "(w n) t -> w t n", n=n)
    live = alive & ~(terminated | truncated)
    targets, valid = replay_lambda_returns(w["reward"].float(), terminated, truncated, live, values, gamma, lam)
    bias = float((values - targets)[valid].mean()) if bool(valid.any()) else 0.0
    per_row = lambda x: rearrange(x, "w t n -> (w n) t")  # noqa: E731
    return ValueTargets(state, agent, resets, per_row(targets), per_row(valid), weight, bias)

"""The dream's verdict on every available action at a cell, as a target for the actor (discrete actions).

Glossary: W branched worlds, N agents, A actions, C cells, K imagined futures per action, D actor input features.

On-policy PPO learns only from the actions the actor samples. BENCHMARKS.md ("The dream's verdict cell by cell")
measured what that costs on Flatland: a collapsed actor that never departs, at zero entropy, while its own world
model rates departing above holding at 96.5 % of the cells where a train may depart; the dream's verdict never reaches
the gradient. Here the model is asked about every action instead. A *cell* is an agent with more than one available
action at a dream start (the posterior of a real context window, as the dream's rollouts start). Each available action
is imagined K times: the agent takes it, then every agent follows the actor for the horizon, and the value of the
action is the agent's own discounted return plus γ^H times the critic's value where the horizon cut it (what its PPO
advantage is made of; ``bootstrap=False``: the return alone; ``persist=True``: the agent keeps taking it wherever the
dream offers it, the others follow the actor). The target at the cell is the actor's distribution improved by the
verdict,

    target(a) ∝ ((1 − ε) π(a) + ε / #available) · exp(z(a) / τ),

where z is the action's value relative to the cell's mean over its actions, in units of the batch's RMS of those
relative values (as PPO standardizes its advantages). This is the improved policy of MPO / AWR, with the uniform mixture
ε so that an action the actor no longer takes can come back; `MAPPO.loss` adds ``weight`` × the cross-entropy of
the actor's cell distribution against it, whose gradient on the logits (π − target) does not vanish where π(a) → 0, as
the policy-gradient one (π(a) × advantage) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from einops import repeat
from torch import Tensor

from agents.policies.base import RecurrentPolicy, mask_logits, sample_actions
from wmenv.checks import check_int, check_positive, check_unit_interval
from wmenv.dream.vec import DreamStep, DreamVecEnv

if TYPE_CHECKING:
    from agents.critic import CentralCritic
    from agents.mappo import MAPPO

__all__ = ["PolicyTargets", "VerdictConfig", "branched_returns", "improved_policy", "verdict_targets"]


@dataclass
class VerdictConfig:
    """The actor's verdict loss in the model-based loop (module docstring); off at ``coef`` 0."""

    coef: float = 0.0
    """Weight of the cross-entropy of the actor's distribution at the cells against the improved one, beside the PPO
    loss, at every minibatch step of the dream's PPO updates (0: off)."""
    cells: int = 16
    """C, cells per dream PPO update: up to this many of the agents with a choice at ``starts`` fresh dream starts."""
    starts: int = 64
    """Dream starts drawn per dream PPO update to find the cells in (few agents have a choice on most Flatland
    rows; the starts cost one filtering of their context windows)."""
    samples: int = 8
    """K, imagined futures per available action of a cell."""
    temperature: float = 1.0
    """τ, on values in units of the batch's RMS relative value: 1 multiplies an action's odds by e per unit."""
    mix: float = 0.1
    """ε, the uniform share of the prior that the verdict reweighs (0: an action at π 0 stays at 0)."""
    bootstrap: bool = True
    """Value an action by the agent's own return over the horizon plus γ^H times the critic's value where the horizon
    cut it (what its PPO advantage is made of); False: by the horizon's return alone. The critic values the current
    policy: under an actor that never departs it rates a departed train below a held one (BENCHMARKS.md), so with it
    the verdict confirms the actor where the horizon's returns alone would not."""
    persist: bool = False
    """The deciding agent keeps its action at every later step of the horizon where the dream offers it (the actor
    decides where it does not): an action is valued as "take it and keep taking it", not "take it once, then follow
    the actor". Meant for interfaces whose actions are decisions (Flatland's ``decisions``: leftmost, rightmost, stop),
    where a train that departs and then stops at the next decision, as a collapsed actor would make it, is valued
    below one that never departs (BENCHMARKS.md); on per-step motor actions (MPE) it values open-loop repetitions.
    Measured on Flatland: no better than the one-action verdict (BENCHMARKS.md, "Go and keep going")."""

    def __post_init__(self) -> None:
        v = self.coef
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and v < float("inf")):
            raise ValueError(f"VerdictConfig.coef: expected a non-negative finite weight, got {v!r}")
        for name in ("cells", "starts", "samples"):
            check_int(f"VerdictConfig.{name}", getattr(self, name))
        check_positive("VerdictConfig.temperature", self.temperature)
        check_unit_interval("VerdictConfig.mix", self.mix, what="a probability")


@dataclass
class PolicyTargets:
    """Target distributions for the actor at cells, taken from a fresh recurrent state (`MAPPO.update`)."""

    obs: Tensor
    """(C, D) the actor's input at each cell."""
    action_mask: Tensor
    """(C, A) bool, the cell's available actions."""
    target: Tensor
    """(C, A) float, rows summing to 1, 0 where unavailable."""
    weight: float
    """Weight of the cross-entropy beside the PPO loss."""


def relative_values(values: Tensor, available: Tensor) -> Tensor:
    """(C, A) each available action's value minus the mean over its cell's available actions; 0 where unavailable."""
    values = torch.where(available, values, torch.zeros_like(values))
    mean = values.sum(-1, keepdim=True) / available.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(available, values - mean, torch.zeros_like(values))


def improved_policy(values: Tensor, available: Tensor, probs: Tensor, temperature: float, mix: float) -> Tensor:
    """The verdict's target (module docstring) at C cells.

    Args:
        values: (C, A) float, each action's value (anything where unavailable).
        available: (C, A) bool, at least one per row.
        probs: (C, A) float, the actor's distribution (0 where unavailable).
        temperature: τ > 0.
        mix: ε in [0, 1].

    Returns:
        (C, A) float, rows summing to 1, 0 where unavailable; the prior where no cell's values differ.
    """
    if values.shape != available.shape or probs.shape != available.shape:
        raise ValueError(f"values, probs: expected the shape of available {tuple(available.shape)}, got "
                         f"{tuple(values.shape)} and {tuple(probs.shape)}")  # fmt: skip
    if not bool(available.any(-1).all()):
        raise ValueError("available: expected at least one available action per cell")
    count = available.sum(-1, keepdim=True)
    rel = relative_values(values, available)
    scale = rel[available].pow(2).mean().sqrt()
    z = rel / scale if scale > 1e-8 else torch.zeros_like(rel)
    prior = (1.0 - mix) * probs + mix * available / count
    logits = torch.where(available & (prior > 0), prior.clamp(min=1e-30).log() + z / temperature, -torch.inf)
    return torch.softmax(logits, -1)


@torch.no_grad()
def branched_returns(
    dream: DreamVecEnv,
    first: DreamStep,
    policy: RecurrentPolicy,
    critic: CentralCritic | None,
    agent: Tensor,
    choose: Tensor,
    gamma: float,
    generator: torch.Generator,
    persist: bool = False,
) -> dict[str, Tensor]:
    """Imagine W worlds to the horizon where agent ``agent[w]`` takes ``choose[w]`` first, then all follow the actor.

    Args:
        dream: the W worlds, just reset (to ``first``); each runs ``dream.horizon`` steps, once.
        first: what the reset returned.
        policy: the actor, from a fresh recurrent state (as it trains in the dream); samples with ``generator``.
        critic: values the last imagined state where the horizon cut the agent (its value normalizer denormalizes);
            None: no ``valued`` (the critic is not stepped).
        agent: (W,) int64, the deciding agent of each world.
        choose: (W,) int64, its first action (its sampled one where the dream does not offer it).
        gamma: discount.
        generator: the actor's draws.
        persist: the deciding agent takes ``choose[w]`` at every step where the dream offers it, not only the first
            (the actor's sample where it does not).

    Returns:
        name -> (W,) float: ``team`` (the discounted mean reward over agents), ``own`` (the deciding agent's), ``valued``
        (with a critic: ``own`` + γ^H V of its last state where the horizon cut it), ``negative`` (the sum of its
        negative rewards), ``ended`` (1 where the dream ended it).
    """
    W, N, s = dream.num_worlds, dream.spec.n_agents, first
    h = policy.initial_state(W * N)
    critic_h = None if critic is None else critic.initial_state(W * N)
    rows = torch.arange(N, device=dream.device).repeat(W)  # the critic values each world's state once per agent
    resets = torch.ones(W * N, dtype=torch.bool, device=dream.device)
    going, weight = torch.ones(W, dtype=torch.bool, device=dream.device), torch.ones(W, N, device=dream.device)
    ended = torch.zeros(W, dtype=torch.bool, device=dream.device)
    own_of = agent[:, None]
    rewards = []
    for t in range(dream.horizon):
        if critic is not None:
            _, critic_h = critic.step(repeat(s.state, "w s -> (w n) s", n=N), rows, critic_h, resets)
        out, h = policy.step(s.obs.flatten(0, 1).float(), h, resets)
        actions = sample_actions(mask_logits(out, s.action_mask.flatten(0, 1)), generator).view(W, N)
        if t == 0 or persist:
            offered = s.action_mask[torch.arange(W, device=dream.device), agent].gather(1, choose[:, None])[:, 0]
            forced = torch.where(offered, choose, actions.gather(1, own_of)[:, 0])
            actions = actions.scatter(1, own_of, forced[:, None])
        s = dream.step(actions)
        ended |= going & s.terminated.gather(1, own_of)[:, 0]
        rewards.append(torch.where(going[:, None], s.reward * weight, 0.0))
        weight = weight * s.discount  # the continuation probability with terminations="expected", else 1
        last = s.done & going  # worlds whose first episode ends now (at the horizon at the latest)
        going &= ~s.done
        resets = (s.terminated | s.truncated | s.done[:, None]).flatten()
    if going.any():
        raise RuntimeError(f"{int(going.sum())} imagined worlds did not end at the horizon ({dream.horizon} steps)")
    raw = torch.stack(rewards)  # (H, W, N)
    r = raw * gamma ** torch.arange(len(rewards), device=dream.device)[:, None, None]
    pick = repeat(own_of, "w 1 -> h w 1", h=len(rewards))
    own, own_raw = r.gather(2, pick)[..., 0], raw.gather(2, pick)[..., 0]  # (H, W) each
    out = {"team": r.mean(-1).sum(0), "own": own.sum(0), "negative": own_raw.clamp(max=0).sum(0), "ended": ended.float()}
    if critic is not None:  # bootstrap where the agent was cut by the horizon (not terminated): V of its last state
        value, _ = critic.step(repeat(s.final_state, "w s -> (w n) s", n=N), rows, critic_h, torch.zeros_like(resets))
        value = critic.value_norm.denormalize(value).view(W, N).gather(1, own_of)[:, 0]
        cut = s.truncated.gather(1, own_of)[:, 0] & last
        own_weight = weight.gather(1, own_of)[:, 0]
        out["valued"] = out["own"] + gamma**dream.horizon * torch.where(cut, value * own_weight, 0.0)
    return out


@torch.no_grad()
def verdict_targets(agent: MAPPO, dream: DreamVecEnv, config: VerdictConfig, generator: torch.Generator,
                    seed: int) -> tuple[PolicyTargets | None, dict[str, float]]:  # fmt: skip
    """The verdict's targets at up to ``config.cells`` cells of ``config.starts`` fresh dream starts (module docstring).

    Args:
        agent: the learner (its actor, critic and γ).
        dream: the loop's dream (its starts, horizon, end rule and what the actor sees); its start draws advance.
        config: cells, samples, τ, ε and the weight.
        generator: the actor's draws and the choice of cells.
        seed: seeds the imagined futures.

    Returns:
        The targets (None where no start has an agent with a choice) and stats: ``verdict_cells``, ``verdict_agree``
        (the share of cells where the actor's likeliest action is the verdict's best), ``verdict_spread`` (the mean
        absolute value of an action relative to its cell's mean, in return units).
    """
    model, device = dream.model, dream.device
    kind = {"obs": dream.obs_kind, "terminations": dream.terminations, "mask_threshold": dream.mask_threshold}
    start = dream.draw_starts(config.starts)
    probe = DreamVecEnv(model, config.starts, dream.horizon, seed=seed, **kind)
    first = probe.reset(start=start)
    world, who = (first.action_mask.sum(-1) > 1).nonzero(as_tuple=True)  # (candidates,) each
    if len(world) == 0:
        return None, {"verdict_cells": 0.0}
    pick = torch.randperm(len(world), generator=generator, device=generator.device)[: config.cells].to(device)
    world, who = world[pick], who[pick]
    available = first.action_mask[world, who]  # (C, A)
    cell, action = available.nonzero(as_tuple=True)  # (P,) each: the cells' available actions
    K = config.samples
    branch = repeat(cell, "p -> (p k)", k=K)
    futures = DreamVecEnv(model, len(branch), dream.horizon, seed=seed + 1, **kind)
    begin = futures.reset(start={k: v[world[branch]] for k, v in start.items()})
    critic = agent.critic if config.bootstrap else None  # without the bootstrap the critic is not stepped at all
    out = branched_returns(futures, begin, agent.policy, critic, who[branch], repeat(action, "p -> (p k)", k=K),
                           agent.config.gamma, generator, persist=config.persist)  # fmt: skip
    values = torch.zeros(available.shape, device=device)
    values[cell, action] = out["valued" if config.bootstrap else "own"].view(-1, K).mean(-1)
    obs = first.obs[world, who].float()
    fresh = torch.ones(len(obs), dtype=torch.bool, device=device)
    logits, _ = agent.policy.step(obs, agent.policy.initial_state(len(obs)), fresh)
    probs = torch.softmax(mask_logits(logits, available), -1)
    target = improved_policy(values, available, probs, config.temperature, config.mix)
    rel = relative_values(values, available)
    best = torch.where(available, values, -torch.inf).argmax(-1)
    stats = {"verdict_cells": float(len(world)), "verdict_agree": float((probs.argmax(-1) == best).float().mean()),
             "verdict_spread": float(rel.abs().sum() / available.sum())}  # fmt: skip
    return PolicyTargets(obs, available, target, float(config.coef)), stats

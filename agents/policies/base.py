"""The recurrent-policy interface every MAPPO actor implements, the masked-categorical and the diagonal-Gaussian math.

Glossary: B batch (in MAPPO, env × agent rows), T time, D observation features, A actions.

A policy is shared by all agents and decentralized: each row of a batch is one agent seeing only its
own observation. Its recurrent state is a dict of tensors with leading dimension B (GRU: ``{"h"}``,
Mamba: conv and SSM states), so rollout storage can keep it per step and the PPO update can restart
chunks of a sequence from stored states. A reset flag (per row, per step) restores the initial state
*before* the step consumes its observation, CleanRL's ``(1 - done)`` masking.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TypeVar

import torch
from torch import Tensor, nn

from wmenv.checks import check_int
from wmenv.tensor_ops import (
    log_softmax,
    masked_mean,  # noqa: F401 - re-exported for the learners
    softmax,
)

C = TypeVar("C")

PolicyState = dict[str, Tensor]
"""A recurrent state: name -> tensor of shape (B, ...). Empty for stateless modules."""


def reset_state(state: PolicyState, initial: PolicyState, resets: Tensor) -> PolicyState:
    """Replace the rows of ``state`` where ``resets`` is True by the rows of ``initial``.

    Args:
        state: name -> (B, ...) tensor.
        initial: same names and shapes (the initial state).
        resets: (B,) bool.

    Returns:
        name -> (B, ...) tensor, new tensors (no in-place updates, so the step exports to ONNX).
    """
    out: PolicyState = {}
    for k, v in state.items():
        r = resets.reshape(resets.shape[0], *([1] * (v.dim() - 1)))
        out[k] = torch.where(r, initial[k].to(v.dtype), v)
    return out


def index_state(state: PolicyState, index: Tensor | slice) -> PolicyState:
    """Select rows of every tensor of a state: ``{k: v[index]}``."""
    return {k: v[index] for k, v in state.items()}


def mask_logits(logits: Tensor, action_mask: Tensor) -> Tensor:
    """Set the logits of unavailable actions to -inf so they get probability 0 and are never sampled.

    Args:
        logits: (..., A) float.
        action_mask: (..., A) bool, True where the action is available; every row needs at least one.

    Returns:
        (..., A) float.

    Raises:
        ValueError: mismatched shapes, or a row without any available action.
    """
    if action_mask.shape != logits.shape:
        raise ValueError(f"action_mask: expected shape {tuple(logits.shape)} (as logits), got {tuple(action_mask.shape)}")
    action_mask = action_mask.bool()
    if not bool(action_mask.any(-1).all()):
        raise ValueError("action_mask: expected at least one available action per row, got a row that masks all actions")
    return logits.masked_fill(~action_mask, float("-inf"))


def log_prob_entropy(logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of ``actions`` and entropy under ``Categorical(logits)``; -inf logits are allowed.

    Args:
        logits: (..., A) float, possibly masked with `mask_logits`.
        actions: (...) int64.

    Returns:
        log_prob: (...) float.
        entropy: (...) float; masked actions contribute 0 (and no NaN gradients).
    """
    logp_all = log_softmax(logits)
    log_prob = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    finite = torch.where(torch.isfinite(logp_all), logp_all, torch.zeros_like(logp_all))
    entropy = -(finite.exp() * finite).sum(-1)
    return log_prob, entropy


def sample_actions(logits: Tensor, generator: torch.Generator | None = None, deterministic: bool = False) -> Tensor:
    """Draw actions from ``Categorical(logits)`` (or take the most likely one).

    Args:
        logits: (B, A) float, possibly masked with `mask_logits` (masked actions have probability 0).
        generator: random stream on ``logits.device``; the global one if None.
        deterministic: take ``argmax`` instead of sampling.

    Returns:
        (B,) int64.
    """
    if deterministic:
        return logits.argmax(-1)
    probs = softmax(logits)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def gaussian_sample(
    mean: Tensor, log_std: Tensor, generator: torch.Generator | None = None, deterministic: bool = False
) -> Tensor:
    """Draw continuous actions from the diagonal Gaussian ``N(mean, exp(log_std)²)`` (or take the mean).

    Args:
        mean: (B, A) float.
        log_std: (A,) or (B, A) float.
        generator: random stream on ``mean.device``; the global one if None.
        deterministic: return ``mean``.

    Returns:
        (B, A) float, unclipped (the learner clips at the env, and scores the unclipped sample).
    """
    if deterministic:
        return mean
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + log_std.exp() * noise


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob_entropy(mean: Tensor, log_std: Tensor, actions: Tensor, dims: Tensor) -> tuple[Tensor, Tensor]:
    """Log-density of ``actions`` and entropy under the diagonal Gaussian, summed over the action dims in use.

    Args:
        mean: (..., A) float.
        log_std: (A,) or (..., A) float.
        actions: (..., A) float.
        dims: (..., A) bool, the dims the agent has (False on dims padded to the widest agent's A).

    Returns:
        log_prob: (...) float; entropy: (...) float.
    """
    if dims.shape != mean.shape or actions.shape != mean.shape:
        got = f"{tuple(actions.shape)} and {tuple(dims.shape)}"
        raise ValueError(f"actions, dims: expected shape {tuple(mean.shape)} (as the mean), got {got}")
    log_std = log_std.expand_as(mean)
    z = (actions - mean) * torch.exp(-log_std)
    log_prob = -0.5 * z**2 - log_std - _HALF_LOG_2PI
    entropy = 0.5 + _HALF_LOG_2PI + log_std
    dims = dims.to(mean.dtype)
    return (log_prob * dims).sum(-1), (entropy * dims).sum(-1)


class RecurrentPolicy(nn.Module, ABC):
    """A decentralized actor with a recurrent state: observation -> action logits (discrete actions) or the mean of a
    diagonal Gaussian (continuous actions: the learner holds the state-independent log-std).

    Subclasses set ``obs_dim`` (D) and ``n_actions`` (A) and implement `initial_state` and `step`;
    `forward_sequence` defaults to the step loop and should be overridden by a parallel version that
    gives the same result (the tests compare the two).
    """

    obs_dim: int
    n_actions: int

    @property
    def has_aux_loss(self) -> bool:
        """Whether the class overrides `forward_train` (SP-Mamba: an auxiliary loss, a mean over the sequence's steps),
        so that PPO may not run a minibatch's chunks in groups and must take the padded pass whole."""
        return type(self).forward_train is not RecurrentPolicy.forward_train

    @abstractmethod
    def initial_state(self, batch: int) -> PolicyState:
        """The state at the start of an episode: name -> (B, ...) tensor on the policy's device."""

    @abstractmethod
    def step(self, obs: Tensor, state: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """One step for B agents.

        Args:
            obs: (B, D) float.
            state: name -> (B, ...), the state before this step.
            resets: (B,) bool, restore the initial state before consuming ``obs`` (a new episode).

        Returns:
            logits: (B, A) float, unmasked.
            state: the state after this step.
        """

    def forward_sequence(self, obs: Tensor, resets: Tensor, state0: PolicyState) -> Tensor:
        """Logits of B sequences of T steps, equal to calling `step` T times.

        Args:
            obs: (B, T, D) float.
            resets: (B, T) bool, ``resets[:, t]`` restores the initial state before step t.
            state0: name -> (B, ...), the state before step 0.

        Returns:
            logits: (B, T, A) float, unmasked.
        """
        self.check_sequence(obs, resets)
        state, out = state0, []
        for t in range(obs.shape[1]):
            logits, state = self.step(obs[:, t], state, resets[:, t])
            out.append(logits)
        return torch.stack(out, dim=1)

    def forward_train(
        self, obs: Tensor, resets: Tensor, state0: PolicyState, actions: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """`forward_sequence` plus the policy's own auxiliary loss, from one pass (what the PPO update calls).

        Plain policies have no auxiliary loss; SP-Mamba's is its self-prediction (trained with the actor).

        Args:
            obs: (B, T, D) float.
            resets: (B, T) bool.
            state0: name -> (B, ...), the state before step 0.
            actions: (B, T) int64, the actions taken.
            valid: (B, T) bool, steps that count (alive agents inside the rollout).

        Returns:
            logits: (B, T, A) unmasked; loss: scalar tensor (0 here); stats: name -> float for logging.
        """
        return self.forward_sequence(obs, resets, state0), obs.new_zeros(()), {}

    def _setup(self, obs_dim: int, n_actions: int, config: C | None, config_type: type[C]) -> C:
        """Check and store D and A; return ``config`` (a default ``config_type()`` when None).

        Raises:
            ValueError: D or A is not an integer >= 1.
            TypeError: ``config`` is not a ``config_type``.
        """
        for name, v in (("obs_dim", obs_dim), ("n_actions", n_actions)):
            check_int(name, v)
        cfg = config if config is not None else config_type()
        if not isinstance(cfg, config_type):
            raise TypeError(f"config: expected a {config_type.__name__}, got {type(cfg).__name__}")
        self.obs_dim, self.n_actions = obs_dim, n_actions
        return cfg

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every state tensor (what rollout storage allocates)."""
        return {k: tuple(v.shape[1:]) for k, v in self.initial_state(1).items()}

    def check_step(self, obs: Tensor, resets: Tensor) -> None:
        """Raise ValueError unless ``obs`` is (B, D) and ``resets`` is (B,)."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs: expected shape (B, {self.obs_dim}), got {tuple(obs.shape)}")
        if resets.shape != obs.shape[:1]:
            raise ValueError(f"resets: expected shape ({obs.shape[0]},), got {tuple(resets.shape)}")

    def check_sequence(self, obs: Tensor, resets: Tensor) -> None:
        """Raise ValueError unless ``obs`` is (B, T, D) and ``resets`` is (B, T)."""
        if obs.dim() != 3 or obs.shape[2] != self.obs_dim:
            raise ValueError(f"obs: expected shape (B, T, {self.obs_dim}), got {tuple(obs.shape)}")
        if resets.shape != obs.shape[:2]:
            raise ValueError(f"resets: expected shape {tuple(obs.shape[:2])}, got {tuple(resets.shape)}")

"""The world-model contract (DreamerV3's verbs): dream envs and learners never need to know which model they hold.

Glossary: B batch (worlds), T time, N agents, D observation features, A actions, F per-agent features.

A model's state is a dict of tensors with leading dims (B, N) (``State``); what one imagined step
predicts is a `Prediction`. Real data comes as replay windows (``EpisodeReplay.sample``): dicts of
(B, T, ...) tensors with ``obs`` (B, T, N, D), ``action`` (B, T, N) taken at row t, ``reward`` and
``terminated`` received on arriving at row t, ``alive``, ``action_mask`` and ``reset`` (B, T).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

State = dict[str, Tensor]
"""A model state: name -> (B, N, ...) tensor."""


@dataclass
class Prediction:
    """What one imagined step predicts for B worlds × N agents."""

    reward: Tensor
    """(B, N) float: reward on arriving at the new state."""
    cont: Tensor
    """(B, N) float in [0, 1]: probability that the agent goes on (not terminated, not absent)."""
    action_mask: Tensor | None = None
    """(B, N, A) float in [0, 1]: probability that each action is available (envs with masks)."""
    obs: Tensor | None = None
    """(B, N, D) float: decoded observation, when asked for."""


class WorldModel(nn.Module, ABC):
    """A learned multi-agent environment model. Subclasses set ``spec`` (the real env's `EnvSpec`)."""

    spec: object

    @abstractmethod
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Training loss of a batch of replay windows and its terms (for logging)."""

    @abstractmethod
    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """B states drawn from the learned start-of-episode distribution."""

    @abstractmethod
    def observe(
        self,
        obs: Tensor,
        actions: Tensor,
        resets: Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
    ) -> State:
        """Filter real windows (obs (B, T, N, D), actions (B, T, N), resets (B, T), alive (B, T, N)); the last posterior."""

    @abstractmethod
    def imagine(
        self, state: State, actions: Tensor, generator: torch.Generator | None = None, decode: bool = False
    ) -> tuple[State, Prediction]:
        """One imagined step of all B × N agents: actions (B, N) int64 -> the next state and its prediction."""

    @abstractmethod
    def features(self, state: State) -> Tensor:
        """(B, N, F): what an agent's policy sees."""

    @abstractmethod
    def critic_features(self, state: State) -> Tensor:
        """(B, N * F): the centralized view of all agents (CTDE critics)."""

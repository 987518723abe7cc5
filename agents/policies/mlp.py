"""A feed-forward actor: MLP -> categorical head, no recurrent state (MAMBA's actor on world-model features).

Glossary: B batch (env × agent rows), T time, D input features, H hidden units, A actions.

Where the input already carries the agent's memory (a world model's features [h, z], whose h is the
model's recurrent state), a recurrent actor repeats work the model has done: the MAMBA paper's actor is
p(a | z, h), a feed-forward network of 2 hidden layers (jbr-ai-labs/mamba ``networks/dreamer/action.py``,
``ACTION_LAYERS = 2``, 400 units on Flatland, 256 on SMAC). On raw observations it is MAPPO's
non-recurrent policy. The layers are `mlp_encoder`'s (MAPPO's ``MLPBase``: Linear, activation, LayerNorm)
and the head is initialized as the GRU policy's. The state is empty: rollout storage keeps nothing, the
PPO update needs no chunking, and the reset flags do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from agents.policies.base import PolicyState, RecurrentPolicy
from agents.policies.gru import Activation, init_linear_, mlp_encoder
from wmenv.checks import check_choice, check_int


@dataclass
class MLPPolicyConfig:
    """Architecture of `MLPPolicy`."""

    hidden: int = 64
    """H, width of every hidden layer (the GRU actor's default width; MAMBA's paper presets use 256 / 400)."""
    layers: int = 2
    """Number of (Linear, activation, LayerNorm) blocks before the head (MAMBA's ``ACTION_LAYERS``: 2)."""
    feature_norm: bool = True
    """LayerNorm on the raw input (MAPPO's ``use_feature_normalization``)."""
    activation: Activation = "relu"
    """Hidden activation; the orthogonal-init gain follows it."""
    head_gain: float = 0.01
    """Orthogonal-init gain of the logits layer; small so the initial policy is near uniform."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            check_int(f"MLPPolicyConfig.{name}", getattr(self, name))
        check_choice("MLPPolicyConfig.activation", self.activation, ("relu", "tanh"))
        if not self.head_gain > 0:
            raise ValueError(f"MLPPolicyConfig.head_gain: expected a positive float, got {self.head_gain!r}")


class MLPPolicy(RecurrentPolicy):
    """Shared decentralized actor without memory: obs (D) -> MLP -> logits (A).

    Args:
        obs_dim: D.
        n_actions: A (discrete).
        config: architecture; defaults to `MLPPolicyConfig()`.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: MLPPolicyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = self._setup(obs_dim, n_actions, config, MLPPolicyConfig)
        self.encoder = mlp_encoder(obs_dim, cfg.hidden, cfg.layers, cfg.feature_norm, cfg.activation)
        self.head = init_linear_(nn.Linear(cfg.hidden, n_actions), cfg.head_gain)

    def initial_state(self, batch: int) -> PolicyState:
        """``{}``: the actor keeps no state."""
        return {}

    def step(self, obs: Tensor, state: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """obs: (B, D), state ``{}``, resets: (B,) bool (no effect) -> logits: (B, A), ``{}``."""
        self.check_step(obs, resets)
        return self.head(self.encoder(obs)), {}

    def forward_sequence(self, obs: Tensor, resets: Tensor, state0: PolicyState) -> Tensor:
        """obs: (B, T, D), resets: (B, T) bool (no effect), state0 ``{}`` -> logits: (B, T, A), all steps at once."""
        self.check_sequence(obs, resets)
        return self.head(self.encoder(obs))

"""The plain Mamba policy: MLP encoder -> Mamba block -> LayerNorm -> categorical head.

Glossary: B batch (env × agent rows), T time, D observation features, H width (``d_model``),
E ``expand * H``, N SSM state size, W conv width, A actions.

The GRU policy with its GRU replaced by a Mamba-1 block (`wmenv.models.ssm.Mamba`): the "Mamba"
baseline of the SP-Mamba paper (Table 1). Its state is the block's, ``{"conv": (B, E, W),
"ssm": (B, E, N)}``; training runs whole chunks through the block's parallel scan with resets at
episode starts, collection uses ``step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor, nn

from agents.policies.base import PolicyState, RecurrentPolicy, reset_state
from agents.policies.gru import Activation, init_linear_, mlp_encoder
from wmenv.checks import check_choice, check_int
from wmenv.models.ssm import Mamba
from wmenv.models.ssm.kernels import Backend
from wmenv.models.ssm.scan import ScanImpl


@dataclass
class MambaPolicyConfig:
    """Architecture of `MambaPolicy` (the MAPPO MLP front of `GRUPolicyConfig`, a Mamba block instead of the GRU)."""

    hidden: int = 64
    """H, width of the MLP layers and the block's d_model."""
    mlp_layers: int = 1
    """Number of (Linear, activation, LayerNorm) blocks before the Mamba block."""
    feature_norm: bool = True
    """LayerNorm on the raw observation."""
    activation: Activation = "relu"
    """MLP activation."""
    d_state: int = 16
    """N, SSM state size per channel."""
    expand: int = 2
    """E / H, the block's inner width factor (the paper's expansion coefficient)."""
    d_conv: int = 4
    """W, the block's causal convolution width."""
    head_gain: float = 0.01
    """Orthogonal-init gain of the logits layer."""
    backend: Backend = "auto"
    """Mamba backend: "auto", "ref" or "cuda" (see `MambaConfig`)."""
    scan: ScanImpl = "auto"
    """How the pure-PyTorch path runs training sequences: "auto", "blocked", "loop" or "compiled" (see `MambaConfig`)."""

    def __post_init__(self) -> None:
        for name in ("hidden", "mlp_layers", "d_state", "expand", "d_conv"):
            check_int(f"MambaPolicyConfig.{name}", getattr(self, name))
        check_choice("MambaPolicyConfig.activation", self.activation, ("relu", "tanh"))
        check_choice("MambaPolicyConfig.scan", self.scan, get_args(ScanImpl))
        if not self.head_gain > 0:
            raise ValueError(f"MambaPolicyConfig.head_gain: expected a positive float, got {self.head_gain!r}")


class MambaStateMixin:
    """State handling shared by the Mamba-based policies: ``{"conv", "ssm"}`` from a `Mamba` block ``self.mamba``."""

    mamba: Mamba

    def _block_state(self, batch: int) -> PolicyState:
        conv, ssm = self.mamba.initial_state(batch)
        return {"conv": conv, "ssm": ssm}

    def _restart(self, state: PolicyState, resets: Tensor) -> PolicyState:
        """``state`` with the rows where ``resets`` is True back at the initial (zero) state."""
        return reset_state(state, {k: torch.zeros_like(v) for k, v in state.items()}, resets.bool())


class MambaPolicy(MambaStateMixin, RecurrentPolicy):
    """Shared decentralized actor: obs (D) -> MLP -> Mamba -> LayerNorm -> logits (A).

    Args:
        obs_dim: D.
        n_actions: A (discrete).
        config: architecture; defaults to `MambaPolicyConfig()`.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: MambaPolicyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = self._setup(obs_dim, n_actions, config, MambaPolicyConfig)
        self.encoder = mlp_encoder(obs_dim, cfg.hidden, cfg.mlp_layers, cfg.feature_norm, cfg.activation)
        self.mamba = Mamba(
            d_model=cfg.hidden, d_state=cfg.d_state, expand=cfg.expand, d_conv=cfg.d_conv, backend=cfg.backend, scan=cfg.scan
        )
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = init_linear_(nn.Linear(cfg.hidden, n_actions), cfg.head_gain)

    def initial_state(self, batch: int) -> PolicyState:
        """``{"conv": (B, E, W), "ssm": (B, E, N)}`` zeros."""
        return self._block_state(batch)

    def step(self, obs: Tensor, state: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """obs: (B, D), state, resets: (B,) bool -> logits: (B, A), new state."""
        self.check_step(obs, resets)
        state = self._restart(state, resets)
        # the unchecked step: obs was checked above and the state is ours; keeps the step traceable (ONNX)
        y, (conv, ssm) = self.mamba._step(self.encoder(obs), (state["conv"], state["ssm"]))
        return self.head(self.norm(y)), {"conv": conv, "ssm": ssm}

    def forward_sequence(self, obs: Tensor, resets: Tensor, state0: PolicyState) -> Tensor:
        """obs: (B, T, D), resets: (B, T) bool, state0 -> logits: (B, T, A), by the block's parallel scan."""
        self.check_sequence(obs, resets)
        y = self.mamba(self.encoder(obs), resets.bool(), (state0["conv"], state0["ssm"]))
        return self.head(self.norm(y))

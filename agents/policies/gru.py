"""The MAPPO paper's recurrent actor: MLP encoder -> GRU -> categorical head, shared by all agents.

Glossary: B batch (env × agent rows), T time, D input features, H hidden units, R GRU layers,
A actions.

Layout follows the MAPPO code (``R_Actor`` with ``MLPBase`` and ``RNNLayer``): optional LayerNorm on
the input, ``mlp_layers`` × (Linear, activation, LayerNorm), a GRU whose state is zeroed where an
episode starts, LayerNorm, and a linear head initialized with gain 0.01. Weights are orthogonal,
biases zero. `ResettableGRU` and `mlp_encoder` are reused by the centralized critic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from agents.policies.base import PolicyState, RecurrentPolicy
from wmenv.checks import check_choice, check_int

Activation = Literal["relu", "tanh"]


@dataclass
class GRUPolicyConfig:
    """Architecture of `GRUPolicy` (defaults: the MAPPO paper's MPE settings)."""

    hidden: int = 64
    """H, width of the MLP layers and of the GRU."""
    mlp_layers: int = 1
    """Number of (Linear, activation, LayerNorm) blocks before the GRU (MAPPO's ``layer_N``)."""
    gru_layers: int = 1
    """Stacked GRU layers (MAPPO's ``recurrent_N``)."""
    feature_norm: bool = True
    """LayerNorm on the raw observation (MAPPO's ``use_feature_normalization``)."""
    activation: Activation = "relu"
    """MLP activation; the orthogonal-init gain follows it."""
    head_gain: float = 0.01
    """Orthogonal-init gain of the logits layer; small so the initial policy is near uniform."""

    def __post_init__(self) -> None:
        for name in ("hidden", "mlp_layers", "gru_layers"):
            check_int(f"GRUPolicyConfig.{name}", getattr(self, name))
        check_choice("GRUPolicyConfig.activation", self.activation, ("relu", "tanh"))
        if not self.head_gain > 0:
            raise ValueError(f"GRUPolicyConfig.head_gain: expected a positive float, got {self.head_gain!r}")


def init_linear_(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain``, zero bias (MAPPO's ``init_method``); returns ``layer``."""
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_encoder(in_dim: int, hidden: int, layers: int, feature_norm: bool, activation: Activation) -> nn.Sequential:
    """MAPPO's ``MLPBase``: [LayerNorm(in)] then ``layers`` × (Linear, activation, LayerNorm); (..., in) -> (..., H)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    gain = nn.init.calculate_gain(activation)
    mods: list[nn.Module] = [nn.LayerNorm(in_dim)] if feature_norm else []
    for i in range(layers):
        mods += [init_linear_(nn.Linear(in_dim if i == 0 else hidden, hidden), gain), act(), nn.LayerNorm(hidden)]
    return nn.Sequential(*mods)


class ResettableGRU(nn.Module):
    """A GRU whose state is zeroed where a reset flag is set, stepwise or over whole sequences.

    The state is ``{"h": (B, R, H)}`` (batch first, unlike ``nn.GRU``'s ``(R, B, H)``) so storage can
    index it by row. `forward_sequence` runs ``nn.GRU`` over the spans between resets, which equals
    the step loop.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.gru = nn.GRU(in_dim, hidden, num_layers=layers, batch_first=True)
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
        self.norm = nn.LayerNorm(hidden)

    def initial_state(self, batch: int) -> PolicyState:
        """Zeros: ``{"h": (B, R, H)}``."""
        p = self.gru.weight_hh_l0
        return {"h": torch.zeros(batch, self.layers, self.hidden, dtype=p.dtype, device=p.device)}

    def step(self, x: Tensor, state: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """x: (B, F), state ``{"h": (B, R, H)}``, resets: (B,) bool -> y: (B, H), new state."""
        h = state["h"] * (~resets).to(x.dtype)[:, None, None]
        # One GRU cell per layer on nn.GRU's own parameters: the same math as ``self.gru`` on a length-1
        # sequence, without nn.GRU's flattened-weight cache (which the ONNX exporter reports as unregistered).
        y, new = x, []
        for r in range(self.layers):
            w = [getattr(self.gru, f"{kind}_l{r}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            y = torch.gru_cell(y, h[:, r], *w)  # (B, H)
            new.append(y)
        return self.norm(y), {"h": torch.stack(new, dim=1)}  # (B, H), (B, R, H)

    def forward_sequence(self, x: Tensor, resets: Tensor, state0: PolicyState) -> tuple[Tensor, PolicyState]:
        """x: (B, T, F), resets: (B, T) bool, state0 ``{"h": (B, R, H)}`` -> y: (B, T, H), state after step T-1."""
        keep = (~resets).to(x.dtype)  # (B, T)
        # Spans start at t = 0 and wherever any row resets; inside a span no state is touched.
        starts = [0] + [t for t in torch.nonzero(resets[:, 1:].any(0)).flatten().add(1).tolist()]
        ends = starts[1:] + [x.shape[1]]
        h = rearrange(state0["h"], "b r h -> r b h")  # (R, B, H)
        outs = []
        for s, e in zip(starts, ends):
            h = (h * keep[None, :, s, None]).contiguous()
            y, h = self.gru(x[:, s:e], h)  # (B, e - s, H)
            outs.append(y)
        return self.norm(torch.cat(outs, dim=1)), {"h": rearrange(h, "r b h -> b r h")}  # (B, T, H), (B, R, H)


class GRUPolicy(RecurrentPolicy):
    """Shared decentralized actor: obs (D) -> MLP -> GRU -> logits (A).

    Args:
        obs_dim: D.
        n_actions: A (discrete).
        config: architecture; defaults to `GRUPolicyConfig()`.
    """

    def __init__(self, obs_dim: int, n_actions: int, config: GRUPolicyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = self._setup(obs_dim, n_actions, config, GRUPolicyConfig)
        self.encoder = mlp_encoder(obs_dim, cfg.hidden, cfg.mlp_layers, cfg.feature_norm, cfg.activation)
        self.rnn = ResettableGRU(cfg.hidden, cfg.hidden, cfg.gru_layers)
        self.head = init_linear_(nn.Linear(cfg.hidden, n_actions), cfg.head_gain)

    def initial_state(self, batch: int) -> PolicyState:
        """``{"h": (B, R, H)}`` zeros."""
        return self.rnn.initial_state(batch)

    def step(self, obs: Tensor, state: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """obs: (B, D), state ``{"h": (B, R, H)}``, resets: (B,) bool -> logits: (B, A), new state."""
        self.check_step(obs, resets)
        y, state = self.rnn.step(self.encoder(obs), state, resets.bool())
        return self.head(y), state

    def forward_sequence(self, obs: Tensor, resets: Tensor, state0: PolicyState) -> Tensor:
        """obs: (B, T, D), resets: (B, T) bool, state0 ``{"h": (B, R, H)}`` -> logits: (B, T, A)."""
        self.check_sequence(obs, resets)
        y, _ = self.rnn.forward_sequence(self.encoder(obs), resets.bool(), state0)
        return self.head(y)

"""MAPPO's centralized critic: V(global state, agent id), recurrent or not, with value normalization.

Glossary: B batch (env × agent rows), T time, S global-state features, N agents, H hidden units,
R GRU layers.

Training is centralized, execution decentralized (CTDE): the critic sees the global state (``env.state()``
or a world model's ``critic_features``) plus a one-hot of the agent it values, so one network serves
all agents. Its outputs live in normalized units; `ValueNorm` (the MAPPO code's running mean / std
with debiasing) maps them to returns and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agents.policies.base import PolicyState
from agents.policies.gru import Activation, ResettableGRU, init_linear_, mlp_encoder
from wmenv.checks import check_choice, check_int, check_unit_interval


@dataclass
class CriticConfig:
    """Architecture and value normalization of `CentralCritic` (defaults: the MAPPO paper's MPE settings)."""

    hidden: int = 64
    """H, width of the MLP layers and of the GRU."""
    mlp_layers: int = 1
    """Number of (Linear, activation, LayerNorm) blocks."""
    recurrent: bool = True
    """A GRU after the MLP (MAPPO's recurrent critic); False gives a feed-forward critic with no state."""
    gru_layers: int = 1
    """Stacked GRU layers where ``recurrent``."""
    feature_norm: bool = True
    """LayerNorm on the raw input."""
    activation: Activation = "relu"
    """MLP activation."""
    agent_id: bool = True
    """Append the one-hot agent index to the state (MAPPO's agent-specific global state)."""
    value_norm: bool = True
    """Regress normalized returns and denormalize predictions with `ValueNorm` (MAPPO's ``use_valuenorm``)."""
    value_norm_beta: float = 0.99999
    """Decay of `ValueNorm`'s running moments (MAPPO's value)."""

    def __post_init__(self) -> None:
        for name in ("hidden", "mlp_layers", "gru_layers"):
            check_int(f"CriticConfig.{name}", getattr(self, name))
        check_choice("CriticConfig.activation", self.activation, ("relu", "tanh"))
        check_unit_interval(
            "CriticConfig.value_norm_beta", self.value_norm_beta, what="a value", open_low=True, open_high=True
        )


class ValueNorm(nn.Module):
    """Running mean and variance of value targets with debiasing (MAPPO's ``ValueNorm``).

    The moments are buffers, so they travel with ``state_dict`` (checkpoints). When ``enabled`` is
    False every method is the identity.

    Args:
        beta: decay of the running moments per `update`.
        enabled: False makes it the identity.
        epsilon: floor of the debiasing term.
    """

    def __init__(self, beta: float = 0.99999, enabled: bool = True, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.beta, self.enabled, self.epsilon = beta, enabled, epsilon
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_mean_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debiasing_term", torch.zeros((), dtype=torch.float64))

    def mean_var(self) -> tuple[Tensor, Tensor]:
        """Debiased mean and variance (variance floored at 1e-2, as in MAPPO), float64 scalars."""
        d = self.debiasing_term.clamp(min=self.epsilon)
        mean, mean_sq = self.running_mean / d, self.running_mean_sq / d
        return mean, (mean_sq - mean**2).clamp(min=1e-2)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch of targets into the running moments. x: (...) float, at least one element."""
        if not self.enabled:
            return
        if x.numel() == 0:
            raise ValueError("x: expected at least one value target, got an empty tensor")
        x = x.detach().to(torch.float64)
        self.running_mean.mul_(self.beta).add_((1.0 - self.beta) * x.mean())
        self.running_mean_sq.mul_(self.beta).add_((1.0 - self.beta) * (x**2).mean())
        self.debiasing_term.mul_(self.beta).add_(1.0 - self.beta)

    def normalize(self, x: Tensor) -> Tensor:
        """Returns -> normalized units. x: (...) float."""
        if not self.enabled:
            return x
        mean, var = self.mean_var()
        return ((x - mean) / var.sqrt()).to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalized units -> returns. x: (...) float."""
        if not self.enabled:
            return x
        mean, var = self.mean_var()
        return (x * var.sqrt() + mean).to(x.dtype)


def agent_groups(state: Tensor, agent: Tensor, n_agents: int) -> bool:
    """Whether the B rows come as groups of N consecutive copies of one state, valued for agents 0..N-1 in order.

    That is how `MAPPO` builds the critic's rows (``repeat(state, "e s -> (e n) s")``, the storage's
    ``(c e n)`` chunks); a critic that attends across agents then needs to run once per group.

    Args:
        state: (B, [T,] S) float.
        agent: (B,) int64.
        n_agents: N.
    """
    B = state.shape[0]
    if B % n_agents or agent.shape != (B,):
        return False
    order = torch.arange(n_agents, device=agent.device).expand(B // n_agents, n_agents)
    groups = state.reshape(B // n_agents, n_agents, -1)  # (G, N, [T·]S)
    return torch.equal(agent.long().reshape(-1, n_agents), order) and torch.equal(groups, groups[:, :1].expand_as(groups))


class CentralCritic(nn.Module):
    """V(global state, agent): [state, one-hot agent] -> MLP -> [GRU] -> value in normalized units.

    Args:
        state_dim: S.
        n_agents: N (size of the one-hot).
        config: architecture; defaults to `CriticConfig()`.
    """

    def __init__(self, state_dim: int, n_agents: int, config: CriticConfig | None = None) -> None:
        super().__init__()
        for name, v in (("state_dim", state_dim), ("n_agents", n_agents)):
            check_int(name, v)
        self.config = cfg = config if config is not None else CriticConfig()
        if not isinstance(cfg, CriticConfig):
            raise TypeError(f"config: expected a CriticConfig, got {type(cfg).__name__}")
        self.state_dim, self.n_agents = state_dim, n_agents
        in_dim = state_dim + (n_agents if cfg.agent_id else 0)
        self.encoder = mlp_encoder(in_dim, cfg.hidden, cfg.mlp_layers, cfg.feature_norm, cfg.activation)
        self.rnn = ResettableGRU(cfg.hidden, cfg.hidden, cfg.gru_layers) if cfg.recurrent else None
        self.head = init_linear_(nn.Linear(cfg.hidden, 1), 1.0)
        self.value_norm = ValueNorm(cfg.value_norm_beta, enabled=cfg.value_norm)

    def _inputs(self, state: Tensor, agent: Tensor) -> Tensor:
        """state: (B, [T,] S), agent: (B,) long -> (B, [T,] S [+ N])."""
        if not self.config.agent_id:
            return state
        onehot = F.one_hot(agent.long(), self.n_agents).to(state.dtype)  # (B, N)
        if state.dim() == 3:
            onehot = onehot[:, None].expand(-1, state.shape[1], -1)  # (B, T, N)
        return torch.cat([state, onehot], dim=-1)

    def _embed(self, state: Tensor, agent: Tensor) -> Tensor:
        """state: (B, [T,] S), agent: (B,) -> (B, [T,] H) before the optional GRU."""
        return self.encoder(self._inputs(state, agent))

    def _check(self, state: Tensor, agent: Tensor, resets: Tensor, dims: int) -> None:
        want = "(B, S)" if dims == 2 else "(B, T, S)"
        if state.dim() != dims or state.shape[-1] != self.state_dim:
            raise ValueError(f"state: expected shape {want.replace('S', str(self.state_dim))}, got {tuple(state.shape)}")
        if agent.shape != state.shape[:1]:
            raise ValueError(f"agent: expected shape ({state.shape[0]},), got {tuple(agent.shape)}")
        if resets.shape != state.shape[:-1]:
            raise ValueError(f"resets: expected shape {tuple(state.shape[:-1])}, got {tuple(resets.shape)}")

    def initial_state(self, batch: int) -> PolicyState:
        """``{"h": (B, R, H)}`` zeros for a recurrent critic, ``{}`` otherwise."""
        return self.rnn.initial_state(batch) if self.rnn is not None else {}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every state tensor (what rollout storage allocates)."""
        return {k: tuple(v.shape[1:]) for k, v in self.initial_state(1).items()}

    def step(self, state: Tensor, agent: Tensor, hidden: PolicyState, resets: Tensor) -> tuple[Tensor, PolicyState]:
        """One step. state: (B, S), agent: (B,) long, hidden: the critic state, resets: (B,) bool -> value: (B,), hidden."""
        self._check(state, agent, resets, 2)
        y = self._embed(state, agent)  # (B, H)
        if self.rnn is not None:
            y, hidden = self.rnn.step(y, hidden, resets.bool())
        return self.head(y).squeeze(-1), hidden

    def forward_sequence(self, state: Tensor, agent: Tensor, resets: Tensor, hidden0: PolicyState) -> Tensor:
        """Values of B sequences. state: (B, T, S), agent: (B,) long, resets: (B, T) bool -> (B, T)."""
        self._check(state, agent, resets, 3)
        y = self._embed(state, agent)  # (B, T, H)
        if self.rnn is not None:
            y, _ = self.rnn.forward_sequence(y, resets.bool(), hidden0)
        return self.head(y).squeeze(-1)


class AttentionCritic(CentralCritic):
    """V(all agents' latent states, agent): MAMBA's critic (§3.2), attention over the N agents' features.

    The state is the N agents' features side by side, (…, N·F) (`WorldModel.critic_features`). Each
    agent's features are embedded, one transformer layer attends across agents, and the row of the
    agent being valued goes through the MLP head (and the GRU when ``config.recurrent``).

    Args:
        state_dim: N·F.
        n_agents: N.
        config: widths and value normalization (``agent_id`` is implied by taking the agent's row).
        heads: attention heads (must divide ``config.hidden``).
    """

    def __init__(self, state_dim: int, n_agents: int, config: CriticConfig | None = None, heads: int = 4) -> None:
        super().__init__(state_dim, n_agents, config)
        if state_dim % n_agents:
            raise ValueError(f"state_dim: expected a multiple of n_agents={n_agents} (N·F), got {state_dim}")
        hidden = self.config.hidden
        self.encoder = nn.Sequential(nn.LayerNorm(state_dim // n_agents), nn.Linear(state_dim // n_agents, hidden))
        self.position = nn.Embedding(n_agents, hidden)
        self.attend = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, 0.0, batch_first=True, norm_first=True)
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU())

    def _embed(self, state: Tensor, agent: Tensor) -> Tensor:
        """state: (B, [T,] N·F), agent: (B,) -> (B, [T,] H): the agent's row after attention."""
        lead, N = state.shape[:-1], self.n_agents
        if agent_groups(state, agent, N):
            # MAPPO's layout: N consecutive rows value one state for agents 0..N-1. Attend once per state
            # (N times less work) and keep every agent's row: the same rows as the general path below.
            x = self.encoder(state[::N].reshape(-1, N, self.state_dim // N)) + self.position.weight  # (G·T, N, F)
            y = self.out(self.attend(x)).reshape(lead[0] // N, *lead[1:], N, -1)  # (G, [T,] N, H)
            return rearrange(y, "g ... n h -> (g n) ... h")  # (B, [T,] H)
        x = self.encoder(state.reshape(-1, N, self.state_dim // N)) + self.position.weight
        y = self.attend(x)  # (B·T, N, H)
        index = agent.long().reshape(-1, *([1] * (len(lead) - 1))).expand(lead).reshape(-1)  # (B·T,)
        return self.out(y[torch.arange(y.shape[0], device=y.device), index]).reshape(*lead, -1)

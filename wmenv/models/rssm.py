"""MAMBA's multi-agent RSSM: per-agent GRU state and 32×32 categorical latents, coupled by communication.

Glossary: B batch, T time, N agents, D observation features, A actions, H deterministic width,
S categoricals, K classes, E communication / embedding width.

    e_t     = Comm([z_{t-1}, a_{t-1}] of all agents)       (B, N, E)
    h_t     = GRU(e_t, h_{t-1})                             per agent
    ẑ_t     ~ p(ẑ_t | h_t)          prior (imagination)
    z_t     ~ q(z_t | h_t, o_t)     posterior (real data)

Absent agents send no message: at row t only agents present at row t (they acted at t-1) are heard, and a
``hears`` matrix can narrow that further (neighbours). `MultiAgentRSSM.filter_step` is one agent's own
posterior step at execution (MAMBA §3.3), the same math as `observe_sequence` for that agent's row.

Samples are one-hot per categorical with straight-through gradients. The state is
``{"deter": (B, N, H), "stoch": (B, N, S·K), "logits": (B, N, S, K)}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wmenv.checks import check_int, check_unit_interval
from wmenv.models.comm import CommBlock
from wmenv.models.ssm.mamba2_ref import Mamba2Config
from wmenv.models.ssm.stack import DynamicsConfig
from wmenv.models.world_model import State, restart_rows, stack_steps
from wmenv.tensor_ops import compiled, softmax


@dataclass
class RSSMConfig(DynamicsConfig):
    """Sizes of `MultiAgentRSSM` (defaults: the MAMBA paper's SMAC model); its sequence model over time
    (`DynamicsConfig`: the fields before these)."""

    deter: int = 256
    """H, GRU width (the paper's hidden size: 256 SMAC, 400 Flatland)."""
    stoch: int = 32
    """S, categorical variables of the stochastic state."""
    classes: int = 32
    """K, classes per categorical."""
    hidden: int = 256
    """Width of the prior / posterior / observation-encoder MLPs."""
    comm_width: int = 256
    """E, width of the communication transformer."""
    comm_layers: int = 3
    """Stacked transformer layers of the communication block."""
    comm_heads: int = 4
    """Attention heads (must divide ``comm_width``)."""
    dropout: float = 0.1
    """Dropout in the communication block."""

    def __post_init__(self) -> None:
        for name in ("deter", "stoch", "classes", "hidden", "comm_width", "comm_layers", "comm_heads"):
            check_int(f"RSSMConfig.{name}", getattr(self, name))
        check_unit_interval("RSSMConfig.dropout", self.dropout, open_high=True)
        self._check_dynamics("RSSMConfig", {"deter": self.deter})

    def mamba2(self) -> Mamba2Config:
        """The Mamba-2 blocks' config (``d_model`` = ``deter``)."""
        return self.mamba2_config(self.deter)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 1) -> nn.Sequential:
    """``layers`` × (Linear, LayerNorm, ELU) of width ``hidden``, then a Linear to ``out_dim``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ELU()]
    return nn.Sequential(*mods, nn.Linear(hidden if layers else in_dim, out_dim))


def onehot_from_uniform(logits: Tensor, uniform: Tensor) -> Tensor:
    """One-hot samples of (..., S, K) categoricals by inverting their CDF at ``uniform`` (..., S) in [0, 1), with
    straight-through gradients, flattened to (..., S·K). Pure, so it compiles: the random numbers come in."""
    probs = softmax(logits)
    below = probs.detach().cumsum(-1) < uniform.unsqueeze(-1).to(probs.dtype)  # classes whose CDF is under u
    index = below.sum(-1).clamp(max=probs.shape[-1] - 1)  # the clamp: a CDF that rounds to just under 1
    onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return rearrange(onehot + probs - probs.detach(), "... s k -> ... (s k)")


def uniform_like(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniforms in [0, 1) for one sample of each (..., S, K) categorical: (..., S)."""
    return torch.rand(logits.shape[:-1], generator=generator, device=logits.device, dtype=logits.dtype)


def sample_onehot(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One-hot samples of (..., S, K) categoricals with straight-through gradients, flattened to (..., S·K)."""
    return onehot_from_uniform(logits, uniform_like(logits, generator))


class MultiAgentRSSM(nn.Module):
    """The recurrent state-space model of N agents coupled by attention.

    Args:
        obs_dim: D.
        n_actions: A (actions enter as one-hot vectors).
        n_agents: N.
        config: sizes.
    """

    def __init__(self, obs_dim: int, n_actions: int, n_agents: int, config: RSSMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.n_actions, self.n_agents = n_actions, n_agents
        latent = c.stoch * c.classes
        self.comm = CommBlock(latent + n_actions, c.comm_width, n_agents, c.comm_layers, c.comm_heads, c.dropout)
        self.cell = nn.GRUCell(c.comm_width, c.deter)
        self.prior_net = mlp(c.deter, c.hidden, latent)
        self.obs_encoder = nn.Sequential(mlp(obs_dim, c.hidden, c.hidden), nn.ELU())
        self.post_net = mlp(c.deter + c.hidden, c.hidden, latent)

    @property
    def feature_dim(self) -> int:
        """F = H + S·K, the per-agent feature width."""
        return self.config.deter + self.config.stoch * self.config.classes

    def blank(self, batch: int) -> State:
        """The all-zero state that precedes an episode's first step."""
        c, p = self.config, self.cell.weight_hh
        zeros = lambda *s: torch.zeros(batch, self.n_agents, *s, device=p.device, dtype=p.dtype)  # noqa: E731
        return {"deter": zeros(c.deter), "stoch": zeros(c.stoch * c.classes), "logits": zeros(c.stoch, c.classes)}

    def _logits(self, net: nn.Module, x: Tensor) -> Tensor:
        return rearrange(net(x), "... (s k) -> ... s k", k=self.config.classes)

    def img_step(
        self,
        state: State,
        action: Tensor,
        generator: torch.Generator | None = None,
        hears: Tensor | None = None,
        sample: bool = True,
    ) -> State:
        """Prior step: state (B, N, ...) and one-hot actions (B, N, A) of the previous step -> the next prior state.

        ``hears`` (B, N, N) bool: who receives whose message (`CommBlock`); None: all hear all. ``sample=False``
        leaves out the prior sample (h_t and the prior's logits only; filtering itself needs just h_t, `deter_step`).
        """
        deter = self.deter_step(state, action, hears)
        logits = self.prior_logits(deter)
        if not sample:
            return {"deter": deter, "logits": logits}
        return {"deter": deter, "stoch": sample_onehot(logits, generator), "logits": logits}

    def deter_step(self, state: State, action: Tensor, hears: Tensor | None = None) -> Tensor:
        """h_t (B, N, H) from the state (B, N, ...) and one-hot actions (B, N, A) of the previous step: communication
        and the GRU, the part of `img_step` that the recurrence needs (the prior's logits only enter the KL)."""
        e = self.comm(torch.cat([state["stoch"], action], dim=-1), hears)  # (B, N, E)
        deter = self.cell(rearrange(e, "b n e -> (b n) e"), rearrange(state["deter"], "b n h -> (b n) h"))
        return rearrange(deter, "(b n) h -> b n h", b=e.shape[0])

    def prior_logits(self, deter: Tensor) -> Tensor:
        """The prior's logits (..., S, K) at deterministic states (..., H)."""
        return self._logits(self.prior_net, deter)

    def post_step(
        self, prior: State, embed: Tensor, generator: torch.Generator | None = None, uniform: Tensor | None = None
    ) -> State:
        """Posterior for the same step: prior state and embedded observations (B, N, hidden).

        ``uniform`` (B, N, S): the sample's random numbers (`onehot_from_uniform`); None draws them from ``generator``.
        """
        logits = self._logits(self.post_net, torch.cat([prior["deter"], embed], dim=-1))
        uniform = uniform_like(logits, generator) if uniform is None else uniform
        return {"deter": prior["deter"], "stoch": onehot_from_uniform(logits, uniform), "logits": logits}

    def state_widths(self) -> dict[str, int]:
        """An agent's execution filter state: name -> width per row (``{"deter": H, "stoch": S·K}``)."""
        c = self.config
        return {"deter": c.deter, "stoch": c.stoch * c.classes}

    def filter_step(
        self,
        state: State,
        messages: Tensor,
        heard: Tensor,
        receiver: Tensor,
        embed: Tensor,
        generator: torch.Generator | None = None,
    ) -> State:
        """One agent's posterior step per row, from what it has at execution.

        Args:
            state: the agent's filter state at t - 1; its ``"deter"`` (B, H), h_{t-1}, is read.
            messages: (B, N, M) the (z_{t-1}, a_{t-1}) messages in sender slots, the agent's own included.
            heard: (B, N) bool, the slots that hold a message the agent receives.
            receiver: (B,) int64, the agent's own slot.
            embed: (B, hidden) its embedded observation (zeros when it has none).

        Returns:
            ``{"deter": (B, H), "stoch": (B, S·K), "logits": (B, S, K)}``: the agent's posterior at t.
        """
        deter = self.cell(self.comm.receive(messages, heard, receiver), state["deter"])
        logits = self._logits(self.post_net, torch.cat([deter, embed], dim=-1))
        return {"deter": deter, "stoch": sample_onehot(logits, generator), "logits": logits}

    def observe_sequence(
        self,
        obs: Tensor,
        prev_actions: Tensor,
        resets: Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        hears: Tensor | None = None,
        compile: bool = False,
    ) -> tuple[State, State]:
        """Filter real windows.

        Args:
            obs: (B, T, N, D).
            prev_actions: (B, T, N, A) one-hot action of the previous row (zeros where none).
            resets: (B, T) bool: the state entering row t is the blank one.
            state: the state before row 0 (blank when None).
            alive: (B, T, N) bool; absent agents' observations are not seen (their posterior rests on h alone)
                and they send no message (an agent present at row t acted at row t - 1, or t starts its episode).
            hears: (B, T, N, N) bool: [b, t, i, j] agent i may receive agent j's message at row t (e.g. only
                neighbours); None: everyone.
            compile: run each row through one `torch.compile`d function (forward and backward fused; the same
                random numbers, so the same results to rounding; the plain row where compiling fails).

        Returns:
            posteriors and priors (deter and logits; no prior samples), each name -> (B, T, N, ...).
        """
        batch, length, n = obs.shape[:3]
        embed = self.obs_encoder(obs)  # (B, T, N, hidden)
        if alive is not None:
            embed = embed * alive.unsqueeze(-1).to(embed.dtype)
        listen, missing = listening(alive, hears, n)
        if missing is not None:  # rows where someone misses a message take the per-receiver path
            masked = missing.any(0).tolist()
        blank = self.blank(batch)
        state = blank if state is None else state
        posts = []
        restarts = resets.any(0).tolist()  # (T,) rows where some window restarts (replay windows: row 0 at most)
        c = self.config  # every row's posterior sample drawn at once: the same numbers as row by row
        uniform = torch.rand(length, batch, n, c.stoch, generator=generator, device=obs.device, dtype=embed.dtype)
        row = _compiled_filter_row if compile else _filter_row
        for t in range(length):
            if restarts[t]:  # elsewhere the blend keeps every row: skip its ops (and their gradients)
                state = restart_rows(state, blank, resets[:, t])
            row_hears = listen[:, t] if listen is not None and masked[t] else None
            state = row(self, state, prev_actions[:, t], embed[:, t], uniform[t], row_hears)
            posts.append(state)
        posts = stack_steps(posts)  # the priors' logits for every row at once: one batch instead of T small ones
        return posts, {"deter": posts["deter"], "logits": self.prior_logits(posts["deter"])}

    def observe_last(
        self,
        obs: Tensor,
        prev_actions: Tensor,
        resets: Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        hears: Tensor | None = None,
    ) -> State:
        """The posterior state (B, N, ...) after the last row of `observe_sequence`'s windows (same arguments)."""
        posts, _ = self.observe_sequence(obs, prev_actions, resets, state, generator, alive, hears)
        return {k: v[:, -1] for k, v in posts.items()}


def listening(alive: Tensor | None, hears: Tensor | None, n: int) -> tuple[Tensor | None, Tensor | None]:
    """Who receives whose message in windows: (B, T, N, N) bool [b, t, i, j] (j present at row t and, with ``hears``,
    heard by i), and the (B, T) rows where some receiver misses another agent's message; (None, None): all hear all.

    Args:
        alive: (B, T, N) bool or None (all present).
        hears: (B, T, N, N) bool or None (everyone).
        n: N.
    """
    listen = None if alive is None else alive.bool()[:, :, None, :].expand(-1, -1, n, -1)
    if hears is not None:
        listen = hears.bool() if listen is None else listen & hears.bool()
    if listen is None:
        return None, None
    eye = torch.eye(n, dtype=torch.bool, device=listen.device)
    return listen, (~(listen | eye)).flatten(2).any(-1)


def _filter_row(
    rssm: MultiAgentRSSM, state: State, prev_action: Tensor, embed: Tensor, uniform: Tensor, hears: Tensor | None
) -> State:
    """One row of `MultiAgentRSSM.observe_sequence`: the posterior (its prior's logits are computed after the loop).
    A function of the module, not a method, so that one compiled version serves every RSSM (deep copies included)
    with its own weights."""
    deter = rssm.deter_step(state, prev_action, hears)
    return rssm.post_step({"deter": deter}, embed, uniform=uniform)


_compiled_filter_row = compiled(_filter_row)

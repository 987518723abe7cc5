"""A multi-agent state-space model with Mamba-2 over time: MAMBA's communication, DRAMA's sequence model.

Glossary: B batch, T time, N agents, D observation features, A actions, H deterministic width (``deter``, the
Mamba-2 ``d_model``), S categoricals, K classes, E communication width, M message width (S·K + A).

    z_t   ~ q(z_t | o_t)                              posterior from the observation alone
    e_t   = Comm([z_{t-1}, a_{t-1}] of all agents)     (B, N, E), per step, as MAMBA
    h_t   = Mamba-2 stack(e_1 .. e_t)                  per agent, states reset where an episode starts
    ẑ_t   ~ p(ẑ_t | h_t)                              prior (imagination)

What changes from `wmenv.models.rssm.MultiAgentRSSM` (MAMBA's GRU RSSM), and why:
- The posterior reads o_t alone (DRAMA's): every row's z is known before the sequence model runs, so the
  communication block runs on all rows of a window at once and the Mamba-2 stack reads whole windows (chunked SSD;
  the mamba-ssm kernels on CUDA) instead of T GRU steps. MAMBA's posterior reads h_t too; with it, training would be
  sequential again.
- An absent agent (no observation at row t) gets the posterior of a zero embedding: a learned "absent" code that
  the prior learns to predict (MAMBA's absent agents rest on h_t instead). It sends no message, as in MAMBA.
- Each agent runs its own Mamba-2 states (the batch is B·N sequences); where an episode starts every agent's
  states entering that row are zero and its messages are blank, which is MAMBA's blank state.

The state is ``{"deter": (B, N, H), "stoch": (B, N, S·K), "logits": (B, N, S, K), "conv<i>": (B, N, ...),
"ssm<i>": (B, N, ...)}``: h_t, z_t, z_t's logits, and each Mamba-2 block's state after reading e_t.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from wmenv.models.comm import CommBlock
from wmenv.models.rssm import RSSMConfig, listening, mlp, onehot_from_uniform, sample_onehot
from wmenv.models.ssm.stack import MambaDynamics, SSMStates
from wmenv.models.world_model import State

__all__ = ["Mamba2RSSM"]


class Mamba2RSSM(nn.Module):
    """N agents' state-space model with Mamba-2 over time and attention across agents (see the module docstring).

    The same verbs as `MultiAgentRSSM` (``blank``, ``img_step``, ``observe_sequence``, ``observe_last``,
    ``filter_step``, ``state_widths``), so `wmenv.models.mamba_wm.MAMBAWorldModel` holds either.

    Args:
        obs_dim: D.
        n_actions: A (actions enter as one-hot or rescaled vectors).
        n_agents: N.
        config: sizes, with ``dynamics="mamba2"``.
    """

    def __init__(self, obs_dim: int, n_actions: int, n_agents: int, config: RSSMConfig) -> None:
        super().__init__()
        if config.dynamics != "mamba2":
            raise ValueError(f"config.dynamics: Mamba2RSSM runs 'mamba2' dynamics, got {config.dynamics!r}")
        c = self.config = config
        self.n_actions, self.n_agents = n_actions, n_agents
        latent = c.stoch * c.classes
        self.comm = CommBlock(latent + n_actions, c.comm_width, n_agents, c.comm_layers, c.comm_heads, c.dropout)
        self.dynamics = MambaDynamics(c.comm_width, c.ssm_layers, c.mamba2())
        self.prior_net = mlp(c.deter, c.hidden, latent)
        self.obs_encoder = nn.Sequential(mlp(obs_dim, c.hidden, c.hidden), nn.ELU())
        self.post_net = mlp(c.hidden, c.hidden, latent)

    @property
    def feature_dim(self) -> int:
        """F = H + S·K, the per-agent feature width."""
        return self.config.deter + self.config.stoch * self.config.classes

    # --- block states in and out of the state dict ---
    def _states(self, state: State) -> SSMStates:
        """The blocks' states of a (B, N, ...) state, as (B·N, ...) tensors."""
        layers = self.config.ssm_layers
        return [tuple(rearrange(state[f"{kind}{i}"], "b n ... -> (b n) ...") for kind in ("conv", "ssm"))  # type: ignore[misc]
                for i in range(layers)]  # fmt: skip

    @staticmethod
    def _named(states: SSMStates, batch: int | None = None) -> State:
        """Block states -> ``{"conv<i>": ..., "ssm<i>": ...}``; with ``batch`` B, (B·N, ...) tensors become (B, N, ...)."""
        split = (lambda t: t) if batch is None else (lambda t: rearrange(t, "(b n) ... -> b n ...", b=batch))
        return {f"{kind}{i}": split(t) for i, pair in enumerate(states) for kind, t in zip(("conv", "ssm"), pair)}

    def state_widths(self) -> dict[str, int]:
        """An agent's execution filter state: name -> width per row once flattened (h, z and the block states)."""
        c = self.config
        widths = {"deter": c.deter, "stoch": c.stoch * c.classes}
        for i, pair in enumerate(self.dynamics.state_shapes()):
            widths |= {f"{kind}{i}": math.prod(shape) for kind, shape in zip(("conv", "ssm"), pair)}
        return widths

    def blank(self, batch: int) -> State:
        """The all-zero state that precedes an episode's first step."""
        c, p = self.config, self.prior_net[-1].weight
        zeros = lambda *s: torch.zeros(batch, self.n_agents, *s, device=p.device, dtype=p.dtype)  # noqa: E731
        states = self._named(self.dynamics.initial_states(batch * self.n_agents), batch)
        return {"deter": zeros(c.deter), "stoch": zeros(c.stoch * c.classes), "logits": zeros(c.stoch, c.classes),
                **states}  # fmt: skip

    def _logits(self, net: nn.Module, x: Tensor) -> Tensor:
        return rearrange(net(x), "... (s k) -> ... s k", k=self.config.classes)

    # --- imagination ---
    def img_step(
        self, state: State, action: Tensor, generator: torch.Generator | None = None, hears: Tensor | None = None
    ) -> State:
        """Prior step: state (B, N, ...) and encoded actions (B, N, A) of the previous step -> the next prior state.

        ``hears`` (B, N, N) bool: who receives whose message (`CommBlock`); None: all hear all.
        """
        batch = action.shape[0]
        e = self.comm(torch.cat([state["stoch"], action], dim=-1), hears)  # (B, N, E)
        h, states = self.dynamics.step(rearrange(e, "b n e -> (b n) e"), self._states(state))
        deter = rearrange(h, "(b n) h -> b n h", b=batch)
        logits = self._logits(self.prior_net, deter)
        return {"deter": deter, "stoch": sample_onehot(logits, generator), "logits": logits, **self._named(states, batch)}

    # --- real windows ---
    def _sequence(
        self,
        obs: Tensor,
        prev_actions: Tensor,
        resets: Tensor,
        state: State | None,
        generator: torch.Generator | None,
        alive: Tensor | None,
        hears: Tensor | None,
    ) -> tuple[State, State, SSMStates]:
        """Posteriors and priors of every row (B, T, N, ...) and the blocks' states after the last row (B·N, ...)."""
        c = self.config
        batch, length, n = obs.shape[:3]
        embed = self.obs_encoder(obs)  # (B, T, N, hidden)
        if alive is not None:
            embed = embed * alive.unsqueeze(-1).to(embed.dtype)
        post = self._logits(self.post_net, embed)  # (B, T, N, S, K)
        uniform = torch.rand(length, batch, n, c.stoch, generator=generator, device=obs.device, dtype=post.dtype)
        z = onehot_from_uniform(post, rearrange(uniform, "t b n s -> b t n s"))  # (B, T, N, S·K)
        z0 = torch.zeros_like(z[:, 0]) if state is None else state["stoch"]
        keep = (~resets.bool())[:, :, None, None].to(z.dtype)  # where an episode starts: blank messages
        messages = torch.cat([torch.cat([z0[:, None], z[:, :-1]], dim=1), prev_actions.to(z.dtype)], dim=-1) * keep
        flat = rearrange(messages, "b t n m -> (b t) n m")
        e = self.comm(flat)
        listen, missing = listening(alive, hears, n)
        if missing is not None and bool(missing.any()):  # rows where someone misses a message: per receiver
            rows = torch.nonzero(missing.flatten()).squeeze(-1)
            e = e.index_copy(0, rows, self.comm(flat[rows], rearrange(listen, "b t i j -> (b t) i j")[rows]))
        x = rearrange(e, "(b t) n e -> (b n) t e", b=batch)
        start = None if state is None else self._states(state)
        h, states = self.dynamics(x, repeat(resets.bool(), "b t -> (b n) t", n=n), start)
        deter = rearrange(h, "(b n) t h -> b t n h", b=batch)
        posts = {"deter": deter, "stoch": z, "logits": post}
        return posts, {"deter": deter, "logits": self._logits(self.prior_net, deter)}, states

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
        """Filter real windows in parallel over time (arguments as `MultiAgentRSSM.observe_sequence`; ``compile`` is
        not read: nothing here runs row by row).

        Returns:
            posteriors (deter, stoch, logits) and priors (deter, logits), each name -> (B, T, N, ...).
        """
        posts, priors, _ = self._sequence(obs, prev_actions, resets, state, generator, alive, hears)
        return posts, priors

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
        """The whole state (B, N, ...) after the last row of `observe_sequence`'s windows, block states included."""
        posts, _, states = self._sequence(obs, prev_actions, resets, state, generator, alive, hears)
        return {**{k: v[:, -1] for k, v in posts.items()}, **self._named(states, obs.shape[0])}

    # --- execution ---
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
            state: the agent's filter state at t - 1: ``"conv<i>"`` / ``"ssm<i>"`` (B, ...) are read.
            messages: (B, N, M) the (z_{t-1}, a_{t-1}) messages in sender slots, the agent's own included.
            heard: (B, N) bool, the slots that hold a message the agent receives.
            receiver: (B,) int64, the agent's own slot.
            embed: (B, hidden) its embedded observation (zeros when it has none).

        Returns:
            ``{"deter": (B, H), "stoch": (B, S·K), "logits": (B, S, K), "conv<i>", "ssm<i>"}``: the agent's state at t.
        """
        states = [(state[f"conv{i}"], state[f"ssm{i}"]) for i in range(self.config.ssm_layers)]
        deter, states = self.dynamics.step(self.comm.receive(messages, heard, receiver), states)
        logits = self._logits(self.post_net, embed)
        return {"deter": deter, "stoch": sample_onehot(logits, generator), "logits": logits, **self._named(states)}

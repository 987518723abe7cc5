"""The MAMBA world model (Egorov & Shpilman 2022, ``papers/mamba-marl-world-model.txt``) behind the `WorldModel` contract.

``RSSMConfig.dynamics="mamba2"`` swaps the GRU over time for Mamba-2 blocks per agent with a posterior from the
observation alone (`wmenv.models.rssm_mamba2`; presets ``"small-mamba2"``, ``"smac-mamba2"``); the heads, losses and
communication are the same.

Glossary: B batch, T time, N agents, D observation features, A actions, F = H + S·K per-agent features.

A `MultiAgentRSSM` plus per-agent heads on f_t = [h_t, z_t] (`wmenv.models.heads`): observation, reward,
continuation, available actions and the action decoder of the info loss (eq. 5: -ln p(a_{t-1} | h_t, z_t)).
KL balancing: 0.8 · KL[sg(q) || p] + 0.2 · KL[q || sg(p)].

Absorbing states: an agent that is absent at row t (gone, or not yet there) has no observation loss;
its reward and continuation targets are 0 (the replay stores zeros there), so the model learns those
states from rewards and continuations alone. Windows always start from the blank state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from wmenv.checks import check_int, check_positive, check_unit_interval
from wmenv.models.heads import HeadsMixin, balanced_kl, categorical_kl, check_reward_head, head_errors
from wmenv.models.rssm import MultiAgentRSSM, RSSMConfig, sample_onehot
from wmenv.models.rssm_mamba2 import Mamba2RSSM
from wmenv.models.world_model import Prediction, State, StepErrors, WorldModel, none_where

__all__ = ["PRESETS", "MAMBAConfig", "MAMBAWorldModel", "categorical_kl", "preset"]


@dataclass
class MAMBAConfig:
    """The MAMBA world model; `preset` gives the paper's SMAC and Flatland sizes and a small CPU one."""

    rssm: RSSMConfig = field(default_factory=RSSMConfig)
    """Sizes of the recurrent state-space model."""
    head_hidden: int = 256
    """Width of the prediction heads."""
    head_layers: int = 2
    """Hidden layers of each prediction head."""
    kl_balance: float = 0.8
    """Weight of the cross-entropy side of KL balancing (the paper: 0.8; 0.2 on the posterior side)."""
    kl_scale: float = 1.0
    """Weight of the balanced KL (the paper uses no extra β)."""
    info_scale: float = 1.0
    """Weight of the info loss (predicting the previous action)."""
    lr: float = 2e-4
    """Model learning rate (Appendix A)."""
    grad_clip: float = 10.0
    """Gradient-norm clipping (Appendix A)."""
    reward_head: Literal["mse", "twohot"] = "mse"
    """``"mse"``: one scalar with squared error (the paper's); ``"twohot"``: DreamerV3's symlog two-hot categorical
    over ``reward_bins`` bins with cross-entropy (learns rare large rewards), zero-initialized output layer."""
    reward_bins: int = 255
    """K, bins of the two-hot reward head, evenly spaced over symlog [-20, 20]; odd so that 0 is a bin (DreamerV3: 255)."""
    reward_event_weight: float = 1.0
    """Weight of the reward loss on rows whose |reward| >= ``reward_event_threshold`` (rare events such as Flatland's
    +10 arrivals and -5 deadlocks); 1: every row alike (the paper's)."""
    reward_event_threshold: float = 1.0
    """|reward| from which a row is an event for ``reward_event_weight``."""

    def __post_init__(self) -> None:
        for name in ("head_hidden", "head_layers"):
            check_int(f"MAMBAConfig.{name}", getattr(self, name))
        check_reward_head("MAMBAConfig", self.reward_head, self.reward_bins)
        for name in ("reward_event_weight", "reward_event_threshold"):
            check_positive(f"MAMBAConfig.{name}", getattr(self, name))
        check_unit_interval("MAMBAConfig.kl_balance", self.kl_balance)


PRESETS = ("smac", "flatland", "small", "medium", "smac-mamba2", "small-mamba2")

_MAMBA2 = {"dynamics": "mamba2", "ssm_layers": 2, "d_state": 16, "expand": 2}
"""The Mamba-2 dynamics of the ``-mamba2`` presets (DRAMA's blocks: 2 layers, state 16, expand 2)."""


def preset(name: str) -> MAMBAConfig:
    """Named sizes: ``"smac"`` / ``"flatland"`` (Appendix A: hidden 256 / 400, 32×32 latents), ``"small"`` for CPUs
    (hidden 64, 8×8 latents, 0.12 M parameters on MPE spread) and ``"medium"`` between them (hidden 128, 16×16 latents,
    2 communication layers, 2-layer heads of 128, lr 5e-4 near the geometric mean of the two; 0.80 M parameters);
    ``"smac-mamba2"`` / ``"small-mamba2"``: the same sizes with Mamba-2 dynamics (`wmenv.models.rssm_mamba2`) of
    H = 256 / 64 channels in heads of 64 / 32."""
    if name.endswith("-mamba2") and name.removesuffix("-mamba2") in ("smac", "small"):
        base = preset(name.removesuffix("-mamba2"))
        headdim = 64 if base.rssm.deter >= 256 else 32
        return replace(base, rssm=replace(base.rssm, **_MAMBA2, headdim=headdim))
    if name == "smac":
        return MAMBAConfig(rssm=RSSMConfig(deter=256, hidden=256, comm_width=256))
    if name == "flatland":
        return MAMBAConfig(rssm=RSSMConfig(deter=400, hidden=400, comm_width=400), head_hidden=400)
    if name == "small":
        rssm = RSSMConfig(deter=64, stoch=8, classes=8, hidden=64, comm_width=64, comm_layers=1, comm_heads=2)
        return MAMBAConfig(rssm=rssm, head_hidden=64, head_layers=1, lr=1e-3)
    if name == "medium":
        rssm = RSSMConfig(deter=128, stoch=16, classes=16, hidden=128, comm_width=128, comm_layers=2, comm_heads=2)
        return MAMBAConfig(rssm=rssm, head_hidden=128, head_layers=2, lr=5e-4)
    raise ValueError(f"name: expected one of {list(PRESETS)}, got {name!r}")


class MAMBAWorldModel(HeadsMixin, WorldModel):
    """MAMBA's world model for an env `spec`; its loss can compile per row (``compile_steps``).

    Discrete actions enter as one-hot vectors; continuous ones as vectors rescaled from the env's bounds to [-1, 1]
    (and the info loss is then a unit-variance Gaussian over them).

    Args:
        spec: the real env's `EnvSpec`.
        config: sizes and loss weights; default `MAMBAConfig()` (the paper's SMAC sizes).
    """

    steps_compilable = True
    has_step_errors = True

    def __init__(self, spec, config: MAMBAConfig | None = None) -> None:
        super().__init__()
        self.spec, self.config = spec, config if config is not None else MAMBAConfig()
        c = self.config
        D, A, N = spec.obs_dim, spec.n_actions, spec.n_agents
        rssm = MultiAgentRSSM if c.rssm.dynamics == "gru" else Mamba2RSSM
        self.rssm = rssm(D, A, N, c.rssm)
        feat = self.rssm.feature_dim
        self._build_heads(feat, feat, c.head_hidden, c.head_layers, c.reward_head, c.reward_bins, c.reward_event_weight,
                          c.reward_event_threshold)  # fmt: skip

    # --- the contract ---
    def features(self, state: State) -> Tensor:
        """(B, N, F) = [h, z] per agent."""
        return torch.cat([state["deter"], state["stoch"]], dim=-1)

    def critic_features(self, state: State) -> Tensor:
        """(B, N·F): every agent's features."""
        return rearrange(self.features(state), "b n f -> b (n f)")

    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """The prior of an episode's first step: one step from the blank state with no action."""
        blank = self.rssm.blank(batch_size)
        return self.rssm.img_step(blank, self._no_action(batch_size), generator)

    def observe(
        self,
        obs: Tensor,
        actions: Tensor,
        resets: Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        hears: Tensor | None = None,
        *,
        global_state: Tensor | None = None,
    ) -> State:
        """The posterior after the last row of real windows (obs (B, T, N, D), actions (B, T, N) int or (B, T, N, A)
        float taken at each row).

        ``global_state`` is ignored: MAMBA's model does not see the env's global state.

        ``alive`` (B, T, N) marks agents with an observation; absent agents' rows are not looked at and they send
        no message. ``hears`` (B, T, N, N) bool restricts who receives whose message (e.g. neighbours).
        """
        prev = self._prev_actions(actions, resets, alive)  # row 0: zeros, also when continuing ``state`` (no action given)
        return self.rssm.observe_last(obs, prev, resets, state, generator, alive, hears)

    def observe_rows(
        self,
        obs: Tensor,
        actions: Tensor,
        resets: Tensor,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        *,
        global_state: Tensor | None = None,
    ) -> State:
        """Every row's posterior (deter, stoch, logits), name -> (B, T, N, ...) (`WorldModel.observe_rows`);
        ``global_state`` is ignored."""
        prev = self._prev_actions(actions, resets, alive)
        posts, _ = self.rssm.observe_sequence(obs, prev, resets, generator=generator, alive=alive)
        return posts

    def imagine(
        self,
        state: State,
        actions: Tensor,
        generator: torch.Generator | None = None,
        decode: bool = False,
        present: Tensor | None = None,
    ) -> tuple[State, Prediction]:
        """One imagined step for actions (B, N) int64 (or (B, N, A) float); the prediction is for the new state.

        ``present`` (B, N) bool: the acting agents; absent ones send no message (as in training, `observe`).
        """
        hears = None
        if present is not None and not bool(present.all()):
            hears = present.bool()[:, None, :].expand(-1, self.spec.n_agents, -1)
        nxt = self.rssm.img_step(state, self._encode_actions(actions), generator, hears)
        return nxt, self.predict(nxt, decode)

    # --- execution: one agent's filter ---
    @property
    def message_dim(self) -> int:
        """M = S·K + A: an agent's message is its posterior sample z_t and its (encoded) action a_t."""
        return self.rssm.config.stoch * self.rssm.config.classes + self.spec.n_actions

    def filter_initial(self, batch_size: int) -> State:
        """B blank filter states ``{"deter": (B, H), "stoch": (B, S·K)}`` (with Mamba-2 dynamics, also each block's
        ``"conv<i>"`` / ``"ssm<i>"`` state (B, ...))."""
        return {k: v[:, 0] for k, v in self.rssm.blank(batch_size).items() if k != "logits"}

    def message(self, state: State, action: Tensor, agent: Tensor | None = None) -> Tensor:
        """(B, S·K + A): [z, encoded action] of filter states after ``action``: (B,) int64 (-1: none, a zero vector),
        or (B, A) float for continuous actions (a NaN row: none), which also need each row's ``agent`` (B,) slot."""
        action = torch.as_tensor(action, device=state["stoch"].device)
        if not self.spec.discrete and agent is None:
            raise ValueError("agent: continuous actions are rescaled per agent; pass each row's agent slot")
        encoded = self._encode_or_none(action, None if agent is None else torch.as_tensor(agent, device=action.device))
        return torch.cat([state["stoch"], encoded.to(state["stoch"].dtype)], dim=-1)

    def filter_step(
        self,
        state: State,
        obs: Tensor,
        prev_action: Tensor,
        reset: Tensor,
        agent: Tensor,
        messages: Tensor | None = None,
        heard: Tensor | None = None,
        alive: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, Tensor]:
        """One agent's posterior step per row (`WorldModel.filter_step`); features (B, F) = [h_t, z_t].

        The agent puts its own message (its z_{t-1}, a_{t-1}) in its slot, runs the communication block over the
        messages it hears, updates its GRU (or its Mamba-2 states) and samples its posterior from h_t and its
        observation (from the observation alone with Mamba-2 dynamics). On ``reset``
        its state, previous action and the received messages are the blank ones (the whole episode restarts).
        """
        n = self.spec.n_agents
        extra = {"messages": (messages, (n, self.message_dim)), "heard": (heard, (n,)), "alive": (alive, ())}
        flat = {k: v.reshape(v.shape[0], -1) for k, v in state.items()} if isinstance(state, dict) else state
        widths = self.rssm.state_widths()
        reset, agent, prev_action = self._check_filter_inputs(flat, widths, obs, prev_action, reset, agent, extra)
        batch = obs.shape[0]
        if messages is None:
            messages = obs.new_zeros(batch, n, self.message_dim)
        if heard is None:
            heard = torch.ones(batch, n, dtype=torch.bool, device=obs.device)
        keep = ~reset
        state = {k: v * keep.view(-1, *[1] * (v.dim() - 1)).to(v.dtype) for k, v in state.items()}
        own = self.message(state, none_where(~keep, prev_action), agent)
        messages = messages * keep.view(-1, 1, 1).to(messages.dtype)
        slot = torch.nn.functional.one_hot(agent, n).bool()
        messages = torch.where(slot.unsqueeze(-1), own.unsqueeze(1), messages)
        embed = self.rssm.obs_encoder(obs)
        if alive is not None:
            embed = embed * alive.unsqueeze(-1).to(embed.dtype)
        post = self.rssm.filter_step(state, messages, heard.bool(), agent, embed, generator)
        new = {k: post[k] for k in widths}
        return new, self.features(new)

    def predict(self, state: State, decode: bool = False) -> Prediction:
        """Reward, continuation, action availability (and observation) of a state."""
        feat = self.features(state)
        return self._predict_heads(feat, feat, decode)

    def _filter_windows(self, batch: dict[str, Tensor]) -> tuple[State, State]:
        """Posteriors and priors of every row of replay windows (checked), as `loss` and `step_errors` read them. Every
        window starts from the blank state (no state is passed)."""
        self._check_rewards(batch)
        obs, actions, alive = batch["obs"], batch["action"], batch["alive"].bool()
        resets = batch["reset"].bool()
        prev = self._prev_actions(actions, resets, alive)
        return self.rssm.observe_sequence(obs, prev, resets, alive=alive, compile=self.compile_steps)

    def step_errors(self, batch: dict[str, Tensor]) -> StepErrors:
        """The loss per row and agent (`WorldModel.step_errors`); the KL's value is KL[q || p] whatever the balance."""
        c = self.config
        posts, priors = self._filter_windows(batch)
        feat = self.features(posts)  # (B, T, N, F)
        errors = head_errors(self, feat, feat, batch)
        errors["kl"] = (categorical_kl(posts["logits"], priors["logits"]), None)
        weights = {k: 1.0 for k in errors} | {"info": c.info_scale, "kl": c.kl_scale}
        prior_sample = sample_onehot(priors["logits"])  # after the posteriors' draws: same posteriors as `loss`
        return StepErrors(errors, weights, torch.cat([priors["deter"], prior_sample], dim=-1))

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """World-model loss of replay windows (see the module docstring); returns the total and each term."""
        c = self.config
        posts, priors = self._filter_windows(batch)
        feat = self.features(posts)  # (B, T, N, F)
        terms = self._head_losses(feat, feat, batch, compile=self.compile_steps)
        terms["kl"], kl_prior = balanced_kl(posts["logits"], priors["logits"], c.kl_balance)
        total = terms["obs"] + terms["reward"] + terms["cont"] + terms.get("action_mask", 0.0)
        total = total + c.info_scale * terms["info"] + c.kl_scale * terms["kl"]
        stats = {k: float(v.detach()) for k, v in terms.items()}
        stats["kl_prior"] = float(kl_prior.detach())
        return total, stats

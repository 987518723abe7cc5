"""MABL, the bi-level world model (Venugopal et al. 2024, ``papers/mabl-bi-level-world-model.txt``), behind the
`WorldModel` contract.

Glossary: B batch, T time, N agents, G global levels (N per agent, 1 shared), D observation features,
S_dim global-state features, A actions, H_a / H_g agent / global GRU widths, S categoricals, K classes,
L = S·K one-hot latent width, E hidden width.

Per agent i (all weights shared across agents; no communication between agents):

    agent level   h^a_t = GRU_a(h^a_{t-1}, [a^i_{t-1}, z^a_{t-1}])
                  prior      p(ẑ^a_t | h^a_t, ẑ^g_t)       conditioned on the global *prior* sample
                  posterior  q(z^a_t | h^a_t, enc(o^i_t))   own observation only: all that execution needs
    global level  h^g_t = GRU_g(h^g_{t-1}, [joint action a_{t-1}, z^g_{t-1}])   absent agents: a zero action
                  prior      p(ẑ^g_t | h^g_t)
                  posterior  q(z^g_t | h^g_t, enc_s(s_t), z^a_t)   the true global state, seen in training only

Heads (`wmenv.models.heads`): observation, reward and info (previous action) read the agent features
[h^a, z^a]; continuation and available actions read all four [h^a, z^a, h^g, z^g]. Loss: obs + reward + cont
+ mask + info + KL_agent + KL_global, each KL balanced 0.8 / 0.2. The actor sees the agent features, the
critic all four of every agent (`critic_features`).

Where the paper and the authors' code (aravindvenu7/MABL) differ, this follows the code: the agent prior is
conditioned on the global prior sample (the paper's §3.1 writes the posterior z^g_t); the info loss reads the
agent features (the paper: all four); there is no reconstruction of s; each KL is a mean over the S
categoricals (MAMBA and DreamerV2 sum; ``kl_reduce``). Its sizes are the ``"smac"`` / ``"flatland"`` presets
(GRUs 256 / 256, 32×32 latents, model lr 3e-4, gradient clip 100).

Ablations (§4.3): ``global_level="shared"`` is MABL-SG, one global level per world whose posterior reads the
mean of the agents' z^a (the paper does not say how N agent latents enter one posterior; the mean keeps the
agents exchangeable) and whose sample conditions every agent's prior; ``"none"`` is the paper's
"Dreamer-v2": independent agent models with no global level and no global KL.

Episode starts, as in MAMBA's model: a reset row starts both levels from the blank state with no previous
action; absent agents have no observation (their agent posterior rests on h^a alone) and contribute a zero
action to the joint action.

Mamba-2 dynamics (``MABLConfig.dynamics="mamba2"``, presets ``"small-mamba2"`` / ``"smac-mamba2"``; not in the paper,
as `wmenv.models.rssm_mamba2` is not in MAMBA's): each level's GRU becomes Mamba-2 blocks over time (`MambaDynamics`,
per agent at the agent level, per global level at the global one), and both posteriors drop h:
q(z^a_t | enc(o^i_t)) and q(z^g_t | enc_s(s_t), z^a_t). Every row's latents are then known before the sequence
models run, so windows are filtered in parallel over time; the priors, heads and losses are unchanged. An absent
agent's posterior is that of a zero embedding (a learned "absent" code). The state adds each block's states,
``"conv_a<i>"`` / ``"ssm_a<i>"`` (agent level; the execution filter's) and ``"conv_g<i>"`` / ``"ssm_g<i>"``, (B, N, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from wmenv.checks import check_choice, check_int, check_unit_interval
from wmenv.models.heads import HeadsMixin, RewardKind, balanced_kl, categorical_kl, check_reward_head, head_errors, kl_scale
from wmenv.models.rssm import mlp, onehot_from_uniform, sample_onehot
from wmenv.models.ssm.stack import DynamicsConfig, MambaDynamics, SSMStates
from wmenv.models.world_model import Prediction, State, StepErrors, WorldModel, none_where, restart_rows, stack_steps
from wmenv.tensor_ops import compiled

GlobalLevel = Literal["per_agent", "shared", "none"]


@dataclass
class MABLConfig(DynamicsConfig):
    """The MABL world model; `mabl_preset` gives the authors' SMAC / Flatland sizes and a small CPU one. Its sequence
    models over time: `DynamicsConfig`, the fields before these (``"mamba2"``: both levels, H_a / H_g wide)."""

    agent_deter: int = 256
    """H_a, the agent GRU's width."""
    global_deter: int = 256
    """H_g, the global GRU's width."""
    stoch: int = 32
    """S, categoricals per latent (agent and global)."""
    classes: int = 32
    """K, classes per categorical."""
    hidden: int = 256
    """E, width of the encoders, the GRU input layers and the prior / posterior networks."""
    head_hidden: int = 256
    """Width of the prediction heads."""
    head_layers: int = 2
    """Hidden layers of each prediction head."""
    global_level: GlobalLevel = "per_agent"
    """"per_agent" (MABL: one global latent per agent), "shared" (MABL-SG) or "none" (the paper's Dreamer-v2)."""
    kl_balance: float = 0.8
    """Weight of the prior-training side of KL balancing (0.2 on the posterior side)."""
    kl_reduce: Literal["mean", "sum"] = "mean"
    """How each KL combines its S categoricals: "mean" (the authors' code) or "sum" (MAMBA, DreamerV2)."""
    kl_scale: float = 1.0
    """Weight of each balanced KL."""
    info_scale: float = 1.0
    """Weight of the info loss (predicting the previous action)."""
    reward_head: RewardKind = "mse"
    """"mse" (the code's scalar) or "twohot" (DreamerV3's symlog two-hot, see `MAMBAConfig.reward_head`)."""
    reward_bins: int = 255
    """Bins of the two-hot reward head (odd)."""
    lr: float = 3e-4
    """Model learning rate (the authors' code)."""
    grad_clip: float = 100.0
    """Gradient-norm clipping (the authors' code)."""

    def __post_init__(self) -> None:
        for name in ("agent_deter", "global_deter", "stoch", "classes", "hidden", "head_hidden", "head_layers"):
            check_int(f"MABLConfig.{name}", getattr(self, name))
        check_choice("MABLConfig.global_level", self.global_level, ("per_agent", "shared", "none"))
        check_choice("MABLConfig.kl_reduce", self.kl_reduce, ("mean", "sum"))
        check_reward_head("MABLConfig", self.reward_head, self.reward_bins)
        check_unit_interval("MABLConfig.kl_balance", self.kl_balance)
        self._check_dynamics("MABLConfig", {"agent_deter": self.agent_deter, "global_deter": self.global_deter})


PRESETS = ("smac", "flatland", "small", "smac-mamba2", "small-mamba2")


def mabl_preset(name: str, global_level: GlobalLevel = "per_agent") -> MABLConfig:
    """Named sizes: ``"smac"`` / ``"flatland"`` (the authors' code: GRUs 256, 32×32 latents) and ``"small"`` for CPUs;
    ``"smac-mamba2"`` / ``"small-mamba2"``: the same sizes with Mamba-2 dynamics on both levels (2 blocks, state 16,
    expand 2, heads of 64 / 32 channels), as MAMBA's presets of those names."""
    if name.endswith("-mamba2") and name.removesuffix("-mamba2") in ("smac", "small"):
        base = mabl_preset(name.removesuffix("-mamba2"), global_level)
        headdim = 64 if base.agent_deter >= 256 else 32
        return replace(base, dynamics="mamba2", ssm_layers=2, d_state=16, expand=2, headdim=headdim)
    if name in ("smac", "flatland"):
        return MABLConfig(global_level=global_level)
    if name == "small":
        return MABLConfig(
            agent_deter=64, global_deter=64, stoch=8, classes=8, hidden=64, head_hidden=64, head_layers=1,
            global_level=global_level, lr=1e-3, grad_clip=10.0,
        )  # fmt: skip
    raise ValueError(f"name: expected one of {list(PRESETS)}, got {name!r}")


class MABLWorldModel(HeadsMixin, WorldModel):
    """MABL's world model for an env `spec` (discrete or continuous actions, encoded as by `HeadsMixin`; a global state,
    ``spec.state_dim``, for the global level).

    Args:
        spec: the real env's `EnvSpec`.
        config: sizes, ablation and loss weights; default `MABLConfig()` (the authors' sizes).

    The state is ``{"deter_a": (B, N, H_a), "stoch_a": (B, N, L), "logits_a": (B, N, S, K)}`` plus, with a
    global level, ``"deter_g"``, ``"stoch_g"``, ``"logits_g"`` likewise (``"shared"``: the same row for
    every agent).
    """

    steps_compilable = True
    has_step_errors = True

    def __init__(self, spec, config: MABLConfig | None = None) -> None:
        super().__init__()
        self.spec, self.config = spec, config if config is not None else MABLConfig()
        c = self.config
        D, A, N, L = spec.obs_dim, spec.n_actions, spec.n_agents, c.stoch * c.classes
        self.has_global = c.global_level != "none"
        if self.has_global and not spec.state_dim:
            raise ValueError(f"spec: MABL's global level needs the env's global state, {spec.id} has none "
                             "(use global_level='none')")  # fmt: skip
        act, self.mamba2 = nn.ELU, c.dynamics == "mamba2"
        self.obs_encoder = nn.Sequential(mlp(D, c.hidden, c.hidden), act())
        if self.mamba2:
            self.agent_dynamics = MambaDynamics(A + L, c.ssm_layers, c.mamba2_config(c.agent_deter))
        else:
            self.agent_in = nn.Sequential(nn.Linear(A + L, c.hidden), act())
            self.agent_cell = nn.GRUCell(c.hidden, c.agent_deter)
        self.agent_post = mlp((0 if self.mamba2 else c.agent_deter) + c.hidden, c.hidden, L)
        self.agent_prior = mlp(c.agent_deter + (L if self.has_global else 0), c.hidden, L)
        if self.has_global:
            self.state_encoder = nn.Sequential(mlp(spec.state_dim, c.hidden, c.hidden), act())
            if self.mamba2:
                self.global_dynamics = MambaDynamics(N * A + L, c.ssm_layers, c.mamba2_config(c.global_deter))
            else:
                self.global_in = nn.Sequential(nn.Linear(N * A + L, c.hidden), act())
                self.global_cell = nn.GRUCell(c.hidden, c.global_deter)
            self.global_prior = mlp(c.global_deter, c.hidden, L)
            self.global_post = mlp((0 if self.mamba2 else c.global_deter) + c.hidden + L, c.hidden, L)
        agent_dim = c.agent_deter + L
        full_dim = agent_dim + (c.global_deter + L if self.has_global else 0)
        self._build_heads(agent_dim, full_dim, c.head_hidden, c.head_layers, c.reward_head, c.reward_bins)

    # --- building blocks ---
    def _split(self, logits: Tensor) -> Tensor:
        return rearrange(logits, "... (s k) -> ... s k", k=self.config.classes)

    def _levels(self) -> int:
        """G: global levels per world."""
        return 1 if self.config.global_level == "shared" else self.spec.n_agents

    def blank(self, batch: int) -> State:
        """The all-zero state that precedes an episode's first step."""
        c, p, N = self.config, self.agent_prior[-1].weight, self.spec.n_agents
        zeros = lambda *s: torch.zeros(batch, N, *s, device=p.device, dtype=p.dtype)  # noqa: E731
        state = {"deter_a": zeros(c.agent_deter), "stoch_a": zeros(c.stoch * c.classes), "logits_a": zeros(c.stoch, c.classes)}
        if self.mamba2:
            state |= self._named(self.agent_dynamics.initial_states(batch * N), "a", batch)
        if self.has_global:
            state |= {
                "deter_g": zeros(c.global_deter),
                "stoch_g": zeros(c.stoch * c.classes),
                "logits_g": zeros(c.stoch, c.classes),
            }
            if self.mamba2:
                state |= self._named(self.global_dynamics.initial_states(batch * N), "g", batch)
        return state

    # --- Mamba-2 block states in and out of the state dict ---
    def _blocks(self, state: State, level: str, rows: int) -> SSMStates:
        """The blocks' states of level ``"a"`` / ``"g"`` for the first ``rows`` slots of a (B, N, ...) state, as
        (B·rows, ...) tensors."""
        pick = lambda t: rearrange(t[:, :rows], "b n ... -> (b n) ...")  # noqa: E731
        return [(pick(state[f"conv_{level}{i}"]), pick(state[f"ssm_{level}{i}"])) for i in range(self.config.ssm_layers)]

    def _named(self, states: SSMStates, level: str, batch: int) -> State:
        """(B·G, ...) block states -> ``{"conv_<level><i>", "ssm_<level><i>"}`` (B, N, ...) (G = 1: shared by all)."""
        split = lambda t: self._to_agents(rearrange(t, "(b g) ... -> b g ...", b=batch))  # noqa: E731
        return {f"{kind}_{level}{i}": split(t) for i, pair in enumerate(states) for kind, t in zip(("conv", "ssm"), pair)}

    def _agent_deter(self, state: State, action: Tensor) -> tuple[Tensor, State]:
        """h^a_t (B, N, H_a) from h^a_{t-1}, z^a_{t-1} and the agents' own one-hot actions (B, N, A), and the new
        block states (Mamba-2; none for the GRU)."""
        x = torch.cat([action, state["stoch_a"]], dim=-1)
        batch, rows = x.shape[:2]
        if self.mamba2:
            h, states = self.agent_dynamics.step(rearrange(x, "b n e -> (b n) e"), self._blocks(state, "a", rows))
            return rearrange(h, "(b n) h -> b n h", b=batch), self._named(states, "a", batch)
        h = self.agent_cell(rearrange(self.agent_in(x), "b n e -> (b n) e"), rearrange(state["deter_a"], "b n h -> (b n) h"))
        return rearrange(h, "(b n) h -> b n h", b=batch), {}

    def _global_deter(self, state: State, action: Tensor) -> tuple[Tensor, State]:
        """h^g_t (B, G, H_g) from h^g_{t-1}, z^g_{t-1} (the first G rows) and the joint one-hot action (B, N, A), and
        the new block states (Mamba-2; none for the GRU)."""
        G = self._levels()
        joint = repeat(rearrange(action, "b n a -> b (n a)"), "b x -> b g x", g=G)
        x = torch.cat([joint, state["stoch_g"][:, :G]], dim=-1)
        batch = x.shape[0]
        if self.mamba2:
            h, states = self.global_dynamics.step(rearrange(x, "b g e -> (b g) e"), self._blocks(state, "g", G))
            return rearrange(h, "(b g) h -> b g h", b=batch), self._named(states, "g", batch)
        h = self.global_cell(
            rearrange(self.global_in(x), "b g e -> (b g) e"), rearrange(state["deter_g"][:, :G], "b g h -> (b g) h")
        )
        return rearrange(h, "(b g) h -> b g h", b=batch), {}

    def _agent_post_logits(self, deter_a: Tensor, embed: Tensor) -> Tensor:
        """q(z^a | h^a, enc(o)) logits (..., S, K) (Mamba-2: q(z^a | enc(o)), ``deter_a`` not read)."""
        return self._split(self.agent_post(embed if self.mamba2 else torch.cat([deter_a, embed], dim=-1)))

    def _to_agents(self, x: Tensor) -> Tensor:
        """(B, G, ...) global rows -> (B, N, ...): each agent's own (per agent) or the shared one (shared)."""
        return x.expand(-1, self.spec.n_agents, *x.shape[2:]) if x.shape[1] != self.spec.n_agents else x

    def _agent_prior_logits(self, deter_a: Tensor, global_sample: Tensor | None) -> Tensor:
        x = deter_a if global_sample is None else torch.cat([deter_a, self._to_agents(global_sample)], dim=-1)
        return self._split(self.agent_prior(x))

    # --- the contract ---
    def features(self, state: State) -> Tensor:
        """(B, N, H_a + L) = [h^a, z^a]: what an agent has at execution."""
        return torch.cat([state["deter_a"], state["stoch_a"]], dim=-1)

    def full_features(self, state: State) -> Tensor:
        """(B, N, F_full) = [h^a, z^a, h^g, z^g] (the agent features alone without a global level)."""
        if not self.has_global:
            return self.features(state)
        return torch.cat([state["deter_a"], state["stoch_a"], state["deter_g"], state["stoch_g"]], dim=-1)

    def critic_features(self, state: State) -> Tensor:
        """(B, N·F_full): both levels of every agent (the centralized critic's view)."""
        return rearrange(self.full_features(state), "b n f -> b (n f)")

    def initial(self, batch_size: int, generator: torch.Generator | None = None) -> State:
        """The prior of an episode's first step: one imagined step from the blank state with no action."""
        return self._img_step(self.blank(batch_size), self._no_action(batch_size), generator)

    def _img_step(self, state: State, action: Tensor, generator: torch.Generator | None) -> State:
        """Prior step of all B × N agents from encoded actions (B, N, A) (zero rows: no action / absent agent)."""
        deter_a, new = self._agent_deter(state, action)
        global_sample = None
        if self.has_global:
            deter_g, blocks = self._global_deter(state, action)
            logits_g = self._split(self.global_prior(deter_g))
            global_sample = sample_onehot(logits_g, generator)  # (B, G, L)
            new |= {"deter_g": self._to_agents(deter_g), "stoch_g": self._to_agents(global_sample),
                    "logits_g": self._to_agents(logits_g), **blocks}  # fmt: skip
        logits_a = self._agent_prior_logits(deter_a, global_sample)
        return {"deter_a": deter_a, "stoch_a": sample_onehot(logits_a, generator), "logits_a": logits_a, **new}

    def imagine(
        self,
        state: State,
        actions: Tensor,
        generator: torch.Generator | None = None,
        decode: bool = False,
        present: Tensor | None = None,
    ) -> tuple[State, Prediction]:
        """One imagined step for actions (B, N) int64 (or (B, N, A) float); ``present`` (B, N) bool: absent agents add
        no action."""
        onehot = self._encode_actions(actions)
        if present is not None:
            onehot = onehot * present[..., None].to(onehot.dtype)
        nxt = self._img_step(state, onehot, generator)
        return nxt, self.predict(nxt, decode)

    def predict(self, state: State, decode: bool = False) -> Prediction:
        """Reward (agent features), continuation and action availability (both levels), observation (agent)."""
        return self._predict_heads(self.features(state), self.full_features(state), decode)

    def observe_sequence(
        self,
        obs: Tensor,
        prev_actions: Tensor,
        resets: Tensor,
        global_state: Tensor | None,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        compile: bool = False,
    ) -> tuple[State, State]:
        """Filter real windows: obs (B, T, N, D), prev_actions (B, T, N, A) one-hot, resets (B, T), global_state
        (B, T, S_dim), alive (B, T, N). Returns posteriors and priors (logits only), each name -> (B, T, N, ...).
        ``compile``: each row through one `torch.compile`d function (same random numbers, same results to rounding;
        Mamba-2 dynamics filter all rows at once and do not read it)."""
        posts, priors, _ = self._filter(obs, prev_actions, resets, global_state, state, generator, alive, compile)
        return posts, priors

    def _filter(
        self,
        obs: Tensor,
        prev_actions: Tensor,
        resets: Tensor,
        global_state: Tensor | None,
        state: State | None,
        generator: torch.Generator | None,
        alive: Tensor | None,
        compile: bool,
    ) -> tuple[State, State, State]:
        """`observe_sequence`'s posteriors and priors, and the blocks' states after the last row (Mamba-2; else {})."""
        global_state = self._check_global_state(global_state, obs)  # every public filter reaches it here
        batch, length = obs.shape[:2]
        embed = self.obs_encoder(obs)  # (B, T, N, E)
        if alive is not None:
            embed = embed * alive.unsqueeze(-1).to(embed.dtype)
        embed_s = self.state_encoder(global_state) if self.has_global else None  # (B, T, E)
        if self.mamba2:
            return self._parallel(embed, embed_s, prev_actions, resets.bool(), state, generator)
        blank = self.blank(batch)
        state = blank if state is None else state
        restarts = resets.any(0).tolist()  # (T,) rows where some window restarts
        rand = partial(torch.rand, generator=generator, device=obs.device, dtype=embed.dtype)
        agents, levels = (batch, self.spec.n_agents, self.config.stoch), (batch, self._levels(), self.config.stoch)
        row = _compiled_filter_row if compile else _filter_row
        posts, priors = [], []
        for t in range(length):
            if restarts[t]:
                state = restart_rows(state, blank, resets[:, t])
            # a row's random numbers in the order its samples use them: agent posterior, global prior, global posterior
            uniforms = (rand(agents), rand(levels), rand(levels)) if self.has_global else (rand(agents),)
            post, prior = row(self, state, prev_actions[:, t], embed[:, t], None if embed_s is None else embed_s[:, t],
                              *uniforms)  # fmt: skip
            posts.append(post)
            priors.append(prior)
            state = post
        return stack_steps(posts), stack_steps(priors), {}

    def _parallel(
        self,
        embed: Tensor,
        embed_s: Tensor | None,
        prev_actions: Tensor,
        resets: Tensor,
        state: State | None,
        generator: torch.Generator | None,
    ) -> tuple[State, State, State]:
        """Mamba-2 filtering of whole windows: embeddings (B, T, N, E) and (B, T, E), one-hot previous actions
        (B, T, N, A), resets (B, T) bool, the state before row 0 (None: blank). Returns posteriors (B, T, N, ...),
        priors (logits) and the blocks' states after the last row (B, N, ...).

        Every row's posteriors come first (they read the embeddings alone), then each level's blocks read their
        inputs [a_{t-1}, z_{t-1}] of all rows at once, blanked where an episode starts."""
        c, n = self.config, self.spec.n_agents
        batch, length, G = embed.shape[0], embed.shape[1], self._levels()
        draw = partial(torch.rand, generator=generator, device=embed.device, dtype=embed.dtype)

        def rand(rows: int) -> Tensor:  # (B, T, R, S) uniforms drawn row after row (t-major), as the filters draw them
            return rearrange(draw(length, batch, rows, c.stoch), "t b r s -> b t r s")

        start = self.blank(batch) if state is None else state
        keep = (~resets)[:, :, None, None].to(embed.dtype)

        def blocks(dynamics: MambaDynamics, latent: Tensor, first: Tensor, action: Tensor, level: str) -> tuple[Tensor, State]:
            """h (B, T, R, H) of R rows per world from latents (B, T, R, L), the latent before row 0 (B, R, L) and
            actions (B, T, R, ·), and the named block states after the last row."""
            rows = latent.shape[2]
            previous = torch.cat([first[:, None], latent[:, :-1]], dim=1)
            x = rearrange(torch.cat([action.to(latent.dtype), previous], dim=-1) * keep, "b t r x -> (b r) t x")
            entering = None if state is None else self._blocks(state, level, rows)
            h, after = dynamics(x, repeat(resets, "b t -> (b r) t", r=rows), entering)
            return rearrange(h, "(b r) t h -> b t r h", b=batch), self._named(after, level, batch)

        logits_qa = self._split(self.agent_post(embed))  # (B, T, N, S, K)
        stoch_a = onehot_from_uniform(logits_qa, rand(n))
        deter_a, final = blocks(self.agent_dynamics, stoch_a, start["stoch_a"], prev_actions, "a")
        posts = {"deter_a": deter_a, "stoch_a": stoch_a, "logits_a": logits_qa}
        if not self.has_global:
            return posts, {"logits_a": self._agent_prior_logits(deter_a, None)}, final

        def per_agent(x: Tensor) -> Tensor:  # (B, T, G, ...) -> (B, T, N, ...), as `_to_agents` per row
            return x if x.shape[2] == n else x.expand(-1, -1, n, *x.shape[3:])

        agent_latent = stoch_a if G == n else stoch_a.mean(2, keepdim=True)  # (B, T, G, L)
        seen = repeat(embed_s, "b t e -> b t g e", g=G)
        logits_qg = self._split(self.global_post(torch.cat([seen, agent_latent], dim=-1)))
        stoch_g = onehot_from_uniform(logits_qg, rand(G))
        joint = repeat(rearrange(prev_actions, "b t n a -> b t (n a)"), "b t x -> b t g x", g=G)
        deter_g, blocks_g = blocks(self.global_dynamics, stoch_g, start["stoch_g"][:, :G], joint, "g")
        logits_pg = self._split(self.global_prior(deter_g))
        global_prior_sample = per_agent(onehot_from_uniform(logits_pg, rand(G)))
        posts |= {"deter_g": per_agent(deter_g), "stoch_g": per_agent(stoch_g), "logits_g": per_agent(logits_qg)}
        prior_a = self._split(self.agent_prior(torch.cat([deter_a, global_prior_sample], dim=-1)))
        return posts, {"logits_a": prior_a, "logits_g": per_agent(logits_pg)}, final | blocks_g

    def _post_step(
        self, state: State, action: Tensor, embed: Tensor, embed_s: Tensor | None, *uniforms: Tensor
    ) -> tuple[State, State]:
        """One filtering row: posterior state and prior logits from the previous posterior and one-hot actions.

        ``uniforms``: the row's random numbers (`onehot_from_uniform`): the agent posterior's (B, N, S) and, with a
        global level, the global prior's and posterior's (B, G, S).
        """
        deter_a, _ = self._agent_deter(state, action)
        logits_qa = self._agent_post_logits(deter_a, embed)
        stoch_a = onehot_from_uniform(logits_qa, uniforms[0])
        post = {"deter_a": deter_a, "stoch_a": stoch_a, "logits_a": logits_qa}
        if not self.has_global:
            return post, {"logits_a": self._agent_prior_logits(deter_a, None)}
        deter_g, _ = self._global_deter(state, action)  # (B, G, H_g)
        logits_pg = self._split(self.global_prior(deter_g))
        global_prior_sample = onehot_from_uniform(logits_pg, uniforms[1])
        agent_latent = stoch_a if self._levels() == self.spec.n_agents else stoch_a.mean(1, keepdim=True)
        seen = repeat(embed_s, "b e -> b g e", g=deter_g.shape[1])
        logits_qg = self._split(self.global_post(torch.cat([deter_g, seen, agent_latent], dim=-1)))
        stoch_g = onehot_from_uniform(logits_qg, uniforms[2])
        post |= {"deter_g": self._to_agents(deter_g), "stoch_g": self._to_agents(stoch_g),
                 "logits_g": self._to_agents(logits_qg)}  # fmt: skip
        prior = {"logits_a": self._agent_prior_logits(deter_a, global_prior_sample), "logits_g": self._to_agents(logits_pg)}
        return post, prior

    def _check_global_state(self, global_state: Tensor | None, obs: Tensor) -> Tensor | None:
        if not self.has_global:
            return None
        batch, length = obs.shape[:2]
        want = (batch, length, self.spec.state_dim)
        if global_state is None:
            raise ValueError(f"global_state: MABL's global level (global_level={self.config.global_level!r}) needs the "
                             f"env's global state of shape {want}, got None (replay windows carry it as 'state')")  # fmt: skip
        if not isinstance(global_state, Tensor) or tuple(global_state.shape) != want:
            got = tuple(global_state.shape) if isinstance(global_state, Tensor) else type(global_state).__name__
            raise ValueError(f"global_state: expected shape {want} (B, T, state_dim), got {got}")
        return global_state.to(obs.dtype)

    def observe(
        self,
        obs: Tensor,
        actions: Tensor,
        resets: Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        alive: Tensor | None = None,
        *,
        global_state: Tensor | None = None,
    ) -> State:
        """The posterior after the last row of real windows (`WorldModel.observe`); ``global_state`` (B, T, S_dim)
        is required with a global level."""
        prev = self._prev_actions(actions, resets, alive)
        posts, _, blocks = self._filter(obs, prev, resets, global_state, state, generator, alive, False)
        return {**{k: v[:, -1] for k, v in posts.items()}, **blocks}

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
        """Every row's posterior of both levels, name -> (B, T, N, ...) (`WorldModel.observe_rows`);
        ``global_state`` (B, T, S_dim) is required with a global level."""
        prev = self._prev_actions(actions, resets, alive)
        posts, _, _ = self._filter(obs, prev, resets, global_state, None, generator, alive, False)
        return posts

    def step_errors(self, batch: dict[str, Tensor]) -> StepErrors:
        """The loss per row and agent (`WorldModel.step_errors`): the heads' errors, KL[q || p] of the agent level and
        of the global level (``"shared"``: the world's one level, counted on agent 0's row), and as features each
        row's agent-level prior [h^a_t, a sample of p(z^a_t | h^a_t, ẑ^g_t)] (what `features` gives in the dream)."""
        c = self.config
        posts, priors = self._filter_windows(batch)
        errors = head_errors(self, self.features(posts), self.full_features(posts), batch)
        scale = kl_scale(c.stoch, c.kl_reduce)
        errors["kl_agent"] = (categorical_kl(posts["logits_a"], priors["logits_a"]) * scale, None)
        weights = {k: 1.0 for k in errors} | {"info": c.info_scale, "kl_agent": c.kl_scale}
        if self.has_global:
            kl = categorical_kl(posts["logits_g"], priors["logits_g"]) * scale  # (B, T, N)
            if self._levels() == 1:  # one level per world, stored once per agent: count it once, on agent 0's row
                kl = kl * (torch.arange(kl.shape[-1], device=kl.device) == 0) * kl.shape[-1]
            errors["kl_global"], weights["kl_global"] = (kl, None), c.kl_scale
        prior_sample = sample_onehot(priors["logits_a"])  # after the posteriors' draws: same posteriors as `loss`
        return StepErrors(errors, weights, torch.cat([posts["deter_a"], prior_sample], dim=-1))

    def _filter_windows(self, batch: dict[str, Tensor]) -> tuple[State, State]:
        """Posteriors and priors of every row of replay windows (checked), as `loss` and `step_errors` read them."""
        self._check_rewards(batch)
        obs, actions, alive = batch["obs"], batch["action"], batch["alive"].bool()
        resets = batch["reset"].bool()
        prev = self._prev_actions(actions, resets, alive)
        return self.observe_sequence(obs, prev, resets, batch.get("state"), alive=alive, compile=self.compile_steps)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """World-model loss of replay windows (see the module docstring); returns the total and each term."""
        c = self.config
        posts, priors = self._filter_windows(batch)
        terms = self._head_losses(self.features(posts), self.full_features(posts), batch, compile=self.compile_steps)
        terms["kl_agent"], kl_prior_a = balanced_kl(posts["logits_a"], priors["logits_a"], c.kl_balance, c.kl_reduce)
        total = terms["obs"] + terms["reward"] + terms["cont"] + terms.get("action_mask", 0.0)
        total = total + c.info_scale * terms["info"] + c.kl_scale * terms["kl_agent"]
        stats = {"kl_prior_agent": float(kl_prior_a.detach())}
        if self.has_global:
            # shared: one global level per world, stored once per agent: its KL is taken on one copy
            rows = slice(0, self._levels())
            terms["kl_global"], kl_prior_g = balanced_kl(
                posts["logits_g"][:, :, rows], priors["logits_g"][:, :, rows], c.kl_balance, c.kl_reduce
            )
            total = total + c.kl_scale * terms["kl_global"]
            stats["kl_prior_global"] = float(kl_prior_g.detach())
        return total, {**{k: float(v.detach()) for k, v in terms.items()}, **stats}

    # --- execution: one agent's filter (the agent level only: no messages, no global state) ---
    def filter_widths(self) -> dict[str, int]:
        """An agent's execution filter state: name -> width per row once flattened (h^a, z^a and, with Mamba-2
        dynamics, the agent level's block states ``"conv_a<i>"`` / ``"ssm_a<i>"``)."""
        c = self.config
        widths = {"deter_a": c.agent_deter, "stoch_a": c.stoch * c.classes}
        if self.mamba2:
            for i, pair in enumerate(self.agent_dynamics.state_shapes()):
                widths |= {f"{kind}_a{i}": math.prod(shape) for kind, shape in zip(("conv", "ssm"), pair)}
        return widths

    def filter_initial(self, batch_size: int) -> State:
        """B blank filter states ``{"deter_a": (B, H_a), "stoch_a": (B, L)}`` (Mamba-2: and the agent level's block
        states (B, ...))."""
        blank = self.blank(batch_size)
        return {k: blank[k][:, 0] for k in self.filter_widths()}

    def message(self, state: State, action: Tensor, agent: Tensor | None = None) -> Tensor:
        """(B, 0): MABL's agents send nothing."""
        return state["stoch_a"].new_zeros(state["stoch_a"].shape[0], 0)

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
        """One agent's posterior step per row (`WorldModel.filter_step`): its GRU (or its Mamba-2 blocks), its
        observation, nothing else.

        ``messages`` / ``heard`` are ignored (M = 0); ``agent`` is checked but not used (the weights are shared).
        Returns the new states (`filter_widths`' names) and features (B, H_a + L) = [h^a_t, z^a_t].
        """
        flat = {k: v.reshape(v.shape[0], -1) for k, v in state.items()} if isinstance(state, dict) else state
        reset, agent, prev_action = self._check_filter_inputs(
            flat, self.filter_widths(), obs, prev_action, reset, agent, {"alive": (alive, ())}
        )
        keep = ~reset
        state = {k: v * keep.view(-1, *[1] * (v.dim() - 1)).to(v.dtype) for k, v in state.items()}
        onehot = self._encode_or_none(none_where(~keep, prev_action), agent)
        rows = {k: v.unsqueeze(1) for k, v in state.items()}  # (B, 1, ...): one agent per row
        deter_a, blocks = self._agent_deter(rows, onehot.unsqueeze(1))
        deter_a = deter_a[:, 0]
        embed = self.obs_encoder(obs)
        if alive is not None:
            embed = embed * alive.unsqueeze(-1).to(embed.dtype)
        logits = self._agent_post_logits(deter_a, embed)
        new = {"deter_a": deter_a, "stoch_a": sample_onehot(logits, generator), **{k: v[:, 0] for k, v in blocks.items()}}
        return new, self.features(new)


def _filter_row(model: MABLWorldModel, *args: Tensor | State | None) -> tuple[State, State]:
    """`MABLWorldModel._post_step` as a function of the model, so that one compiled version serves every model."""
    return model._post_step(*args)


_compiled_filter_row = compiled(_filter_row)

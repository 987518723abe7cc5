"""The world-model contract (DreamerV3's verbs): dream envs and learners never need to know which model they hold.

Glossary: B batch (worlds), T time, N agents, D observation features, A actions, F per-agent features.

A model's state is a dict of tensors with leading dims (B, N) (``State``); what one imagined step
predicts is a `Prediction`. Real data comes as replay windows (``EpisodeReplay.sample``): dicts of
(B, T, ...) tensors with ``obs`` (B, T, N, D), ``action`` (B, T, N) int (or (B, T, N, A) float) taken at row t, ``reward`` and
``terminated`` received on arriving at row t, ``alive``, ``action_mask`` and ``reset`` (B, T). `WorldModel.observe`
filters them into the posterior after their last row (where dream rollouts start), `WorldModel.observe_rows` into every
row's (what a critic reads on real rows, `agents.replay_value`).

Execution (decentralized): each agent runs its own copy of the model's posterior filter
(`WorldModel.filter_step`), fed only by what it has when acting — its observation, its previous action,
the reset flag, its own filter state (`filter_initial`) and the messages it receives from the other agents
(`WorldModel.message`, M features each; models without communication have M = 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from wmenv.tensor_ops import masked_mean

State = dict[str, Tensor]
"""A model state: name -> (B, N, ...) tensor."""


def restart_rows(state: State, blank: State, reset: Tensor) -> State:
    """``state`` with the rows where ``reset`` (B,) bool is True replaced by ``blank``'s (an episode starts there)."""
    return {k: torch.where(reset.view(-1, *[1] * (v.dim() - 1)), blank[k], v) for k, v in state.items()}


def none_where(none: Tensor, actions: Tensor) -> Tensor:
    """``actions`` with "no action" where ``none`` (B,) is True: -1 for (B,) integer choices, a NaN row for (B, A)
    continuous actions (what `WorldModel.filter_step` and `WorldModel.message` read as "none")."""
    if actions.is_floating_point():
        return torch.where(none[:, None], float("nan"), actions)
    return torch.where(none, -1, actions)


def flat_rows(state: State) -> State:
    """A state of (B, T, ...) rows (`WorldModel.observe_rows`) as one of (B·T, ...) rows."""
    return {k: rearrange(v, "b t ... -> (b t) ...") for k, v in state.items()}


def stack_steps(steps: list[State]) -> State:
    """T per-step states, name -> (B, ...), as one state name -> (B, T, ...)."""
    return {k: torch.stack([s[k] for s in steps], dim=1) for k in steps[0]}


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


def error_means(errors: dict[str, tuple[Tensor, Tensor | None]]) -> dict[str, Tensor]:
    """Each loss term's error (B, T, N) averaged over its rows (bool (B, T, N); None: every row): name -> scalar."""
    return {k: err.mean() if rows is None else masked_mean(err, rows) for k, (err, rows) in errors.items()}


@dataclass
class StepErrors:
    """A model's loss on replay windows taken apart per row and agent (`WorldModel.step_errors`)."""

    errors: dict[str, tuple[Tensor, Tensor | None]]
    """Loss term -> (error (B, T, N), the rows (B, T, N) bool it counts on, or None for every row)."""
    weights: dict[str, float]
    """Loss term -> its weight in the total loss."""
    features: Tensor
    """(B, T, N, F): the features each row was predicted from: the prior at that row, [h_t, a sample of p(z_t | h_t)]."""

    def loss(self) -> Tensor:
        """The model's total loss: each term's mean over its rows, weighted."""
        total = torch.zeros((), device=self.features.device, dtype=self.features.dtype)
        for name, mean in error_means(self.errors).items():
            total = total + self.weights[name] * mean
        return total

    def per_agent(self) -> Tensor:
        """(B, T, N): each row's and agent's weighted loss summed over the terms that count it."""
        total = torch.zeros_like(self.features[..., 0])
        for name, (err, rows) in self.errors.items():
            total = total + self.weights[name] * (err if rows is None else torch.where(rows, err, 0.0))
        return total


class WorldModel(nn.Module, ABC):
    """A learned multi-agent environment model. Subclasses set ``spec`` (the real env's `EnvSpec`)."""

    spec: object
    steps_compilable: ClassVar[bool] = False
    """Whether `loss` reads ``compile_steps`` (a class fact; `wmenv.fit.fit` refuses ``compile="steps"`` otherwise)."""
    compile_steps: bool = False
    """Run `loss`'s per-row recurrence and its heads through `torch.compile` (set by ``FitConfig.compile="steps"``):
    the same random numbers as the plain path, so the same loss to rounding; the plain path where compiling fails."""

    @abstractmethod
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Training loss of a batch of replay windows and its terms (for logging)."""

    def step_errors(self, batch: dict[str, Tensor]) -> StepErrors:
        """Optional: the loss of replay windows per row and agent with the prior features of each row (MAG's error
        predictor learns from them); `StepErrors.loss` reproduces `loss`. Models that implement it set
        ``has_step_errors``."""
        raise NotImplementedError(f"{type(self).__name__} does not report per-step errors (step_errors)")

    has_step_errors: ClassVar[bool] = False
    """Whether `step_errors` is implemented."""

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
        *,
        global_state: Tensor | None = None,
    ) -> State:
        """Filter real windows (obs (B, T, N, D), actions (B, T, N), resets (B, T), alive (B, T, N)); the last posterior.

        ``global_state`` (B, T, S): the env's global state (replay windows' ``"state"``), for models that read it
        in training (MABL); models that need it refuse ``None``, the others ignore it.
        """

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
        """Every row's posterior of real windows (arguments as `observe`; each window starts from the blank state):
        name -> (B, T, ...), row t the state after row t, less the recurrent blocks' states (Mamba-2 dynamics), which
        are not kept per row; with the same generator its last row is `observe`'s state. `features` and
        `critic_features` read it with its B·T rows flattened (`flat_rows`)."""
        raise NotImplementedError(f"{type(self).__name__} does not give every row's posterior (observe_rows)")

    @abstractmethod
    def imagine(
        self,
        state: State,
        actions: Tensor,
        generator: torch.Generator | None = None,
        decode: bool = False,
        present: Tensor | None = None,
    ) -> tuple[State, Prediction]:
        """One imagined step of all B × N agents: actions (B, N) int64 -> the next state and its prediction.

        ``present`` (B, N) bool: the agents that act this step (the others are absent: they send no message).
        """

    @abstractmethod
    def predict(self, state: State, decode: bool = False) -> Prediction:
        """What B × N agents in ``state`` receive: reward, continuation, action availability (and, with ``decode``,
        the decoded observation)."""

    @abstractmethod
    def features(self, state: State) -> Tensor:
        """(B, N, F): what an agent's policy sees."""

    @abstractmethod
    def critic_features(self, state: State) -> Tensor:
        """(B, N * F): the centralized view of all agents (CTDE critics)."""

    def feature_widths(self) -> tuple[int, int]:
        """(F, C): the widths of `features` (per agent) and `critic_features`, from one initial state drawn with a
        private generator (the global random stream is left alone)."""
        device = next(self.parameters()).device
        with torch.no_grad():
            state = self.initial(1, generator=torch.Generator(device).manual_seed(0))
            return self.features(state).shape[-1], self.critic_features(state).shape[-1]

    # --- execution: one agent's filter (models that support decentralized execution override these) ---
    message_dim: int = 0
    """M, the width of the message an agent sends each step (0: the model needs no messages)."""

    def filter_initial(self, batch_size: int) -> State:
        """B blank per-agent filter states (name -> (B, ...)): what an agent holds before its episode starts."""
        raise NotImplementedError(f"{type(self).__name__} has no execution-time filter")

    def message(self, state: State, action: Tensor, agent: Tensor | None = None) -> Tensor:
        """(B, M): the message an agent sends after ``action`` (B,) int64 (-1: none yet; continuous: (B, A) float, a NaN
        row for none, with each row's ``agent`` slot) from filter ``state``."""
        raise NotImplementedError(f"{type(self).__name__} has no execution-time filter")

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
        """One posterior step of B agents, each on its own inputs; returns the new filter states and features (B, F).

        Args:
            state: the agents' filter states (from `filter_initial` or the previous step).
            obs: (B, D) each agent's own observation.
            prev_action: (B,) int64, each agent's previous action (-1: none); (B, A) float for continuous actions (a
                NaN row: none).
            reset: (B,) bool, a new episode starts at this step (the state entering it is the blank one).
            agent: (B,) int64, each agent's slot in ``spec.agents``.
            messages: (B, N, M) the messages received this step, in sender slots (the agent's own is ignored).
            heard: (B, N) bool, which slots of ``messages`` hold a received message (None: all of them).
            alive: (B,) bool, the agent has an observation (None: all do).
        """
        raise NotImplementedError(f"{type(self).__name__} has no execution-time filter")

    def _check_filter_inputs(
        self,
        state: object,
        widths: dict[str, int],
        obs: object,
        prev_action: Tensor,
        reset: object,
        agent: object,
        extra: dict[str, tuple[Tensor | None, tuple[int, ...]]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Refuse `filter_step` inputs of the wrong shape, range or model; returns ``reset`` (bool), ``agent`` and
        ``prev_action`` (int64), as tensors on ``obs``'s device.

        Args:
            widths: the filter state's keys and their widths (B, width) in this model.
            extra: further optional inputs, name -> (value or None, its shape after the batch dimension B).
        """
        if not isinstance(obs, Tensor) or obs.dim() != 2 or obs.shape[1] != self.spec.obs_dim:
            got = tuple(obs.shape) if isinstance(obs, Tensor) else type(obs).__name__
            raise ValueError(f"obs: expected a (B, {self.spec.obs_dim}) tensor, got {got}")
        batch, n = obs.shape[0], self.spec.n_agents
        if not isinstance(state, dict) or set(state) != set(widths):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a filter state with keys {sorted(widths)}, got {got}")
        for k, w in widths.items():
            if tuple(state[k].shape) != (batch, w):
                raise ValueError(f"state: {k!r} has shape {tuple(state[k].shape)}, expected ({batch}, {w}) "
                                 "(a filter state of another model?)")  # fmt: skip
        prev_action, reset, agent = (torch.as_tensor(v, device=obs.device) for v in (prev_action, reset, agent))
        discrete = self.spec.discrete
        checks = {"prev_action": (prev_action, () if discrete else (self.spec.n_actions,)), "reset": (reset, ()),
                  "agent": (agent, ())}  # fmt: skip
        for name, (value, tail) in {**checks, **(extra or {})}.items():
            if value is not None and tuple(value.shape) != (batch, *tail):
                raise ValueError(f"{name}: expected shape {(batch, *tail)}, got {tuple(value.shape)}")
        if bool(((agent < 0) | (agent >= n)).any()):
            raise ValueError(f"agent: expected slots in [0, {n}), got {agent.tolist()}")
        if discrete:
            if bool(((prev_action < -1) | (prev_action >= self.spec.n_actions)).any()):
                raise ValueError(f"prev_action: expected actions in [-1, {self.spec.n_actions}), got {prev_action.tolist()}")
            return reset.bool(), agent.long(), prev_action.long()
        if not prev_action.is_floating_point():
            raise ValueError(f"prev_action: expected float continuous actions (NaN rows: none), got dtype {prev_action.dtype}")
        bad = ~(torch.isfinite(prev_action).all(-1) | torch.isnan(prev_action).all(-1))
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            raise ValueError(f"prev_action: rows {rows} are neither finite nor all NaN (none): {prev_action[bad].tolist()}")
        return reset.bool(), agent.long(), prev_action

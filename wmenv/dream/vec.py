"""`DreamVecEnv`: B imagined worlds × N agents stepped as one batch inside a learned world model.

Glossary: B worlds, N agents, F per-agent features (or D decoded observation features), A actions.

Each world starts from the model's learned initial distribution, or from the posterior of a real
context window taken from a replay. A step imagines all B × N agents at once; an agent whose predicted
continuation is sampled as 0 terminates and stays absorbed (absent) for the rest of its world's episode;
a world ends when all its agents have terminated (termination) or after ``horizon`` steps (truncation)
and is reset in place (auto-reset), its final observation kept in the step's ``final_obs``.
Sampling (initial states, latents, terminations) uses one `torch.Generator`, so a seed fixes the dream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from wmenv.checks import check_choice
from wmenv.envs.spec import action_bounds, own_action_dims
from wmenv.models.world_model import Prediction, State, WorldModel

if TYPE_CHECKING:
    from wmenv.dream.mag import MAGPlanner


@dataclass
class DreamStep:
    """What `DreamVecEnv.reset` / `step` return; all tensors on the model's device."""

    obs: Tensor
    """(B, N, F) per-agent observations (latent features or decoded observations); after an auto-reset, the new episode's."""
    state: Tensor
    """(B, N·F) centralized features (for critics)."""
    action_mask: Tensor
    """(B, N, A) bool: predicted available actions (all True for absent agents and unmasked envs)."""
    alive: Tensor
    """(B, N) bool: the agent is present and acts now."""
    reward: Tensor
    """(B, N) predicted reward of the step just taken (0 for agents that were absent)."""
    terminated: Tensor
    """(B, N) bool: the agent terminated on the step just taken."""
    truncated: Tensor
    """(B, N) bool: the agent was cut by the horizon on the step just taken."""
    done: Tensor
    """(B,) bool: the world's episode ended on this step and it was reset."""
    final_obs: Tensor
    """(B, N, F): where ``done``, the finished episode's last observation."""
    final_state: Tensor
    """(B, N·F): where ``done``, the finished episode's last centralized features."""
    episode_return: Tensor
    """(B, N): where ``done``, each agent's undiscounted predicted return over the finished episode."""
    episode_length: Tensor
    """(B,) int64: where ``done``, the finished episode's number of steps."""
    discount: Tensor
    """(B, N) float: with ``terminations="expected"``, the predicted probability that the agent continues after the
    step just taken (a learner's per-step factor on γ; 0 for absent agents); otherwise 1 (the terminations carry it)."""


TERMINATIONS = ("sample", "threshold", "expected")
"""How `DreamVecEnv` ends imagined agents (its ``terminations`` argument)."""


class DreamVecEnv:
    """B imagined copies of a real env inside ``model``.

    Args:
        model: a fitted `WorldModel` (set to eval mode here).
        num_worlds: B.
        horizon: steps before a world is truncated (the MAMBA paper: 15).
        start: None (the model's initial distribution) or an `EpisodeReplay` whose windows of
            ``context`` rows are filtered into start states.
        context: rows of real context per start (with ``start``).
        obs: "latent" (the model's features) or "decoded" (predicted observations, shaped like the real env's).
        seed: seeds the generator of every random draw.
        mask_threshold: an action is available where its predicted probability exceeds this.
        planner: None (each step samples the model's prior) or a `wmenv.dream.mag.MAGPlanner`, which picks each
            step among sampled candidates the one with the lowest predicted model error under the current actor
            (discrete actions).
        out_of_bounds: continuous actions outside an agent's bounds are ``"clip"``ped to them (as a MuJoCo
            actuator clamps its control) or ``"raise"`` a ValueError.
        terminations: how the predicted continuation ends an agent: ``"sample"``d (a Bernoulli draw of the
            continuation probability), ``"threshold"`` (terminated where it is below 0.5, as DRAMA's and STORM's
            code take ``termination logit > 0``: no draw, so an uncertain head does not end worlds at random), or
            ``"expected"``: never (worlds run to the horizon) and each step's ``discount`` is the continuation
            probability, which a learner multiplies into γ (MAMBA's and MABL's code weigh their λ-returns so).

    Continuous actions are (B, N, A) float: each agent's own dims (the action mask marks them), NaN or inf refused;
    absent agents' and padded dims' values are ignored.
    """

    def __init__(
        self,
        model: WorldModel,
        num_worlds: int,
        horizon: int = 15,
        start=None,
        context: int = 8,
        obs: Literal["latent", "decoded"] = "latent",
        seed: int = 0,
        mask_threshold: float = 0.5,
        planner: MAGPlanner | None = None,
        out_of_bounds: Literal["clip", "raise"] = "clip",
        terminations: Literal["sample", "threshold", "expected"] = "sample",
    ) -> None:
        for name, value in (("num_worlds", num_worlds), ("horizon", horizon), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if obs not in ("latent", "decoded"):
            raise ValueError(f"obs: expected 'latent' or 'decoded', got {obs!r}")
        check_choice("out_of_bounds", out_of_bounds, ("clip", "raise"))
        check_choice("terminations", terminations, TERMINATIONS)
        if planner is not None and not model.spec.discrete:
            raise ValueError(f"planner: MAG's planner samples discrete candidate actions; {model.spec.id} has continuous ones")
        if start is not None and start.spec_description is not None and start.spec_description != model.spec.describe():
            raise ValueError(
                f"start: replay recorded for env {start.spec_description}, the model is for {model.spec.describe()}"
            )
        self.model, self.spec = model.eval(), model.spec
        self.num_worlds, self.horizon, self.start, self.context = num_worlds, horizon, start, context
        self.obs_kind, self.mask_threshold, self.terminations = obs, mask_threshold, terminations
        self.device = next(model.parameters()).device
        # (N, A) bool: each agent's own actions (heterogeneous agents: the padded ones beyond its Discrete.n are not)
        self._own = torch.as_tensor(own_action_dims(model.spec), device=self.device)
        self.out_of_bounds = out_of_bounds
        if not model.spec.discrete:
            self._low, self._high = (torch.as_tensor(b, device=self.device) for b in action_bounds(model.spec))
        self.generator = torch.Generator(device=self.device)
        self.seed(seed)
        self._state: State | None = None
        self.planner = planner
        if planner is not None:
            planner.attach(model)

    def seed(self, seed: int) -> None:
        """Re-seed every random draw (starts, latents, terminations)."""
        self.generator.manual_seed(int(seed))
        self._replay_seed = int(seed)

    # --- starts ---
    @torch.no_grad()
    def draw_starts(self, count: int) -> State:
        """``count`` start states as the worlds' resets draw them (the model's initial distribution, or posteriors of
        replay windows of ``context`` rows); advances the draws."""
        if self.start is None:
            return self.model.initial(count, generator=self.generator)
        self._replay_seed += 1
        w = self.start.sample(count, self.context, generator=self._replay_seed, device=self.device)
        return self.model.observe(
            w["obs"], w["action"], w["reset"], generator=self.generator, alive=w["alive"].bool(), global_state=w.get("state")
        )

    def _view(self, state: State, pred: Prediction | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """obs (B, N, F), critic state (B, N·F), action mask (B, N, A) bool of ``state``; ``pred`` if already made."""
        if pred is None:
            pred = self.model.predict(state, decode=self.obs_kind == "decoded")
        obs = pred.obs if self.obs_kind == "decoded" else self.model.features(state)
        own = self._own.expand(obs.shape[0], -1, -1)
        if pred.action_mask is None:
            mask = own.clone()
        else:
            mask = (pred.action_mask > self.mask_threshold) & own
            mask = torch.where(mask.any(-1, keepdim=True), mask, own)  # an agent always has some action of its own
        return obs, self.model.critic_features(state), mask

    def reset(self, start: State | None = None) -> DreamStep:
        """Start all B worlds (the model is put in eval mode: no dropout while imagining).

        Args:
            start: B model states to start from instead of drawn ones (e.g. the posterior of a real situation,
                `WorldModel.observe`, repeated to imagine several futures of it); worlds that end later restart from
                drawn starts as usual.
        """
        B, N = self.num_worlds, self.spec.n_agents
        self.model.eval()
        if start is not None:
            start = self._check_start(start)
        with torch.no_grad():
            self._state = self.draw_starts(B) if start is None else start
            obs, crit, mask = self._view(self._state)
        self._alive = torch.ones(B, N, dtype=torch.bool, device=self.device)
        self._t = torch.zeros(B, dtype=torch.long, device=self.device)
        self._return = torch.zeros(B, N, device=self.device)
        self._mask = mask
        self._obs, self._resets = obs, torch.ones(B, N, dtype=torch.bool, device=self.device)  # what the actor sees
        if self.planner is not None:
            self.planner.reset(B, N)
        zeros = torch.zeros(B, N, device=self.device)
        false = torch.zeros(B, N, dtype=torch.bool, device=self.device)
        return DreamStep(
            obs, crit, mask, self._alive.clone(), zeros, false, false.clone(), false[:, 0].clone(), torch.zeros_like(obs),
            torch.zeros_like(crit), zeros.clone(), self._t.clone(), torch.ones(B, N, device=self.device),
        )  # fmt: skip

    def _check_start(self, start: State) -> State:
        """``start`` as a state of B worlds on the model's device, or a ValueError naming what does not fit."""
        template = self.model.initial(1, generator=torch.Generator(self.device).manual_seed(0))
        if not isinstance(start, dict) or sorted(start) != sorted(template):
            got = sorted(start) if isinstance(start, dict) else type(start).__name__
            raise ValueError(f"start: expected a state with keys {sorted(template)}, got {got}")
        for k, v in template.items():
            expected = (self.num_worlds, *v.shape[1:])
            if not isinstance(start[k], Tensor) or tuple(start[k].shape) != expected:
                got = tuple(start[k].shape) if isinstance(start[k], Tensor) else type(start[k]).__name__
                raise ValueError(f"start[{k!r}]: expected shape {expected}, got {got}")
        return {k: v.to(self.device) for k, v in start.items()}

    @property
    def num_envs(self) -> int:
        """B, for learners written against `VecEnv` (``MAPPO.collect``)."""
        return self.num_worlds

    def check_actions(self, actions: Tensor) -> Tensor:
        """Validate (B, N) integer actions of the present agents against range and predicted masks (continuous:
        (B, N, A) float, finite and, with ``out_of_bounds="raise"``, inside the bounds; else clipped)."""
        B, N, A = self.num_worlds, self.spec.n_agents, self.spec.n_actions
        if isinstance(actions, np.ndarray):
            actions = torch.from_numpy(actions)
        if not isinstance(actions, Tensor):
            shape = (B, N) if self.spec.discrete else (B, N, A)
            raise TypeError(f"actions: expected a tensor or NumPy array of shape {shape}, got {type(actions).__name__}")
        if not self.spec.discrete:
            return self._check_continuous(actions)
        if actions.shape != (B, N):
            raise ValueError(f"actions: expected shape ({B}, {N}) (worlds, agents), got {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype == torch.bool or actions.is_complex():
            raise TypeError(f"actions: expected an integer dtype, got {actions.dtype}")
        actions = actions.to(self.device).long()
        live = self._alive
        limit = self._own.sum(-1)  # (N,) each agent's own number of actions
        bad = live & ((actions < 0) | (actions >= limit))
        if bad.any():
            b, n = (int(i) for i in bad.nonzero()[0])
            got, own = int(actions[b, n]), int(limit[n])
            agent = self.spec.agents[n]
            raise ValueError(f"actions: agent {agent!r} in world {b}: expected an action in [0, {own}), got {got}")
        masked = live & ~self._mask.gather(-1, actions.clamp(0, A - 1).unsqueeze(-1)).squeeze(-1)
        if masked.any():
            b, n = (int(i) for i in masked.nonzero()[0])
            raise ValueError(f"actions: agent {self.spec.agents[n]!r} in world {b} chose action {int(actions[b, n])}, "
                             "which the model predicts unavailable (see action_mask)")  # fmt: skip
        return torch.where(live, actions, torch.zeros_like(actions))

    def _check_continuous(self, actions: Tensor) -> Tensor:
        """(B, N, A) float actions of the present agents' own dims: finite, clipped (or refused) at the bounds."""
        B, N, A = self.num_worlds, self.spec.n_agents, self.spec.n_actions
        if actions.shape != (B, N, A):
            got = tuple(actions.shape)
            raise ValueError(f"actions: expected shape ({B}, {N}, {A}) (worlds, agents, action dims), got {got}")
        if not actions.dtype.is_floating_point:
            raise TypeError(f"actions: expected a float dtype for continuous actions, got {actions.dtype}")
        actions = actions.to(self.device, torch.float32)
        used = self._alive[..., None] & self._own  # (B, N, A)
        self._refuse(actions, used & ~torch.isfinite(actions), "a finite value")
        if self.out_of_bounds == "raise":
            self._refuse(actions, used & ((actions < self._low) | (actions > self._high)), "a value within")
        actions = torch.minimum(torch.maximum(actions, self._low), self._high)
        return torch.where(used, actions, torch.zeros_like(actions))

    def _refuse(self, actions: Tensor, bad: Tensor, expected: str) -> None:
        """Raise a ValueError naming the first (world, agent, dim) of ``bad`` (B, N, A), its value and its bounds."""
        if bad.any():
            b, n, d = (int(i) for i in bad.nonzero()[0])
            bounds = f"[{float(self._low[n, d])}, {float(self._high[n, d])}]"
            raise ValueError(f"actions: agent {self.spec.agents[n]!r} in world {b}, dim {d}: expected {expected} "
                             f"(bounds {bounds}), got {float(actions[b, n, d])}")  # fmt: skip

    def step(self, actions: Tensor) -> DreamStep:
        """Advance all B worlds by one imagined step; finished worlds are reset in place."""
        if self._state is None:
            raise RuntimeError("DreamVecEnv.step before reset")
        actions = self.check_actions(actions)
        decode = self.obs_kind == "decoded"
        with torch.no_grad():
            if self.planner is None:  # absent agents send no message
                state, pred = self.model.imagine(self._state, actions, self.generator, decode, present=self._alive)
            else:
                self.planner.track(self._obs, self._resets)
                state, pred = self.planner.imagine(
                    self.model, self._state, actions, self.generator, decode, self._alive, self._view
                )
            obs, crit, mask = self._view(state, pred)
        self._check_finite(obs, pred.reward)
        was_alive = self._alive
        reward = torch.where(was_alive, pred.reward, torch.zeros_like(pred.reward))
        discount = torch.ones_like(reward)
        if self.terminations == "sample":
            cont = torch.bernoulli(pred.cont.clamp(0, 1), generator=self.generator).bool()
        elif self.terminations == "threshold":
            cont = pred.cont >= 0.5
        else:
            cont = torch.ones_like(was_alive)
            discount = torch.where(was_alive, pred.cont.clamp(0, 1), torch.zeros_like(reward))
        terminated = was_alive & ~cont
        alive = was_alive & cont
        self._t = self._t + 1
        self._return = self._return + reward
        world_end = ~alive.any(-1) | (self._t >= self.horizon)
        truncated = alive & (self._t >= self.horizon)[:, None]
        final_obs = torch.where(world_end[:, None, None], obs, torch.zeros_like(obs))
        final_state = torch.where(world_end[:, None], crit, torch.zeros_like(crit))
        episode_return = torch.where(world_end[:, None], self._return, torch.zeros_like(self._return))
        episode_length = torch.where(world_end, self._t, torch.zeros_like(self._t))
        if world_end.any():
            idx = world_end.nonzero().squeeze(-1)
            with torch.no_grad():
                fresh = self.draw_starts(len(idx))
            state = {k: v.index_copy(0, idx, fresh[k]) for k, v in state.items()}
            with torch.no_grad():  # the heads act per row: only the restarted worlds need a new view
                view = self._view(fresh)
            obs, crit, mask = (x.index_copy(0, idx, fresh_x) for x, fresh_x in zip((obs, crit, mask), view))
            alive = alive.index_fill(0, idx, True)
            self._t = self._t.index_fill(0, idx, 0)
            self._return = self._return.index_fill(0, idx, 0.0)
        self._state, self._alive, self._mask = state, alive, mask
        self._obs, self._resets = obs, terminated | truncated | world_end[:, None]
        mask = torch.where(alive[..., None], mask, torch.ones_like(mask))
        self._mask = mask
        return DreamStep(
            obs, crit, mask, alive.clone(), reward, terminated, truncated, world_end, final_obs, final_state, episode_return,
            episode_length, discount,
        )  # fmt: skip

    def _check_finite(self, obs: Tensor, reward: Tensor) -> None:
        bad = ~torch.isfinite(obs).all(-1) | ~torch.isfinite(reward)
        if bad.any():
            b, n = (int(i) for i in bad.nonzero()[0])
            raise FloatingPointError(f"the world model produced NaN/inf at step {int(self._t[b]) + 1} of world {b} "
                                     f"for agent {self.spec.agents[n]!r}")  # fmt: skip

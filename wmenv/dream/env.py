"""`DreamEnv`: one imagined world of a learned world model as a PettingZoo `ParallelEnv`.

Glossary: N agents, F per-agent features (or D decoded observation features), A actions.

``env = wmenv.DreamEnv(model)`` behaves like the real env the model was fitted on: the same agent ids,
each agent's own ``Discrete(n)`` or ``Box`` actions, ``infos[agent]["action_mask"]`` where the real env masks actions, and
``state()`` for centralized critics. Observations are the model's latent features (default) or its
decoded observations. Agents whose predicted continuation ends leave ``env.agents``; the episode is
truncated after ``horizon`` steps. Seeding ``reset(seed=...)`` fixes every draw (a `torch.Generator`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from wmenv.checks import check_choice
from wmenv.dream.vec import DreamStep, DreamVecEnv
from wmenv.envs.spec import check_actions, own_space, unstack_continuous
from wmenv.models.world_model import WorldModel


class DreamEnv(ParallelEnv):
    """A `ParallelEnv` view of one world of a `DreamVecEnv`.

    Args:
        model: a fitted `WorldModel`.
        start: None (the model's initial distribution) or an `EpisodeReplay` of real contexts.
        obs: "latent" or "decoded".
        seed: seed of the first reset (``reset(seed=...)`` re-seeds).
        horizon: steps before truncation.
        context: rows of real context per start (with ``start``).
        masked_action: "raise" (default) refuses actions the model predicts unavailable; "noop" replaces
            them by the first available one (for mask-blind samplers such as pettingzoo's API test).
        planner: None or a `wmenv.dream.mag.MAGPlanner` (planned imagination, as for `DreamVecEnv`).
        out_of_bounds: continuous actions outside their bounds are "clip"ped (default) or "raise" (`DreamVecEnv`).
    """

    metadata = {"name": "wmenv_dream_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        model: WorldModel,
        start: Any = None,
        obs: Literal["latent", "decoded"] = "latent",
        seed: int | None = None,
        horizon: int = 15,
        context: int = 8,
        masked_action: Literal["raise", "noop"] = "raise",
        planner: Any = None,
        out_of_bounds: Literal["clip", "raise"] = "clip",
    ) -> None:
        check_choice("masked_action", masked_action, ("raise", "noop"))
        self.vec = DreamVecEnv(model, 1, horizon, start, context, obs, 0 if seed is None else seed, planner=planner,
                               out_of_bounds=out_of_bounds)  # fmt: skip
        self.spec_ = model.spec
        self.masked_action, self.render_mode = masked_action, None
        self.possible_agents = list(model.spec.agents)
        self.agents: list[str] = []
        with torch.no_grad():
            probe = self.vec._view(model.initial(1, generator=torch.Generator(device=self.vec.device).manual_seed(0)))
        # each agent's true spaces (heterogeneous agents): its own actions, and its own width of decoded observations
        # (the latent features are one width for all)
        self._widths = [
            probe[0].shape[-1] if obs == "latent" else int(model.spec.observation_spaces[a].shape[0])
            for a in self.possible_agents
        ]
        self._obs_spaces = {
            a: spaces.Box(-np.inf, np.inf, (w,), np.float32) for a, w in zip(self.possible_agents, self._widths, strict=True)
        }
        self._act_spaces = {a: own_space(model.spec.action_spaces[a]) for a in self.possible_agents}
        self.state_space = spaces.Box(-np.inf, np.inf, (probe[1].shape[-1],), np.float32)
        self._last: DreamStep | None = None

    def observation_space(self, agent: str) -> spaces.Space:
        """The (cached) observation space of ``agent``."""
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        """The (cached) action space of ``agent``: the real agent's own ``Discrete(n)`` or ``Box`` (this env's object,
        so that seeding it leaves other envs' spaces alone)."""
        return self._act_spaces[agent]

    def _obs(self, obs: torch.Tensor, agents: list[str] | None = None) -> dict[str, np.ndarray]:
        """World 0's observations of ``agents`` (default: the live ones), each cut to its agent's own width."""
        arr = obs[0].detach().cpu().numpy().astype(np.float32)
        agents = self.agents if agents is None else agents
        return {a: arr[i, : self._widths[i]] for i, a in enumerate(self.possible_agents) if a in agents}

    def _infos(self, step: DreamStep, agents: list[str]) -> dict[str, dict]:
        mask = step.action_mask[0].cpu().numpy().astype(np.int8)
        masked = self.spec_.action_masked and self.spec_.discrete
        return {
            a: ({"action_mask": mask[i, : self._act_spaces[a].n]} if masked else {})
            for i, a in enumerate(self.possible_agents)
            if a in agents
        }

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an imagined episode; ``seed`` re-seeds every random draw."""
        if seed is not None:
            self.vec.seed(seed)
        self._last = self.vec.reset()
        self.agents = list(self.possible_agents)
        return self._obs(self._last.obs), self._infos(self._last, self.agents)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Advance the imagined world one step with one action per live agent; after the episode ended, an empty
        ``actions`` returns five empty dicts (as PettingZoo's envs; SuperSuit's ``black_death_v3`` relies on it)."""
        if not isinstance(actions, dict):
            raise TypeError(f"actions: expected a dict agent -> action, got {type(actions).__name__}")
        if not self.agents or self._last is None:
            if not actions and self._last is not None:  # after the episode's end, as PettingZoo's envs answer it
                return {}, {}, {}, {}, {}
            raise RuntimeError(f"step() called with no live agents: call reset() first (got actions for {sorted(actions)})")
        step = self.vec.step(self._row(actions))
        done = bool(step.done[0])
        before = list(self.agents)
        obs = self._obs(step.final_obs if done else step.obs, before)
        rewards = {a: float(step.reward[0, i]) for i, a in enumerate(self.possible_agents) if a in before}
        terms = {a: bool(step.terminated[0, i]) for i, a in enumerate(self.possible_agents) if a in before}
        truncs = {
            a: bool(step.truncated[0, i]) or (done and not terms[a]) for i, a in enumerate(self.possible_agents) if a in before
        }
        infos = self._infos(step, before)
        self.agents = [] if done else [a for a in before if not (terms[a] or truncs[a])]
        self._last = step
        return obs, rewards, terms, truncs, infos

    def _row(self, actions: dict[str, Any]) -> torch.Tensor:
        """The live agents' actions, checked, as the dream's (1, N) int64 (or (1, N, A) float) row."""
        if not self.spec_.discrete:
            check_actions(self.spec_, actions, self.agents)
            return torch.from_numpy(unstack_continuous(self.spec_, actions))[None]
        masks = {  # each agent's own actions only (heterogeneous agents)
            a: self._last.action_mask[0, i, : self._act_spaces[a].n].cpu().numpy() for i, a in enumerate(self.possible_agents)
        }
        check_actions(self.spec_, actions, self.agents, masks if self.masked_action == "raise" else None)
        row = torch.zeros(1, len(self.possible_agents), dtype=torch.long)
        for i, a in enumerate(self.possible_agents):
            if a in actions:
                act = int(actions[a])
                row[0, i] = act if masks[a][act] else int(np.flatnonzero(masks[a])[0])
        return row

    def state(self) -> np.ndarray:
        """The centralized features (N·F,) of the current imagined state."""
        if self._last is None:
            raise RuntimeError("state() called before reset()")
        return self._last.state[0].detach().cpu().numpy().astype(np.float32)

    def close(self) -> None:
        """Nothing to release."""

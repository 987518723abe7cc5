"""`LatentEnv`: a real env seen through a world model's filter, so agents trained on latent features can act on it.

Glossary: N agents, D observation features, F features, A actions.

``wmenv.LatentEnv(env, model)`` wraps a real `wmenv` env (anything from `wmenv.envs.make`) as a PettingZoo
`ParallelEnv` whose observations are each agent's filtered features [h_t, z_t], the same space as
``DreamEnv(model, obs="latent")``: a learner trained in the dream acts on reality through it. Each agent
runs its own filter copy (`AgentFilters`), fed by its own observation and the messages of the present agents
(or only of its neighbours, ``neighbours=radius`` on envs with ``neighbours(radius)`` such as Flatland).
Action masks come from the real env; ``state()`` is the model's centralized view (every agent's features).
`LatentGymEnv` is the one-agent Gymnasium form, for stable-baselines3 policies trained in `DreamGymEnv`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from wmenv.envs.spec import spec_differences, stack_obs
from wmenv.latent.filter import AgentFilters
from wmenv.models.world_model import WorldModel


def check_same_spec(env_spec: Any, model: WorldModel, what: str = "env") -> None:
    """Refuse an env whose spec differs from the one the model was fitted on, naming the fields that differ."""
    differ = spec_differences(model.spec.describe(), env_spec.describe())
    if differ:
        lines = "; ".join(f"{k}: env {got!r}, model {want!r}" for k, want, got in differ)
        raise ValueError(f"{what}: its spec differs from the model's ({lines})")


class LatentEnv(ParallelEnv):
    """A real multi-agent env whose observations are the agents' filtered world-model features.

    Args:
        env: a real `wmenv` env (`MultiAgentEnv`, e.g. ``make(...)[0]``) with the model's spec; owned (closed here).
        model: a fitted `WorldModel` with an execution-time filter.
        neighbours: None (every present agent hears every other) or a radius: agents hear only those
            ``env.neighbours(radius)`` marks (Flatland: along the rails).
        seed: seeds the filters' latent samples (``reset(seed=...)`` re-seeds them too).
    """

    metadata = {"name": "wmenv_latent_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, env: Any, model: WorldModel, neighbours: int | None = None, seed: int = 0) -> None:
        spec = getattr(env, "env_spec", None)
        if spec is None:
            raise TypeError(f"env: expected a wmenv env with an env_spec (from wmenv.envs.make), got {type(env).__name__}")
        check_same_spec(spec, model)
        if neighbours is not None:
            if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
                raise ValueError(f"neighbours: expected None or a radius >= 0, got {neighbours!r}")
            if not callable(getattr(env, "neighbours", None)):
                raise ValueError(f"neighbours: {spec.id} has no neighbours(radius); use neighbours=None (all hear all)")
        self.env, self.model, self.spec_, self.neighbours = env, model, spec, neighbours
        self.filters = AgentFilters(model, 1, seed)
        self.possible_agents = list(spec.agents)
        self.agents: list[str] = []
        self.render_mode = None
        width = model.features(model.initial(1)).shape[-1]
        box = spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self._obs_spaces = {a: box for a in self.possible_agents}
        self.state_space = spaces.Box(-np.inf, np.inf, (spec.n_agents * width,), np.float32)

    def observation_space(self, agent: str) -> spaces.Space:
        """Box(F): the agent's filtered features (as ``DreamEnv(model, obs="latent")``)."""
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        """The real env's action space of ``agent``."""
        return self.env.action_space(agent)

    def _filter(self, obs: dict, reset: bool) -> dict[str, np.ndarray]:
        arr, alive = stack_obs(self.spec_, obs)
        hears = None if self.neighbours is None else np.asarray(self.env.neighbours(self.neighbours), bool)[None]
        feats = self.filters.step(arr[None], np.array([reset]), alive[None], hears)[0].cpu().numpy().astype(np.float32)
        return {a: feats[i] for i, a in enumerate(self.possible_agents) if a in obs}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Reset the real env and every agent's filter."""
        if seed is not None:
            self.filters.seed(seed)
        obs, infos = self.env.reset(seed=seed, options=options)
        self.agents = list(self.env.agents)
        return self._filter(obs, True), infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Step the real env; each agent that acted remembers its action, then all filters take the new observations."""
        obs, rewards, terms, truncs, infos = self.env.step(actions)  # the real env validates the actions
        acts = np.zeros((1, self.spec_.n_agents), dtype=np.int64)
        acted = np.zeros((1, self.spec_.n_agents), dtype=bool)
        for i, a in enumerate(self.possible_agents):
            if a in actions:
                acts[0, i], acted[0, i] = int(actions[a]), True
        self.filters.record(acts, acted)
        self.agents = list(self.env.agents)
        return self._filter(obs, False), rewards, terms, truncs, infos

    def state(self) -> np.ndarray:
        """(N·F,): every agent's current features (the model's centralized view, as ``DreamEnv.state()``)."""
        if self.filters.features is None:
            raise RuntimeError("state() called before reset()")
        return self.filters.critic_features()[0].cpu().numpy().astype(np.float32)

    def close(self) -> None:
        """Close the real env."""
        self.env.close()


class LatentGymEnv(gym.Env):
    """A one-agent Gymnasium env seen through a one-agent world model's filter (for policies trained in `DreamGymEnv`).

    Args:
        env: a ``gymnasium.Env`` (e.g. ``gymnasium.make("CartPole-v1")``) of the kind the model was fitted on
            (``make("gym:...")``), or the one-agent env that ``wmenv.envs.make`` returns (e.g. ``"atari:Pong"``
            with its preprocessing); owned.
        model: a fitted one-agent `WorldModel`.
        seed: seeds the filter's latent samples.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: gym.Env, model: WorldModel, seed: int = 0) -> None:
        from wmenv.envs.gym import GymAdapter

        if model.spec.n_agents != 1:
            raise ValueError(f"model: LatentGymEnv needs a one-agent model, {model.spec.id} has {model.spec.n_agents} agents")
        if isinstance(env, GymAdapter):
            adapter = env
        elif isinstance(env, gym.Env):
            adapter = GymAdapter(env, model.spec.id, action_masked=model.spec.action_masked)
        else:
            raise TypeError(f"env: expected a gymnasium.Env or a one-agent wmenv env (GymAdapter), got {type(env).__name__}")
        self.latent = LatentEnv(adapter, model, seed=seed)
        self._agent = self.latent.possible_agents[0]
        self.observation_space = self.latent.observation_space(self._agent)
        self.action_space = adapter.action_space(self._agent)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Reset the real env and the filter."""
        super().reset(seed=seed)
        obs, infos = self.latent.reset(seed=seed, options=options)
        return obs[self._agent], infos[self._agent]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One real step, observed through the filter."""
        if not self.latent.agents:
            raise RuntimeError("step() before reset() or after the episode ended")
        action = int(np.asarray(action).item()) if np.ndim(action) <= 1 and np.size(action) == 1 else action
        obs, rew, term, trunc, info = self.latent.step({self._agent: action})
        a = self._agent
        return obs[a], float(rew[a]), bool(term[a]), bool(trunc[a]), info[a]

    def close(self) -> None:
        """Close the real env."""
        self.latent.close()

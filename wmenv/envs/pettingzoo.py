"""`PettingZooAdapter`: any PettingZoo `ParallelEnv` behind wmenv's view.

What it changes, and nothing else:
- observations are flattened to 1-D float32 (`gymnasium.spaces.flatten`); a ``Dict`` observation with
  ``"observation"`` and ``"action_mask"`` keys (PettingZoo's masking convention) is split: the
  observation part is flattened, the mask goes to ``infos[agent]["action_mask"]``;
- ``Discrete(n, start=s)`` actions become ``Discrete(n)`` (``s`` is added back on the way in); N-D
  ``Box`` actions are flattened (reshaped back on the way in);
- ``state()`` is the env's own (when it has a ``state_space`` or one is given), otherwise the
  concatenation of all agents' flattened observations in ``possible_agents`` order, with zeros for
  agents that did not report one on the last call;
- agents that terminate or truncate leave ``env.agents`` (PettingZoo semantics, enforced even for
  envs that keep finished agents listed).

``make_pettingzoo("pettingzoo.butterfly.pistonball_v6", **kwargs)`` imports the module and calls its
``parallel_env(**kwargs)``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from wmenv.envs.base import MaskedAction, MultiAgentEnv
from wmenv.envs.spec import EnvSpec

_ADAPTER_KWARGS = ("masked_action", "action_masked", "episode_limit")


def _is_masked_dict(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Dict) and {"observation", "action_mask"} <= set(space.spaces)


def flat_box(space: gym.Space, what: str) -> gym.spaces.Box:
    """`gymnasium.spaces.flatten_space` as a 1-D ``Box``: uint8 where ``space`` is a uint8 ``Box`` (frames, stored as
    bytes), float32 otherwise; ``TypeError`` naming ``what`` if impossible."""
    try:
        flat = gym.spaces.flatten_space(space)
    except (NotImplementedError, TypeError, ValueError) as e:
        raise TypeError(f"{what}: expected a space that flattens to a 1-D Box, got {space} ({e})") from e
    if not isinstance(flat, gym.spaces.Box) or len(flat.shape) != 1:
        raise TypeError(f"{what}: expected a space that flattens to a 1-D Box, got {space} -> {flat}")
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
        return gym.spaces.Box(flat.low.astype(np.uint8), flat.high.astype(np.uint8), dtype=np.uint8)
    return gym.spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)


def flat_action_space(space: gym.Space, what: str) -> gym.Space:
    """The wmenv view of an action space: ``Discrete(n)`` from 0, or a 1-D ``Box``."""
    if isinstance(space, gym.spaces.Discrete):
        return space if int(space.start) == 0 else gym.spaces.Discrete(int(space.n))
    if isinstance(space, gym.spaces.Box):
        if len(space.shape) == 1:
            return space
        return gym.spaces.Box(space.low.reshape(-1), space.high.reshape(-1), dtype=space.dtype)
    raise TypeError(f"{what}: expected a Discrete or Box action space, got {space}")


def to_env_action(space: gym.Space, action: Any) -> Any:
    """Translate a wmenv action (validated against `flat_action_space`) back to the env's ``space``."""
    if isinstance(space, gym.spaces.Discrete):
        return np.int64(int(action) + int(space.start))
    return np.asarray(action, dtype=space.dtype).reshape(space.shape)


def call_checked(fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> Any:
    """Call ``fn(**kwargs)`` after checking the names against its signature (clear ``TypeError`` first)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(**kwargs)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        allowed = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise TypeError(f"{what}: unknown keyword arguments {unknown}; accepted: {allowed}")
    return fn(**kwargs)


class PettingZooAdapter(MultiAgentEnv):
    """Wrap a PettingZoo ``ParallelEnv`` as a `MultiAgentEnv` (flat observations, masks in infos, ``state()``).

    Args:
        env: the parallel env to wrap (owned: `close` closes it).
        id: the id recorded in the spec, e.g. ``"mpe:simple_spread_v3"``.
        masked_action: see `MultiAgentEnv`.
        action_masked: whether the env reports action masks. ``None`` (default) detects PettingZoo's
            ``Dict(observation=..., action_mask=...)`` observation spaces. Pass ``True`` for envs that put
            ``"action_mask"`` in their infos; with ``False`` such info masks are dropped, so that what
            the spec promises and what the env enforces agree.
        state_space: the space of ``env.state()`` when the env has a state but no ``state_space``
            attribute (e.g. MaMuJoCo); default: ``env.state_space`` if present, else concatenated observations.
        episode_limit: the env's fixed step limit, if known (e.g. MPE's ``max_cycles``).
        extra: facts recorded in ``spec.extra``.
    """

    def __init__(
        self,
        env: ParallelEnv,
        id: str,
        masked_action: MaskedAction = "raise",
        action_masked: bool | None = None,
        state_space: gym.Space | None = None,
        episode_limit: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(env, ParallelEnv):
            raise TypeError(f"env: expected a pettingzoo ParallelEnv, got {type(env).__name__}")
        agents = tuple(env.possible_agents)
        bad = [a for a in agents if not isinstance(a, str)]
        if bad:
            raise TypeError(f"env.possible_agents: expected string agent ids, got {bad}")
        if episode_limit is not None and (not isinstance(episode_limit, int) or episode_limit < 1):
            raise ValueError(f"episode_limit: expected a positive int or None, got {episode_limit!r}")
        self.env = env
        self._raw_obs_spaces = {a: env.observation_space(a) for a in agents}
        self._raw_act_spaces = {a: env.action_space(a) for a in agents}
        self._dict_obs = {a: _is_masked_dict(sp) for a, sp in self._raw_obs_spaces.items()}
        if action_masked is None:
            action_masked = any(self._dict_obs.values())
        obs_spaces = {
            a: flat_box(sp["observation"] if self._dict_obs[a] else sp, f"observation_space({a!r})")
            for a, sp in self._raw_obs_spaces.items()
        }
        act_spaces = {a: flat_action_space(sp, f"action_space({a!r})") for a, sp in self._raw_act_spaces.items()}
        if action_masked and not all(isinstance(sp, gym.spaces.Discrete) for sp in act_spaces.values()):
            raise ValueError(f"action_masked: masks need Discrete action spaces, got {list(act_spaces.values())}")
        if state_space is None:
            state_space = getattr(env, "state_space", None)
        self._own_state = state_space is not None
        if self._own_state:
            state_box = flat_box(state_space, "state_space")
        else:
            lows = [obs_spaces[a].low for a in agents]
            highs = [obs_spaces[a].high for a in agents]
            state_box = gym.spaces.Box(np.concatenate(lows), np.concatenate(highs), dtype=np.float32)
        self._raw_state_space = state_space
        spec = EnvSpec(
            id=id,
            agents=agents,
            observation_spaces=obs_spaces,
            action_spaces=act_spaces,
            state_space=state_box,
            action_masked=bool(action_masked),
            episode_limit=episode_limit,
            extra=dict(extra or {}),
        )
        super().__init__(spec, masked_action=masked_action)
        self.metadata = {**MultiAgentEnv.metadata, **getattr(env, "metadata", {}), "is_parallelizable": True}
        self.render_mode = getattr(env, "render_mode", None)
        self._last_obs: dict[str, np.ndarray] = {}

    # --- translation ---
    def _flat_obs(self, agent: str, obs: Any) -> np.ndarray:
        raw = self._raw_obs_spaces[agent]
        if self._dict_obs[agent]:
            return gym.spaces.flatten(raw["observation"], obs["observation"]).astype(np.float32, copy=False)
        return gym.spaces.flatten(raw, obs).astype(np.float32, copy=False)

    def _translate(self, obs: Mapping[str, Any], infos: Mapping[str, Any], live: set[str]) -> tuple[dict, dict]:
        flat = {a: self._flat_obs(a, o) for a, o in obs.items() if a in self._raw_obs_spaces}
        out_infos: dict[str, dict] = {}
        for a in set(flat) | {a for a in infos if a in self._raw_obs_spaces}:
            info = dict(infos.get(a, {}) or {})
            mask = obs[a]["action_mask"] if a in obs and self._dict_obs[a] else info.get("action_mask")
            info.pop("action_mask", None)
            if self.env_spec.action_masked and a in live and mask is not None:
                info["action_mask"] = np.asarray(mask, dtype=bool).reshape(-1)
            out_infos[a] = info
        self._last_obs = flat
        return flat, out_infos

    # --- MultiAgentEnv ---
    def _reset(self, seed: int | None, options: dict | None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self.agents = list(self.env.agents)
        return self._translate(obs, infos, set(self.agents))

    def _step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        env_actions = {a: to_env_action(self._raw_act_spaces[a], act) for a, act in actions.items()}
        obs, rew, term, trunc, infos = self.env.step(env_actions)
        term = {a: bool(v) for a, v in term.items()}
        trunc = {a: bool(v) for a, v in trunc.items()}
        self.agents = [a for a in self.env.agents if not (term.get(a, False) or trunc.get(a, False))]
        flat, out_infos = self._translate(obs, infos, set(self.agents))
        rewards = {a: float(r) for a, r in rew.items()}
        return flat, rewards, term, trunc, out_infos

    def state(self) -> np.ndarray:
        """The env's own state (flattened), or all agents' last observations concatenated (zeros if absent)."""
        if self._own_state:
            return gym.spaces.flatten(self._raw_state_space, self.env.state()).astype(np.float32, copy=False)
        spaces = self.env_spec.observation_spaces
        parts = [self._last_obs.get(a, np.zeros(spaces[a].shape, np.float32)) for a in self.possible_agents]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def render(self) -> Any:
        """The wrapped env's ``render()``."""
        return self.env.render()

    def close(self) -> None:
        """Close the wrapped env."""
        self.env.close()


def split_adapter_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``make`` kwargs into the adapter's own (``masked_action``, ...) and the env's."""
    own = {k: kwargs[k] for k in _ADAPTER_KWARGS if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k not in _ADAPTER_KWARGS}
    return own, rest


def import_env_module(module_path: str, family: str) -> Any:
    """Import ``module_path``; ``ValueError`` if it does not exist, `DependencyNotInstalled` if it needs a missing package."""
    if not isinstance(module_path, str) or not module_path:
        raise ValueError(f"module_path: expected a dotted module path, got {module_path!r}")
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        parts = module_path.split(".")
        if e.name in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise ValueError(f"module_path: no module named {e.name!r} (from id {family}:{module_path})") from e
        raise gym.error.DependencyNotInstalled(
            f"{family}:{module_path} needs the package {e.name!r}, which is not installed: pip install {e.name}"
        ) from e


def make_pettingzoo(module_path: str, **kwargs: Any) -> PettingZooAdapter:
    """Import ``module_path`` and wrap its ``parallel_env(**kwargs)``.

    Args:
        module_path: e.g. ``"pettingzoo.butterfly.pistonball_v6"``.
        **kwargs: ``masked_action``, ``action_masked`` and ``episode_limit`` go to `PettingZooAdapter`;
            the rest to ``parallel_env``.

    Raises:
        ValueError: the module does not exist or has no ``parallel_env``.
        TypeError: ``parallel_env`` does not accept one of ``kwargs``.
    """
    module = import_env_module(module_path, "pettingzoo")
    fn = getattr(module, "parallel_env", None)
    if not callable(fn):
        raise ValueError(f"module_path: module {module_path!r} has no parallel_env(); expected a PettingZoo env module")
    own, env_kwargs = split_adapter_kwargs(kwargs)
    env = call_checked(fn, env_kwargs, f"pettingzoo:{module_path}")
    return PettingZooAdapter(env, id=f"pettingzoo:{module_path}", **own)

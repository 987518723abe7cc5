"""The stable-baselines3 view of a dream: `DreamSB3VecEnv`.

Glossary: B worlds, N agents, F per-agent observation features, A actions.

`DreamSB3VecEnv` turns a `DreamVecEnv` into a stable-baselines3 ``VecEnv`` of B·N environments, one per (world,
agent), for parameter-shared independent learners: an agent that terminates before its world ends receives zero
reward and an unchanged observation until the world ends, when all its N environments report ``done`` together (with
``terminal_observation``). A module of its own because importing stable-baselines3 takes ≈ 0.5 s: `wmenv.dream`
loads it when ``DreamSB3VecEnv`` is first asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from gymnasium import spaces

from wmenv.dream.vec import DreamVecEnv
from wmenv.envs.spec import own_space

try:
    from stable_baselines3.common.vec_env import VecEnv as _SB3VecEnv
except ImportError:  # stable-baselines3 is the [sb3] extra
    _SB3VecEnv = None


def _shared_space(spec: Any) -> spaces.Space:
    """The one action space every (world, agent) env of `DreamSB3VecEnv` offers: ``Discrete(A)``, or the agents'
    common ``Box``.

    Raises:
        ValueError: continuous agents with different action spaces (one SB3 policy needs one space).
    """
    if spec.discrete:
        return spaces.Discrete(spec.n_actions)
    boxes = [spec.action_spaces[a] for a in spec.agents]
    if any(b.shape != boxes[0].shape or not (np.array_equal(b.low, boxes[0].low) and np.array_equal(b.high, boxes[0].high))
           for b in boxes):  # fmt: skip
        raise ValueError(f"vec: {spec.id}'s agents have different continuous action spaces; a stable-baselines3 VecEnv "
                         "offers one space to all its envs")  # fmt: skip
    return own_space(boxes[0])


class DreamSB3VecEnv(_SB3VecEnv or object):
    """A stable-baselines3 ``VecEnv`` of B·N (world, agent) environments over a `DreamVecEnv`.

    Args:
        vec: the dream; predicted-unavailable actions are replaced by the first available one
            (stable-baselines3 policies do not mask).
    """

    def __init__(self, vec: DreamVecEnv) -> None:
        if _SB3VecEnv is None:
            raise ImportError('DreamSB3VecEnv needs stable-baselines3: pip install "wmenv[sb3]"')
        self.vec = vec
        self.n_agents = vec.spec.n_agents
        first = vec.reset()
        self._last, self._obs = first, first.obs
        width = first.obs.shape[-1]
        super().__init__(
            vec.num_worlds * self.n_agents,
            spaces.Box(-np.inf, np.inf, (width,), np.float32),
            _shared_space(vec.spec),
        )
        self._actions: np.ndarray | None = None

    def _flat(self, x: torch.Tensor) -> np.ndarray:
        return rearrange(x, "b n ... -> (b n) ...").cpu().numpy()

    def reset(self) -> np.ndarray:
        """Restart every world; (B·N, F) observations."""
        self._last = self.vec.reset()
        self._obs = self._last.obs
        return self._flat(self._obs).astype(np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        """Store (B·N,) actions (continuous: (B·N, A)) for `step_wait`."""
        self._actions = np.asarray(actions).reshape(self.num_envs, *self.action_space.shape)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step the dream; absent agents' actions are ignored."""
        B, N = self.vec.num_worlds, self.n_agents
        if self.vec.spec.discrete:
            acts = torch.as_tensor(self._actions, dtype=torch.long, device=self.vec.device).view(B, N)
            mask = self._last.action_mask
            ok = mask.gather(-1, acts.clamp(0, mask.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
            acts = torch.where(ok & self._last.alive, acts, mask.float().argmax(-1))
        else:  # SB3 policies clip to the Box themselves; the dream clips too (out_of_bounds="clip")
            acts = torch.as_tensor(self._actions, dtype=torch.float32, device=self.vec.device).view(B, N, -1)
        s = self.vec.step(acts)
        absent = ~self._last.alive[..., None]  # (B, N, 1) agents that had ended before this step keep their last obs
        obs = torch.where(absent & ~s.done[:, None, None], self._obs, s.obs)  # after an auto-reset: the new episode's
        done = s.done[:, None].expand(-1, self.n_agents)
        infos: list[dict] = []
        final, trunc = self._flat(torch.where(absent, self._obs, s.final_obs)), self._flat(s.truncated)
        for i, d in enumerate(self._flat(done)):
            info: dict = {}
            if d:
                info["terminal_observation"] = final[i].astype(np.float32)
                info["TimeLimit.truncated"] = bool(trunc[i])
            infos.append(info)
        self._last, self._obs = s, obs
        return self._flat(obs).astype(np.float32), self._flat(s.reward).astype(np.float32), self._flat(done), infos

    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The dream's attribute, once per selected env."""
        return [getattr(self.vec, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the dream (shared by all envs)."""
        setattr(self.vec, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        """Call a method of the dream once per selected env."""
        return [getattr(self.vec, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """No env is wrapped."""
        return [False] * len(self._get_indices(indices))

    def seed(self, seed: int | None = None) -> list[int | None]:
        """Re-seed the dream's generator."""
        if seed is not None:
            self.vec.seed(seed)
        return [seed] * self.num_envs

"""On-policy rollout storage: ``(T, E, N, ...)`` tensors filled with ``storage[t] = {...}`` (CleanRL).

Glossary: T rollout steps, E parallel envs (real or imagined), N agents, D observation features,
S global-state features, A actions, L chunk length, C chunks per sequence (``ceil(T / L)``),
B batch of chunks (``C * E * N``).

Step t holds what the agents saw (``obs``, ``state``, ``alive``, ``action_mask``), the recurrent states
*before* the step (``actor_state``, ``critic_state``) with the ``resets`` flag that restores the
initial state before consuming ``obs``, what they did (``actions``, ``log_probs``, ``values``) and what
followed (``rewards``, ``dones``, ``truncated``, ``bootstrap_values``, and ``discounts``: the factor on γ after the
step, 1 from a real env, a dream's predicted continuation with ``terminations="expected"``). Nothing here depends on
where the data came from, so a real `VecEnv` and a world model's dream env fill it alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from agents.policies.base import PolicyState
from wmenv.checks import check_int


class BatchedEnv(Protocol):
    """What `MAPPO.collect` needs from an env: `wmenv.envs.vector.VecEnv`'s ``num_envs``, ``reset`` and ``step``."""

    num_envs: int

    def reset(self) -> Any:
        """A `VecStep`-like object (NumPy arrays or tensors)."""

    def step(self, actions: np.ndarray) -> Any:
        """actions: (E, N) int64 (or (E, N, A) float) -> a `VecStep`-like object."""


@dataclass
class Carry:
    """What collection carries from one rollout to the next (rows in (E·N) order where per agent)."""

    obs: Tensor
    """(E, N, D) float, the observation to act on."""
    state: Tensor
    """(E, S) float."""
    alive: Tensor
    """(E, N) bool."""
    action_mask: Tensor
    """(E, N, A) bool."""
    resets: Tensor
    """(E, N) bool, the agent's trajectory starts now (restore initial recurrent states)."""
    actor_state: PolicyState
    """name -> (E·N, ...)."""
    critic_state: PolicyState
    """name -> (E·N, ...)."""


@dataclass
class Episodes:
    """Episodes that ended during a rollout."""

    returns: np.ndarray
    """(K, N) float32, undiscounted return of each agent."""
    lengths: np.ndarray
    """(K,) int64."""
    metrics: list[dict[str, float]] = field(default_factory=list)
    """Per episode, the env's `episode_metrics` (e.g. Flatland's ``arrived_fraction``); {} where the env copies (or
    the dream) report none."""


_FLOAT, _BOOL, _LONG = torch.float32, torch.bool, torch.int64


@dataclass
class Chunks:
    """A rollout cut into B = C·E·N sequences of L steps for recurrent PPO; `index` takes minibatches."""

    obs: Tensor
    """(B, L, D) float."""
    state: Tensor
    """(B, L, S) float, the global state of the chunk's env."""
    agent: Tensor
    """(B,) int64, the agent index of each chunk."""
    valid: Tensor
    """(B, L) bool, the agent was alive and the step lies inside the rollout (padding is invalid)."""
    action_mask: Tensor
    """(B, L, A) bool, all True on padding."""
    resets: Tensor
    """(B, L) bool."""
    actions: Tensor
    """(B, L) int64, or (B, L, A) float for continuous actions."""
    log_probs: Tensor
    """(B, L) float, under the policy that collected the data."""
    values: Tensor
    """(B, L) float, the critic's outputs at collection (normalized units)."""
    advantages: Tensor
    """(B, L) float."""
    returns: Tensor
    """(B, L) float, value targets (return units)."""
    actor_state: PolicyState
    """name -> (B, ...), the actor's state before the chunk's first step."""
    critic_state: PolicyState
    """name -> (B, ...), the critic's state before the chunk's first step."""
    lengths: Tensor
    """(B,) int64, the chunk's steps inside the rollout: L, or less for the last chunk of a sequence (then padded)."""

    def __len__(self) -> int:
        return self.obs.shape[0]

    def index(self, idx: Tensor | slice) -> Chunks:
        """The chunks ``idx`` ((B',) int64, or a slice) as a new `Chunks`."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: s[idx] for k, s in v.items()} if isinstance(v, dict) else v[idx]
        return Chunks(**out)

    def trim(self, steps: int) -> Chunks:
        """The first ``steps`` steps of every chunk (per-step fields cut to (B, steps, ...); states and lengths kept)."""
        if not 1 <= steps <= self.obs.shape[1]:
            raise ValueError(f"steps: expected 1 <= steps <= L={self.obs.shape[1]}, got {steps}")
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            per_step = not isinstance(v, dict) and f.name not in ("agent", "lengths")
            out[f.name] = v[:, :steps] if per_step else v
        return Chunks(**out)


def length_groups(lengths: Tensor) -> tuple[list[tuple[Tensor | slice, int]], Tensor | None]:
    """The rows of each distinct chunk length, longest first, for running each group at its own length.

    Args:
        lengths: (B,) int64, `Chunks.lengths`.

    Returns:
        groups: (rows, length) pairs; rows are a slice where the groups lie in row order one after the other (storage
            order: the last chunks of all sequences come last), else (B_g,) int64 indices.
        order: None when concatenating the groups' rows gives the rows in order, else the (B,) permutation that puts
            the concatenation back in row order.
    """
    values = sorted(set(lengths.tolist()), reverse=True)
    if len(values) == 1:
        return [(slice(None), values[0])], None
    rows = [torch.nonzero(lengths == n).flatten() for n in values]
    cat = torch.cat(rows)
    if torch.equal(cat, torch.arange(len(lengths), device=lengths.device)):
        bounds = np.cumsum([0] + [len(r) for r in rows]).tolist()
        return [(slice(a, b), n) for a, b, n in zip(bounds, bounds[1:], values)], None
    return list(zip(rows, values)), torch.argsort(cat)


class RolloutStorage:
    """T steps of E envs × N agents on ``device``.

    Args:
        length: T.
        num_envs: E.
        n_agents: N.
        obs_dim: D.
        state_dim: S.
        n_actions: A.
        actor_state_shapes: name -> per-row shape of the actor's recurrent state (``policy.state_shapes()``).
        critic_state_shapes: the same for the critic (empty for a feed-forward critic).
        device: where the tensors live.
        discrete: actions are (E, N) int64 choices; False: (E, N, A) float vectors.
    """

    STEP_KEYS = (
        "obs", "state", "alive", "action_mask", "resets", "actions", "log_probs", "values",
        "rewards", "dones", "truncated", "bootstrap_values", "discounts", "actor_state", "critic_state",
    )  # fmt: skip

    def __init__(
        self,
        length: int,
        num_envs: int,
        n_agents: int,
        obs_dim: int,
        state_dim: int,
        n_actions: int,
        actor_state_shapes: Mapping[str, tuple[int, ...]],
        critic_state_shapes: Mapping[str, tuple[int, ...]],
        device: torch.device | str = "cpu",
        discrete: bool = True,
    ) -> None:
        for name, v in (("length", length), ("num_envs", num_envs), ("n_agents", n_agents), ("obs_dim", obs_dim),
                        ("state_dim", state_dim), ("n_actions", n_actions)):  # fmt: skip
            check_int(name, v)
        self.length, self.num_envs, self.n_agents = length, num_envs, n_agents
        self.device = torch.device(device)
        T, E, N = length, num_envs, n_agents
        self._shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "obs": ((E, N, obs_dim), _FLOAT),
            "state": ((E, state_dim), _FLOAT),
            "alive": ((E, N), _BOOL),
            "action_mask": ((E, N, n_actions), _BOOL),
            "resets": ((E, N), _BOOL),
            "actions": ((E, N), _LONG) if discrete else ((E, N, n_actions), _FLOAT),
            "log_probs": ((E, N), _FLOAT),
            "values": ((E, N), _FLOAT),
            "rewards": ((E, N), _FLOAT),
            "dones": ((E, N), _BOOL),
            "truncated": ((E, N), _BOOL),
            "bootstrap_values": ((E, N), _FLOAT),
            "discounts": ((E, N), _FLOAT),
        }
        self.data = {k: torch.zeros((T, *shape), dtype=dt, device=self.device) for k, (shape, dt) in self._shapes.items()}
        self.data["discounts"].fill_(1.0)  # neutral until written
        self.actor_state = {k: torch.zeros((T, E, N, *s), device=self.device) for k, s in actor_state_shapes.items()}
        self.critic_state = {k: torch.zeros((T, E, N, *s), device=self.device) for k, s in critic_state_shapes.items()}
        self.last_values = torch.zeros((E, N), device=self.device)
        """(E, N) float: the critic's output for the state after step T-1 (normalized units)."""
        self.filled = torch.zeros(T, dtype=torch.bool)
        """(T,) bool: which steps were written since the last `clear`."""

    def __len__(self) -> int:
        return self.length

    def __getattr__(self, name: str) -> Tensor:
        data = self.__dict__.get("data")
        if data is not None and name in data:
            return data[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setitem__(self, t: int, step: Mapping[str, Tensor | PolicyState]) -> None:
        """Write step ``t``: a mapping with exactly the keys `STEP_KEYS` (tensors with leading E [, N])."""
        if not isinstance(t, int) or not 0 <= t < self.length:
            raise ValueError(f"t: expected an integer in [0, {self.length}), got {t!r}")
        if set(step) != set(self.STEP_KEYS):
            missing, extra = sorted(set(self.STEP_KEYS) - set(step)), sorted(set(step) - set(self.STEP_KEYS))
            raise ValueError(f"step: expected keys {list(self.STEP_KEYS)}; missing {missing}, unexpected {extra}")
        for k, (shape, _) in self._shapes.items():
            v = step[k]
            if tuple(v.shape) != shape:
                raise ValueError(f"step[{k!r}]: expected shape {shape}, got {tuple(v.shape)}")
            self.data[k][t] = v
        for group in ("actor_state", "critic_state"):
            store, given = getattr(self, group), step[group]
            if set(given) != set(store):
                raise ValueError(f"step[{group!r}]: expected keys {sorted(store)}, got {sorted(given)}")
            for k, v in given.items():
                want = (self.num_envs, self.n_agents, *store[k].shape[3:])
                if tuple(v.shape) != want:
                    raise ValueError(f"step[{group!r}][{k!r}]: expected shape {want}, got {tuple(v.shape)}")
                store[k][t] = v
        self.filled[t] = True

    def clear(self) -> None:
        """Mark every step unwritten (tensors are reused, not reallocated)."""
        self.filled.zero_()

    def check_full(self) -> None:
        """Raise RuntimeError unless all T steps were written since the last `clear`."""
        if not bool(self.filled.all()):
            raise RuntimeError(f"storage: steps {torch.nonzero(~self.filled).flatten().tolist()} were not written")

    def chunks(self, chunk_length: int, advantages: Tensor, returns: Tensor) -> Chunks:
        """Cut every (env, agent) sequence into chunks of L steps; the last one is padded if L does not divide T.

        Args:
            chunk_length: L >= 1.
            advantages: (T, E, N) float.
            returns: (T, E, N) float.

        Returns:
            `Chunks` of B = C·E·N sequences, ordered (chunk, env, agent).
        """
        self.check_full()
        check_int("chunk_length", chunk_length)
        T, E, N, L = self.length, self.num_envs, self.n_agents, chunk_length
        for name, x in (("advantages", advantages), ("returns", returns)):
            if tuple(x.shape) != (T, E, N):
                raise ValueError(f"{name}: expected shape {(T, E, N)}, got {tuple(x.shape)}")
        C = math.ceil(T / L)
        pad = C * L - T

        def seq(x: Tensor, fill: float | bool = 0) -> Tensor:  # (T, E, N, ...) -> (C*E*N, L, ...)
            if pad:
                x = torch.cat([x, x.new_full((pad, *x.shape[1:]), fill)], dim=0)  # (C*L, E, N, ...)
            return rearrange(x, "(c l) e n ... -> (c e n) l ...", l=L)

        d = self.data
        state = d["state"][:, :, None].expand(T, E, N, d["state"].shape[-1])  # (T, E, N, S)
        starts = slice(0, T, L)  # the C chunk-start steps
        agent = torch.arange(N, device=self.device).repeat(C * E)  # (C*E*N,) in (c e n) order
        lengths = torch.full((C, E * N), L, dtype=torch.int64, device=self.device)
        lengths[-1] = T - (C - 1) * L
        return Chunks(
            obs=seq(d["obs"]),
            state=seq(state),
            agent=agent,
            valid=seq(d["alive"], False),
            action_mask=seq(d["action_mask"], True),
            resets=seq(d["resets"], False),
            actions=seq(d["actions"]),
            log_probs=seq(d["log_probs"]),
            values=seq(d["values"]),
            advantages=seq(advantages),
            returns=seq(returns),
            actor_state={k: rearrange(v[starts], "c e n ... -> (c e n) ...") for k, v in self.actor_state.items()},
            critic_state={k: rearrange(v[starts], "c e n ... -> (c e n) ...") for k, v in self.critic_state.items()},
            lengths=lengths.flatten(),
        )

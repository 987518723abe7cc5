"""`EpisodeRecorder`: builds one episode (see `wmenv.data.episode`) row by row from a real env.

Glossary: N agent slots (in ``spec.agents`` order), D observation features, A actions, S state features.

Two entry points feed the same logic:

* PettingZoo dicts — ``start(obs, infos, state)`` after ``env.reset``, ``add(actions, *env.step(actions), state)``
  after every step — turned into fixed-slot arrays with the helpers of `wmenv.envs.spec`;
* fixed-slot arrays — ``start_arrays`` / ``add_arrays`` — for a vectorized collector that has them
  already. There ``alive`` means "has an observation at this row", which for a `VecStep` is
  ``step.alive | step.terminated | step.truncated`` (a `VecStep` counts only agents that still act),
  and a finished copy's last row is ``step.final_obs`` / ``step.final_state``.

Every row is checked as it comes in, so a broken adapter fails at the step that broke it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from wmenv.data.episode import validate_episode
from wmenv.envs.spec import EnvSpec, check_actions, stack_masks, stack_obs, stack_rewards


def _numeric(name: str, x: Any, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """``x`` as a ``dtype`` array of ``shape``; TypeError for non-numeric input, ValueError for a wrong shape."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array of shape {shape}, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if dtype is bool:
        if arr.dtype.kind == "f" or (arr.dtype.kind in "iu" and not np.isin(arr, (0, 1)).all()):
            raise TypeError(f"{name}: expected booleans (or 0/1 integers) of shape {shape}, got {arr.dtype} values {arr}")
    return arr.astype(dtype, copy=True)


class EpisodeRecorder:
    """Records one multi-agent episode at a time as T+1 fixed-slot rows.

    Args:
        spec: the env's spec; fixes N, D, A, S and the agent slot order.

    Example::

        rec = EpisodeRecorder(spec)
        obs, infos = env.reset(seed=0)
        rec.start(obs, infos, env.state())
        while env.agents:
            actions = {a: policy(obs[a]) for a in env.agents}
            obs, rew, term, trunc, infos = env.step(actions)
            rec.add(actions, obs, rew, term, trunc, infos, env.state())
        episode = rec.finish()  # dict[str, np.ndarray] of (T+1, ...) arrays

    `flush` hands out the rows recorded so far while the episode goes on, as a piece (see `wmenv.data.episode`); the
    next piece, or `finish`, continues from there, so the pieces of an episode are its rows, each once.
    """

    _offset: int = 0
    """Rows of the current episode already handed out by `flush` (a class default, for recorders pickled before)."""
    stored_id: int | None = None
    """The replay's id for the current episode's rows already stored (`wmenv.data.collect.Collector` sets it, so
    that the next piece continues them: `EpisodeReplay.add`'s ``continues``); None before any, and for a new episode."""

    def __init__(self, spec: EnvSpec) -> None:
        if not isinstance(spec, EnvSpec):
            raise TypeError(f"spec: expected an EnvSpec, got {type(spec).__name__}")
        self.spec = spec
        n = spec.n_agents
        self._own_actions = np.array([self._own_size(a) for a in spec.agents])  # (N,) choices or action dims
        self._rows: list[dict[str, np.ndarray]] = []
        self._live = np.zeros(n, dtype=bool)
        self._ended = np.zeros(n, dtype=bool)

    def _own_size(self, agent: str) -> int:
        sp = self.spec.action_spaces[agent]
        return int(sp.n) if self.spec.discrete else int(sp.shape[0])

    # --- state ---
    @property
    def recording(self) -> bool:
        """Whether an episode has been started and not yet finished or discarded."""
        return bool(self._rows)

    @property
    def num_steps(self) -> int:
        """T so far: env steps recorded in the current episode (flushed pieces included)."""
        return max(self._offset + len(self._rows) - 1, 0)

    @property
    def live(self) -> np.ndarray:
        """(N,) bool: agents that act at the current row (alive and not ended)."""
        return self._live.copy()

    @property
    def done(self) -> bool:
        """Whether the current episode has no live agent left (call `finish`)."""
        return self.recording and not self._live.any()

    def discard(self) -> None:
        """Drop the episode in progress, if any."""
        self._rows = []
        self._offset, self.stored_id = 0, None
        self._live[:] = False
        self._ended[:] = False

    # --- dict entry points ---
    def start(self, obs: Mapping[str, Any], infos: Mapping[str, Mapping[str, Any]], state: Any) -> None:
        """Begin an episode from ``env.reset()``'s dicts and ``env.state()``.

        Args:
            obs: agent -> observation (flat, the size of the agent's observation space).
            infos: agent -> info dict, read for ``"action_mask"`` where ``spec.action_masked``.
            state: (S,) global state.
        """
        self._check_keys("obs", obs)
        self._check_keys("infos", infos)
        o, alive = self._stack_obs(obs)
        self.start_arrays(o, state, alive, stack_masks(self.spec, infos, alive))

    def add(
        self,
        actions: Mapping[str, Any],
        obs: Mapping[str, Any],
        rewards: Mapping[str, float],
        terminations: Mapping[str, bool],
        truncations: Mapping[str, bool],
        infos: Mapping[str, Mapping[str, Any]],
        state: Any,
    ) -> None:
        """Record one env step: the ``actions`` taken at the current row and what ``env.step`` returned.

        Raises:
            ValueError: a missing, unknown or finished agent, keys of ``obs`` / ``rewards`` /
                ``terminations`` / ``truncations`` that disagree, a wrong observation size,
                non-finite values, or an agent that vanished without ending.
            TypeError: a non-integer discrete action or non-numeric input.
        """
        self._require_running()
        for name, d in (("obs", obs), ("rewards", rewards), ("terminations", terminations), ("truncations", truncations)):
            self._check_keys(name, d)
            if name != "obs" and set(d) != set(obs):
                raise ValueError(f"{name}: expected the agents of obs {sorted(obs)}, got {sorted(d)}")
        self._check_keys("infos", infos)
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions: expected a dict agent -> action, got {type(actions).__name__}")
        check_actions(self.spec, actions, [a for a, on in zip(self.spec.agents, self._live) if on])
        o, alive = self._stack_obs(obs)
        self.add_arrays(
            self._stack_actions(actions),
            o,
            state,
            alive,
            stack_rewards(self.spec, rewards),
            stack_rewards(self.spec, terminations, dtype=bool),
            stack_rewards(self.spec, truncations, dtype=bool),
            stack_masks(self.spec, infos, alive),
        )

    # --- array entry points ---
    def start_arrays(self, obs: Any, state: Any, alive: Any, action_mask: Any | None = None) -> None:
        """Begin an episode from fixed-slot arrays.

        Args:
            obs: (N, D) float observations; rows of absent agents are stored as zeros.
            state: (S,) float global state.
            alive: (N,) bool, agents with an observation.
            action_mask: (N, A) bool available actions (default: each agent's own actions); rows of
                absent agents are stored as all True.
        """
        if self.recording:
            raise RuntimeError(f"start: an episode of {self.num_steps} steps is in progress; finish() or discard() it first")
        row = self._row(obs, state, alive, action_mask)
        if not row["alive"].any():
            raise ValueError(f"alive: expected at least one agent alive at the first row, got {row['alive']}")
        self._check_mask(row["action_mask"], row["alive"])
        n = self.spec.n_agents
        row.update(reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))
        row["action"] = self._zero_action()
        self._rows, self._offset, self.stored_id = [row], 0, None
        self._live = row["alive"].copy()
        self._ended[:] = False

    def add_arrays(
        self,
        action: Any,
        obs: Any,
        state: Any,
        alive: Any,
        reward: Any,
        terminated: Any,
        truncated: Any,
        action_mask: Any | None = None,
    ) -> None:
        """Record one env step from fixed-slot arrays.

        Args:
            action: (N,) int (discrete) or (N, A) float (continuous), taken at the current row;
                entries of agents that do not act are ignored (stored as zeros).
            obs: (N, D) float observations after the step (an ending agent's terminal one included).
            state: (S,) float global state after the step.
            alive: (N,) bool, agents with an observation after the step.
            reward: (N,) float rewards of the step.
            terminated: (N,) bool, agents that terminated on this step.
            truncated: (N,) bool, agents that were truncated on this step.
            action_mask: (N, A) bool available actions after the step (default: each agent's own).
        """
        self._require_running()
        n = self.spec.n_agents
        act = self._check_action(action)
        term = _numeric("terminated", terminated, (n,), bool)
        trunc = _numeric("truncated", truncated, (n,), bool)
        ended = term | trunc
        row = self._row(obs, state, alive, action_mask)
        alive = row["alive"]
        rew = _numeric("reward", reward, (n,), np.float32)
        t = len(self._rows)
        self._check_finite("reward", rew, np.ones(n, dtype=bool), t)
        for bad, rule in (
            (self._live & ~alive, "live at the previous row but without an observation and without ending"),
            (self._ended & alive, "alive although it ended earlier"),
            (ended & ~alive, "terminated or truncated without an observation (alive=False)"),
            ((rew != 0) & ~alive, "rewarded without an observation (alive=False)"),
        ):
            if bad.any():
                raise ValueError(f"alive: agents {self._names(bad)} are {rule} at row {t}")
        self._check_mask(row["action_mask"], alive & ~ended)
        row.update(reward=rew, terminated=term, truncated=trunc, action=self._zero_action())
        self._rows[-1]["action"] = act
        self._rows.append(row)
        self._live = alive & ~ended
        self._ended |= ended

    def finish(self, truncate: bool = False) -> dict[str, np.ndarray]:
        """End the episode and return it; the recorder is then ready for `start` again.

        Args:
            truncate: the collector stopped the episode while agents still act; mark them truncated
                on the last row. Without it, live agents left over raise a `RuntimeError`.

        Returns:
            The episode: field -> (T+1, ...) array, in the format of `wmenv.data.episode`.
        """
        if not self.recording:
            raise RuntimeError("finish: no episode in progress; call start() first")
        if len(self._rows) < 2:
            raise RuntimeError("finish: the episode has no steps yet; call add() at least once")
        if self._live.any():
            if not truncate:
                raise RuntimeError(
                    f"finish: agents {self._names(self._live)} are still live at row {len(self._rows) - 1}; "
                    "keep stepping, or pass truncate=True to mark them truncated"
                )
            self._rows[-1]["truncated"] = self._rows[-1]["truncated"] | self._live
        ep = self._piece(self._rows, ends=True)
        self.discard()
        validate_episode(ep, self.spec)  # a safety net: the per-row checks should make this pass
        return ep

    def flush(self) -> dict[str, np.ndarray] | None:
        """The rows recorded since the last flush whose actions are known, as a piece of the episode in progress
        (``is_last`` all False; ``is_first`` only on the episode's first piece), or None when there are none yet.

        The current row, whose action is not taken yet, stays: it is the next piece's row 0 (or `finish`'s).
        """
        if not self.recording or len(self._rows) < 2 or self.done:
            return None
        piece = self._piece(self._rows[:-1], ends=False)
        self._offset += len(self._rows) - 1
        self._rows = self._rows[-1:]
        validate_episode(piece, self.spec)
        return piece

    def _piece(self, rows: list[dict[str, np.ndarray]], ends: bool) -> dict[str, np.ndarray]:
        """Stack ``rows`` with their flags: a reset on row 0 if no earlier piece was handed out, the last-row flags if
        the episode ``ends`` there."""
        count = len(rows)
        ep = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        ep["is_first"] = (np.arange(count) == 0) & (self._offset == 0)
        ep["is_last"] = (np.arange(count) == count - 1) & ends
        took_part = ep["alive"].any(0)
        ep["is_terminal"] = ep["is_last"] & bool(ep["terminated"][:, took_part].any(0).all())
        return ep

    # --- helpers ---
    def _require_running(self) -> None:
        if not self.recording:
            raise RuntimeError("add: no episode in progress; call start() first")
        if not self._live.any():
            raise RuntimeError(f"add: the episode ended at row {len(self._rows) - 1} (no live agents); call finish()")

    def _names(self, mask: np.ndarray) -> list[str]:
        return [a for a, m in zip(self.spec.agents, mask) if m]

    def _check_keys(self, name: str, d: Mapping[str, Any]) -> None:
        if not isinstance(d, Mapping):
            raise TypeError(f"{name}: expected a dict agent -> value, got {type(d).__name__}")
        unknown = [a for a in d if a not in self.spec.observation_spaces]
        if unknown:
            raise ValueError(f"{name}: unknown agents {unknown}; known agents are {list(self.spec.agents)}")

    def _check_finite(self, name: str, x: np.ndarray, agents: np.ndarray, row: int) -> None:
        """Raise if ``x`` ((N,) or (N, ...)) holds NaN/inf for any agent selected by ``agents`` (N,) bool."""
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(-1) & agents
        if bad.any():
            raise ValueError(f"{name}: expected finite values, got NaN/inf for agents {self._names(bad)} at row {row}")

    def _stack_obs(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        for a, o in obs.items():
            size = int(self.spec.observation_spaces[a].shape[0])
            if np.size(o) != size:
                raise ValueError(f"obs[{a!r}]: expected {size} features, got shape {np.shape(o)}")
        return stack_obs(self.spec, obs)

    def _stack_actions(self, actions: Mapping[str, Any]) -> np.ndarray:
        out = self._zero_action()
        for i, a in enumerate(self.spec.agents):
            if a in actions:
                if self.spec.discrete:
                    out[i] = int(actions[a])
                else:
                    out[i, : self._own_actions[i]] = np.asarray(actions[a], dtype=np.float32)
        return out

    def _zero_action(self) -> np.ndarray:
        n = self.spec.n_agents
        return np.zeros(n, np.int64) if self.spec.discrete else np.zeros((n, self.spec.n_actions), np.float32)

    def _check_action(self, action: Any) -> np.ndarray:
        n, live = self.spec.n_agents, self._live
        if self.spec.discrete:
            arr = np.asarray(action)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"action: expected integer actions of shape ({n},), got dtype {arr.dtype}")
            arr = _numeric("action", arr, (n,), np.int64)
            bad = live & ((arr < 0) | (arr >= self._own_actions))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"action: expected an integer in [0, {self._own_actions[i]}) for {self.spec.agents[i]!r}, got {arr[i]}"
                )
        else:
            arr = _numeric("action", action, (n, self.spec.n_actions), np.float32)
            self._check_finite("action", arr, live, len(self._rows) - 1)
            arr[np.arange(arr.shape[1])[None, :] >= self._own_actions[:, None]] = 0.0  # padded dims
        arr[~live] = 0
        return arr

    def _check_mask(self, mask: np.ndarray, acting: np.ndarray) -> None:
        own = np.arange(mask.shape[1])[None, :] < self._own_actions[:, None]  # (N, A)
        empty = acting & ~(mask & own).any(-1)
        if self.spec.discrete and empty.any():
            t = len(self._rows)
            raise ValueError(f"action_mask: agents {self._names(empty)} act at row {t} but have no available action")

    def _row(self, obs: Any, state: Any, alive: Any, action_mask: Any | None) -> dict[str, np.ndarray]:
        """Validated (N, D) obs, (S,) state, (N, A) action_mask and (N,) alive of the row about to be added."""
        spec = self.spec
        n = spec.n_agents
        alive = _numeric("alive", alive, (n,), bool)
        obs = _numeric("obs", obs, (n, spec.obs_dim), spec.obs_dtype.type)
        state = _numeric("state", state, (spec.state_dim,), spec.state_dtype.type)
        self._check_finite("obs", obs, alive, len(self._rows))
        if not np.isfinite(state).all():
            bad = np.flatnonzero(~np.isfinite(state)).tolist()
            raise ValueError(f"state: expected finite values, got NaN/inf at features {bad} of row {len(self._rows)}")
        obs[~alive] = 0.0
        if action_mask is None:
            mask = stack_masks(spec, {}, alive)
        else:
            mask = _numeric("action_mask", action_mask, (n, spec.n_actions), bool)
            mask[~alive] = True
        return {"obs": obs, "state": state, "action_mask": mask, "alive": alive}

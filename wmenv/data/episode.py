"""The episode format shared by the replay, the world models and the model-based loop.

Glossary: T env steps, N agent slots (in ``spec.agents`` order), D observation features,
A actions (discrete: choices; continuous: action dims), S global-state features.

An episode of T env steps is a dict of NumPy arrays with T+1 rows (the Dreamer convention).
Row t holds what was seen on arriving at row t and what was done there:

================  ================================  ===============================================
key               shape / dtype                     meaning
================  ================================  ===============================================
``obs``           (T+1, N, D) float32 (uint8 frames) observation at row t; zeros for absent agents
``state``         (T+1, S) float32 (uint8 frames)    global state at row t
``action_mask``   (T+1, N, A) bool                  available actions; all True for absent agents
                                                    and unmasked envs
``alive``         (T+1, N) bool                     the agent has an observation at row t (an agent
                                                    that ends on arriving at row t is alive there)
``action``        (T+1, N) int64 or (T+1, N, A)     action taken at row t; zeros on the last row
                  float32                           and for agents that do not act
``reward``        (T+1, N) float32                  reward received on arriving at row t (0 on row 0)
``terminated``    (T+1, N) bool                     the agent terminated on arriving at row t
``truncated``     (T+1, N) bool                     the agent was truncated on arriving at row t
``is_first``      (T+1,) bool                       row 0 only
``is_last``       (T+1,) bool                       final row only
``is_terminal``   (T+1,) bool                       final row, when every agent that took part
                                                    terminated (none was only truncated)
================  ================================  ===============================================

Agents act at row t when they are *live*: ``alive[t]`` and not ended (terminated or truncated) at
row t. A live agent has an observation at row t+1; an ended one never again.

A *piece* is a run of consecutive rows of an episode that has not ended yet, or the rest of one stored earlier in
pieces (streamed collection: `wmenv.data.recorder.EpisodeRecorder.flush`). It has the same fields; ``is_first`` is
all False when it continues an earlier piece (its row 0 is not a reset, and may hold a reward), and ``is_last`` and
``is_terminal`` are all False while the episode goes on (its last row's action was taken, its live agents have not
ended). A whole episode is a piece with both flags set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from wmenv.envs.spec import EnvSpec

FIELDS: tuple[str, ...] = (
    "obs",
    "state",
    "action_mask",
    "alive",
    "action",
    "reward",
    "terminated",
    "truncated",
    "is_first",
    "is_last",
    "is_terminal",
)
"""The keys every episode carries; further keys are allowed (e.g. ``step`` counters, log-probs)."""


def episode_schema(spec: EnvSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-row shape and dtype of every standard episode field for ``spec``.

    Returns:
        field -> (shape of one row, dtype); e.g. ``"obs" -> ((N, D), float32)``.
    """
    return _schema(spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions, spec.discrete, spec.obs_dtype,
                   spec.state_dtype)  # fmt: skip


def _infer_schema(ep: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The schema an episode implies when no spec is given (N, D from ``obs``, A from ``action_mask``)."""
    _, n, d = _ndim("obs", ep["obs"], 3)
    _, n_m, a = _ndim("action_mask", ep["action_mask"], 3)
    _, s = _ndim("state", ep["state"], 2)
    if n_m != n:
        raise ValueError(f"episode['action_mask']: expected {n} agent slots (from obs), got shape {ep['action_mask'].shape}")
    act = ep["action"]
    discrete = isinstance(act, np.ndarray) and np.issubdtype(act.dtype, np.integer)
    frames = lambda k: np.dtype(np.uint8) if ep[k].dtype == np.uint8 else np.dtype(np.float32)  # noqa: E731
    return _schema(n, d, s, a, discrete, frames("obs"), frames("state"))


def _schema(n: int, d: int, s: int, a: int, discrete: bool, obs_dtype: np.dtype,
            state_dtype: np.dtype) -> dict[str, tuple[tuple[int, ...], np.dtype]]:  # fmt: skip
    """The schema of N agent slots, D observation features, S state features and A actions (observations and state
    float32, or uint8 frames)."""
    f32, b = np.dtype(np.float32), np.dtype(bool)
    return {
        "obs": ((n, d), obs_dtype),
        "state": ((s,), state_dtype),
        "action_mask": ((n, a), b),
        "alive": ((n,), b),
        "action": ((n,), np.dtype(np.int64)) if discrete else ((n, a), f32),
        "reward": ((n,), f32),
        "terminated": ((n,), b),
        "truncated": ((n,), b),
        "is_first": ((), b),
        "is_last": ((), b),
        "is_terminal": ((), b),
    }


def _ndim(name: str, x: Any, ndim: int) -> tuple[int, ...]:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"episode[{name!r}]: expected a numpy array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"episode[{name!r}]: expected {ndim} dimensions, got shape {x.shape}")
    return x.shape


def validate_episode(ep: Mapping[str, np.ndarray], spec: EnvSpec | None = None) -> int:
    """Check that ``ep`` is an episode (or a piece of one) in the format above.

    Args:
        ep: field -> (T+1, ...) array; extra fields are allowed if they have T+1 rows.
        spec: when given, shapes must match it exactly (and discrete actions its action spaces);
            without it, N, D, S and A are taken from the episode itself.

    Returns:
        T = rows - 1, the number of env steps between its rows.

    Raises:
        TypeError: ``ep`` is not a mapping of numpy arrays.
        ValueError: a missing key, a wrong dtype or shape, rows that disagree, or flags and alive
            masks that break the format (the message names the field and the offending row).
    """
    if not isinstance(ep, Mapping):
        raise TypeError(f"episode: expected a dict of numpy arrays, got {type(ep).__name__}")
    missing = [k for k in FIELDS if k not in ep]
    if missing:
        raise ValueError(f"episode: missing keys {missing}; expected at least {list(FIELDS)}, got {sorted(ep)}")
    for k, v in ep.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TypeError(f"episode[{k!r}]: expected a numpy array under a str key, got {type(v).__name__}")
    schema = episode_schema(spec) if spec is not None else _infer_schema(ep)
    rows = ep["is_first"].shape[0] if ep["is_first"].ndim else 0
    whole = rows > 0 and bool(ep["is_first"][0]) and bool(np.asarray(ep["is_last"])[-1])
    if rows < (2 if whole else 1):
        raise ValueError(f"episode: expected at least 2 rows (one env step), got {rows}")
    for k, v in ep.items():
        if v.ndim == 0 or v.shape[0] != rows:
            raise ValueError(f"episode[{k!r}]: expected {rows} rows (T+1, from is_first), got shape {v.shape}")
        if k in schema:
            shape, dtype = schema[k]
            if v.shape[1:] != shape or v.dtype != dtype:
                raise ValueError(f"episode[{k!r}]: expected shape {(rows, *shape)} {dtype}, got {v.shape} {v.dtype}")
    _check_values(ep)
    _check_flags(ep)
    _check_agents(ep, spec)
    return rows - 1


def _check_values(ep: Mapping[str, np.ndarray]) -> None:
    for k in ("obs", "state", "reward") + (("action",) if ep["action"].dtype == np.float32 else ()):
        bad = ~np.isfinite(ep[k])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(f"episode[{k!r}]: expected finite values, got NaN/inf at row {row}")


def _check_flags(ep: Mapping[str, np.ndarray]) -> None:
    rows = ep["is_first"].shape[0]
    first = np.zeros(rows, dtype=bool)
    first[0] = True
    starts, ends = bool(ep["is_first"][0]), bool(ep["is_last"][-1])  # a piece may do neither
    if not np.array_equal(ep["is_first"], first & starts):
        got = np.flatnonzero(ep["is_first"]).tolist()
        raise ValueError(f"episode['is_first']: expected True on row 0 only (or nowhere in a piece), got True at rows {got}")
    if not np.array_equal(ep["is_last"], first[::-1] & ends):
        got = np.flatnonzero(ep["is_last"]).tolist()
        raise ValueError(
            f"episode['is_last']: expected True on row {rows - 1} only (or nowhere in a piece), got True at rows {got}"
        )
    if (ep["is_terminal"] & ~ep["is_last"]).any():
        got = np.flatnonzero(ep["is_terminal"]).tolist()
        raise ValueError(f"episode['is_terminal']: expected False before the last row, got True at rows {got}")
    for k in ("reward", "terminated", "truncated") if starts else ():
        if ep[k][0].any():
            raise ValueError(f"episode[{k!r}]: expected zeros on row 0 (nothing is received on reset), got {ep[k][0]}")
    if ends and ep["action"][-1].any():
        raise ValueError(f"episode['action']: expected zeros on the last row (no action is taken), got {ep['action'][-1]}")


def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    """(row, agent slot) of the first True entry of a (T+1, N) mask."""
    r, i = np.argwhere(mask)[0]
    return int(r), int(i)


def _check_agents(ep: Mapping[str, np.ndarray], spec: EnvSpec | None) -> None:
    alive, action = ep["alive"], ep["action"]
    ended = ep["terminated"] | ep["truncated"]
    ended_before = np.zeros_like(ended)
    ended_before[1:] = np.logical_or.accumulate(ended, axis=0)[:-1]
    live = alive & ~ended
    ends = bool(ep["is_last"][-1])  # else a piece of an episode that goes on: its live agents act on its last row
    if not alive[0].any():
        raise ValueError("episode['alive']: expected at least one agent alive on row 0, got none")
    if not ends and not live[-1].any():
        raise ValueError(f"episode['is_last']: expected True on row {alive.shape[0] - 1}: no agent is live there, the "
                         "episode ended (a piece of an episode that goes on has a live agent on its last row)")  # fmt: skip
    rules = (  # (field, violations as a (rows, N) mask, row of its first row, rule)
        ("terminated/truncated", ended & ~alive, 0, "an agent that ends on arriving at a row must be alive there"),
        ("alive", alive & ended_before, 0, "an agent that ended must not be alive afterwards"),
        ("alive", live[:-1] & ~alive[1:], 1, "a live agent must be alive on the next row unless it ended"),
        ("alive", live[-1:] & ends, alive.shape[0] - 1, "every agent alive on the last row must end there"),
        ("reward", (ep["reward"] != 0) & ~alive, 0, "reward of an absent agent must be 0"),
    )
    for name, bad, row0, rule in rules:
        if bad.any():
            r, i = _first_bad(bad)
            raise ValueError(f"episode[{name!r}]: {rule}; violated by agent slot {i} at row {row0 + r}")
    if (ep["obs"][~alive] != 0).any():
        r, i = _first_bad((ep["obs"] != 0).any(-1) & ~alive)
        raise ValueError(f"episode['obs']: expected zeros for absent agents; agent slot {i} at row {r} is absent but non-zero")
    if not ep["action_mask"][~alive].all():
        r, i = _first_bad(~ep["action_mask"].all(-1) & ~alive)
        raise ValueError(f"episode['action_mask']: expected all True for absent agents; agent slot {i} at row {r} is not")
    acting = action != 0 if action.ndim == 2 else (action != 0).any(-1)
    if (acting & ~live).any():
        r, i = _first_bad(acting & ~live)
        raise ValueError(f"episode['action']: expected zeros where an agent does not act; agent slot {i} at row {r} is not")
    if action.ndim == 2:
        n_own = np.full(alive.shape[1], ep["action_mask"].shape[-1])
        if spec is not None:
            n_own = np.array([int(spec.action_spaces[a].n) for a in spec.agents])
        bad = live & ((action < 0) | (action >= n_own))
        if bad.any():
            r, i = _first_bad(bad)
            raise ValueError(
                f"episode['action']: expected actions in [0, {n_own[i]}) for agent slot {i}, got {action[r, i]} at row {r}"
            )
    terminal = ends and bool(ep["terminated"][:, alive.any(0)].any(0).all())
    if bool(ep["is_terminal"][-1]) != terminal:
        raise ValueError(
            f"episode['is_terminal']: expected {terminal} on the last row (True iff every agent that took part terminated), "
            f"got {bool(ep['is_terminal'][-1])}"
        )

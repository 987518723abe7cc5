"""Where replay windows start: the pluggable part of `EpisodeReplay.sample`.

Glossary: E stored episodes, B batch (windows).

The replay works out, for every stored episode, how many start rows give a valid window
(``valid``, (E,) int64) and asks a `StartSampler` to pick B (episode, start row) pairs among them.
`uniform_starts` picks uniformly over all valid pairs; `EventStarts` draws windows that hold rare
events (large rewards, terminations) at a set rate; a DFS sampler (DRAMA's dynamic
frequency-based sampling) keeps per-episode visit counts keyed by ``episode_ids`` and plugs in the same way.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class StartSampler(Protocol):
    """Picks where B windows start."""

    def __call__(
        self, valid: np.ndarray, episode_ids: np.ndarray, length: int, batch_size: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Choose B window starts.

        Args:
            valid: (E,) int64, number of valid start rows of each stored episode, oldest first: the
                window may start at rows ``0 .. valid[e] - 1`` of episode e. At least one is positive.
            episode_ids: (E,) int64, ids the replay gave the episodes (unique, increasing; stable
                across evictions), for samplers that keep per-episode statistics.
            length: T, the window length in rows.
            batch_size: B.
            generator: the source of randomness; the same generator state must give the same picks.

        Returns:
            episode: (B,) int64 indices into the stored episodes (0 = oldest).
            start: (B,) int64 start rows, ``0 <= start < valid[episode]``.
        """
        ...


def uniform_starts(
    valid: np.ndarray, episode_ids: np.ndarray, length: int, batch_size: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform over all valid (episode, start row) pairs: every valid window is equally likely.

    Args:
        valid: (E,) int64 valid start rows per episode (see `StartSampler`).
        episode_ids: (E,) int64, unused.
        length: T, unused (``valid`` already accounts for it).
        batch_size: B.
        generator: torch generator drawing the B picks.

    Returns:
        episode: (B,) int64; start: (B,) int64.
    """
    valid = np.asarray(valid, dtype=np.int64)
    total = int(valid.sum())
    if total <= 0:
        raise ValueError(f"valid: expected at least one valid start, got counts {valid.tolist()}")
    u = torch.randint(total, (batch_size,), generator=generator, dtype=torch.int64).numpy()  # (B,)
    ends = np.cumsum(valid)  # (E,) exclusive end of each episode's block of starts
    episode = np.searchsorted(ends, u, side="right")
    start = u - (ends[episode] - valid[episode])
    return episode.astype(np.int64), start.astype(np.int64)


def event_rows(episode: dict[str, np.ndarray], min_abs_reward: float = 1.0, terminations: bool = True) -> np.ndarray:
    """(R,) bool: rows of an episode (field -> (R, ...) arrays) where some agent has an event.

    An event row has a reward with ``|reward| >= min_abs_reward`` for some agent (``reward`` (R, N)),
    or, with ``terminations``, some agent terminated on arriving there (``terminated`` (R, N)).
    """
    reward = np.abs(np.asarray(episode["reward"], dtype=np.float64)).reshape(len(episode["reward"]), -1)  # (R, N)
    rows = (reward >= min_abs_reward).any(-1)
    if terminations:
        rows |= np.asarray(episode["terminated"], dtype=bool).reshape(len(rows), -1).any(-1)
    return rows


class EventStarts:
    """Balanced sampling: each window holds an event row (see `event_rows`) with probability ``rate``.

    Every window is drawn, independently, from the valid windows that contain at least one event row
    with probability ``rate``, else from those without any, uniformly within each group; where one
    group is empty, from the other (uniform over all valid windows when no stored episode has an event).
    Rewards of ±1 or more and terminations are what Flatland's rare +10 arrivals and −5 deadlocks are.

    Args:
        replay: the `EpisodeReplay` whose episodes are read (each episode once; cached by episode id).
        rate: probability in [0, 1] that a window holds an event.
        min_abs_reward: rewards at least this large in magnitude are events.
        terminations: terminations are events too.

    Usage::

        replay.sampler = EventStarts(replay, rate=0.5)
    """

    def __init__(self, replay, rate: float, min_abs_reward: float = 1.0, terminations: bool = True) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"rate: expected a probability in [0, 1], got {rate!r}")
        if isinstance(min_abs_reward, bool) or not isinstance(min_abs_reward, (int, float)) or not min_abs_reward > 0:
            raise ValueError(f"min_abs_reward: expected a positive number, got {min_abs_reward!r}")
        self.replay, self.rate = replay, float(rate)
        self.min_abs_reward, self.terminations = float(min_abs_reward), bool(terminations)
        self._cumsum: dict[int, np.ndarray] = {}  # episode id -> (R+1,) running count of event rows
        self._groups: tuple[tuple, list[np.ndarray]] | None = None  # (T, valid, ids) -> `_split` of the last call

    def _events(self, index: int, episode_id: int) -> np.ndarray:
        if episode_id not in self._cumsum:
            rows = event_rows(self.replay.episode(index), self.min_abs_reward, self.terminations)
            self._cumsum[episode_id] = np.concatenate([[0], np.cumsum(rows)])
        return self._cumsum[episode_id]

    def _split(self, valid: np.ndarray, episode_ids: np.ndarray, length: int) -> list[np.ndarray]:
        """Positions among all Σ valid starts of windows without / with an event row: two sorted int64 arrays."""
        stored = set(episode_ids.tolist())
        self._cumsum = {i: c for i, c in self._cumsum.items() if i in stored}  # forget evicted episodes
        has = []  # per episode: (valid[e],) bool, the window starting there holds an event row
        for e, (v, i) in enumerate(zip(valid.tolist(), episode_ids.tolist())):
            cs = self._events(e, i)
            starts = np.arange(v)
            has.append(cs[np.minimum(starts + length, len(cs) - 1)] > cs[starts])
        flat = np.concatenate(has) if has else np.zeros(0, bool)  # (Σ valid,)
        groups = [np.flatnonzero(~flat), np.flatnonzero(flat)]
        if not len(groups[0]) and not len(groups[1]):
            raise ValueError(f"valid: expected at least one valid start, got counts {valid.tolist()}")
        return groups

    def __call__(
        self, valid: np.ndarray, episode_ids: np.ndarray, length: int, batch_size: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Choose B window starts (the `StartSampler` protocol); ``episode_ids`` must be the replay's own."""
        valid, episode_ids = np.asarray(valid, dtype=np.int64), np.asarray(episode_ids, dtype=np.int64)
        key = (length, valid.tobytes(), episode_ids.tobytes())
        if self._groups is None or self._groups[0] != key:  # recomputed only when the replay or T changed
            self._groups = (key, self._split(valid, episode_ids, length))
        groups = self._groups[1]
        want = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy() < self.rate  # (B,) event window?
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy()  # (B,) position within the group
        pos = np.zeros(batch_size, np.int64)
        for g, group in enumerate(groups):
            pick = want == bool(g) if len(groups[1 - g]) else np.ones(batch_size, bool)
            if len(group):
                pos[pick] = group[np.minimum((u[pick] * len(group)).astype(np.int64), len(group) - 1)]
        ends = np.cumsum(valid)  # (E,) exclusive end of each episode's block of starts
        episode = np.searchsorted(ends, pos, side="right")
        start = pos - (ends[episode] - valid[episode])
        return episode.astype(np.int64), start.astype(np.int64)

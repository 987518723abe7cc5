"""Where replay windows start: the pluggable part of `EpisodeReplay.sample`.

Glossary: E stored episodes, B batch (windows).

The replay works out, for every stored episode, how many start rows give a valid window
(``valid``, (E,) int64) and asks a `StartSampler` to pick B (episode, start row) pairs among them.
`uniform_starts` picks uniformly over all valid pairs; `RecentStarts` uniformly among the newest episodes' starts (e.g.
dream starts from what the latest policies did); `EventStarts` draws windows that hold rare
events (large rewards, terminations) at a set rate; `DFS` (DRAMA's dynamic frequency-based sampling) keeps
per-row visit counts keyed by ``episode_ids`` and offers one sampler for world-model windows and one for
imagination starts (`EpisodeReplay.using` hands the second to a dream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from wmenv.checks import check_int, check_unit_interval


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
    return _flat_to_pairs(valid, u)


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


@dataclass(frozen=True)
class RecentStarts:
    """Uniform over the valid starts of the newest episodes only: those holding the newest ``rows`` stored rows (the
    episode that crosses that boundary included), widened back to the newest episode with a valid start if none of
    them has one. An episode with valid starts counts ``valid + T - 1`` rows (exact for windows kept inside episodes),
    one without counts none. Where every stored episode is inside the boundary it draws exactly as `uniform_starts`
    (the same picks from the same generator state).

    Usage::

        dream = DreamVecEnv(model, 256, 15, start=replay.using(RecentStarts(5_000)))
    """

    rows: int
    """How many of the newest stored rows (real env steps) the starts are drawn from."""

    def __post_init__(self) -> None:
        check_int("RecentStarts.rows", self.rows)

    def __call__(
        self, valid: np.ndarray, episode_ids: np.ndarray, length: int, batch_size: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Choose B window starts (the `StartSampler` protocol)."""
        valid = np.asarray(valid, dtype=np.int64)
        if not valid.sum() > 0:
            raise ValueError(f"valid: expected at least one valid start, got counts {valid.tolist()}")
        rows = np.where(valid > 0, valid + length - 1, 0)[::-1]  # (E,) newest first
        newest = int(np.searchsorted(np.cumsum(rows), self.rows)) + 1  # episodes that hold the newest `rows`
        newest = max(newest, int(np.flatnonzero(rows)[0]) + 1)  # at least the newest one with a valid start
        recent = valid.copy()
        recent[: max(len(valid) - newest, 0)] = 0
        return uniform_starts(recent, episode_ids, length, batch_size, generator)


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
        check_unit_interval("rate", rate, what="a probability")
        if isinstance(min_abs_reward, bool) or not isinstance(min_abs_reward, (int, float)) or not min_abs_reward > 0:
            raise ValueError(f"min_abs_reward: expected a positive number, got {min_abs_reward!r}")
        self.replay, self.rate = replay, float(rate)
        self.min_abs_reward, self.terminations = float(min_abs_reward), bool(terminations)
        self._cumsum: dict[int, np.ndarray] = {}  # episode id -> (R+1,) running count of event rows
        self._groups: tuple[tuple, list[np.ndarray]] | None = None  # (T, valid, ids) -> `_split` of the last call

    def _events(self, index: int, episode_id: int, rows: int) -> np.ndarray:
        cached = self._cumsum.get(episode_id)
        if cached is None or len(cached) != rows + 1:  # new, or a streamed episode that grew since
            fields = self.replay.episode(index, fields=("reward", "terminated"))  # not the frames
            events = event_rows(fields, self.min_abs_reward, self.terminations)
            self._cumsum[episode_id] = np.concatenate([[0], np.cumsum(events)])
        return self._cumsum[episode_id]

    def _split(self, valid: np.ndarray, episode_ids: np.ndarray, length: int) -> list[np.ndarray]:
        """Positions among all Σ valid starts of windows without / with an event row: two sorted int64 arrays."""
        stored = set(episode_ids.tolist())
        self._cumsum = {i: c for i, c in self._cumsum.items() if i in stored}  # forget evicted episodes
        has = []  # per episode: (valid[e],) bool, the window starting there holds an event row
        lengths = self.replay.episode_lengths.tolist()
        for e, (v, i) in enumerate(zip(valid.tolist(), episode_ids.tolist())):
            cs = self._events(e, i, lengths[e])
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
        return _flat_to_pairs(valid, pos)


def _flat_to_pairs(valid: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions among all Σ valid starts (episode-major) -> (episode, start row), both (B,) int64."""
    ends = np.cumsum(valid)  # (E,) exclusive end of each episode's block of starts
    episode = np.searchsorted(ends, pos, side="right")
    return episode.astype(np.int64), (pos - (ends[episode] - valid[episode])).astype(np.int64)


def dfs_world_model_probs(counts: np.ndarray, tau: float = 10.0) -> np.ndarray:
    """DRAMA's world-model draw: p_i ∝ exp(−c_i / τ) over the candidate starts.

    Args:
        counts: (S,) how often each candidate start row was drawn to fit the world model (c).
        tau: temperature τ.

    Returns:
        (S,) float64 probabilities.
    """
    score = -np.asarray(counts, dtype=np.float64) / tau
    e = np.exp(score - score.max())
    return e / e.sum()


def dfs_imagination_probs(
    counts: np.ndarray, imagined: np.ndarray, scale: float, tau: float = 10.0, alpha: float = 1.0, beta: float = 1.0
) -> np.ndarray:
    """DRAMA's imagination draw (as its code runs it): p_i ∝ exp(s_i / τ) with
    s_i = c_i − α v_i/k − β max(0, c_i − v_i/k); with α = β = 1 that is min(0, c_i − v_i/k): starts the world model
    has fitted at least as often as the actor has started from them (per ``scale`` k) are equally likely, the others
    less so.

    Args:
        counts: (S,) world-model draws of each candidate start row (c).
        imagined: (S,) imagination draws of each (v).
        scale: k, imagination starts drawn per world-model start drawn (DRAMA: 1024 / 16).
        tau, alpha, beta: τ, α, β.

    Returns:
        (S,) float64 probabilities.
    """
    c = np.asarray(counts, dtype=np.float64)
    v = np.asarray(imagined, dtype=np.float64) / scale
    score = (c - alpha * v - beta * np.maximum(0.0, c - v)) / tau
    e = np.exp(score - score.max())
    return e / e.sum()


@dataclass
class DFSConfig:
    """DRAMA's dynamic frequency-based sampling (defaults: its ``train.yaml``)."""

    tau: float = 10.0
    """World-model temperature: p ∝ exp(−c / τ)."""
    imagination_tau: float = 10.0
    """Imagination temperature."""
    alpha: float = 1.0
    """Weight of the imagination count in the imagination score."""
    beta: float = 1.0
    """Weight of the penalty max(0, c − v/k) in the imagination score."""
    scale: float | None = None
    """k: imagination starts drawn per world-model start drawn, so that v/k and c count comparable work (DRAMA draws
    1,024 and 16 per env step: 64). None: the ratio of the two kinds of draws counted on the stored rows so far (1
    before both were drawn), which is DRAMA's 64 under its schedule and the right k under any other, e.g. the
    model-based loop's 200 fit steps of 16 windows against 8 dream rollouts of 256 worlds per 1,000 real steps on a
    three-agent task (0.64)."""

    def __post_init__(self) -> None:
        for name in ("tau", "imagination_tau", "scale"):
            value = getattr(self, name)
            if name == "scale" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"DFSConfig.{name}: expected a positive number, got {value!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"DFSConfig.{name}: expected a finite number, got {value!r}")


class DFS:
    """DRAMA's dynamic frequency-based sampling (§2.4): two start samplers over one replay that count, per stored row,
    how often it was drawn as a window *start* for the world model (c) and for imagination (v).

    `world_model_starts` draws with p ∝ exp(−c/τ) (rows the model has seen least first); `imagination_starts` with
    `dfs_imagination_probs` (rows the model has learned, not over-used by the actor). Both draw without replacement
    within a call, as DRAMA's code does (a batch larger than the valid starts takes them all, then draws again), and
    add 1 to the drawn starts' counts. Counts are keyed by episode id, so they follow the replay's evictions (an
    evicted episode's are dropped, the rows a streamed episode gains start at zero) and `state_dict` /
    `load_state_dict` carry them across a save.

    Usage::

        dfs = DFS(replay)
        replay.sampler = dfs.world_model_starts          # what fit() draws
        dream = DreamVecEnv(model, 64, 15, start=replay.using(dfs.imagination_starts))
    """

    def __init__(self, replay, config: DFSConfig | None = None) -> None:
        self.replay, self.config = replay, config or DFSConfig()
        self._counts: dict[int, np.ndarray] = {}  # episode id -> (2, R) int64: [c, v] per row

    def _candidates(self, valid: np.ndarray, episode_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c, v) of every valid start, episode-major: two (Σ valid,) int64 arrays."""
        lengths = self.replay.episode_lengths
        if len(lengths) != len(episode_ids):
            raise ValueError(f"episode_ids: expected the replay's {len(lengths)} episodes, got {len(episode_ids)}")
        stored = set(episode_ids.tolist())
        self._counts = {i: c for i, c in self._counts.items() if i in stored}  # forget evicted episodes
        parts = [self._of(i, rows)[:, :v] for rows, v, i in zip(lengths.tolist(), valid.tolist(), episode_ids.tolist())]
        flat = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.int64)
        return flat[0], flat[1]

    def _of(self, episode_id: int, rows: int) -> np.ndarray:
        """(2, rows) counts of a stored episode, created at zero, and extended by zeros for the rows a streamed
        episode gained since (`EpisodeReplay.add` with ``continues``)."""
        counts = self._counts.get(episode_id)
        if counts is None or counts.shape[1] < rows:
            old = np.zeros((2, 0), np.int64) if counts is None else counts
            counts = self._counts[episode_id] = np.pad(old, ((0, 0), (0, rows - old.shape[1])))
        return counts

    def _draw(self, probs: np.ndarray, valid, episode_ids, batch_size: int, generator: torch.Generator, row: int):
        p = torch.from_numpy(probs)
        picks = []
        while batch_size > 0:
            n = min(batch_size, len(probs))
            picks.append(torch.multinomial(p, n, replacement=False, generator=generator).numpy())
            batch_size -= n
        episode, start = _flat_to_pairs(valid, np.concatenate(picks))
        for e, s in zip(episode.tolist(), start.tolist()):
            self._counts[int(episode_ids[e])][row, s] += 1  # only the start row is counted
        return episode, start

    def world_model_probs(self, valid: np.ndarray, episode_ids: np.ndarray) -> np.ndarray:
        """(Σ valid,) probabilities of the next world-model draw's first pick over the valid starts."""
        c, _ = self._candidates(np.asarray(valid, np.int64), np.asarray(episode_ids, np.int64))
        return dfs_world_model_probs(c, self.config.tau)

    def imagination_probs(self, valid: np.ndarray, episode_ids: np.ndarray) -> np.ndarray:
        """(Σ valid,) probabilities of the next imagination draw's first pick over the valid starts."""
        cfg = self.config
        c, v = self._candidates(np.asarray(valid, np.int64), np.asarray(episode_ids, np.int64))
        return dfs_imagination_probs(c, v, self.scale, cfg.imagination_tau, cfg.alpha, cfg.beta)

    @property
    def scale(self) -> float:
        """k of the imagination score: ``config.scale``, or imagination starts over world-model starts drawn on the
        stored rows so far (1 before both kinds were drawn)."""
        if self.config.scale is not None:
            return float(self.config.scale)
        drawn = sum((c.sum(axis=1) for c in self._counts.values()), np.zeros(2, np.int64))
        return float(drawn[1] / drawn[0]) if drawn.all() else 1.0

    def world_model_starts(
        self, valid: np.ndarray, episode_ids: np.ndarray, length: int, batch_size: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `StartSampler` for world-model windows; counts the drawn starts in c."""
        probs = self.world_model_probs(valid, episode_ids)
        return self._draw(probs, np.asarray(valid, np.int64), np.asarray(episode_ids), batch_size, generator, 0)

    def imagination_starts(
        self, valid: np.ndarray, episode_ids: np.ndarray, length: int, batch_size: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `StartSampler` for imagination contexts; counts the drawn starts in v."""
        probs = self.imagination_probs(valid, episode_ids)
        return self._draw(probs, np.asarray(valid, np.int64), np.asarray(episode_ids), batch_size, generator, 1)

    def counts(self, episode_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(c, v) of a stored episode's rows, each (R,) int64 (zeros for one never drawn from)."""
        ids, lengths = self.replay.episode_ids.tolist(), self.replay.episode_lengths
        if episode_id not in ids:
            raise ValueError(f"episode_id: {episode_id} is not stored in the replay (stored: {ids[:5]}...)")
        c = self._of(episode_id, int(lengths[ids.index(episode_id)]))
        return c[0].copy(), c[1].copy()

    def state_dict(self) -> dict[str, np.ndarray]:
        """The counts of the stored episodes: ``ids`` (K,), ``rows`` (K,), ``counts`` (2, Σ rows) int64."""
        stored = dict(zip(self.replay.episode_ids.tolist(), self.replay.episode_lengths.tolist()))
        ids = sorted(i for i in self._counts if i in stored)
        counts = [self._of(i, stored[i]) for i in ids]  # as long as the episode now is (it may have grown since a draw)
        return {
            "ids": np.asarray(ids, np.int64),
            "rows": np.asarray([c.shape[1] for c in counts], np.int64),
            "counts": np.concatenate(counts, axis=1) if counts else np.zeros((2, 0), np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Continue from `state_dict` (saved with this replay). Counts of episodes evicted since are dropped.

        Raises:
            ValueError: the state is malformed or from another replay (an episode id with another number of rows).
        """
        try:
            ids, rows, counts = (np.asarray(state[k], np.int64) for k in ("ids", "rows", "counts"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"state: expected DFS.state_dict() arrays ids, rows, counts, got {e!r}") from e
        if ids.shape != rows.shape or counts.shape != (2, int(rows.sum())) or (counts < 0).any():
            raise ValueError(f"state: inconsistent shapes ids {ids.shape}, rows {rows.shape}, counts {counts.shape}")
        stored = dict(zip(self.replay.episode_ids.tolist(), self.replay.episode_lengths.tolist()))
        loaded, offset = {}, 0
        for i, r in zip(ids.tolist(), rows.tolist()):
            if i in stored and stored[i] != r:
                raise ValueError(f"state: episode {i} has {r} rows in the sampler state but {stored[i]} in the replay "
                                 "(a sampler state from another replay?)")  # fmt: skip
            if i in stored:
                loaded[i] = counts[:, offset : offset + r].copy()
            offset += r
        self._counts = loaded

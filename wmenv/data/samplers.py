"""Where replay windows start: the pluggable part of `EpisodeReplay.sample`.

Glossary: E stored episodes, B batch (windows).

The replay works out, for every stored episode, how many start rows give a valid window
(``valid``, (E,) int64) and asks a `StartSampler` to pick B (episode, start row) pairs among them.
`uniform_starts` picks uniformly over all valid pairs; a DFS sampler (DRAMA's dynamic
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

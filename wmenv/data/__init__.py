"""Episode replay: record whole multi-agent episodes, sample ``(B, T, N, ...)`` windows, save atomically.

Glossary: B batch, T time (rows), N agent slots, D observation features, A actions, S state features.

==============================  ================================================================
`EpisodeRecorder`               PettingZoo dicts (or fixed-slot arrays) -> one episode of T+1 rows
`validate_episode`              checks an episode dict against the format (and an `EnvSpec`)
`EpisodeReplay`, `ReplayConfig`  whole episodes in, windows out; `save` / `load`, incremental `save_segments`
`uniform_starts`                the default window-start sampler (`StartSampler` protocol)
`EventStarts`, `event_rows`     balanced sampling: windows with rare events (large rewards, terminations) at a rate
`DFS`, `DFSConfig`              DRAMA's dynamic frequency-based sampling: world-model and imagination starts
==============================  ================================================================
"""

from wmenv.data.episode import FIELDS, episode_schema, validate_episode
from wmenv.data.recorder import EpisodeRecorder
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.data.samplers import (
    DFS,
    DFSConfig,
    EventStarts,
    RecentStarts,
    StartSampler,
    event_rows,
    uniform_starts,
)

__all__ = [
    "FIELDS",
    "EpisodeRecorder",
    "DFS",
    "DFSConfig",
    "EventStarts",
    "EpisodeReplay",
    "RecentStarts",
    "ReplayConfig",
    "StartSampler",
    "episode_schema",
    "event_rows",
    "uniform_starts",
    "validate_episode",
]

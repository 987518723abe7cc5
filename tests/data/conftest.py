"""Fixtures for the episode / replay tests (helpers live in `episode_fixtures`, importable by name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from episode_fixtures import make_spec, scripted_run

from wmenv.envs.spec import EnvSpec


@pytest.fixture
def spec() -> EnvSpec:
    """The discrete, masked hand-built spec."""
    return make_spec()


@pytest.fixture
def record() -> Callable[..., dict[str, np.ndarray]]:
    """Record a scripted run with `EpisodeRecorder` (dict entry points) and return the episode."""
    from wmenv.data import EpisodeRecorder

    def _record(spec: EnvSpec, **kwargs: Any) -> dict[str, np.ndarray]:
        run = scripted_run(spec, **kwargs)
        rec = EpisodeRecorder(spec)
        rec.start(*run["reset"])
        for step in run["steps"]:
            rec.add(*step)
        return rec.finish()

    return _record

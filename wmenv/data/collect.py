"""`VecRecorder`: records the episodes of all E copies of a `VecEnv` into replay-ready episode dicts.

Glossary: E env copies, N agent slots, D observation features, A actions, S state features.

A `VecStep` reports only agents that still act as ``alive``, and when a copy's episode ends its
``obs`` already belong to the next episode. This module is the one place that turns that view
into the recorder's rows: an agent has an observation at a row if it acts there or just ended
there, and a finished copy's last row is its ``final_obs`` / ``final_state``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wmenv.checks import check_bool
from wmenv.data.recorder import EpisodeRecorder
from wmenv.envs.spec import EnvSpec
from wmenv.envs.vector import VecStep


class VecRecorder:
    """One `EpisodeRecorder` per env copy, fed from `VecStep`s.

    Usage::

        rec = VecRecorder(vec.spec, vec.num_envs)
        step = vec.reset(); rec.start(step)
        while ...:
            actions = ...                       # (E, N)
            step = vec.step(actions)
            episodes += rec.add(actions, step)  # the episodes that ended on this step
    """

    def __init__(self, spec: EnvSpec, num_envs: int) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs: expected an integer >= 1, got {num_envs!r}")
        self.spec, self.num_envs = spec, num_envs
        self.recorders = [EpisodeRecorder(spec) for _ in range(num_envs)]

    def _check(self, step: VecStep) -> None:
        if step.obs.shape[0] != self.num_envs:
            raise ValueError(f"step.obs: expected {self.num_envs} env copies, got shape {step.obs.shape}")

    def start(self, step: VecStep) -> None:
        """Begin an episode in every copy from the `VecStep` of `VecEnv.reset`."""
        self._check(step)
        for e, rec in enumerate(self.recorders):
            rec.discard()
            rec.start_arrays(step.obs[e], step.state[e], step.alive[e], step.action_mask[e])

    def flush(self) -> list[dict[str, np.ndarray]]:
        """Each copy's rows recorded since its last flush, as pieces of the episodes in progress (`EpisodeRecorder.flush`;
        copies with nothing new give none)."""
        return [piece for rec in self.recorders if (piece := rec.flush()) is not None]

    def add(self, actions: Any, step: VecStep) -> list[dict[str, np.ndarray]]:
        """Record the step that produced ``step`` from ``actions``; returns the episodes that ended on it.

        Args:
            actions: (E, N) int or (E, N, A) float, the actions passed to `VecEnv.step`.
            step: what `VecEnv.step` returned.
        """
        self._check(step)
        actions = np.asarray(actions)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"actions: expected {self.num_envs} env copies, got shape {actions.shape}")
        ended = step.terminated | step.truncated  # (E, N)
        done: list[dict[str, np.ndarray]] = []
        for e, rec in enumerate(self.recorders):
            if step.done[e]:
                rec.add_arrays(
                    actions[e], step.final_obs[e], step.final_state[e], ended[e],
                    step.reward[e], step.terminated[e], step.truncated[e], None,
                )  # fmt: skip
                done.append(rec.finish())
                rec.start_arrays(step.obs[e], step.state[e], step.alive[e], step.action_mask[e])
            else:
                rec.add_arrays(
                    actions[e], step.obs[e], step.state[e], step.alive[e] | ended[e],
                    step.reward[e], step.terminated[e], step.truncated[e], step.action_mask[e],
                )  # fmt: skip
        return done


def random_available(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random available actions: mask (E, N, A) bool -> (E, N) int64."""
    u = rng.random(mask.shape) * mask  # zero where masked; ties impossible almost surely
    return u.argmax(-1)


def random_continuous(spec: Any, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random continuous actions within each agent's bounds (standard normal on unbounded dims, 0 on
    padded ones): (E, N, A) float32."""
    from wmenv.envs.spec import action_bounds, own_action_dims

    low, high = action_bounds(spec)
    bounded = np.isfinite(low) & np.isfinite(high)
    low, high = np.where(bounded, low, 0.0), np.where(bounded, high, 0.0)  # no inf - inf below
    u = rng.random((num_envs, *low.shape))
    out = np.where(bounded, low + u * (high - low), rng.standard_normal(u.shape))
    return (out * own_action_dims(spec)).astype(np.float32)


class Collector:
    """Steps a `VecEnv` with a policy and stores every finished episode in a replay.

    Episodes still running when a call ends go on in the next call (nothing is discarded), so
    episodes longer than one call's budget are still recorded; the first call resets ``vec``. With ``stream``, the
    rows of episodes still running are stored too at the end of each call, as pieces (`wmenv.data.episode`), so that
    training need not wait for long episodes (Atari) to end; each row is stored once. Each piece is added as the
    continuation of its episode's stored rows (`EpisodeReplay.add`'s ``continues``): with one env copy the replay
    appends it, so windows run across the calls' boundaries and a call may be as short as one step.

    Each finished episode's `MultiAgentEnv.episode_metrics` (e.g. Flatland's ``arrived_fraction``: the papers' curves
    are these training episodes of the sampling policy) is kept, in the order of the returns, until `take_metrics`.
    """

    def __init__(self, vec: Any, replay: Any, stream: bool = False) -> None:
        check_bool("stream", stream)
        self.vec, self.replay, self.stream = vec, replay, stream
        self.recorder = VecRecorder(vec.spec, vec.num_envs)
        self.step: VecStep | None = None
        self.metrics: list[dict[str, float]] = []
        """The metrics of the episodes that finished since the last `take_metrics`, in order."""

    def take_metrics(self) -> list[dict[str, float]]:
        """The metrics of every episode that finished since the last call (one dict per episode, in the order of the
        returns `__call__` gave), and forget them."""
        metrics, self.metrics = self.metrics, []
        return metrics

    def __call__(self, steps: int, act: Any, progress: bool = False) -> list[float]:
        """Step for at least ``steps`` env steps (rounded up to whole steps of all E copies).

        Args:
            steps: env steps in total.
            act: the policy: `VecStep` -> (E, N) actions.
            progress: show a tqdm bar.

        Returns:
            The mean return per agent of every episode that finished in this call, in order.
        """
        from tqdm.auto import tqdm

        if self.step is None:
            self.step = self.vec.reset()
            self.recorder.start(self.step)
        returns: list[float] = []
        for _ in tqdm(range(-(-steps // self.vec.num_envs)), desc="collect", unit="step", disable=not progress):
            actions = act(self.step)
            self.step = self.vec.step(actions)
            # the ended copies' recorders start their next episodes in `add`: keep their stored ids first
            stored = [self.recorder.recorders[e].stored_id for e in np.flatnonzero(self.step.done)]
            for ep, before in zip(self.recorder.add(actions, self.step), stored, strict=True):
                self._store(ep, before)
            returns += self.step.episode_return[self.step.done].mean(-1).tolist()
            self.metrics += ended_metrics(self.step, self.step.done)
        for rec in self.recorder.recorders if self.stream else ():
            piece = rec.flush()
            if piece is not None:
                rec.stored_id = self._store(piece, rec.stored_id)
        return returns

    def _store(self, piece: dict[str, np.ndarray], stored: int | None) -> int | None:
        """Add ``piece`` to the replay as the continuation of ``stored`` (its episode's rows stored so far, or None);
        returns the id the replay gave (None from stores that give none, e.g. a worker's list)."""
        if stored is None or piece["is_first"][0]:
            return self.replay.add(piece)
        return self.replay.add(piece, continues=stored)


def ended_metrics(step: Any, done: np.ndarray) -> list[dict[str, float]]:
    """The `episode_metrics` of each copy whose episode ended (``done``: (E,) bool), in copy order; {} for each where
    ``step`` reports none (env copies without metrics, or the dream's steps, which have no such field)."""
    reported = getattr(step, "episode_metrics", None)
    return [reported[e] if reported else {} for e in np.flatnonzero(done)]


def mean_metrics(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the episodes that report it (`Collector.take_metrics`' list); {} for none."""
    names = dict.fromkeys(k for m in metrics for k in m)  # first-seen order
    return {k: float(np.mean([m[k] for m in metrics if k in m])) for k in names}


def collect(vec: Any, replay: Any, steps: int, act: Any, progress: bool = False) -> list[float]:
    """Reset ``vec``, step it for at least ``steps`` env steps with ``act`` and store the finished episodes.

    Args:
        vec: the env copies (reset here).
        replay: an `EpisodeReplay` that receives every episode that ends.
        steps: env steps in total (rounded up to whole steps of all E copies).
        act: the policy: `VecStep` -> (E, N) actions.
        progress: show a tqdm bar.

    Returns:
        The mean return per agent of every finished episode, in order; unfinished episodes are dropped.
    """
    return Collector(vec, replay)(steps, act, progress)


def random_actions(spec: Any, action_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random actions of E env copies: available choices (E, N) int64 (`random_available`), or in-bounds
    continuous actions (E, N, A) float32 (`random_continuous`), as ``spec`` has them."""
    if spec.discrete:
        return random_available(action_mask, rng)
    return random_continuous(spec, action_mask.shape[0], rng)


def random_replay(
    env_id: str, steps: int, num_envs: int = 4, seed: int = 0, capacity: int | None = None, stream: bool = False,
    **make_kwargs: Any,
):  # fmt: skip
    """A new `EpisodeReplay` of at least ``steps`` env steps of uniformly random available (or, continuous, in-bounds)
    actions: the episodes that ended, and with ``stream`` also the rows of those still running (as pieces).

    Returns:
        ``(replay, spec)``.
    """
    from wmenv.data.replay import EpisodeReplay, ReplayConfig
    from wmenv.envs.vector import VecEnv

    rng = np.random.default_rng(seed)
    with VecEnv(env_id, num_envs=num_envs, seed=seed, **make_kwargs) as vec:
        replay = EpisodeReplay(ReplayConfig(capacity=capacity or max(2 * steps, 10_000), seed=seed), spec=vec.spec)
        Collector(vec, replay, stream=stream)(steps, lambda s: random_actions(vec.spec, s.action_mask, rng))
        return replay, vec.spec

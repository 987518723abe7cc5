"""Seeds and sweeps: run one training function over many configs, here one after the other or as Ray tasks.

A sweep is a list of configs (one per seed, or per setting of a sweep) and a function that trains one of them
and returns its result. ``backend="local"`` runs them in order in this process; ``backend="ray"`` runs each as a
Ray task reserving ``cpus_per_run`` CPUs (one per core on a small machine, spread over a cluster with
``ray_address``), so a 2-core machine runs two seeds at once without hand-started processes. Every trainer of this
library checkpoints its run folder and resumes it (``resume=True``), so a sweep that is killed, or whose task's
worker dies (Ray retries it ``retries`` times), continues from the runs' last checkpoints when started again.

Results come back in config order. A run that raises does not stop the others: the sweep waits for all of them,
then raises the first failure (in config order) with the run it came from and the remote traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from wmenv.checks import check_choice, check_int, check_positive
from wmenv.envs.ray_backend import join_ray

C = TypeVar("C")
R = TypeVar("R")


@dataclass
class SweepConfig:
    """Where a sweep's runs execute."""

    backend: Literal["local", "ray"] = "local"
    """"local": one run after the other in this process; "ray": one Ray task per run (``pip install "wmenv[ray]"``)."""
    ray_address: str | None = None
    """A Ray cluster to join (``ray.init(address=...)``); None: the running Ray, or a local one on this machine's cores."""
    cpus_per_run: float = 1.0
    """CPUs each Ray task reserves (how many runs share a machine: its cores / this)."""
    retries: int = 1
    """Times Ray restarts a run whose worker process died (the run resumes from its last checkpoint); a run that
    raises is not retried."""
    timeout: float | None = None
    """Seconds to wait for all Ray runs (None: for ever); runs still going then are cancelled and the sweep raises."""

    def __post_init__(self) -> None:
        check_choice("SweepConfig.backend", self.backend, ("local", "ray"))
        check_positive("SweepConfig.cpus_per_run", self.cpus_per_run)
        check_int("SweepConfig.retries", self.retries, 0)
        if self.timeout is not None:
            check_positive("SweepConfig.timeout", self.timeout)


class SweepError(RuntimeError):
    """A run of a sweep failed; ``index`` is its position in the configs, ``failed`` every failed position."""

    def __init__(self, message: str, index: int, failed: list[int]) -> None:
        super().__init__(message)
        self.index, self.failed = index, failed


def run_folder(path: str | Path, config: SweepConfig) -> Path:
    """A run's folder as its config should name it: absolute for Ray tasks, whose processes need not share this
    process's working directory (on a cluster, the path must be on storage every machine mounts)."""
    return Path(path).resolve() if config.backend == "ray" else Path(path)


def run_sweep(train: Callable[[C], R], configs: Sequence[C], config: SweepConfig | None = None,
              names: Sequence[str] | None = None) -> list[R]:  # fmt: skip
    """``[train(c) for c in configs]``, locally or as Ray tasks.

    Args:
        train: trains one config and returns its result (picklable for Ray: a module-level function).
        configs: one per run.
        config: where the runs execute; defaults to `SweepConfig()` (local).
        names: one label per run for error messages (default ``"run i"``), e.g. ``"seed 2"``.

    Raises:
        SweepError: a run raised (the first in config order, after all runs ended); its cause is the run's exception.
        ImportError: ``backend="ray"`` without Ray installed.
        ConnectionError: ``ray_address`` cannot be joined.
    """
    cfg = config if config is not None else SweepConfig()
    if not isinstance(cfg, SweepConfig):
        raise TypeError(f"config: expected a SweepConfig, got {type(cfg).__name__}")
    if not callable(train):
        raise TypeError(f"train: expected a callable, got {type(train).__name__}")
    labels = list(names) if names is not None else [f"run {i}" for i in range(len(configs))]
    if len(labels) != len(configs):
        raise ValueError(f"names: expected one per config ({len(configs)}), got {len(labels)}")
    if cfg.backend == "local":
        outcomes: list[tuple[bool, Any]] = []
        for c in configs:
            try:
                outcomes.append((True, train(c)))
            except Exception as e:  # noqa: BLE001 - the others still run; raised below with the run named
                outcomes.append((False, e))
    else:
        outcomes = _ray_outcomes(train, configs, cfg)
    failed = [i for i, (ok, _) in enumerate(outcomes) if not ok]
    if failed:
        i, err = failed[0], outcomes[failed[0]][1]
        others = f"; also failed: {', '.join(labels[j] for j in failed[1:])}" if len(failed) > 1 else ""
        raise SweepError(f"{labels[i]} failed ({cfg.backend} backend): {_describe(err)}{others}", i, failed) from err
    return [value for _, value in outcomes]


def _describe(err: BaseException) -> str:
    """``"Type: message"`` of a run's exception; for a Ray task's, of the run's own exception (its remote traceback
    stays in the chained exception)."""
    cause = getattr(err, "cause", None)  # Ray's RayTaskError(...) instances keep the run's exception here
    shown = cause if isinstance(cause, BaseException) else err
    return f"{type(shown).__name__}: {shown}"


def _ray_outcomes(train: Callable[[C], R], configs: Sequence[C], cfg: SweepConfig) -> list[tuple[bool, Any]]:
    """Each config as a Ray task; (True, result) or (False, the run's exception) per config, in order."""
    ray = join_ray(cfg.ray_address)
    remote = ray.remote(num_cpus=cfg.cpus_per_run, max_retries=cfg.retries, retry_exceptions=False)(train)
    refs = [remote.remote(c) for c in configs]
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=cfg.timeout)
    outcomes: list[tuple[bool, Any]] = []
    for ref in refs:
        if ref in pending:
            ray.cancel(ref, force=True)
            outcomes.append((False, TimeoutError(f"did not finish within {cfg.timeout} s; cancelled (its checkpoints stay)")))
            continue
        try:
            outcomes.append((True, ray.get(ref)))
        except ray.exceptions.RayTaskError as e:
            outcomes.append((False, e.as_instanceof_cause()))  # the run's own exception type, remote traceback kept
        except ray.exceptions.RayError as e:  # the worker died more often than ``retries``
            outcomes.append((False, e))
    return outcomes

"""`VecEnv`'s ``backend="ray"``: the env copies live in Ray actors, on this machine or on a Ray cluster.

Each actor holds a contiguous share of the copies (the same `wmenv.envs.vector._Copy` rows as the other backends), so
the `VecStep` and its episodes are those of the sync backend for the same seeds. Install with ``pip install
"wmenv[ray]"``. A failing actor closes the `VecEnv`: an env error keeps its type (with the actor's traceback as a
note), a dead actor or one that does not answer within ``worker_timeout`` is a `WorkerError` naming its copies.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

INSTALL_RAY = 'pip install "wmenv[ray]"'


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"backend: 'ray' needs Ray, which is not installed; install it with {INSTALL_RAY}") from e
    return ray


CONNECT_TIMEOUT_S = 10.0
"""How long `join_ray` waits for a cluster address to accept a connection (Ray's own join retries for minutes)."""


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise unless something accepts a TCP connection at a Ray address within ``timeout`` seconds.

    ``address`` is ``"host:port"`` or ``"ray://host:port"`` (Ray client); ``"auto"`` and ``"local"`` (Ray's own
    lookups) are not checked. Ray's ``ray.init`` keeps retrying an address where nothing listens for minutes; this
    turns that into an error.

    Raises:
        ValueError: the address has no ``host:port``.
        ConnectionError: nothing answered within ``timeout`` (refused, unroutable or silent).
    """
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"ray_address: expected 'host:port' or 'ray://host:port' (or 'auto'), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"ray_address: nothing accepted a connection at {address!r} within {timeout:g} s ({e}); "
                              "start the cluster there (`ray start --head`) or fix the address") from e  # fmt: skip


def join_ray(address: str | None = None) -> Any:
    """The ``ray`` module, initialized: the running Ray if there is one, else ``ray.init(address=address)`` (None: a
    local Ray on this machine's cores, whose workers run at the driver's priority: Ray's default nice 15 made a sweep's
    runs about 30x slower beside two busy processes here; set ``RAY_worker_niceness`` to choose).

    Raises:
        ImportError: Ray is not installed (naming the extra).
        ConnectionError: the cluster at ``address`` cannot be joined (nothing listening there: within
            `CONNECT_TIMEOUT_S`, `check_reachable`).
    """
    ray = import_ray()
    if not ray.is_initialized():
        if address is None:
            os.environ.setdefault("RAY_worker_niceness", "0")
        else:
            check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConnectionError(f"ray_address: cannot join the Ray cluster at {address!r}: {e}") from e
    return ray


class _Boxed:
    """A value Ray pickles instead of serializing with msgpack. Flatland calls ``msgpack_numpy.patch()`` on import,
    which makes msgpack encode NumPy arrays as dicts; a process without that patch then receives dicts, not arrays.
    Boxing every argument and reply keeps both ends independent of what either has imported."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Worker:
    """A Ray actor holding its share of the copies (`wmenv.envs.vector._Copies`); `run` takes and returns `_Boxed`
    values."""

    def __init__(self, make: Callable[[], Any], seeds: list[int]) -> None:
        from wmenv.envs.vector import _Copies

        self.copies = _Copies(make, seeds)

    def run(self, cmd: str, payload: _Boxed) -> _Boxed:
        return _Boxed(getattr(self.copies, cmd)(payload.value))


class RayWorkers:
    """The Ray actors of one `VecEnv`; `call` sends one command to each and returns their rows in copy order.

    Args:
        make: builds one env (picklable).
        seeds: (E,) first-reset seed of each copy.
        num_workers: actors (default: min(E, the cluster's CPUs)); each reserves one CPU.
        worker_timeout: seconds an actor may take to answer (None: for ever).
        address: a Ray cluster to join (``ray.init(address=...)``); None: the running Ray, or a local one.
    """

    def __init__(
        self,
        make: Callable[[], Any],
        seeds: list[int],
        num_workers: int | None,
        worker_timeout: float | None,
        address: str | None = None,
    ) -> None:
        ray = join_ray(address)
        workers = min(len(seeds), num_workers or max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))))
        if workers < 1:
            raise ValueError(f"num_workers: expected an integer >= 1, got {num_workers!r}")
        self.ray, self.timeout = ray, worker_timeout
        self.split = np.array_split(np.arange(len(seeds)), workers)
        actor = ray.remote(num_cpus=1)(_Worker)
        self.actors = [actor.remote(make, [seeds[i] for i in idx]) for idx in self.split]

    def who(self, w: int) -> str:
        return f"VecEnv Ray actor {w} (env copies {self.split[w].tolist()})"

    def call(self, cmd: str, payloads: list[Any] | None = None) -> list[Any]:
        """Run ``cmd`` (``reset``, ``step``, ``get_state``, ``set_state``) on every actor with its payload; the
        replies' rows in copy order. A failure closes the actors and raises (the lowest-numbered actor's)."""
        ray = self.ray
        payloads = payloads if payloads is not None else [None] * len(self.actors)
        refs = [a.run.remote(cmd, _Boxed(p)) for a, p in zip(self.actors, payloads)]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
        rows: list[Any] = []
        for w, ref in enumerate(refs):
            if ref in pending:
                continue
            try:
                rows += ray.get(ref).value
            except ray.exceptions.RayTaskError as e:
                self.close(grace=False)
                exc = e.as_instanceof_cause()  # an instance of the env's own exception type
                exc.add_note(f"raised in {self.who(w)}; the VecEnv was closed")
                raise exc from None
            except ray.exceptions.RayActorError as e:
                self.close(grace=False)
                from wmenv.envs.vector import WorkerError

                raise WorkerError(f"{self.who(w)} died; the VecEnv was closed: {e}") from e
        if pending:
            self.close(grace=False)
            from wmenv.envs.vector import WorkerError

            hung = "; ".join(self.who(w) for w, r in enumerate(refs) if r in pending)
            raise WorkerError(f"{hung}: did not answer within {self.timeout} s (hung?); the VecEnv was closed")
        return rows

    def close(self, grace: bool = True) -> None:
        """Close the copies (with ``grace``, waiting up to 5 s) and kill the actors."""
        if grace:
            refs = [a.run.remote("close", _Boxed(None)) for a in self.actors]
            self.ray.wait(refs, num_returns=len(refs), timeout=5.0)
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

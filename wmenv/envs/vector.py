"""`VecEnv`: E copies of a real multi-agent env stepped together as fixed-slot arrays.

Glossary: E env copies, N agent slots, D observation features, A actions, S global-state features.

Every copy auto-resets when its episode ends; the finished episode's last observation and state,
its return and length come back in the same `VecStep`. With ``backend="subproc"`` the copies are
split over worker processes (pays for slow envs such as Flatland; for a fast env such as MPE the
pipe costs more than it saves, so ``"sync"`` is the default). With ``backend="jax"`` (JAX envs: SMAX)
the copies are one batched state stepped by one vmapped, jitted call (`wmenv.envs.smax.SMAXBatch`).
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from typing import Any, Literal

import numpy as np

from wmenv.checks import check_choice, check_positive
from wmenv.envs.base import MultiAgentEnv
from wmenv.envs.snapshot import restore, snapshot
from wmenv.envs.spec import EnvSpec, stack_masks, stack_obs, stack_rewards, unstack_actions


@dataclass
class VecStep:
    """What `VecEnv.reset` / `VecEnv.step` return; all NumPy arrays with leading dimension E."""

    obs: np.ndarray
    """(E, N, D) ``spec.obs_dtype`` (float32, or uint8 frames): current observation (after an auto-reset, the new
    episode's first)."""
    state: np.ndarray
    """(E, S) float32: current global state."""
    alive: np.ndarray
    """(E, N) bool: the agent is present and acts now."""
    action_mask: np.ndarray
    """(E, N, A) bool: available actions; all True for dead agents and unmasked envs."""
    reward: np.ndarray
    """(E, N) float32: reward of the step just taken (0 after `reset`)."""
    terminated: np.ndarray
    """(E, N) bool: the agent terminated on the step just taken."""
    truncated: np.ndarray
    """(E, N) bool: the agent was truncated on the step just taken."""
    done: np.ndarray
    """(E,) bool: the episode ended on the step just taken and the copy was reset."""
    final_obs: np.ndarray
    """(E, N, D) float32: where ``done``, the finished episode's last observation."""
    final_state: np.ndarray
    """(E, S) float32: where ``done``, the finished episode's last global state."""
    episode_return: np.ndarray
    """(E, N) float32: where ``done``, each agent's undiscounted return over the finished episode."""
    episode_length: np.ndarray
    """(E,) int64: where ``done``, the finished episode's number of steps."""
    infos: list[dict[str, Any]] = field(default_factory=list)
    """Per copy: the env's raw infos of the step just taken (agent -> dict)."""
    episode_metrics: list[dict[str, float]] = field(default_factory=list)
    """Per copy: where ``done``, the finished episode's `MultiAgentEnv.episode_metrics` (else empty)."""


class _Copy:
    """One env copy with its running episode statistics; turns dicts into fixed-slot rows."""

    def __init__(self, env: MultiAgentEnv, seed: int) -> None:
        self.env, self.spec, self.seed = env, env.env_spec, seed
        self.ret = np.zeros(self.spec.n_agents, dtype=np.float32)
        self.length = 0

    def _row(self, obs: dict, infos: dict) -> dict[str, np.ndarray]:
        o, _ = stack_obs(self.spec, obs)
        alive = np.array([a in self.env.agents for a in self.spec.agents], dtype=bool)
        return {
            "obs": o,
            "state": np.asarray(self.env.state(), dtype=self.spec.state_dtype),
            "alive": alive,
            "action_mask": stack_masks(self.spec, infos, alive),
        }

    def reset(self) -> dict[str, Any]:
        obs, infos = self.env.reset(seed=self.seed)
        self.seed = None  # seed once; later episodes continue the env's own RNG stream
        self.ret[:], self.length = 0.0, 0
        n = self.spec.n_agents
        zeros_n = np.zeros(n, dtype=np.float32)
        row = self._row(obs, infos)
        row.update(
            reward=zeros_n,
            terminated=np.zeros(n, dtype=bool),
            truncated=np.zeros(n, dtype=bool),
            done=False,
            final_obs=np.zeros_like(row["obs"]),
            final_state=np.zeros_like(row["state"]),
            episode_return=zeros_n.copy(),
            episode_length=0,
            infos=infos,
            episode_metrics={},
        )
        return row

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        act = unstack_actions(self.spec, actions, self.env.agents)
        obs, rew, term, trunc, infos = self.env.step(act)
        reward = stack_rewards(self.spec, rew)
        self.ret += reward
        self.length += 1
        terminated = stack_rewards(self.spec, term, dtype=bool)
        truncated = stack_rewards(self.spec, trunc, dtype=bool)
        if self.env.agents:
            row = self._row(obs, infos)
            row.update(done=False, final_obs=np.zeros_like(row["obs"]), final_state=np.zeros_like(row["state"]))
            row.update(episode_return=np.zeros_like(self.ret), episode_length=0, episode_metrics={})
        else:
            final_obs, _ = stack_obs(self.spec, obs)
            final_state = np.asarray(self.env.state(), dtype=self.spec.state_dtype)
            ep_ret, ep_len, metrics = self.ret.copy(), self.length, self.env.episode_metrics()
            row = self.reset()
            row.update(done=True, final_obs=final_obs, final_state=final_state, episode_return=ep_ret, episode_length=ep_len)
            row.update(episode_metrics=metrics)
        row.update(reward=reward, terminated=terminated, truncated=truncated, infos=infos)
        return row


class WorkerError(RuntimeError):
    """A `VecEnv` subprocess worker died or did not answer in time; the message names its env copies.

    The `VecEnv` is closed when this is raised (its other workers are stopped too): a training run stops with
    this error and resumes from its last checkpoint.
    """


class _Copies:
    """The env copies one process holds (the sync backend's, a subprocess worker's or a Ray actor's share) and the
    commands `VecEnv` runs on them; each returns the share's rows (or snapshots) in copy order."""

    def __init__(self, make: Callable[[], MultiAgentEnv], seeds: list[int]) -> None:
        self.copies: list[_Copy] = []
        try:
            self.copies.extend(_Copy(make(), s) for s in seeds)
        except BaseException:
            self.close()
            raise

    def reset(self, _: Any = None) -> list[dict[str, Any]]:
        return [c.reset() for c in self.copies]

    def step(self, actions: Any) -> list[dict[str, Any]]:
        return [c.step(a) for c, a in zip(self.copies, actions)]

    def get_state(self, _: Any = None) -> list[bytes]:
        return [snapshot(c) for c in self.copies]

    def set_state(self, states: list[bytes]) -> list[Any]:
        self.copies = _replace_copies(self.copies, states)
        return []

    def close(self, _: Any = None) -> list[Any]:
        for c in self.copies:
            c.env.close()
        return []


COMMANDS = ("reset", "step", "get_state", "set_state")
"""What a `VecEnv` asks of its `_Copies` (besides ``close``)."""


def _worker(remote: Connection, make: Callable[[], MultiAgentEnv], seeds: list[int]) -> None:
    """Serve ``(command, data)`` pairs (`COMMANDS`, or ``"close"``) on this worker's copies; replies are
    ``("ok", rows)`` or ``("error", exception or None, its repr, the worker's traceback)``, after which the worker
    exits."""
    copies: _Copies | None = None
    try:
        copies = _Copies(make, seeds)
        while True:
            cmd, data = remote.recv()
            if cmd == "close":
                break
            remote.send(("ok", getattr(copies, cmd)(data)))
    except (KeyboardInterrupt, EOFError):  # interrupted, or the parent went away
        pass
    except Exception as e:  # noqa: BLE001 - forwarded to the parent, which re-raises it
        tb = traceback.format_exc()
        try:
            remote.send(("error", e, repr(e), tb))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: send its text
            remote.send(("error", None, repr(e), tb))
    finally:
        if copies is not None:
            copies.close()
        remote.close()


def _replace_copies(copies: list[_Copy], states: list[bytes]) -> list[_Copy]:
    """The copies `snapshot` saved in ``states``, after closing ``copies`` (the ones they replace, of the same env)."""
    restored = [restore(s) for s in states]
    expected = copies[0].spec.describe()
    for c in restored:
        if not isinstance(c, _Copy) or c.spec.describe() != expected:
            what = c.spec.describe() if isinstance(c, _Copy) else f"a {type(c).__name__}"
            raise ValueError(f"states: a snapshot of {what}, expected a copy of {expected}")
    for c in copies:
        c.env.close()
    return restored


class _EnvFactory:
    """Picklable ``make(id, **kwargs)`` for subprocess workers."""

    def __init__(self, env_id: str, kwargs: dict[str, Any]) -> None:
        self.env_id, self.kwargs = env_id, kwargs

    def __call__(self) -> MultiAgentEnv:
        from wmenv.envs import make

        return make(self.env_id, **self.kwargs)[0]


BACKENDS = ("sync", "subproc", "ray", "jax")
"""`VecEnv` backends; ``"jax"`` only for the families in `JAX_BATCHES`."""

JAX_BATCHES: dict[str, str] = {"smax": "wmenv.envs.smax:SMAXBatch"}
"""Env family -> "module:class" of its batched JAX implementation (``backend="jax"``)."""


class VecEnv:
    """E copies of one env, stepped with fixed-slot arrays and auto-reset.

    Args:
        env_id: a `wmenv.envs.make` id, e.g. ``"mpe:simple_spread_v3"``.
        num_envs: E, the number of copies.
        seed: copy i is reset first with ``seed + i``.
        backend: ``"sync"`` steps all copies in this process; ``"subproc"`` spreads them over
            ``num_workers`` processes; ``"ray"`` over ``num_workers`` Ray actors (`wmenv.envs.ray_backend`, here or
            on a cluster); ``"jax"`` steps them as one batch with one jitted call (SMAX only).
        num_workers: worker processes for ``"subproc"``, actors for ``"ray"`` (default: min(E, CPU count)).
        ray_address: the Ray cluster to join with ``"ray"`` (None: the running Ray, or a local one).
        worker_timeout: seconds a ``"subproc"`` worker or Ray actor may take to answer one reset or step before it counts as
            hung (None: wait for ever). A worker that hangs, dies or raises closes the `VecEnv`: the error
            (`WorkerError`, or the env's own exception) names the worker's env copies and carries its traceback.
        **make_kwargs: passed to `wmenv.envs.make`.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        seed: int = 0,
        backend: Literal["sync", "subproc", "ray", "jax"] = "sync",
        num_workers: int | None = None,
        worker_timeout: float | None = 120.0,
        ray_address: str | None = None,
        **make_kwargs: Any,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs: expected an integer >= 1, got {num_envs!r}")
        if worker_timeout is not None:
            check_positive("worker_timeout", worker_timeout)
        self.worker_timeout = worker_timeout
        check_choice("backend", backend, BACKENDS)
        self.num_envs, self.backend = num_envs, backend
        factory = _EnvFactory(env_id, make_kwargs)
        seeds = [seed + i for i in range(num_envs)]
        self._remotes: list[Connection] = []
        self._procs: list[Any] = []
        if backend == "jax":
            family, _, name = env_id.partition(":")
            if family not in JAX_BATCHES:
                raise ValueError(
                    f"backend: 'jax' steps only JAX envs ({', '.join(f'{f}:...' for f in JAX_BATCHES)}), got {env_id!r}; "
                    "use 'sync' or 'subproc'"
                )
            module, cls = JAX_BATCHES[family].split(":")
            self._batch = getattr(importlib.import_module(module), cls)(name, num_envs, seed, **make_kwargs)
            self.spec = self._batch.spec
        elif backend == "sync":
            self._local = _Copies(factory, seeds)
            self.spec: EnvSpec = self._local.copies[0].spec
        elif backend == "ray":
            from wmenv.envs.ray_backend import RayWorkers

            self.spec = factory().env_spec  # a bad id or kwargs fail here, before any actor starts
            self._ray = RayWorkers(factory, seeds, num_workers, worker_timeout, ray_address)
        else:
            workers = min(num_envs, num_workers or mp.cpu_count())
            if workers < 1:
                raise ValueError(f"num_workers: expected an integer >= 1, got {num_workers!r}")
            self.spec = factory().env_spec  # a bad id or kwargs fail here, before any worker starts
            ctx = mp.get_context("spawn")
            self._split = np.array_split(np.arange(num_envs), workers)
            for idx in self._split:
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(child, factory, [seeds[i] for i in idx]), daemon=True)
                p.start()
                child.close()
                self._remotes.append(parent)
                self._procs.append(p)
        self.closed = False

    def _who(self, w: int) -> str:
        return f"VecEnv worker {w} (pid {self._procs[w].pid}, env copies {self._split[w].tolist()})"

    def _gather(self) -> list[dict[str, Any]]:
        """Every worker's reply (its copies' rows, in copy order), as they arrive within ``worker_timeout``. A worker
        that hangs, dies or fails closes the `VecEnv` and raises, naming it; where several fail in one call, the
        lowest-numbered one is reported, so the same input gives the same error whichever worker answers first."""
        pending = dict(enumerate(self._remotes))
        replies: dict[int, tuple] = {}
        deadline = None if self.worker_timeout is None else time.monotonic() + self.worker_timeout
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = mp_connection.wait(list(pending.values()), timeout=left)  # a dead worker's end is ready too (EOF)
            if not ready:
                break
            for w in [w for w, r in pending.items() if r in ready]:
                replies[w] = self._recv(w)
                del pending[w]
        for w in sorted(replies):
            if replies[w][0] != "ok":
                self._raise(w, replies[w])
        if pending:
            hung = "; ".join(self._who(w) for w in sorted(pending))
            self._stop_workers(grace=0.0)
            raise WorkerError(f"{hung}: did not answer within {self.worker_timeout} s (hung?); the VecEnv was closed")
        return [row for w in range(len(self._remotes)) for row in replies[w][1]]

    def _recv(self, w: int) -> tuple:
        """Worker ``w``'s reply, which has arrived (or its end closed): ``("ok", rows)``, the worker's
        ``("error", exc, text, traceback)``, or ``("dead", EOFError | OSError)``."""
        try:
            return self._remotes[w].recv()
        except (EOFError, OSError) as e:
            return ("dead", e)

    def _raise(self, w: int, reply: tuple) -> None:
        """Close the `VecEnv` and raise worker ``w``'s failure (``reply`` from `_recv`): its own exception with the
        worker's traceback as a note, or a `WorkerError` when it died or its exception could not be sent."""
        proc = self._procs[w]
        if reply[0] == "dead":
            proc.join(timeout=1)
            self._stop_workers(grace=0.0)
            raise WorkerError(f"{self._who(w)} died (exit code {proc.exitcode}); the VecEnv was closed") from reply[1]
        _, exc, text, tb = reply
        self._stop_workers(grace=1.0)
        note = f"raised in {self._who(w)}; the VecEnv was closed. The worker's traceback:\n{tb}"
        if exc is not None and hasattr(exc, "add_note"):
            exc.add_note(note)
            raise exc
        raise WorkerError(f"{text} {note}")

    def _ask(self, cmd: str, payloads: list[Any]) -> list[Any]:
        """Send ``(cmd, payloads[w])`` to every worker w and gather the replies (rows in copy order)."""
        for w, (remote, payload) in enumerate(zip(self._remotes, payloads)):
            try:
                remote.send((cmd, payload))
            except (BrokenPipeError, EOFError, OSError) as e:
                self._raise(w, ("dead", e))  # a dead worker: raises the WorkerError naming it
        return self._gather()

    def _run(self, cmd: str, per_copy: Any = None) -> list[Any]:
        """``cmd`` (one of `COMMANDS`) on every copy, wherever the backend (but "jax") holds them; ``per_copy``: one
        item per copy (actions, snapshots) or None. Returns the rows in copy order."""
        if self.backend == "sync":
            return getattr(self._local, cmd)(per_copy)
        split = self._ray.split if self.backend == "ray" else self._split
        payloads = [None if per_copy is None else [per_copy[i] for i in idx] for idx in split]
        if self.backend == "subproc":
            return self._ask(cmd, payloads)
        try:
            return self._ray.call(cmd, payloads)
        except BaseException:
            self.closed = not self._ray.actors  # a failure closed the actors
            raise

    def _call(self, cmd: str, actions: np.ndarray | None = None) -> VecStep:
        if self.closed:
            raise RuntimeError("VecEnv is closed")
        if self.backend == "jax":
            batch = self._batch.reset() if cmd == "reset" else self._batch.step(actions)
            return VecStep(**batch)
        rows = self._run(cmd, actions)
        lists = ("infos", "episode_metrics")
        return VecStep(
            **{k: np.stack([np.asarray(r[k]) for r in rows]) for k in VecStep.__dataclass_fields__ if k not in lists},
            **{k: [r[k] for r in rows] for k in lists},
        )

    def reset(self) -> VecStep:
        """Reset every copy (copy i with ``seed + i`` the first time)."""
        return self._call("reset")

    def step(self, actions: np.ndarray) -> VecStep:
        """Step every copy.

        Args:
            actions: (E, N) int for discrete envs or (E, N, A) float for continuous ones;
                entries of dead agents are ignored.
        """
        actions = np.asarray(actions)
        spec = self.spec
        expected = (self.num_envs, spec.n_agents) if spec.discrete else (self.num_envs, spec.n_agents, spec.n_actions)
        if actions.shape != expected:
            raise ValueError(f"actions: expected shape {expected}, got {actions.shape}")
        return self._call("step", actions)

    def get_state(self) -> list[bytes]:
        """Every copy's whole state (its env mid-episode, RNGs, running return), for `set_state`: one snapshot per
        copy (`wmenv.envs.snapshot`), or one for the whole batch with ``backend="jax"``.

        Raises:
            SnapshotError: the env's state cannot be saved (e.g. one that drives a StarCraft II process).
        """
        if self.closed:
            raise RuntimeError("VecEnv is closed")
        if self.backend == "jax":
            return [snapshot(self._batch.get_state())]
        return self._run("get_state")

    def set_state(self, states: list[bytes]) -> None:
        """Continue from `get_state`'s snapshots (of a `VecEnv` of the same env and number of copies, any backend
        but ``"jax"`` for the others): each copy goes on with the episode it was in. Replaces a `reset`.

        Raises:
            ValueError: ``states`` holds another number of snapshots, or one of another env.
            SnapshotError: a snapshot is not readable.
        """
        if self.closed:
            raise RuntimeError("VecEnv is closed")
        expected = 1 if self.backend == "jax" else self.num_envs
        if not isinstance(states, (list, tuple)) or len(states) != expected:
            got = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"states: expected {expected} snapshots from VecEnv.get_state ({self.backend}), got {got}")
        if self.backend == "jax":
            self._batch.set_state(restore(states[0]))
        else:
            self._run("set_state", states)

    def close(self) -> None:
        """Close every copy and stop the workers."""
        if self.closed:
            return
        if self.backend == "jax":
            self._batch.close()
        elif self.backend == "sync":
            self._local.close()
        elif self.backend == "ray":
            self._ray.close()
        else:
            self._stop_workers(grace=5.0)
        self.closed = True

    def _stop_workers(self, grace: float) -> None:
        """Ask every worker to close, wait up to ``grace`` s each, then kill those still running."""
        for remote in self._remotes:
            try:
                remote.send(("close", None))
            except (BrokenPipeError, EOFError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=grace)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for remote in self._remotes:
            remote.close()
        self.closed = True

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()

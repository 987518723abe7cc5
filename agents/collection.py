"""How the model-based loop collects real data: in line with learning (`RealActor`), or overlapped with it in a worker.

Glossary: E real env copies, N agents.

In line (the default), each iteration collects its real steps with the actor of the moment, then learns. With
``overlap`` the collection runs in a `CollectWorker`, MAMBA's own split (its Ray workers collect while the learner
trains): the loop sends the worker the actor's weights (and, for latent actors, the world model's, which its per-agent
filters read), the worker steps its env copies for one update's real steps while the learner fits the model and
trains in the dream, and the loop takes the data at the next iteration. The data is one actor update late; the
sample-efficiency accounting stays in real env steps, counted when the data arrives.

`OverlappedCollection` runs the worker in a Ray actor (``"ray"``: a process here, or on the cluster of
``ray_address``) or in this process (``"local"``: the same calls, run when their result is taken, so nothing
overlaps; the same data as ``"ray"``, for machines without Ray and for tests).

Exact resumes: at each submission the worker's state (its env copies mid-episode, the unfinished episodes, the actor's
recurrent state and random streams, the filters') and the weights sent are kept; a checkpoint stores them, and a
resumed run restores the worker and sends the same weights again, so it collects what the uninterrupted run
collected.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch

from agents.mappo import MAPPO
from agents.resume import resume_envs, set_global_rng_state
from agents.schedule import collect_for_update
from wmenv.checks import check_unit_interval
from wmenv.data.collect import Collector, random_actions
from wmenv.envs.ray_backend import _Boxed
from wmenv.envs.snapshot import SnapshotError
from wmenv.envs.spec import EnvSpec
from wmenv.envs.vector import VecEnv
from wmenv.latent.filter import AgentFilters
from wmenv.models.world_model import WorldModel

OVERLAPS = ("off", "local", "ray")
PREFILL_STREAM = 0x7072  # the prefill's random stream is (seed, this): apart from every other stream of a run


class RealActor:
    """A `collect` policy: samples from ``agent`` with its recurrent state carried across steps (and iterations).

    With ``filters`` (latent actors) the agent acts on each agent's filtered features instead of the observations.
    With ``prefill`` the first ``prefill`` real env steps take uniformly random actions instead (available choices, or
    in-bounds continuous actions: `wmenv.data.collect.random_actions`), drawn from a stream seeded ``seed``; the agent
    still steps its recurrent state (and the filters record the actions taken), so its state is right when it takes
    over. After that, with ``explore`` > 0 each agent's action is replaced by such a random one with that probability
    at every step (an exploration floor; the same stream).
    """

    def __init__(
        self,
        agent: MAPPO,
        num_envs: int,
        spec: EnvSpec,
        filters: AgentFilters | None = None,
        prefill: int = 0,
        seed: int = 0,
        explore: float = 0.0,
    ) -> None:
        if prefill < 0:
            raise ValueError(f"prefill: expected a number of real env steps >= 0, got {prefill}")
        check_unit_interval("explore", explore, what="a probability", open_high=True)
        self.agent, self.num_envs, self.spec, self.filters, self.explore = agent, num_envs, spec, filters, explore
        self.carry: dict[str, Any] = {
            "state": agent.policy.initial_state(num_envs * spec.n_agents), "first": True, "prefill": prefill,
            "rng": np.random.default_rng((seed, PREFILL_STREAM)),
        }  # fmt: skip
        """The actor's recurrent state, whether the next step is the first (all copies start then), the random steps
        left and their random stream."""

    def __call__(self, step: Any) -> np.ndarray:
        carry, agent, filters = self.carry, self.agent, self.filters
        ended = np.asarray(step.terminated) | np.asarray(step.truncated) | np.asarray(step.done)[:, None]
        device = agent.device
        if carry["first"]:
            resets = torch.ones(ended.size, dtype=torch.bool, device=device)
        else:
            resets = torch.as_tensor(ended, device=device).flatten()
        obs = step.obs if filters is None else filters.observe_vec(step, first=carry["first"])
        carry["first"] = False
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(0, 1)
        mask = torch.as_tensor(step.action_mask, device=device).flatten(0, 1)
        actions, _, carry["state"] = agent.act(obs, carry["state"], resets, mask)
        if carry.get("prefill", 0) > 0:  # (checkpoints from before prefill existed have no such key)
            carry["prefill"] -= self.num_envs
            actions = random_actions(self.spec, np.asarray(step.action_mask), carry["rng"])
        else:
            actions = agent.env_actions(actions, self.num_envs)
            if self.explore > 0 and (swap := carry["rng"].random(actions.shape[:2]) < self.explore).any():
                randoms = random_actions(self.spec, np.asarray(step.action_mask), carry["rng"])
                actions = np.where(swap.reshape(swap.shape + (1,) * (actions.ndim - 2)), randoms, actions)
        if filters is not None:
            filters.record(actions, step.alive)
        return actions

    def get_state(self) -> dict[str, Any]:
        """The carry and the filters' state, for `set_state`."""
        return {"carry": self.carry, "filters": None if self.filters is None else self.filters.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `get_state`."""
        self.carry = state["carry"]
        if self.filters is not None:
            self.filters.set_state(state["filters"])


class _Episodes(list):
    """What a `Collector` stores into in a worker: the episodes (and pieces) of one collection, in order."""

    def add(self, episode: dict[str, np.ndarray]) -> None:
        self.append(episode)


def actor_weights(agent: MAPPO, model: WorldModel | None) -> dict[str, dict[str, torch.Tensor]]:
    """CPU copies of what a worker's actor needs: the policy's weights (and a Gaussian's log-std), and, for latent
    actors, the world model's."""
    policy = {k: v.detach().cpu().clone() for k, v in agent.policy.state_dict().items()}
    if not agent.discrete:
        policy["__log_std__"] = agent.log_std.detach().cpu().clone()
    model_state = None if model is None else {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"policy": policy, "model": model_state}


class CollectWorker:
    """Collects one update's real data at a time with copies of the actor (and of the world model for latent actors).

    Args:
        env_id, env_kwargs: the real env (`wmenv.envs.make`).
        num_envs: E copies, seeded ``seed``, ``seed + 1``, ...
        seed: the copies' first seed.
        agent: the learner's agent; the worker acts with a copy (its random stream continues from the agent's).
        model: the world model for latent actors (a copy drives the per-agent filters), None for decoded ones.
        filter_seed: the filters' random stream seed.
        stream: store the rows of running episodes as pieces (`Collector`).
        real_steps, real_episodes: one update's collection (`agents.schedule.collect_for_update`).
        prefill: real env steps of uniformly random actions before the actor acts (`RealActor`).
        explore: probability of a random action per agent and step after that (`RealActor`).
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        num_envs: int,
        seed: int,
        agent: MAPPO,
        model: WorldModel | None,
        filter_seed: int,
        stream: bool,
        real_steps: int,
        real_episodes: int,
        prefill: int = 0,
        explore: float = 0.0,
    ) -> None:
        torch.set_num_threads(1)
        self.vec = VecEnv(env_id, num_envs=num_envs, seed=seed, **env_kwargs)
        self.collector = Collector(self.vec, _Episodes(), stream=stream)
        self.agent = copy.deepcopy(agent)
        self.model = None if model is None else copy.deepcopy(model).eval()
        filters = None if self.model is None else AgentFilters(self.model, num_envs, filter_seed)
        self.act = RealActor(self.agent, num_envs, self.vec.spec, filters, prefill, filter_seed, explore)
        self.budget = (real_steps, real_episodes, num_envs)

    def get_state(self) -> dict[str, Any]:
        """Everything a collection continues from: the env copies (None where they cannot be saved, with the reason),
        the collector's running episodes, the actor's carry, the filters' and the actor's random streams (the envs draw
        from their own seeded streams, and the worker's model runs in eval mode: the global streams are not read)."""
        try:
            envs, why_not = self.vec.get_state(), None
        except SnapshotError as e:
            envs, why_not = None, str(e)
        return {
            "envs": envs, "why_not": why_not, "collector": (self.collector.step, self.collector.recorder),
            "actor": self.act.get_state(), "generator": self.agent.generator.get_state(),
        }  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> bool:
        """Continue from `get_state`'s state; False (nothing changed) where it holds no env copies."""
        if state["envs"] is None:
            return False
        self.vec.set_state(state["envs"])
        self.collector.step, self.collector.recorder = state["collector"]
        self.act.set_state(state["actor"])
        self.agent.generator.set_state(state["generator"].cpu())  # a CPU tensor for any device's generator
        return True

    def collect(self, weights: dict[str, Any]) -> dict[str, Any]:
        """Load ``weights`` (`actor_weights`), collect one update; the episodes (and pieces) stored, the mean return per
        agent of each episode that ended, the env steps taken and the ended episodes' metrics."""
        policy = dict(weights["policy"])
        log_std = policy.pop("__log_std__", None)
        self.agent.policy.load_state_dict(policy)
        if log_std is not None:
            with torch.no_grad():
                self.agent.log_std.copy_(log_std)
        if self.model is not None:
            self.model.load_state_dict(weights["model"])
        self.collector.replay = _Episodes()
        with torch.no_grad():
            returns, steps, metrics = collect_for_update(self.collector, self.act, *self.budget)
        return {"episodes": list(self.collector.replay), "returns": returns, "steps": steps, "metrics": metrics}

    def close(self) -> None:
        """Close the env copies."""
        self.vec.close()


class _RayWorker:
    """A `CollectWorker` in a Ray actor; every argument and reply is `_Boxed` (Flatland's msgpack patch must not touch
    them, `wmenv.envs.ray_backend`)."""

    def __init__(self, args: _Boxed) -> None:
        self.worker = CollectWorker(**args.value)

    def run(self, method: str, arg: _Boxed) -> _Boxed:
        call = getattr(self.worker, method)
        return _Boxed(call() if arg.value is None else call(arg.value))


class OverlappedCollection:
    """The loop's side of an overlapped collection: submit one with weights, take its data later.

    Args:
        backend: ``"ray"`` (a Ray actor: the collection overlaps learning) or ``"local"`` (this process, when the
            result is taken).
        worker: `CollectWorker`'s arguments.
        ray_address: a Ray cluster to join (None: the running Ray, or a local one).
    """

    def __init__(self, backend: Literal["local", "ray"], worker: dict[str, Any], ray_address: str | None = None) -> None:
        if backend not in ("local", "ray"):
            raise ValueError(f"backend: expected 'local' or 'ray', got {backend!r}")
        self.backend = backend
        self.pending: tuple[dict[str, Any], dict[str, Any]] | None = None
        """The submitted collection: the worker's state before it and the weights it was sent."""
        self._result: Any = None
        if backend == "ray":
            from wmenv.envs.ray_backend import join_ray

            self.ray = join_ray(ray_address)
            self.actor = self.ray.remote(num_cpus=1)(_RayWorker).remote(_Boxed(worker))
        else:
            self.local = CollectWorker(**worker)

    def _call(self, method: str, arg: Any = None) -> Any:
        """Run ``method`` on the worker now and return its result."""
        if self.backend == "local":
            call = getattr(self.local, method)
            return call() if arg is None else call(arg)
        return self._get(self.actor.run.remote(method, _Boxed(arg)))

    def _get(self, ref: Any) -> Any:
        try:
            return self.ray.get(ref).value
        except self.ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None
        except self.ray.exceptions.RayActorError as e:
            from wmenv.envs.vector import WorkerError

            raise WorkerError(f"the collection worker's Ray actor died: {e}") from e

    def restore(self, state: dict[str, Any]) -> bool:
        """Put the worker where a checkpoint's ``pending`` state left it; False where that state holds no envs."""
        return bool(self._call("set_state", state))

    def submit(self, weights: dict[str, Any]) -> None:
        """Start the next collection with ``weights`` (`actor_weights`), keeping the worker's state before it."""
        if self.pending is not None:
            raise RuntimeError("submit: a collection is already pending; take its data first")
        self.pending = (self._call("get_state"), weights)
        self._result = self.actor.run.remote("collect", _Boxed(weights)) if self.backend == "ray" else None

    def take(self) -> dict[str, Any]:
        """The pending collection's data (`CollectWorker.collect`), waiting for it."""
        if self.pending is None:
            raise RuntimeError("take: no collection was submitted")
        weights = self.pending[1]
        data = self._get(self._result) if self.backend == "ray" else self.local.collect(weights)
        self.pending, self._result = None, None
        return data

    def close(self) -> None:
        """Close the worker's env copies (and its Ray actor)."""
        if self.backend == "local":
            self.local.close()
            return
        try:
            self.ray.wait([self.actor.run.remote("close", _Boxed(None))], timeout=5.0)
        finally:
            self.ray.kill(self.actor)


class RealData:
    """The model-based loop's real data: each `collect` puts one update's steps into the replay, in line with learning
    (``overlap="off"``: a `VecEnv`, a `Collector` and a `RealActor` here) or overlapped with it (`OverlappedCollection`).

    Args:
        replay: the loop's replay.
        agent: the learner's agent (in line: it acts; overlapped: its weights are sent).
        model: the world model for latent actors (their per-agent filters), None for decoded ones.
        overlap: ``"off"``, ``"local"`` or ``"ray"`` (`ModelBasedConfig.overlap`).
        worker: `CollectWorker`'s other arguments (env, copies, seeds, stream, one update's budget).
        ray_address: the Ray cluster for ``"ray"``.
    """

    def __init__(
        self,
        replay: Any,
        agent: MAPPO,
        model: WorldModel | None,
        overlap: str,
        worker: dict[str, Any],
        ray_address: str | None = None,
    ) -> None:
        if overlap not in OVERLAPS:
            raise ValueError(f"overlap: expected one of {list(OVERLAPS)}, got {overlap!r}")
        self.replay, self.agent, self.model = replay, agent, model
        self.budget = (worker["real_steps"], worker["real_episodes"], worker["num_envs"])
        self.overlap: OverlappedCollection | None = None
        if overlap == "off":
            self.vec = VecEnv(worker["env_id"], num_envs=worker["num_envs"], seed=worker["seed"], **worker["env_kwargs"])
            self.collector = Collector(self.vec, replay, stream=worker["stream"])
            filters = None if model is None else AgentFilters(model, worker["num_envs"], worker["filter_seed"])
            prefill, explore = worker.get("prefill", 0), worker.get("explore", 0.0)
            self.act = RealActor(
                agent, worker["num_envs"], self.vec.spec, filters, prefill, worker["filter_seed"], explore
            )  # fmt: skip
        else:
            self.overlap = OverlappedCollection(overlap, {**worker, "agent": agent, "model": model}, ray_address)

    def collect(self) -> tuple[list[float], int, list[dict[str, float]]]:
        """One update's real data into the replay: the mean return per agent of each episode that ended, the steps,
        and each ended episode's `episode_metrics` (Flatland's ``arrived_fraction``, SMAX's ``won``)."""
        if self.overlap is None:
            return collect_for_update(self.collector, self.act, *self.budget)
        if self.overlap.pending is None:  # the first collection (or one that could not be resumed): nothing to overlap
            self.overlap.submit(actor_weights(self.agent, self.model))
        data = self.overlap.take()
        for episode in data["episodes"]:
            self.replay.add(episode)
        self.overlap.submit(actor_weights(self.agent, self.model))  # the next update's, while this iteration learns
        return data["returns"], data["steps"], data["metrics"]

    def run_state(self) -> tuple[VecEnv | None, dict[str, Any]]:
        """What a checkpoint's run state (`agents.resume.save_run_state`) holds of the collection: the env copies here
        (None when overlapped) and the parts to save with them."""
        if self.overlap is None:
            return self.vec, {"collector": (self.collector.step, self.collector.recorder), "actor": self.act.get_state()}
        return None, {"pending": self.overlap.pending}  # the worker's state before its collection, the weights sent

    def resume(self, state: dict[str, Any] | None) -> bool:
        """Continue where a checkpoint's run state left the collection (and the global random streams); False, with a
        printed note, where the resume is statistical (fresh episodes)."""
        if self.overlap is None:
            if not resume_envs(self.vec, state):
                return False
            self.collector.step, self.collector.recorder = state["collector"]
            self.act.set_state(state["actor"])
            return True
        if state is not None:
            set_global_rng_state(state["rng"])  # the learner's streams; the envs are the worker's
        pending = None if state is None else state.get("pending")
        if pending is None or not self.overlap.restore(pending[0]):
            print("resume is statistical, not exact: the collection worker restarts from fresh episodes")
            return False
        self.overlap.submit(pending[1])  # the collection that was under way, again
        return True

    def close(self) -> None:
        """Close the env copies (and the worker)."""
        (self.vec if self.overlap is None else self.overlap).close()

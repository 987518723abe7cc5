"""VecEnv: fixed-slot arrays, auto-reset, final observations, seeding, backends."""

import numpy as np
import pytest

from wmenv.envs import make
from wmenv.envs.vector import VecEnv, WorkerError

MPE = "mpe:simple_spread_v3"


def _random_actions(s, rng):
    """(E, N) uniformly random available actions."""
    p = s.action_mask / s.action_mask.sum(-1, keepdims=True)
    return np.array([[rng.choice(p.shape[-1], p=pa) for pa in pe] for pe in p])


def test_shapes_and_autoreset():
    with VecEnv(MPE, num_envs=3, seed=0, max_cycles=5) as vec:
        spec = vec.spec
        s = vec.reset()
        assert s.obs.shape == (3, spec.n_agents, spec.obs_dim) and s.obs.dtype == np.float32
        assert s.state.shape == (3, spec.state_dim)
        assert s.action_mask.shape == (3, spec.n_agents, spec.n_actions)
        assert s.alive.all() and not s.done.any()
        rng = np.random.default_rng(0)
        rets = np.zeros((3, spec.n_agents), dtype=np.float32)
        for t in range(1, 6):
            s = vec.step(_random_actions(s, rng))
            rets += s.reward
            assert s.done.all() == (t == 5), f"episodes of max_cycles=5 end exactly at step 5, not {t}"
        assert s.truncated.all() and not s.terminated.any()
        np.testing.assert_allclose(s.episode_return, rets, rtol=1e-6)
        assert (s.episode_length == 5).all()
        # after auto-reset the current obs is a new episode's first; the final obs is the old last one
        assert not np.allclose(s.final_obs, s.obs)
        assert s.alive.all()


def test_final_obs_matches_single_env():
    """The final observation a VecEnv reports is what a plain env returns on its last step."""
    env, spec = make(MPE, max_cycles=4)
    obs, _ = env.reset(seed=7)
    with VecEnv(MPE, num_envs=1, seed=7, max_cycles=4) as vec:
        s = vec.reset()
        np.testing.assert_array_equal(s.obs[0, 0], obs[spec.agents[0]])
        for _ in range(4):
            obs, *_ = env.step({a: 1 for a in env.agents})
            s = vec.step(np.ones((1, spec.n_agents), dtype=np.int64))
        assert s.done[0]
        for i, a in enumerate(spec.agents):
            np.testing.assert_array_equal(s.final_obs[0, i], obs[a])


def test_same_seed_same_rollout_and_subproc_matches_sync():
    def rollout(backend):
        with VecEnv(MPE, num_envs=2, seed=3, backend=backend, num_workers=2, max_cycles=6) as vec:
            s = vec.reset()
            out = [s.obs]
            for t in range(13):
                s = vec.step(np.full((2, vec.spec.n_agents), t % 5))
                out.append(s.obs)
            return np.stack(out)

    a = rollout("sync")
    np.testing.assert_array_equal(a, rollout("sync"))
    np.testing.assert_array_equal(a, rollout("subproc"))


def test_bad_input():
    with pytest.raises(ValueError, match="num_envs"):
        VecEnv(MPE, num_envs=0)
    with pytest.raises(ValueError, match="backend"):
        VecEnv(MPE, backend="threads")
    with VecEnv(MPE, num_envs=2) as vec:
        vec.reset()
        with pytest.raises(ValueError, match=r"actions: expected shape \(2, 3\)"):
            vec.step(np.zeros((3, 3), dtype=np.int64))
        with pytest.raises(ValueError, match="agent_0"):
            vec.step(np.full((2, 3), 9))
    with pytest.raises(RuntimeError, match="closed"):
        vec.reset()


def _subproc(**kw):
    return VecEnv(MPE, num_envs=3, seed=0, backend="subproc", num_workers=2, max_cycles=5, **kw)


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_dead_or_hung_worker_is_named_and_the_vecenv_closed(fault):
    """Issue 18, item 6: a worker that dies or hangs gives an error naming its env copies within the timeout."""
    import os
    import signal
    import time

    vec = _subproc()  # the default timeout while the workers start: their imports took over 5 s on a loaded machine
    s = vec.reset()
    actions = np.zeros_like(s.action_mask[..., 0], dtype=np.int64)
    vec.step(actions)  # a first step: the workers are up and warm
    vec.worker_timeout = 5.0
    worker = vec._procs[1]
    os.kill(worker.pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    start = time.monotonic()
    expected = r"\) died \(exit code -9\)" if fault == "killed" else r"\): did not answer within 5.0 s"
    with pytest.raises(WorkerError, match=rf"VecEnv worker 1 \(pid {worker.pid}, env copies \[2\]{expected}"):
        vec.step(actions)
    assert time.monotonic() - start < 15
    assert vec.closed and not any(p.is_alive() for p in vec._procs), "every worker is stopped, hung ones killed"
    with pytest.raises(RuntimeError, match="closed"):
        vec.reset()


def test_when_several_workers_fail_the_lowest_numbered_is_reported_whichever_answers_first():
    """Both workers fail on the same step; worker 0 is paused so worker 1's error arrives first. The error reported
    is still worker 0's: the same input gives the same error (CI once saw worker 1's when it happened to be first)."""
    import os
    import signal
    import threading

    vec = _subproc()
    vec.reset()
    os.kill(vec._procs[0].pid, signal.SIGSTOP)
    threading.Timer(1.0, os.kill, (vec._procs[0].pid, signal.SIGCONT)).start()
    with pytest.raises(ValueError, match="agent_0") as info:
        vec.step(np.full((3, 3), 9))
    assert "raised in VecEnv worker 0" in "\n".join(info.value.__notes__)
    assert vec.closed


def test_an_exception_in_a_worker_keeps_its_type_and_carries_the_worker_traceback():
    vec = _subproc()
    vec.reset()
    with pytest.raises(ValueError, match="agent_0") as info:
        vec.step(np.full((3, 3), 9))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised in VecEnv worker 0" in notes and "env copies [0, 1]" in notes and "Traceback" in notes
    assert vec.closed and not any(p.is_alive() for p in vec._procs)
    with pytest.raises(ValueError, match="worker_timeout"):
        _subproc(worker_timeout=0)
    with pytest.raises(ValueError, match="max_cycles|unexpected"):
        VecEnv(MPE, num_envs=2, backend="subproc", max_cycles="five")  # fails in this process, before any worker

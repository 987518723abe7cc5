"""`VecEnv(backend="ray")` (issue 19, item 1): the copies in Ray actors give exactly the sync backend's episodes for
the same seeds (also with Flatland's msgpack patch in the driver and not in the actors, which once turned every
action array into a dict), snapshots move between backends, and a failing or dead actor is a clear error that closes the
`VecEnv`. Skipped where Ray is not installed (``pip install "wmenv[ray]"``)."""

import importlib.util
import time

import numpy as np
import pytest

from wmenv.envs.vector import VecEnv, WorkerError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray not installed: pip install "wmenv[ray]"')
MPE = "mpe:simple_spread_v3"


@pytest.fixture(scope="module", autouse=True)
def local_ray(one_ray_cluster_per_module):
    import flatland.envs.rail_env  # noqa: F401 - patches msgpack to encode NumPy arrays as dicts, in this process only
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _rollout(vec: VecEnv, steps: int) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(0)
    step, out = vec.reset(), []
    for _ in range(steps):
        m = step.action_mask
        acts = np.array([[rng.choice(np.flatnonzero(m[e, i])) for i in range(m.shape[1])] for e in range(len(m))])
        step = vec.step(acts)
        out.append((step.obs, step.reward, step.done, step.final_obs, step.episode_return, step.episode_length))
    return out


def test_ray_actors_give_the_sync_backends_episodes_and_snapshots_and_a_dead_actor_is_named():
    ray_vec = VecEnv(MPE, num_envs=3, seed=4, backend="ray", num_workers=2, max_cycles=10)
    sync = VecEnv(MPE, num_envs=3, seed=4, max_cycles=10)
    got, expected = _rollout(ray_vec, 25), _rollout(sync, 25)
    assert any(s[2].any() for s in expected), "not vacuous: episodes ended and auto-reset"
    for a, b in zip(got, expected):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    sync.set_state(ray_vec.get_state())  # snapshots move between backends
    acts = np.zeros((3, 3), dtype=int)
    np.testing.assert_array_equal(sync.step(acts).obs, ray_vec.step(acts).obs)
    sync.close()
    import ray

    ray.kill(ray_vec._ray.actors[1])  # then an actor dies: named, and the VecEnv is closed
    with pytest.raises(WorkerError, match=r"VecEnv Ray actor 1 \(env copies \[2\]\) died"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the kill lands asynchronously: on a loaded machine a step may beat it
            ray_vec.step(acts)
            time.sleep(0.05)
    assert ray_vec.closed


def test_an_env_error_keeps_its_type_and_names_the_actor():
    vec = VecEnv(MPE, num_envs=3, seed=0, backend="ray", num_workers=2, max_cycles=5)
    vec.reset()
    with pytest.raises(ValueError, match="agent_0") as info:
        vec.step(np.full((3, 3), 9))
    assert "raised in VecEnv Ray actor 0 (env copies [0, 1])" in "\n".join(info.value.__notes__)
    assert vec.closed

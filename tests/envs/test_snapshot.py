"""Env snapshots (issue 18, item 2): `VecEnv.get_state` / `set_state` continue every copy mid-episode exactly, on
each real env this machine has, across backends; bad snapshots are clear errors."""

import importlib.util
import threading

import numpy as np
import pytest

from wmenv.envs.snapshot import SnapshotError, restore, snapshot
from wmenv.envs.vector import VecEnv

HAVE_ROBOTICS = importlib.util.find_spec("gymnasium_robotics") is not None
HAVE_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
HAVE_ALE = importlib.util.find_spec("ale_py") is not None and importlib.util.find_spec("cv2") is not None


def _steps(vec: VecEnv, step, rng: np.random.Generator, n: int) -> tuple[list[tuple[np.ndarray, ...]], object]:
    """``n`` steps of random (available) actions from the `VecStep` ``step``: every array of each step, and the last
    `VecStep`."""
    spec, out = vec.spec, []
    for _ in range(n):
        if spec.discrete:
            m = step.action_mask
            acts = np.array([[rng.choice(np.flatnonzero(m[e, i])) for i in range(spec.n_agents)] for e in range(len(m))])
        else:
            acts = rng.uniform(-1, 1, (vec.num_envs, spec.n_agents, spec.n_actions)).astype(np.float32)
        step = vec.step(acts)
        out.append((step.obs, step.state, step.reward, step.alive, step.action_mask, step.done, step.episode_return))
    return out, step


CASES = [
    ("mpe:simple_spread_v3", "sync", "subproc", {}),  # EzPickle envs with a pygame surface and font
    ("mpe:simple_speaker_listener_v4", "subproc", "sync", {}),  # heterogeneous agents
    ("gym:CartPole-v1", "sync", "sync", {}),
    ("flatland:5", "sync", "sync", {"max_episode_steps": 30, "malfunction_rate": 0.2}),  # lambdas; malfunctions
    pytest.param("mamujoco:HalfCheetah:2x3", "sync", "sync", {"max_episode_steps": 40},
                 marks=pytest.mark.skipif(not HAVE_ROBOTICS, reason="gymnasium-robotics not installed")),
    pytest.param("smax:3m", "jax", "jax", {}, marks=pytest.mark.skipif(not HAVE_JAXMARL, reason="jaxmarl not installed")),
    # the env copies (what the model-based loop checkpoints), whose jitted core must not be pickled as it is
    pytest.param("smax:3m", "sync", "sync", {}, marks=pytest.mark.skipif(not HAVE_JAXMARL, reason="jaxmarl not installed")),
    # the emulator's own state and random stream (sticky actions draw from it), across processes
    pytest.param("atari:Breakout", "subproc", "sync",
                 {"sticky_actions": 0.25, "screen_size": 16, "terminal_on_life_loss": True, "frame_skip": 8},
                 marks=pytest.mark.skipif(not HAVE_ALE, reason="ale-py not installed")),
]  # fmt: skip


@pytest.mark.parametrize("env_id,saved_on,restored_on,kwargs", CASES)
def test_a_restored_vecenv_continues_every_episode_exactly(env_id, saved_on, restored_on, kwargs):
    """Saved mid-episode (after 7 steps), the copies continue through episode ends and auto-resets as the
    original does, on the same or another backend; the new VecEnv's own seed plays no part."""
    workers = {"num_workers": 2}
    vec = VecEnv(env_id, num_envs=3, seed=0, backend=saved_on, **(workers if saved_on == "subproc" else {}), **kwargs)
    rng = np.random.default_rng(0)
    _, step = _steps(vec, vec.reset(), rng, 7)
    states = vec.get_state()
    draw = rng.bit_generator.state
    expected, _ = _steps(vec, step, rng, 60)
    other = VecEnv(env_id, num_envs=3, seed=123, backend=restored_on, **(workers if restored_on == "subproc" else {}),
                   **kwargs)  # fmt: skip
    other.set_state(states)
    rng.bit_generator.state = draw
    got, _ = _steps(other, step, rng, 60)
    vec.close(), other.close()
    assert any(s[5].any() for s in expected), "not vacuous: some copy's episode ended and auto-reset"
    for t, (a, b) in enumerate(zip(expected, got)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=f"step {t}")


class _Delegating:
    """Delegates unknown attributes to what it wraps, as JaxMARL's wrappers do: unpickling it recurses."""

    def __init__(self) -> None:
        self._env = 1

    def __getattr__(self, name: str):
        return getattr(self._env, name)


def test_a_snapshot_that_would_not_load_back_fails_when_it_is_saved():
    with pytest.raises(SnapshotError, match="_Delegating pickles but its snapshot does not load back"):
        snapshot(_Delegating())


def test_bad_snapshots_are_clear_errors():
    vec = VecEnv("mpe:simple_spread_v3", num_envs=2, seed=0)
    vec.reset()
    states = vec.get_state()
    with pytest.raises(ValueError, match=r"states: expected 2 snapshots from VecEnv.get_state \(sync\), got 1"):
        vec.set_state(states[:1])
    other = VecEnv("mpe:simple_speaker_listener_v4", num_envs=2, seed=0)
    other.reset()
    with pytest.raises(ValueError, match="states: a snapshot of .*speaker_listener.*expected a copy of .*simple_spread"):
        vec.set_state(other.get_state())
    with pytest.raises(SnapshotError, match="not a readable env snapshot"):
        vec.set_state([states[0][: len(states[0]) // 2], states[1]])
    with pytest.raises(TypeError, match="data: expected bytes"):
        restore("not bytes")
    with pytest.raises(SnapshotError, match="the state of a dict cannot be saved"):
        snapshot({"lock": threading.Lock()})  # what an env driving another process (StarCraft II) holds
    vec.step(np.zeros((2, 3), dtype=int))  # a refused set_state leaves the copies as they were
    vec.close(), other.close()
    with pytest.raises(RuntimeError, match="closed"):
        vec.get_state()

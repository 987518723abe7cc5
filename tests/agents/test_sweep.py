"""Seeds and sweeps (issue 19, item 4): `run_sweep` runs one training per config here or as Ray tasks, returns the
results in config order, lets every run finish before it reports a failure, and names the failed run. The Ray
tests are skipped where Ray is not installed (``pip install "wmenv[ray]"``)."""

import dataclasses
import importlib.util
import os
import sys
import time

import pytest

from agents.sweep import SweepConfig, SweepError, run_folder, run_sweep
from agents.train import TrainConfig, train

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray not installed: pip install "wmenv[ray]"')
pytestmark = pytest.mark.usefixtures("one_ray_cluster_per_module")  # its Ray tests start and stop clusters themselves
if importlib.util.find_spec("ray") is not None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module


def square_or_fail(x: int) -> int:
    if x < 0:
        raise KeyError(f"negative {x}")
    return x * x


def tiny_training(cfg: TrainConfig) -> list:
    return train(cfg).eval_returns


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_local_runs_in_order_and_a_failure_names_its_run_after_the_others_ran(tmp_path):
    assert run_sweep(square_or_fail, [3, 1, 2]) == [9, 1, 4]
    seen = []

    def record(x: int) -> int:
        seen.append(x)
        return square_or_fail(x)

    expected = r"seed -1 failed \(local backend\): KeyError: 'negative -1'; also failed: seed -2"
    with pytest.raises(SweepError, match=expected) as e:
        run_sweep(record, [-1, 5, -2], names=["seed -1", "seed 5", "seed -2"])
    assert seen == [-1, 5, -2], "a failed run must not stop the others"
    assert e.value.index == 0 and e.value.failed == [0, 2] and isinstance(e.value.__cause__, KeyError)


def test_bad_sweeps_are_refused_before_any_run():
    with pytest.raises(ValueError, match="SweepConfig.backend"):
        SweepConfig(backend="slurm")
    with pytest.raises(ValueError, match="SweepConfig.cpus_per_run"):
        SweepConfig(cpus_per_run=0)
    with pytest.raises(ValueError, match="SweepConfig.retries"):
        SweepConfig(retries=-1)
    with pytest.raises(ValueError, match="SweepConfig.timeout"):
        SweepConfig(timeout=0)
    with pytest.raises(ValueError, match=r"names: expected one per config \(2\), got 1"):
        run_sweep(square_or_fail, [1, 2], names=["a"])
    with pytest.raises(TypeError, match="config: expected a SweepConfig, got dict"):
        run_sweep(square_or_fail, [1], {"backend": "ray"})
    with pytest.raises(TypeError, match="train: expected a callable"):
        run_sweep(3, [1])


def test_ray_missing_is_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ImportError, match=r'pip install "wmenv\[ray\]"'):
        run_sweep(square_or_fail, [1], SweepConfig(backend="ray"))


def test_ray_runs_get_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_folder("runs/a", SweepConfig()) == run_folder("runs/a", SweepConfig()).__class__("runs/a")
    assert run_folder("runs/a", SweepConfig(backend="ray")) == tmp_path / "runs" / "a"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_tasks_give_the_local_runs_results_in_parallel_processes(local_ray, tmp_path):
    base = TrainConfig(env_id="mpe:simple_spread_v3", total_steps=200, num_envs=2, eval_every=100, eval_episodes=2,
                       progress=False, checkpoint_every=0)  # fmt: skip
    configs = lambda sub: [dataclasses.replace(base, seed=s, run_dir=str(tmp_path / sub / f"s{s}")) for s in (0, 1)]  # noqa: E731
    local = run_sweep(tiny_training, configs("local"))
    remote = run_sweep(tiny_training, configs("ray"), SweepConfig(backend="ray"))
    assert remote == local and local[0] != local[1]
    pids = run_sweep(pid_after, [1.0, 1.0], SweepConfig(backend="ray"))
    assert len(set(pids)) == 2 and os.getpid() not in pids, "one task per CPU: the two runs ran at once, elsewhere"


@needs_ray
def test_a_failing_ray_run_keeps_its_type_and_a_slow_one_times_out(local_ray):
    with pytest.raises(SweepError, match=r"seed 1 failed \(ray backend\): KeyError") as e:
        run_sweep(square_or_fail, [2, -1], SweepConfig(backend="ray"), names=["seed 0", "seed 1"])
    assert e.value.failed == [1] and isinstance(e.value.__cause__, KeyError)
    with pytest.raises(SweepError, match=r"run 1 failed \(ray backend\): TimeoutError: did not finish within 3.0 s"):
        run_sweep(pid_after, [0.0, 60.0], SweepConfig(backend="ray", timeout=3.0))


def nice(_: object) -> int:
    return os.nice(0)


@needs_ray
def test_a_local_ray_that_the_sweep_starts_runs_at_normal_priority():
    import ray

    ray.shutdown()
    try:
        assert run_sweep(nice, [None], SweepConfig(backend="ray")) == [os.nice(0)], "Ray's default worker nice is 15"
    finally:
        ray.shutdown()

"""Fixtures shared by the test packages.

`make test` runs the suite on two pytest-xdist workers (processes). Tests that start a local Ray cluster hold a lock
on a file in the run's base temporary folder (shared by its workers), so the run starts one Ray cluster at a time:
`one_ray_cluster` for one test, `one_ray_cluster_per_module` for a module whose fixture keeps Ray up. (pytest-xdist's
``xdist_group`` marks cannot do it here: with pytest 9 they no longer group anything.)"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from filelock import FileLock


@contextmanager
def _ray_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hold the run-wide Ray lock (waits while another worker holds it)."""
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if root.name.startswith("popen-gw") else root  # xdist: one base folder per worker, in one
    with FileLock(str(shared / "ray.lock")):
        yield


@pytest.fixture
def one_ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For a test that starts (and stops) Ray itself."""
    with _ray_lock(tmp_path_factory):
        yield


@pytest.fixture(scope="module")
def one_ray_cluster_per_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For a module whose module-scoped fixture keeps a Ray cluster up across its tests."""
    with _ray_lock(tmp_path_factory):
        yield

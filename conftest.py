"""Fixtures for every test (here, not in tests/, so that pytest puts the repository root, not tests/, on sys.path:
tests/exports/ would otherwise shadow the exports package when pytest runs as a script)."""

import threading

import pytest
import torch
import tqdm.auto
import tqdm.std


@pytest.fixture(autouse=True)
def thread_lock_for_tqdm(monkeypatch):
    """tqdm's default lock is a multiprocessing RLock shared by forked processes (mutmut's workers): they can deadlock.

    After one forked test run died holding it, every later mutant that drew a progress bar hung until
    mutmut's timeout (and counted as killed); a per-test thread lock and no monitor thread avoid both.
    """
    for cls in {tqdm.std.tqdm, tqdm.auto.tqdm}:
        monkeypatch.setattr(cls, "_lock", threading.RLock(), raising=False)
        monkeypatch.setattr(cls, "monitor_interval", 0)


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (results that depend on reduction order stay bitwise reproducible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""The benchmarks run in the test process, as their ``main(argv)``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread(monkeypatch):
    """No progress bars, no Hub, one torch thread: on a busy 2-core machine a second thread makes tiny matmuls ~100x slower."""
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared by the distillation tests (import the autouse fixture): one intra-op thread, no progress bars.

Tiny models run faster on one thread than on two fighting over a busy CPU.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")
    yield
    torch.set_num_threads(threads)

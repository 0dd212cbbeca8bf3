"""The compactlm command re-executes itself under tcmalloc when it is installed, and only then."""

from __future__ import annotations

import sys

import pytest

from compactlm.cli import tcmalloc as allocator


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: seen.append((path, argv, env)))
    for name in ("LD_PRELOAD", allocator.MARK, "COMPACTLM_ALLOCATOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    return seen


def test_reexecs_once_with_tcmalloc_preloaded(calls, monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: "/lib/libtcmalloc_minimal.so.4")
    allocator.reexec_under_tcmalloc(["run", "--out", "x"])
    (path, argv, env), = calls
    assert path == sys.executable and argv[1:] == ["-m", "compactlm", "run", "--out", "x"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4" and env[allocator.MARK]
    monkeypatch.setenv(allocator.MARK, "/lib/libtcmalloc_minimal.so.4")   # the re-executed process: no loop
    allocator.reexec_under_tcmalloc(["run"])
    assert len(calls) == 1


@pytest.mark.parametrize("env", [{"COMPACTLM_ALLOCATOR": "system"}, {"LD_PRELOAD": "/lib/libjemalloc.so.2"}])
def test_user_choice_or_absence_is_respected(calls, monkeypatch, env):
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: "/lib/libtcmalloc_minimal.so.4")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    allocator.reexec_under_tcmalloc(["run"])
    assert calls == []


def test_nothing_happens_without_tcmalloc(calls, monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: None)
    allocator.reexec_under_tcmalloc(["run"])
    assert calls == []

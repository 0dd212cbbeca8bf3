"""benchmarks.common: the ``__main__`` wrapper, fresh-process arms and the resident-set sampler."""

from __future__ import annotations

import mmap
import time

import pytest

from benchmarks.common import ChildFailed, PeakRSS, fmt, run_child, run_script
from compactlm.errors import CompactLMError


def test_run_script_exit_codes(capsys, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")   # run_script's setdefault: restored after the test
    if hf_logging.is_progress_bar_enabled():              # and run_script turns them off: back on after the test
        monkeypatch.setattr(hf_logging, "disable_progress_bar", lambda: None)

    def fails():
        raise CompactLMError("no such model 'x'.")

    for main, code in ((lambda: 0, 0), (lambda: None, None), (fails, 2)):
        with pytest.raises(SystemExit) as exit_:
            run_script(main)
        assert exit_.value.code == code
    assert capsys.readouterr().err == "error: no such model 'x'.\n"


def test_run_child_reads_the_last_line_and_reports_failure(tmp_path, monkeypatch):
    (tmp_path / "child_ok.py").write_text("import json, sys\nprint('a log line')\nprint(json.dumps({'args': sys.argv[1:]}))\n")
    (tmp_path / "child_bad.py").write_text("import sys\nsys.exit('first\\nthe reason')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert run_child("child_ok", "--n", 3) == {"args": ["--n", "3"]}
    with pytest.raises(ChildFailed, match="^the reason$"):
        run_child("child_bad")


def test_peak_rss_sees_a_transient_allocation():
    # Fresh anonymous pages: a bytearray may reuse heap memory that earlier tests in this worker freed but
    # the allocator kept resident, and then the resident set does not grow at all.
    with PeakRSS(interval=0.001) as rss:
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), 4096):    # touch every page
            block[offset] = 1
        time.sleep(0.05)                             # then hold it for a few samples
        block.close()
    assert rss.peak - rss.base > 48 * 2**20


def test_fmt():
    assert (fmt(None), fmt(1.234), fmt(1234, ",")) == ("–", "1.23", "1,234")

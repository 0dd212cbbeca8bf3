"""Shared fixtures only; the helpers they use (tiny models, tokenizer) live in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import FAMILIES, SHARED_DATA, make_char_tokenizer, make_tiny_model

if os.environ.get("PYTEST_XDIST_WORKER"):   # `make test` runs one worker per core: one thread each, subprocesses too
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model():
    return make_tiny_model


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Save a tiny float32 model of a family with a char tokenizer; returns the directory."""

    def build(family: str = "llama", name: str = "tiny", **overrides) -> Path:
        path = tmp_path / name
        model = make_tiny_model(family, dtype=torch.float32, **overrides)
        model.save_pretrained(path)
        make_char_tokenizer().save_pretrained(path)
        return path

    return build


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A small English text file, enough for a few 32-token blocks."""
    path = tmp_path / "text.txt"
    para = ("The quick brown fox jumps over the lazy dog. Pruning keeps the important neurons. "
            "Distillation teaches the student with the teacher's logits.\n\n")
    path.write_text(para * 60)
    return path


# ~2 min each on one core (the second de-quantises two built-in teachers on a fresh machine): started first,
# they never run last and alone
LONGEST = ("test_smollm2_run.py", "test_real_weights.py", "test_real_teacher_run.py")


def pytest_collection_modifyitems(items):
    """The longest files, then the other tests of the real teacher, first: under `make test`'s workers (whole files
    each) they must not be the last ones running while the other cores idle."""
    items.sort(key=lambda item: (item.path.name not in LONGEST, item.get_closest_marker("slow") is None))

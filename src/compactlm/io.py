"""Atomic output: write into a temporary sibling directory, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import CompactLMError

# Files and folders that only compactlm writes: a directory holding one of them is ours to replace.
OUTPUT_MARKERS = ("run_state.json", "metrics.jsonl", "prune_plan.json", "importance.json", "search_state.json",
                  "candidates.json", "compactlm_provenance.json", "trainer_state.json", "checkpoints")


def cache_dir() -> Path:
    """compactlm's cache (measured GEMM rates, de-quantised GGUF models): ``$COMPACTLM_CACHE``, else
    ``~/.cache/compactlm``. Everything in it can be deleted; it is rebuilt on first use."""
    return Path(os.environ.get("COMPACTLM_CACHE", Path.home() / ".cache" / "compactlm"))


def _writable_ancestor(path: Path) -> None:
    """Refuse a path whose nearest existing ancestor is a file or cannot be written, before any work.

    Permission bits are not enough (``/proc`` and read-only mounts look writable to root), so
    the ancestor is probed by creating and removing an empty temporary directory in it.
    """
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CompactLMError(f"Cannot write '{path}': '{ancestor}' is a file, not a directory. Choose another path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CompactLMError(f"Cannot write '{path}': no write permission in '{ancestor}'. Choose a writable path.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".compactlm-probe-", dir=ancestor))
    except OSError as err:
        raise CompactLMError(f"Cannot write '{path}': creating anything in '{ancestor}' fails ({err.strerror}). "
                             f"Choose a path on a writable filesystem.") from None


def check_inputs_outside(out: Path, inputs: Iterable[str | os.PathLike | None], *, nested: bool = False) -> None:
    """Refuse an output that is, contains or lies inside one of the local ``inputs`` (a model or data directory,
    a file): writing there would replace or add to what the verb reads. ``nested=True`` allows an output inside
    an input directory (the search's own layout: ``<candidate>/retrained``), never one that replaces it."""
    target = Path(out).expanduser().resolve()
    for item in inputs:
        if item is None or not str(item).strip() or not Path(item).expanduser().exists():
            continue   # a hub id, a built-in name or a data set name: nothing on disk to protect
        source = Path(item).expanduser().resolve()
        if source == target or source.is_relative_to(target):
            raise CompactLMError(f"Output '{out}' {'is' if source == target else 'contains'} the input '{item}'; "
                                 f"writing there would replace it. Choose another output path.")
        if not nested and source.is_dir() and target.is_relative_to(source):
            raise CompactLMError(f"Output '{out}' is inside the input directory '{item}'; compactlm never writes into "
                                 f"what it reads. Choose an output path outside it.")


def is_ours(path: Path) -> bool:
    """True when ``path`` is a directory compactlm wrote (it holds one of :data:`OUTPUT_MARKERS`)."""
    return any((path / marker).exists() for marker in OUTPUT_MARKERS)


def check_output_dir(path: str | os.PathLike, overwrite: bool,
                     inputs: Iterable[str | os.PathLike | None] = (), *, nested: bool = False) -> Path:
    """Validate an output directory before any work; nothing is deleted here.

    Refused: the filesystem root, the current directory or one above it, an existing file, a
    path under a file or in a directory we cannot write, an output that is or contains one of the
    ``inputs``, and an existing non-empty directory unless ``overwrite`` — and even then only
    a directory compactlm wrote (one of :data:`OUTPUT_MARKERS`), never someone else's files.
    """
    if not str(path).strip():
        raise CompactLMError("--out is empty; give the path of a new directory, e.g. --out runs/mine.")
    out = Path(path).expanduser()
    full = out.resolve()
    if full == Path(full.anchor):
        raise CompactLMError(f"Output '{path}' is the filesystem root; give a new directory, e.g. --out runs/mine.")
    if Path.cwd().resolve().is_relative_to(full):
        raise CompactLMError(f"Output '{path}' is the current directory or one above it; compactlm replaces its "
                             f"output directory as a whole. Give a new directory, e.g. --out runs/mine.")
    if out.exists() and not out.is_dir():
        raise CompactLMError(f"Output path '{out}' exists and is a file; expected a directory path. Choose another --out.")
    _writable_ancestor(out)
    check_inputs_outside(out, inputs, nested=nested)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CompactLMError(f"Output directory '{out}' already exists and is not empty. Pass --overwrite to "
                                 f"replace it, or choose another --out.")
        if not is_ours(out):
            raise CompactLMError(f"Output directory '{out}' is not empty and was not written by compactlm (none of "
                                 f"{', '.join(OUTPUT_MARKERS[:4])} ...); --overwrite only replaces compactlm's own "
                                 f"outputs. Choose another --out, or empty it yourself.")
    return out


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                      overwrite: bool = False, ours: Callable[[Path], bool] | None = None,
                      flag: str = "--json") -> Path:
    """Validate a file to be written (``--json``, ``--gguf``) before any work.

    Refused: a directory or empty path, a place that cannot be written, a path that is or lies
    inside one of the ``inputs``, a read-only file, and an existing file unless ``overwrite`` or
    ``ours(path)`` (a previous output of the same verb, which a rerun may replace).
    """
    out = Path(path).expanduser()
    if not str(path).strip() or out.is_dir():
        raise CompactLMError(f"{flag} '{path}' is a directory or empty; expected the path of a file to write.")
    _writable_ancestor(out.parent if out.exists() else out)   # the message names the file to write
    check_inputs_outside(out, inputs)
    if out.exists() and not os.access(out, os.W_OK):
        raise CompactLMError(f"Cannot write '{path}': the file is read-only. Choose another path.")
    if out.exists() and not overwrite and not (ours is not None and ours(out)):
        raise CompactLMError(f"{flag} '{path}' already exists and is not an output of this command; pass --overwrite "
                             f"to replace it, or choose another path.")
    return out


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block finishes.

    On an exception the temporary directory is removed and ``path`` is untouched, so a crash
    never leaves half an output behind. A ``path`` that is a symbolic link is written through:
    the link stays and its target directory is replaced.
    """
    final = check_output_dir(path, overwrite)
    if final.is_symlink():   # a link to the output directory: write through it, the link stays
        final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

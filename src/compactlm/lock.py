"""One process per output directory: an advisory lock beside it, naming its holder.

``compactlm run`` and ``compactlm distill``/``finetune`` hold :func:`output_lock` on their ``--out``
for as long as they run, so that a second process started on the same directory is refused at
once (exit 2, one line naming the holder) instead of writing into it at the same time.

The lock is ``fcntl.flock`` on ``<parent>/.<name>.lock``, a file *beside* the output directory:
the directory need not exist yet, and a new run replaces it as a whole (``shutil.rmtree``,
:func:`~compactlm.io.atomic_dir`), which would take a lock file inside it along. The file holds
the holder's pid, host, start time and command, so that the refusal can name it; it is removed
when the holder lets go, also by an exception, Ctrl-C or SIGTERM.

The kernel releases a flock when its holder dies (SIGKILL, out of memory, a power cut of this
host), so a lock file left behind by a process of *this* host is known to be stale and is taken
over with a warning. One left by *another* host (a shared filesystem) is refused with the
command that removes it: whether that process still runs cannot be told from here, and some
network filesystems do not pass flocks between hosts. Where the filesystem cannot lock at all,
the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import CompactLMError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def lock_path(out: str | os.PathLike) -> Path | None:
    """``<parent>/.<name>.lock`` of an output directory (symlinks resolved), or None for the filesystem root and an
    empty path (which the output checks refuse)."""
    if not str(out).strip():
        return None
    full = Path(out).expanduser().resolve()
    return None if not full.name else full.parent / f".{full.name}{LOCK_SUFFIX}"


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py":
        argv[0] = f"python -m {Path(argv[0]).parent.name}"
    elif argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)


def _owner_text(owner: dict) -> str:
    pid, host = owner.get("pid", "?"), owner.get("host", "?")
    started, command = owner.get("started"), str(owner.get("command") or "")
    return (f"pid {pid} on host {host}" + (f", started {started}" if started else "")
            + (f" ({command[:200]}{'...' if len(command) > 200 else ''})" if command else ""))


def _read_owner(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}
    return owner if isinstance(owner, dict) else {"unreadable": True}


def _missing_ancestors(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, the outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _refuse(out, path: Path, owner: dict) -> CompactLMError:
    if not owner or owner.get("unreadable"):
        who = "another process (it has not written its name into the lock file yet)"
    else:
        who = f"another compactlm process: {_owner_text(owner)}"
    return CompactLMError(f"'{out}' is in use by {who}. Wait for it to finish or stop it, or choose another "
                          f"--out (lock file {path}).")


def _try_lock(fd: int, out, path: Path) -> bool:
    """Take the flock without waiting: True, or False where the filesystem cannot lock. Refuses a held lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        owner = _read_owner(fd)
        for _ in range(10):   # the holder writes its name right after taking the lock
            if owner:
                break
            time.sleep(0.05)
            owner = _read_owner(fd)
        raise _refuse(out, path, owner) from None
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise _refuse(out, path, _read_owner(fd)) from None
        logger.warning("Cannot lock '%s' (%s): this filesystem does not support locks, so a second process on the "
                       "same --out would not be refused", out, err.strerror)
        return False


def _take_over(fd: int, out, path: Path) -> None:
    """A free lock whose file still names a holder: its holder ended without letting go."""
    owner = _read_owner(fd)
    if not owner:
        return
    host = socket.gethostname()
    if owner.get("unreadable") or owner.get("host") == host:
        logger.warning("'%s': taking over the lock left by %s, which is no longer running (killed or crashed); "
                       "continue its work with --resume, or start again with --overwrite",
                       out, _owner_text(owner) if not owner.get("unreadable") else "an earlier process")
        return
    raise CompactLMError(f"'{out}' was locked by {_owner_text(owner)}; from {host} it cannot be told whether that "
                         f"process still runs. If it does not, remove the lock with: rm {shlex.quote(str(path))} "
                         f"and run this command again.")


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _open_locked(out, path: Path) -> int | None:
    """The lock file's descriptor, flocked by us and still the file at ``path``; None where no lock can be taken."""
    for _ in range(20):   # the holder may remove the file between our open and our flock: open it again
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:   # another user's lock file: a flock needs no write access
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                logger.debug("no lock on '%s': %s", out, err)
                return None
        except OSError as err:
            logger.debug("no lock on '%s': %s", out, err)
            return None
        try:
            locked = _try_lock(fd, out, path)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            if os.fstat(fd).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(fd)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)
    raise CompactLMError(f"Could not lock '{out}': {path} kept being replaced. Is another process starting on the "
                         f"same --out? Try again.")


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path | None]:
    """Hold ``out`` for this process (see the module docstring); yields the lock file, or None where none could be
    taken (the filesystem root, a place that cannot be written: the output checks refuse those with their own
    message). Raises :class:`CompactLMError` naming the holder when another process holds it."""
    path = lock_path(out)
    created = _missing_ancestors(path.parent) if path is not None else []
    fd = None
    try:
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                logger.debug("no lock on '%s': %s", out, err)
                created = []
            else:
                fd = _open_locked(out, path)
        if fd is None:
            yield None
            return
        _take_over(fd, out, path)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "command": _command()}
        with contextlib.suppress(OSError):   # read-only (another user's file): held, but unnamed
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode("utf-8"), 0)
        try:
            yield path
        finally:
            if _same_file(fd, path):
                with contextlib.suppress(OSError):
                    os.unlink(path)   # before letting go: whoever opened it meanwhile sees it gone and opens anew
    finally:
        if fd is not None:
            os.close(fd)
        for folder in reversed(created):   # the folders made for the lock file, unless the run filled them
            with contextlib.suppress(OSError):
                folder.rmdir()

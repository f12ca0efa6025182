"""Atomic file writes: a crash or an error never leaves a half-written file behind.

:func:`atomic_write` is the one way graphode writes its output files (checkpoints,
metrics, plots, caches, saved graphs). It writes a temporary file ``.NAME.XXXXXXXX.tmp``
beside the target, flushes it to disk and renames it over the target with
``os.replace``, so readers see either the old file or the complete new one.

* Permissions: a new file gets ``0o666`` minus the umask, as ``open(path, "w")`` would
  create it; a file that already exists keeps its permission bits.
* Leftovers: a process killed mid-write leaves its temporary file behind. The next write
  of the same target removes such leftovers. A temporary file is locked (``flock``) while
  its writer is alive, so a concurrent writer's file is never taken for a leftover.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: open files cannot be deleted there anyway
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "remove_stale_temporaries"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _temp_pattern(name: str) -> re.Pattern[str]:
    # One segment of [A-Za-z0-9_] between the target's name and ".tmp": the names this
    # module (or tempfile.mkstemp) gives, and no other target's (the temporaries of "a.b"
    # have two segments after ".a.").
    return re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]+\.tmp")


def _lock(fd: int, blocking: bool) -> bool:
    """An exclusive ``flock`` on ``fd``; False when another open file holds it (non-blocking)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock support: treat as unlocked
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that interrupted :func:`atomic_write` calls left beside ``path``.

    A leftover is a regular file ``.NAME.XXXXXXXX.tmp`` in ``path``'s folder whose writer
    is gone (no process holds its lock). Files that cannot be removed are left alone: this
    never raises for them. Returns the removed paths.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_BINARY)
            try:
                if not _lock(fd, blocking=False):
                    continue  # a live writer's file
                if os.lstat(entry.path).st_ino != os.fstat(fd).st_ino:
                    continue  # replaced meanwhile
                if fcntl is None:  # pragma: no cover - Windows refuses to delete an open file
                    os.close(fd)
                    fd = -1
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            finally:
                if fd >= 0:
                    os.close(fd)
    return removed


def _create_temporary(path: Path) -> tuple[int, str]:
    """Create and lock a new temporary file beside ``path``; returns its descriptor and name."""
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except FileNotFoundError:
        keep_mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_BINARY
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # Mode 0o666: the kernel applies the umask (and any default ACL), as for open().
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            _lock(fd, blocking=True)
            # Another writer's clean-up may have removed the file before it was locked.
            if os.stat(tmp).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(tmp)
            if keep_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, keep_mode)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    if os.name == "nt":  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically: call ``write(fh)`` on a temporary file beside it, then rename.

    Args:
        path: the target file; missing parent folders are created.
        write: called once with a binary file object open for writing.

    Until the final ``os.replace`` the old file (if any) stays untouched; on any error the
    temporary file is removed and the error propagates. Leftovers of earlier interrupted
    writes of ``path`` are removed first (see :func:`remove_stale_temporaries`). A new file
    gets the permissions ``open()`` would give it (``0o666`` minus the umask); an existing
    one keeps its permission bits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            if fcntl is not None:
                os.replace(tmp, path)  # while still locked: never mistaken for a leftover
        if fcntl is None:  # pragma: no cover - Windows cannot rename an open file
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)

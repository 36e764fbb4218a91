"""Files written whole or not at all, read only when they are regular files, and claimed by
one writer at a time.

The bottom room of npgru's application layer: :mod:`npgru.checkpoint` saves runs with
:func:`atomic_write`, :mod:`npgru.download` saves the downloaded book with it, and both read
through :func:`open_regular`. :func:`claim` gives one process (a training run) a path to
itself, :func:`remove_temporaries` sweeps up what a killed :func:`atomic_write` left, and
:func:`identity` tells whether someone else changed a file. Nothing here knows about arrays or
text.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

try:  # POSIX; elsewhere (Windows) paths are not claimed: see claim()
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Claim",
    "PathBusy",
    "atomic_write",
    "claim",
    "identity",
    "open_regular",
    "real_path",
    "remove_temporaries",
]

#: The name of the temporary file :func:`atomic_write` writes beside ``NAME``:
#: ``.NAME.XXXXXXXX.tmp``, with :mod:`tempfile`'s eight random characters.
_TEMPORARY = ".{name}.{random}.tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Create or replace the file ``path`` with what ``write(fh)`` writes, atomically.

    ``write`` gets a binary file open on a temporary file beside ``path``; it is flushed,
    fsynced and renamed onto ``path``, and the folder fsynced. On any exception (Ctrl-C
    included) the temporary file is removed and ``path`` is as it was; a process killed
    meanwhile leaves it (``.NAME.XXXXXXXX.tmp``) for :func:`remove_temporaries`. A symlink
    stays a symlink: its target is replaced (a dangling one's target is created).

    Returns:
        The path written: ``path`` with its symlinks resolved.

    Raises:
        OSError: ``path`` exists and is not a regular file (a folder, a device, a FIFO), or
            the file cannot be written (no such folder, no permission, disk full).
    """
    target = real_path(path)
    if target.exists() and not target.is_file():
        raise OSError(errno.EINVAL, "it exists and is not a regular file", str(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with contextlib.suppress(OSError):  # the old file's permissions, else the umask's
                mode = target.stat().st_mode if target.exists() else 0o666 & ~_umask()
                os.chmod(fh.fileno(), mode & 0o7777)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading in binary; OSError for anything else (a FIFO is
    opened without blocking, then refused, as are folders and devices)."""

    def opener(name: str, flags: int) -> int:
        fd = os.open(name, flags | getattr(os, "O_NONBLOCK", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "it is not a regular file (a directory, device or FIFO)")
        return fd

    return open(path, "rb", opener=opener)


def _umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return umask


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symlink resolved (a dangling one to the path it points at), made
    absolute.

    Raises:
        OSError: a symlink loop (``ELOOP``).
    """
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # not there yet, or a dangling symlink: where it would be
        return Path(os.path.realpath(path))


def identity(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """What tells one version of the file at ``path`` (symlinks followed) from another:
    device, inode, size and modification time; None where there is no file. A file replaced,
    rewritten or touched since has another identity."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remove_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_write` of ``path`` left beside it
    (regular files named ``.NAME.XXXXXXXX.tmp``); return those removed.

    Call it only while holding :func:`claim` on ``path``: a live writer's file looks the same.
    """
    target = real_path(path)
    pattern = re.compile(
        re.escape(_TEMPORARY.format(name=target.name, random="@")).replace("@", "[a-z0-9_]{8}")
    )
    removed = []
    with contextlib.suppress(OSError):  # an unreadable folder: nothing to sweep
        for entry in os.scandir(target.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


class PathBusy(OSError):
    """Another process holds :func:`claim` on the path; ``pid`` is its id if it said."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(errno.EBUSY, "another process is writing it", str(path))
        self.pid = pid


class Claim:
    """A held :func:`claim`: ``lock_path`` is the lock file; :meth:`release` (or leaving the
    ``with`` block) gives it up and removes the lock file."""

    def __init__(self, lock_path: Path | None, fd: int | None) -> None:
        self.lock_path, self._fd = lock_path, fd

    @property
    def held(self) -> bool:
        """Whether a lock is held (False where locks are not supported)."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, then unlock it; calling it again does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # removed while still locked: whoever opens the name afterwards gets a new file,
        # and whoever opened the old one sees that it is gone (claim() checks)
        with contextlib.suppress(OSError):
            if self.lock_path is not None:
                os.unlink(self.lock_path)
        os.close(fd)  # closing the last descriptor unlocks it

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(path: str | os.PathLike[str]) -> Claim:
    """Claim the file ``path`` (symlinks resolved) for this process: an exclusive
    ``fcntl.flock`` on the lock file ``.NAME.lock`` beside it, which holds the owner's pid.

    The lock file exists while a process holds the claim; :meth:`Claim.release` removes it.
    A process that dies without releasing it (killed, a power cut) leaves the file, but the
    kernel drops its lock with the process: the next claim takes the stale file over, and
    removes it in turn. Where ``fcntl`` is missing (Windows) or the file system cannot lock,
    nothing is locked and the returned claim is not :attr:`~Claim.held`.

    Raises:
        PathBusy: another process holds the claim.
        OSError: the lock file cannot be created (no permission, no such folder).
    """
    target = real_path(path)
    lock_path = target.with_name(f".{target.name}.lock")
    if fcntl is None:  # pragma: no cover
        return Claim(None, None)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise PathBusy(target, pid) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return Claim(None, None)  # a file system without locks: nothing to hold
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it as we opened it: take the new one
    with contextlib.suppress(OSError):  # the pid is only for the message of PathBusy
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return Claim(lock_path, fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    return None

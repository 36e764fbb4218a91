"""Files written whole or not at all, and read only when they are regular files.

The bottom room of npgru's application layer: :mod:`npgru.checkpoint` saves runs with
:func:`atomic_write`, :mod:`npgru.download` saves the downloaded book with it, and both read
through :func:`open_regular`. Nothing here knows about arrays or text.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "open_regular"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Create or replace the file ``path`` with what ``write(fh)`` writes, atomically.

    ``write`` gets a binary file open on a temporary file beside ``path``; it is flushed,
    fsynced and renamed onto ``path``, and the folder fsynced. On any exception (Ctrl-C
    included) the temporary file is removed and ``path`` is as it was.

    Raises:
        OSError: ``path`` exists and is not a regular file (a folder, a device, a FIFO), or
            the file cannot be written (no such folder, no permission, disk full).
    """
    target = Path(path)
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

"""The Time Machine on this machine: a verified copy in the cache, else one download.

:func:`resolve_data_path` finds the text :mod:`npgru.data` reads: a file the user names, else
``timemachine.txt`` in the cache directory (checked by its SHA-1), else one download from
d2l's server, checked before it is written into the cache atomically. A download that fails
leaves nothing behind: no partial file, and no cache directory made for it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path

from npgru.errors import DataError, one_line
from npgru.files import atomic_write, open_regular

__all__ = [
    "CACHE_ENV_VAR",
    "DATA_FILE_NAME",
    "DATA_SHA1",
    "DATA_URL",
    "default_cache_dir",
    "resolve_data_path",
]

DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
DATA_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
DATA_FILE_NAME = "timemachine.txt"
#: Environment variable naming the cache directory (default ``~/.cache/npgru``).
CACHE_ENV_VAR = "NPGRU_DATA_DIR"
_MAX_DOWNLOAD_BYTES = 64 * 2**20  # the book is 179 kB; refuse a runaway response


def default_cache_dir() -> Path:
    """The cache directory: ``$NPGRU_DATA_DIR`` if set and non-empty, else ``~/.cache/npgru``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "npgru"


def resolve_data_path(
    path: str | os.PathLike[str] | None = None,
    *,
    url: str = DATA_URL,
    sha1: str = DATA_SHA1,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30,
) -> Path:
    """Find the training text, downloading and caching it when needed.

    In order: ``path`` when given (any text, used as is: :func:`read_text` checks it); else
    ``timemachine.txt`` in the cache directory (``cache_dir``, else ``$NPGRU_DATA_DIR``, else
    ``~/.cache/npgru``) after checking its SHA-1; else one download of ``url``, at most 64 MiB,
    whose bytes must have SHA-1 ``sha1`` before they are written into the cache atomically.

    Args:
        path: an explicit text file, or None.
        url: where to download from.
        sha1: the expected SHA-1 (hex) of the cached or downloaded file.
        cache_dir: the cache directory (created when needed), or None for the default.
        timeout: seconds to wait for the server to connect and for each read.

    Returns:
        The path of the file to read (not yet read or decoded: see :func:`read_text`).

    Raises:
        DataError: the cached file has the wrong SHA-1 (delete it), the cache cannot be
            created or written, or the download failed (server down, HTTP error, timeout,
            too large, checksum mismatch); nothing unverified is left in the cache.
    """
    if path is not None:
        return Path(path).expanduser()
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = directory / DATA_FILE_NAME
    expected = sha1.lower()
    by_hand = f"download {url} by hand to {target}, or pass the path of a copy"
    if target.exists():
        if not target.is_file():
            raise DataError(f"{target} is a directory or special file: remove it, or {by_hand}")
        try:
            with open_regular(target) as fh:
                actual = hashlib.sha1(fh.read(_MAX_DOWNLOAD_BYTES + 1)).hexdigest()
        except OSError as exc:
            raise DataError(f"cannot read the cached {target} ({exc.strerror}): {by_hand}") from exc
        if actual != expected:
            raise DataError(
                f"the cached {target} is corrupt (SHA-1 {actual}, expected {expected}): "
                f"delete it to download it again, or pass the path of a copy"
            )
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(_MAX_DOWNLOAD_BYTES + 1)
            promised = response.headers.get("Content-Length", "")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # URLError, HTTPError and TimeoutError are all OSErrors; a bad URL is a ValueError
        reason = getattr(exc, "reason", None)
        why = one_line(reason or exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
            why = f"timed out after {timeout} s"
        elif code := getattr(exc, "code", None):
            why = f"HTTP {code} {why}"
        raise DataError(f"download of {url} failed ({why}): {by_hand}") from exc
    if len(data) > _MAX_DOWNLOAD_BYTES:
        raise DataError(f"download of {url} is over 64 MiB, not the expected file: {by_hand}")
    if promised.isdigit() and len(data) < int(promised):
        raise DataError(
            f"download of {url} ended early ({len(data)} of {promised} bytes): nothing was "
            f"saved; try again, or {by_hand}"
        )
    actual = hashlib.sha1(data).hexdigest()
    if actual != expected:
        raise DataError(
            f"download of {url} has the wrong checksum (SHA-1 {actual}, {len(data)} bytes; "
            f"expected {expected}): nothing was saved; try again later, or {by_hand}"
        )
    # the folder is made only now, for verified bytes: a failed first run leaves nothing
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the cache directory {directory} ({exc.strerror or exc}): set "
            f"{CACHE_ENV_VAR} to a writable directory, or pass the path of a copy"
        ) from exc
    try:
        atomic_write(target, lambda fh: fh.write(data))
    except OSError as exc:
        raise DataError(f"cannot write {target} ({exc.strerror or exc}): {by_hand}") from exc
    return target

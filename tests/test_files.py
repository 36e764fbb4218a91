"""npgru.files: the claim on a path (a lock file), the sweep of a killed save's temporary
files, symlinks written through, and a file's identity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npgru.files import (
    PathBusy,
    atomic_write,
    claim,
    identity,
    real_path,
    remove_temporaries,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.name != "posix", reason="claims need fcntl (POSIX)")


def holder(path: Path, *, die: bool = False) -> subprocess.Popen:
    """A process that claims ``path`` and waits for a line on stdin (or dies by SIGKILL
    right after claiming, with ``die``)."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from npgru.files import claim
        c = claim({str(path)!r})
        print("held", flush=True)
        if {die}:
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.readline()
        c.release()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_claim_excludes_another_process_and_is_released(tmp_path):
    path = tmp_path / "run.npz"
    proc = holder(path)
    try:
        with pytest.raises(PathBusy) as info:
            claim(path)
        assert info.value.pid == proc.pid
        assert (tmp_path / ".run.npz.lock").exists()
    finally:
        proc.communicate("\n", timeout=20)
    assert not (tmp_path / ".run.npz.lock").exists()  # released: the lock file is gone
    with claim(path) as mine:
        assert mine.held
    assert os.listdir(tmp_path) == []


def test_a_killed_holders_lock_is_stale_and_taken_over(tmp_path):
    path = tmp_path / "run.npz"
    proc = holder(path, die=True)
    proc.wait(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / ".run.npz.lock").exists()  # left behind, but no longer locked
    with claim(path) as mine:
        assert mine.held
        assert (tmp_path / ".run.npz.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".run.npz.lock").exists()


def test_two_claims_in_one_process_exclude_each_other_too(tmp_path):
    path = tmp_path / "run.npz"
    with claim(path):
        with pytest.raises(PathBusy):
            claim(path)
    claim(path).release()


def test_a_claim_through_a_symlink_is_the_targets(tmp_path):
    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    link.symlink_to(target)
    with claim(target):
        with pytest.raises(PathBusy):
            claim(link)


def test_releasing_twice_leaves_a_later_claim_alone(tmp_path):
    """A second release() must not remove the lock file a later claim has made."""
    path = tmp_path / "run.npz"
    first = claim(path)
    first.release()
    second = claim(path)
    first.release()  # again: nothing
    assert (tmp_path / ".run.npz.lock").exists()
    second.release()


def test_remove_temporaries_sweeps_a_killed_save_and_nothing_else(tmp_path):
    path = tmp_path / "run.npz"
    left = [tmp_path / ".run.npz.k2j_8x0a.tmp", tmp_path / ".run.npz.abcdefgh.tmp"]
    kept = [
        tmp_path / ".run.npz.lock",
        tmp_path / ".run.npz.short.tmp",  # not tempfile's eight characters
        tmp_path / ".other.npz.abcdefgh.tmp",  # another file's
        tmp_path / ".run.npz.x.abcdefgh.tmp",  # run.npz.x's
        tmp_path / "run.npz.abcdefgh.tmp",  # not hidden: not atomic_write's
    ]
    for p in left + kept:
        p.write_bytes(b"partial")
    os.mkdir(tmp_path / ".run.npz.folder00.tmp")  # a folder is never removed
    assert sorted(remove_temporaries(path)) == sorted(left)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in left)
    assert (tmp_path / ".run.npz.folder00.tmp").is_dir()


def test_a_killed_atomic_write_leaves_a_temporary_that_is_swept(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("old")
    code = textwrap.dedent(f"""
        import os, signal
        from npgru.files import atomic_write
        def write(fh):
            fh.write(b"half")
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(path)!r}, write)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=20)
    assert proc.returncode == -signal.SIGKILL
    temporaries = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temporaries) == 1 and path.read_text() == "old"
    assert remove_temporaries(path) == temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.txt"]


def test_atomic_write_writes_through_a_symlink(tmp_path):
    target, link = tmp_path / "target.bin", tmp_path / "link.bin"
    target.write_bytes(b"old")
    link.symlink_to(target.name)  # relative, as ln -s makes them
    assert atomic_write(link, lambda fh: fh.write(b"new")) == target
    assert link.is_symlink() and target.read_bytes() == b"new"
    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to(tmp_path / "created.bin")
    atomic_write(dangling, lambda fh: fh.write(b"made"))
    assert dangling.is_symlink() and (tmp_path / "created.bin").read_bytes() == b"made"


def test_a_symlink_loop_is_an_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(OSError):
        real_path(a)
    with pytest.raises(OSError):
        atomic_write(a, lambda fh: fh.write(b"x"))
    assert a.is_symlink() and b.is_symlink()


def test_identity_changes_with_any_new_version(tmp_path):
    path = tmp_path / "f"
    assert identity(path) is None
    path.write_bytes(b"one")
    first = identity(path)
    assert identity(path) == first
    atomic_write(path, lambda fh: fh.write(b"one"))  # same bytes, a new file
    assert identity(path) != first
    second = identity(path)
    os.utime(path, ns=(1, 1))  # touched
    assert identity(path) != second

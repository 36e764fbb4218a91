"""Tests of npgru.checkpoint: atomic writes, verified loading, and whole training runs.

Refusals are asserted by exception type and by the path in the message, not by wording.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import save_run_unchecked
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgru
from npgru.checkpoint import (
    DIGEST,
    META,
    capture,
    describe,
    digest,
    format_info,
    load_checkpoint,
    load_model,
    read_run,
    restore_run,
    save_checkpoint,
    save_run,
)
from npgru.data import SeqDataLoader, load_corpus
from npgru.errors import CheckpointError
from npgru.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
META_OK = {"format": "npgru-run", "note": "x"}


def content(i: int = 0) -> dict[str, np.ndarray]:
    return {"W_xz": np.full((3, 4), i, dtype=np.float32), "b_q": np.arange(5.0) + i}


def refused(path: Path) -> str:
    """Load ``path``, expecting a CheckpointError whose one-line message names the path."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "run.npz"
    save_checkpoint(path, content(1), META_OK)
    return path, path.read_bytes()


# --------------------------------------------------------------------------- round trips


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.complex64]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_numeric_arrays_round_trip_bit_for_bit(tmp_path_factory, arrays) -> None:
    path = tmp_path_factory.mktemp("rt") / "a.npz"
    named = {f"a{i}": a for i, a in enumerate(arrays)}
    save_checkpoint(path, named, META_OK)
    back, meta = load_checkpoint(path)
    assert meta == META_OK and back.keys() == named.keys()
    for name, a in named.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        assert back[name].tobytes() == a.tobytes()


def test_plain_numpy_reads_parameters_by_name(saved) -> None:
    path, _ = saved
    with np.load(path, allow_pickle=False) as f:
        assert f["W_xz"].tolist() == content(1)["W_xz"].tolist()
        assert json.loads(str(f[META]))["format"] == "npgru-run"


def test_unstorable_arguments_are_refused(tmp_path: Path) -> None:
    for arrays, meta in (
        ({"1bad": np.zeros(2)}, META_OK),
        ({"W": [1.0, 2.0]}, META_OK),
        ({"W": np.array(["a"])}, META_OK),
        ({"W": np.zeros(2)}, {"x": float("nan")}),
        ({"W": np.zeros(2)}, {"x": object()}),
    ):
        with pytest.raises(CheckpointError):
            save_checkpoint(tmp_path / "x.npz", arrays, meta)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_the_old_file_and_no_temporary(saved) -> None:
    path, before = saved

    def half_then_fail(fh):
        fh.write(b"half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_write_is_synced_then_renamed_then_its_folder_synced(tmp_path: Path, monkeypatch):
    """The order that makes a save survive a power cut: the data is on disk before the
    rename makes it the file, and the rename is on disk before the save returns."""
    events, fsync, replace = [], os.fsync, os.replace

    def spy_fsync(fd):
        events.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    def spy_replace(src, dst):
        events.append("rename")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    atomic_write(tmp_path / "f", lambda fh: fh.write(b"x"))
    assert events == ["file", "rename", "folder"]


def test_fortran_ordered_arrays_round_trip(tmp_path: Path) -> None:
    a = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    save_checkpoint(tmp_path / "f.npz", {"W": a}, META_OK)
    back, _ = load_checkpoint(tmp_path / "f.npz")
    np.testing.assert_array_equal(back["W"], a)


def test_a_consistent_archive_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    save_checkpoint(path, content(1), {"format": "another-tool", "note": "x"})
    refused(path)


def test_only_absent_paths_and_regular_files_are_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (tmp_path, fifo, Path("/dev/null"), tmp_path / "missing" / "x.npz"):
        with pytest.raises(OSError):
            atomic_write(target, lambda fh: fh.write(b"x"))
        with pytest.raises(CheckpointError):
            save_checkpoint(target, content(), META_OK)
    assert fifo.exists() and not fifo.is_file()
    assert Path("/dev/null").is_char_device()


def test_file_mode_follows_umask_or_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    old = os.umask(0o027)
    try:
        save_checkpoint(path, content(), META_OK)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    path.chmod(0o600)
    save_checkpoint(path, content(2), META_OK)
    assert path.stat().st_mode & 0o777 == 0o600


KILL_CHILD = """
import sys
import numpy as np
from npgru.checkpoint import save_checkpoint

path, n, i = sys.argv[1], int(sys.argv[2]), 0
while True:
    i += 1
    W = np.full(n + 1000 * (i % 5), i, dtype=np.float64)
    save_checkpoint(path, {"W": W}, {"format": "npgru-run", "i": i})
    if i == 1:
        print("saving", flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_damaged_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rnd, seen = random.Random(1234), []
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(path), "1000000"],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            ready, _, _ = select.select([child.stdout], [], [], 30.0)
            assert ready and child.stdout.readline().strip() == b"saving"
            time.sleep(rnd.uniform(0.0, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        arrays, meta = load_checkpoint(path)  # the old one or the new one, never damaged
        assert bool(np.all(arrays["W"] == meta["i"]))
        seen.append(meta["i"])
    assert min(seen) >= 1


# --------------------------------------------------------------------------- damaged files


def test_every_truncation_is_refused(saved, tmp_path: Path) -> None:
    _, data = saved
    path = tmp_path / "cut.npz"
    for n in sorted({*range(0, len(data), 41), 1, 2, len(data) - 22, len(data) - 1}):
        path.write_bytes(data[:n])
        refused(path)


def test_every_single_byte_flip_is_refused_or_harmless(saved) -> None:
    path, data = saved
    harmless = 0
    fd = os.open(path, os.O_RDWR)  # flip in place: rewriting the whole file is much slower
    try:
        for offset in range(len(data)):
            os.pwrite(fd, bytes([data[offset] ^ 0xFF]), offset)
            try:
                arrays, _ = load_checkpoint(path)
            except CheckpointError as exc:
                assert str(path) in str(exc)
                continue
            finally:
                os.pwrite(fd, data[offset : offset + 1], offset)
            assert all(arrays[k].tobytes() == v.tobytes() for k, v in content(1).items())
            harmless += 1  # a byte zipfile ignores (a timestamp, an attribute, an extra field)
    finally:
        os.close(fd)
    assert harmless < len(data) // 4  # most bytes matter, and every one of those is caught


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the archive's entries, changed by ``change(dict)``, into a consistent new zip."""
    with np.load(src, allow_pickle=False) as f:
        entries = {k: f[k] for k in f.files}
    change(entries)
    np.savez(dst, **entries)
    return dst


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.pop("W_xz"),
        lambda e: e.update(extra=np.zeros(1)),
        lambda e: e.update(W_xz=e["W_xz"].astype(np.float64)),
        lambda e: e.update(W_xz=e["W_xz"].reshape(4, 3)),
        lambda e: e.update(b_q=np.nextafter(e["b_q"], np.inf)),
        lambda e: e.update({META: np.asarray(str(e[META]).replace("x", "y"))}),
        lambda e: e.pop(DIGEST),
    ],
    ids=["dropped", "extra", "widened", "reshaped", "one-ulp", "meta edited", "no digest"],
)
def test_consistent_archives_with_other_contents_fail_the_digest(saved, tmp_path, change):
    path, _ = saved
    refused(rewrite(path, tmp_path / "other.npz", change))


class Exploit:
    """Unpickling this would create a file: loading must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_members_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name in (META, "W_xz"):
        path = tmp_path / f"pickled-{name}.npz"
        np.savez(path, **{name: np.array([Exploit(marker)], dtype=object)})
        refused(path)
    assert not marker.exists()


def test_foreign_missing_and_special_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text.npz").write_text("not a checkpoint")
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", W=np.zeros(3))
    for name in ("text.npz", "single.npy", "other.npz", "missing.npz"):
        refused(tmp_path / name)
    refused(tmp_path)


def test_a_small_deflated_file_declaring_a_huge_array_is_refused_early(tmp_path: Path) -> None:
    """Issue 13: a 3 GiB array in a small deflated zip took 3.2 GB before the refusal."""
    path = tmp_path / "bomb.npz"
    for compression, size in ((zipfile.ZIP_DEFLATED, 2**28), (zipfile.ZIP_STORED, 2**40)):
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            with zf.open("W.npy", "w", force_zip64=True) as f:
                header = {"descr": "<f8", "fortran_order": False, "shape": (size,)}
                np.lib.format.write_array_header_1_0(f, header)
                f.write(bytes(2**23))  # 8 MiB of the declared 2 GiB / 8 TiB
        tracemalloc.start()
        try:
            refused(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**22, peak


# --------------------------------------------------------------------------- training runs


TEXT = "the quick brown fox jumps over the lazy dog\n" * 20


def run_parts(seed: int = 0):
    corpus, vocab = load_corpus(TEXT, max_tokens=-1)
    model = npgru.GRULanguageModel(len(vocab), 8, seed=seed)
    loader = SeqDataLoader(corpus, vocab, 4, 6, rng=seed)
    return model, loader, vocab


def test_save_run_and_restore_run_round_trip(tmp_path: Path) -> None:
    model, loader, vocab = run_parts(0)
    loader.rng.integers(10)  # move the generator along
    history = {"perplexity": [20.0, 15.5], "tokens_per_sec": [1e4, 2e4]}
    state = capture(model, loader, vocab, config={"lr": 1.0}, epoch=2, history=history)
    save_run(tmp_path / "r.npz", state)
    other, other_loader, _ = run_parts(5)
    back = restore_run(tmp_path / "r.npz", other, other_loader, vocab)
    assert back.epoch == 2 and back.history == history and back.config == {"lr": 1.0}
    assert other.params.flat.tobytes() == model.params.flat.tobytes()
    assert other_loader.rng.integers(1 << 30) == loader.rng.integers(1 << 30)


def edited_run(tmp_path: Path, edit) -> Path:
    """A run checkpoint with a consistent digest whose contents ``edit`` changed."""
    model, loader, vocab = run_parts()
    state = capture(model, loader, vocab, config={}, epoch=0, history={
        "perplexity": [], "tokens_per_sec": []})  # fmt: skip
    edit(state)
    path = tmp_path / "edited.npz"
    save_run_unchecked(path, state)
    return path


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.params.update(W_xz=s.params["W_xz"].astype(np.float16)),
        lambda s: s.params.update(W_xz=s.params["W_xz"].astype(np.complex64)),
        lambda s: s.params.update(W_xz=s.params["W_xz"].astype(np.int32)),
        lambda s: s.params["W_hq"].__setitem__((0, 0), np.nan),
        lambda s: s.params.pop("b_q"),
        lambda s: s.rng_state.update(bit_generator="MT19937"),
        lambda s: s.rng_state["state"].update(state="x"),
        lambda s: s.rng_state["state"].update(state=2**300),
        lambda s: s.vocab.reverse(),
        lambda s: s.vocab.__setitem__(slice(1, None), s.vocab[:0:-1]),  # <unk> still first
        lambda s: setattr(s, "epoch", 3),
        lambda s: s.history.update(perplexity=[9.0], tokens_per_sec=[1.0]),  # epoch 0
    ],
    ids=[
        "float16",
        "complex",
        "int",
        "nan",
        "missing",
        "other rng",
        "rng str",
        "rng huge",
        "vocab",
        "vocab order",
        "epoch without history",
        "history without epoch",
    ],
)
def test_a_run_that_does_not_fit_is_refused_and_changes_nothing(tmp_path, edit) -> None:
    """Issue 13: dtypes were cast silently, NaN loaded, a bad RNG state was a traceback."""
    path = edited_run(tmp_path, edit)
    model, loader, vocab = run_parts(3)
    before, rng_before = model.params.flat.copy(), loader.rng.bit_generator.state
    with pytest.raises(CheckpointError) as info:
        restore_run(path, model, loader, vocab)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert model.params.flat.tobytes() == before.tobytes()
    assert loader.rng.bit_generator.state == rng_before


def test_a_run_is_not_resumed_with_other_minibatches(tmp_path: Path) -> None:
    model, loader, vocab = run_parts(0)  # batch 4, 6 steps, sequential
    history = {"perplexity": [], "tokens_per_sec": []}
    config = {"batch_size": 4, "num_steps": 6, "use_random_iter": False}
    save_run(tmp_path / "r.npz", capture(model, loader, vocab, config=config, epoch=0,
                                         history=history))  # fmt: skip
    corpus, _ = load_corpus(TEXT, max_tokens=-1)
    other = npgru.GRULanguageModel(len(vocab), 8, seed=1)
    before = other.params.flat.copy()
    for kwargs, key in (({"batch_size": 2}, "batch_size"), ({"num_steps": 5}, "num_steps"),
                        ({"use_random_iter": True}, "use_random_iter")):  # fmt: skip
        sizes = {"batch_size": 4, "num_steps": 6, **kwargs}
        random_iter = sizes.pop("use_random_iter", False)
        other_loader = SeqDataLoader(corpus, vocab, *sizes.values(), use_random_iter=random_iter)
        with pytest.raises(CheckpointError, match=key):
            restore_run(tmp_path / "r.npz", other, other_loader, vocab)
        assert other.params.flat.tobytes() == before.tobytes()


def test_read_run_refuses_another_format_version(tmp_path: Path) -> None:
    path = edited_run(tmp_path, lambda s: None)
    arrays, meta = load_checkpoint(path)
    save_checkpoint(path, arrays, {**meta, "version": 1})
    with pytest.raises(CheckpointError, match=r"npgru 0\.2 writes format 2; files of format 1"):
        read_run(path)


def test_a_plain_sgd_run_is_not_resumed_with_adam(tmp_path: Path) -> None:
    model, loader, vocab = run_parts(0)
    history = {"perplexity": [], "tokens_per_sec": []}
    save_run(tmp_path / "sgd.npz", capture(model, loader, vocab, config={}, epoch=0,
                                           history=history))  # fmt: skip
    other, other_loader, _ = run_parts(1)
    with pytest.raises(CheckpointError, match="--optimizer"):
        restore_run(tmp_path / "sgd.npz", other, other_loader, vocab,
                    npgru.optim.new_state(other.params, "adam"))  # fmt: skip


def test_read_run_refuses_a_checkpoint_that_is_not_a_run(saved) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError, match=str(path)):
        read_run(path)


def test_a_state_with_nan_is_never_saved(tmp_path: Path) -> None:
    """Issue 13: after a divergence a NaN state could be saved as the last good epoch."""
    model, loader, vocab = run_parts()
    model.params["b_q"][0] = np.nan
    state = capture(model, loader, vocab, config={}, epoch=0, history={
        "perplexity": [], "tokens_per_sec": []})  # fmt: skip
    with pytest.raises(CheckpointError, match="b_q"):
        save_run(tmp_path / "nan.npz", state)
    assert not (tmp_path / "nan.npz").exists()


# --------------------------------------------------------------------------- forged metadata


def good_run(tmp_path: Path, *, val: bool = True) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """A run saved by save_run with a validation set; ``(path, meta, arrays)``."""
    model, loader, vocab = run_parts()
    config = {**model.config, "lr": 1.0, "batch_size": 4, "num_steps": 6, "seed": 0,
              "val_fraction": 0.2 if val else 0.0, "corpus_sha256": "ab" * 32}  # fmt: skip
    history = {"perplexity": [20.0, 15.5], "tokens_per_sec": [1e4, 2e4]}
    if val:
        history["val_perplexity"] = [9.0, 7.0]
    path = tmp_path / "good.npz"
    save_run(path, capture(model, loader, vocab, config=config, epoch=2, history=history))
    arrays, meta = load_checkpoint(path)
    return path, meta, arrays


def forge(path: Path, arrays: dict[str, np.ndarray], meta_text: str) -> Path:
    """A checkpoint whose metadata is ``meta_text`` (any text) under a consistent digest."""
    entries = {**arrays, META: np.asarray(meta_text)}
    entries[DIGEST] = np.asarray(digest(entries))
    np.savez(path, **entries)
    return path


def refused_run(path: Path) -> str:
    """read_run, describe and load_model each refuse ``path`` with one CheckpointError line
    naming it (any other exception fails the test)."""
    messages = []
    for read in (read_run, describe, load_model):
        with pytest.raises(CheckpointError) as info:
            read(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message, message
        messages.append(message)
    return messages[0]


def test_deeply_nested_metadata_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    """Issue 25: 100,000 nested brackets made json.loads raise RecursionError."""
    _, _, arrays = good_run(tmp_path)
    for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        message = refused_run(forge(tmp_path / "deep.npz", arrays, text))
        assert "levels deep" in message
    # brackets inside strings are text, not nesting
    path, meta, arrays = good_run(tmp_path)
    forge(path, arrays, json.dumps({**meta, "note": "[" * 1000}))
    assert read_run(path).epoch == 2


def test_unterminated_strings_are_read_in_linear_time(tmp_path: Path) -> None:
    """A hostile case: a quote then 400,000 escaped quotes made the scan for strings restart
    at every quote (quadratic: hours at the size limit). Now each character is read once."""
    _, _, arrays = good_run(tmp_path)
    for text in ('"' + '\\"' * 200_000, '"' + '\\"' * 200_000 + "\\", '["a' * 100_000):
        started = time.perf_counter()
        message = refused_run(forge(tmp_path / "quotes.npz", arrays, text))
        assert time.perf_counter() - started < 5, message  # the old scan: minutes


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"format": "npgru-run", "version": 2, "epoch": NaN}', "finite"),
        ('{"format": "npgru-run", "version": 2, "epoch": 1e999}', "finite"),
        ('{"format": "npgru-run", "format": "npgru-run", "version": 2}', "repeats a key"),
        ('{"format": "npgru-run"', "not valid JSON"),
        ('"npgru-run"', "not an npgru checkpoint"),
        ('{"format": "other"}', "not an npgru checkpoint"),
        ('{"format": "npgru-run", "version": 3}', "newer npgru"),
        ('{"format": "npgru-run", "version": "2"}', "npgru 0.2 writes format 2"),
    ],
)
def test_unparsable_or_foreign_metadata_says_what(tmp_path: Path, text: str, needle: str):
    _, _, arrays = good_run(tmp_path)
    assert needle in refused_run(forge(tmp_path / "forged.npz", arrays, text))


def edit_meta(meta: dict, edit) -> dict:
    meta = json.loads(json.dumps(meta))
    edit(meta)
    return meta


FORGERIES = {
    "best below 1": lambda m: m["history"].update(val_perplexity=[9.0, 1e-9]),
    "perplexity below 1": lambda m: m["history"].update(perplexity=[20.0, 0.5]),
    "zero speed": lambda m: m["history"].update(tokens_per_sec=[1e4, 0.0]),
    "bool in history": lambda m: m["history"].update(perplexity=[20.0, True]),
    "string in history": lambda m: m["history"].update(perplexity=[20.0, "15"]),
    "short history": lambda m: m["history"].update(val_perplexity=[9.0]),
    "no val history": lambda m: m["history"].pop("val_perplexity"),
    "val without val_fraction": lambda m: m["config"].update(val_fraction=0.0),
    "extra series": lambda m: m["history"].update(loss=[1.0, 1.0]),
    "history a list": lambda m: m.update(history=[1.0, 2.0]),
    "epoch float": lambda m: m.update(epoch=2.0),
    "epoch bool": lambda m: m.update(epoch=True),
    "epoch negative": lambda m: m.update(epoch=-1),
    "no epoch": lambda m: m.pop("epoch"),
    "multi-character token": lambda m: m["vocab"].__setitem__(3, "ab"),
    "empty token": lambda m: m["vocab"].__setitem__(3, ""),
    "number token": lambda m: m["vocab"].__setitem__(3, 7),
    "repeated token": lambda m: m["vocab"].__setitem__(3, m["vocab"][4]),
    "no <unk>": lambda m: m["vocab"].__setitem__(0, "?"),
    "empty vocab": lambda m: m.update(vocab=[]),
    "vocab a string": lambda m: m.update(vocab="<unk>abc"),
    "vocab_size": lambda m: m["config"].update(vocab_size=27),
    "num_hiddens str": lambda m: m["config"].update(num_hiddens="8"),
    "variant": lambda m: m["config"].update(variant="lstm"),
    "dtype": lambda m: m["config"].update(dtype="float16"),
    "lr bool": lambda m: m["config"].update(lr=True),
    "seed float": lambda m: m["config"].update(seed=0.5),
    "val_fraction 1": lambda m: m["config"].update(val_fraction=1.0),
    "use_random_iter int": lambda m: m["config"].update(use_random_iter=1),
    "optimizer": lambda m: m["config"].update(optimizer="adagrad"),
    "corpus hash": lambda m: m["config"].update(corpus_sha256="abc"),
    "config a list": lambda m: m.update(config=[]),
    "rng generator": lambda m: m["rng_state"].update(bit_generator="MT19937"),
    "rng inner": lambda m: m["rng_state"]["state"].update(state=-1),
    "rng extra": lambda m: m["rng_state"].update(extra=1),
    "rng has_uint32": lambda m: m["rng_state"].update(has_uint32=2),
    "opt_step": lambda m: m.update(opt_step=-3),
    "writer": lambda m: m.update(npgru_version=[0, 2]),
    "no version": lambda m: m.pop("version"),
}


@pytest.mark.parametrize("edit", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_metadata_is_refused_in_one_line(tmp_path: Path, edit) -> None:
    """Issue 25: a forged best validation perplexity (or a vocabulary of words, a float
    epoch, ...) was accepted when its digest was consistent."""
    _, meta, arrays = good_run(tmp_path)
    refused_run(forge(tmp_path / "forged.npz", arrays, json.dumps(edit_meta(meta, edit))))


def test_forged_metadata_changes_nothing_when_resumed(tmp_path: Path) -> None:
    _, meta, arrays = good_run(tmp_path)
    bad = edit_meta(meta, FORGERIES["best below 1"])
    path = forge(tmp_path / "forged.npz", arrays, json.dumps(bad))
    model, loader, vocab = run_parts(3)
    before = model.params.flat.copy()
    with pytest.raises(CheckpointError, match="val_perplexity of epoch 2 is 1e-09"):
        restore_run(path, model, loader, vocab)
    assert model.params.flat.tobytes() == before.tobytes()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_edit_of_the_metadata_is_accepted_or_a_checkpoint_error(tmp_path_factory, data):
    """Replace, add or drop any value anywhere in a good run's metadata: reading, describing
    and loading it either work or raise CheckpointError, nothing else."""
    tmp = tmp_path_factory.mktemp("fuzz")
    _, meta, arrays = good_run(tmp)
    node, key = meta, None
    while True:  # walk down to a random place
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if not isinstance(node[key], (dict, list)) or data.draw(st.booleans()):
            break
        node = node[key]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "replace" and key is not None:
        node[key] = data.draw(JSON)
    elif action == "drop" and key is not None:
        del node[key]
    elif isinstance(node, dict):
        node[data.draw(st.text(max_size=8))] = data.draw(JSON)
    else:
        node.append(data.draw(JSON))
    path = forge(tmp / "fuzzed.npz", arrays, json.dumps(meta))
    model, loader, vocab = run_parts(3)
    for read in (read_run, describe, load_model,
                 lambda p: restore_run(p, model, loader, vocab)):  # fmt: skip
        try:
            read(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60) | st.text(alphabet='[]{}"\\:,0123 ', max_size=60))
def test_any_metadata_text_is_accepted_or_a_checkpoint_error(tmp_path_factory, text) -> None:
    tmp = tmp_path_factory.mktemp("text")
    path = forge(tmp / "text.npz", content(1), text)
    with pytest.raises(CheckpointError):
        read_run(path)


def test_a_huge_model_shape_is_refused_before_building_it(tmp_path: Path) -> None:
    """A forged num_hiddens made load_model allocate the model before noticing."""
    _, meta, arrays = good_run(tmp_path)
    bad = edit_meta(meta, lambda m: m["config"].update(num_hiddens=10**6))
    path = forge(tmp_path / "huge.npz", arrays, json.dumps(bad))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="needs 3,000,"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, peak


# --------------------------------------------------------------------------- not npgru's


def test_a_zip_or_npz_that_is_not_a_checkpoint_says_so(tmp_path: Path) -> None:
    np.savez(tmp_path / "arrays.npz", W=np.zeros(3))
    with zipfile.ZipFile(tmp_path / "doc.docx", "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
    (tmp_path / "notes.npz").write_text("just text")
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("arrays.npz", "doc.docx", "notes.npz", "empty.npz"):
        message = refused(tmp_path / name)
        assert message.startswith(f"checkpoint {tmp_path / name} is not an npgru checkpoint ("), (
            message
        )


def test_a_damaged_checkpoint_says_damaged_not_foreign(saved, tmp_path: Path) -> None:
    _, data = saved
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert "damaged" in refused(tmp_path / "cut.npz")


def test_the_format_story_names_the_release(tmp_path: Path) -> None:
    path, meta, arrays = good_run(tmp_path)
    for version, needle in ((1, "files of format 1 come from npgru 0.1"),
                            (3, "files of format 3 come from a newer npgru: upgrade")):  # fmt: skip
        save_checkpoint(path, arrays, {**meta, "version": version})
        message = refused_run(path)
        assert f"npgru {'.'.join(npgru.__version__.split('.')[:2])} writes format 2" in message
        assert needle in message


# --------------------------------------------------------------------------- npgru info


def test_describe_reads_what_the_run_holds(tmp_path: Path) -> None:
    path, _, _ = good_run(tmp_path)
    info = describe(path)
    model, _, vocab = run_parts()
    assert (info.format, info.npgru_version) == (2, npgru.__version__)
    assert (info.vocab_size, info.num_hiddens, info.num_layers) == (len(vocab), 8, 1)
    assert (info.variant, info.dtype) == ("d2l", "float32")
    assert info.num_params == model.params.flat.size
    assert (info.epochs, info.best_val_perplexity, info.best_epoch) == (2, 7.0, 2)
    assert info.last_perplexity == 15.5 and info.corpus_sha256 == "ab" * 32
    assert info.file_size == path.stat().st_size and info.optimizer == ()
    assert info.settings["lr"] == 1.0 and "num_hiddens" not in info.settings
    text = format_info(info)
    for needle in (str(path), f"{info.file_size:,} bytes", f"written by npgru {npgru.__version__}",
                   "1 layer of 8 hidden units", f"{model.params.flat.size:,}",
                   "7.0000 at epoch 2", "epochs done:     2", "ab" * 32, "lr=1.0"):  # fmt: skip
        assert needle in text, (needle, text)


def test_describe_reads_only_metadata_and_headers(tmp_path: Path, monkeypatch) -> None:
    """npgru info on a big checkpoint reads no parameter bytes and builds no model."""
    path, meta, arrays = good_run(tmp_path, val=False)
    arrays["W_hq"] = np.zeros((8, 2**22), np.float32)  # 128 MiB the model never sees
    meta = {**meta, "config": {k: v for k, v in meta["config"].items() if k != "vocab_size"}}
    save_checkpoint(path, arrays, meta)
    monkeypatch.setattr(npgru.checkpoint, "GRULanguageModel", None)  # building one fails
    tracemalloc.start()
    try:
        info = describe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**22, peak
    assert info.num_params == sum(a.size for a in arrays.values())
    assert info.best_epoch is None and "none (trained without a validation set)" in format_info(
        info
    )


def test_old_files_without_the_writers_version_say_unknown(tmp_path: Path) -> None:
    path, meta, arrays = good_run(tmp_path)
    del meta["npgru_version"]
    save_checkpoint(path, arrays, meta)
    assert read_run(path).epoch == 2
    info = describe(path)
    assert info.npgru_version == "unknown" and "written by npgru unknown" in format_info(info)


def test_describe_infers_the_shape_of_a_run_saved_without_it(tmp_path: Path) -> None:
    corpus, vocab = load_corpus(TEXT, max_tokens=-1)
    model = npgru.GRULanguageModel(len(vocab), 6, num_layers=2, variant="reset_after",
                                   dtype="float64")  # fmt: skip
    loader = SeqDataLoader(corpus, vocab, 4, 6, rng=0)
    history = {"perplexity": [], "tokens_per_sec": []}
    save_run(tmp_path / "r.npz", capture(model, loader, vocab, config={}, epoch=0,
                                         history=history))  # fmt: skip
    info = describe(tmp_path / "r.npz")
    assert (info.num_hiddens, info.num_layers, info.variant, info.dtype) == (
        6, 2, "reset_after", "float64")  # fmt: skip
    assert info.last_perplexity is None and "last perplexity: none" in format_info(info)


def test_run_state_repr_shows_shapes_not_values(tmp_path: Path) -> None:
    path, _, _ = good_run(tmp_path)
    text = repr(read_run(path))
    assert "W_xz (28, 8) float32" in text and "b_q (28,) float32" in text
    assert "array(" not in text and len(text) < 2000

"""Tests of npgru.checkpoint: exact round trips, atomic writes, damaged and hostile files.

A checkpoint must come back bit for bit (arrays, settings, vocabulary, RNG states that
reproduce the same draws), must survive a crash or a SIGKILL in the middle of a save
(the path then holds the old or the new checkpoint, never a broken one), and must turn every
damaged, truncated, foreign or pickled file into a one-line CheckpointError, never another
exception and never code execution.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import random
import select
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npgru import checkpoint
from npgru.checkpoint import (
    COMPAT_KEYS,
    FORMAT_NAME,
    FORMAT_VERSION,
    Checkpoint,
    check_compatible,
    check_writable,
    load_checkpoint,
    save_checkpoint,
)
from npgru.errors import CheckpointError, NpgruError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Helpers


def _advanced_rng(seed: int, draws: int = 7) -> np.random.Generator:
    g = np.random.default_rng(seed)
    g.random(draws)
    g.integers(0, 35, size=3)
    return g


def make_content(seed: int = 0) -> dict:
    """Keyword arguments for save_checkpoint, with awkward but legal values everywhere."""
    rng = np.random.default_rng(seed)
    V, H = 28, 16
    params = {
        "W_xz": rng.normal(size=(V, H)).astype(np.float32),
        "W_hz": rng.normal(size=(H, H)).astype(np.float32),
        "b_z": rng.normal(size=(H,)).astype(np.float32),
        "W_xz_l1": rng.normal(size=(H, H)),  # float64
        "W_hq": np.asfortranarray(rng.normal(size=(H, V))),  # not C-contiguous
        "b_q": np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324] + [1.0] * (V - 6)),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    config = {
        "vocab_size": V,
        "num_hiddens": H,
        "num_layers": 2,
        "variant": "d2l",
        "dtype": "float32",
        "batch_size": np.int64(32),
        "num_steps": 35,
        "lr": 0.1 + 0.2,  # not representable in few digits: must survive exactly
        "use_random_iter": False,
        "max_tokens": None,
        "seed": 2**70 + 3,
        "data": {"path": Path("data") / "timemachine.txt", "sha1": "090b5e7e70c2"},
        "sizes": (1, 2, 3),
    }
    vocab = ["<unk>", " ", "e", "t", "é", '"', "\\", "\x00", "日本"]
    history = {
        "perplexity": [17.25, np.float32(12.5), 1.0 / 3.0, math.inf],
        "tokens_per_sec": [25000.5, 31000, np.float64(2.5e-300)],
        "empty": [],
    }
    rng_states = {
        "data": _advanced_rng(seed + 1).bit_generator.state,
        "init": _advanced_rng(seed + 2).bit_generator.state,
    }
    return {
        "params": params,
        "config": config,
        "vocab": vocab,
        "epoch": 17,
        "history": history,
        "rng_states": rng_states,
    }


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_content(ckpt: Checkpoint, content: dict) -> None:
    """``ckpt`` holds exactly ``content`` (as JSON would return the non-array parts)."""
    assert list(ckpt.params) == list(content["params"])
    for name, a in content["params"].items():
        assert bits_equal(ckpt.params[name], np.ascontiguousarray(a)), name
    plain = json.loads(
        json.dumps(
            {k: content[k] for k in ("config", "vocab", "epoch", "history", "rng_states")},
            default=lambda o: o.tolist() if hasattr(o, "tolist") else os.fspath(o),
        )
    )
    assert ckpt.config == plain["config"]
    assert ckpt.vocab == plain["vocab"]
    assert ckpt.epoch == plain["epoch"]
    assert ckpt.history == plain["history"]
    assert ckpt.rng_states == plain["rng_states"]


def tmp_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def write_npz(path: Path, meta: dict | str | None, arrays: dict) -> None:
    """A hand-made .npz (standard np.savez) with the given metadata and arrays."""
    entries = dict(arrays)
    if meta is not None:
        text = meta if isinstance(meta, str) else json.dumps(meta)
        entries["__meta__"] = np.asarray(text, dtype=np.str_)
    with open(path, "wb") as fh:
        np.savez(fh, **entries)


def read_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["__meta__"]))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert isinstance(excinfo.value, NpgruError)
    return msg


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict]:
    """The bytes of a small checkpoint and the content it was written from."""
    content = make_content(3)
    content["params"] = {k: content["params"][k] for k in ("W_xz", "b_z", "W_xz_l1", "b_q")}
    content["params"]["W_xz"] = content["params"]["W_xz"][:4, :5]
    content["params"]["W_xz_l1"] = content["params"]["W_xz_l1"][:3, :3]
    content["rng_states"] = {"data": content["rng_states"]["data"]}
    path = tmp_path_factory.mktemp("orig") / "orig.npz"
    save_checkpoint(path, **content)
    return path.read_bytes(), content


def load_bytes(directory: Path, data: bytes, name: str = "damaged.npz") -> Checkpoint:
    path = directory / name
    path.write_bytes(data)
    return load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Round trip


def test_round_trip_is_exact(tmp_path: Path) -> None:
    content = make_content()
    path = save_checkpoint(tmp_path / "model.npz", **content)
    assert path == tmp_path / "model.npz"
    ckpt = load_checkpoint(path)
    assert_same_content(ckpt, content)
    assert ckpt.path == path
    assert ckpt.config["lr"] == 0.1 + 0.2
    assert ckpt.config["seed"] == 2**70 + 3
    assert ckpt.config["data"]["path"] == os.path.join("data", "timemachine.txt")
    assert ckpt.config["sizes"] == [1, 2, 3]
    assert ckpt.history["perplexity"][1] == 12.5 and ckpt.history["perplexity"][3] == math.inf
    assert ckpt.vocab[4:] == ["é", '"', "\\", "\x00", "日本"]
    assert tmp_files(tmp_path) == []


def test_rng_states_restore_the_same_draws(tmp_path: Path) -> None:
    generators = {
        "pcg": np.random.Generator(np.random.PCG64(11)),
        "mt": np.random.Generator(np.random.MT19937(12)),  # state holds a uint32 array
        "philox": np.random.Generator(np.random.Philox(13)),  # uint64 arrays
        "sfc": np.random.Generator(np.random.SFC64(14)),
    }
    for g in generators.values():
        g.random(5)
        g.standard_normal(3)
        g.integers(0, 2**31, size=1)  # leaves a buffered 32-bit half in PCG64 and SFC64
    states = {k: g.bit_generator.state for k, g in generators.items()}
    content = make_content()
    content["rng_states"] = states
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "rng.npz", **content))

    pcg = ckpt.rng_states["pcg"]["state"]
    assert pcg == states["pcg"]["state"]  # 128-bit ints, exactly
    assert max(pcg["state"], pcg["inc"]) > 2**64
    for name, g in generators.items():
        saved = ckpt.rng_states[name]
        bit_gen = getattr(np.random, saved["bit_generator"])()
        bit_gen.state = saved
        restored = np.random.Generator(bit_gen)
        expected = (g.random(4), g.integers(0, 10**9, size=6), g.standard_normal(3))
        got = (restored.random(4), restored.integers(0, 10**9, size=6), restored.standard_normal(3))
        for e, r in zip(expected, got, strict=True):
            assert bits_equal(e, r), name


def test_plain_numpy_reads_parameters_by_name(tmp_path: Path) -> None:
    content = make_content()
    path = save_checkpoint(tmp_path / "model.npz", **content)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {*content["params"], "__meta__"}
        for name, a in content["params"].items():
            assert bits_equal(npz[name], np.ascontiguousarray(a))
        meta_array = npz["__meta__"]
        assert meta_array.ndim == 0 and meta_array.dtype.kind == "U"
        meta = json.loads(str(meta_array))
    assert meta["format"] == FORMAT_NAME and meta["version"] == FORMAT_VERSION
    assert meta["epoch"] == 17
    assert [e["name"] for e in meta["params"]] == list(content["params"])
    assert meta["params_sha256"] == checkpoint.params_digest(content["params"])
    with zipfile.ZipFile(path) as zf:  # nothing but .npy entries, stored uncompressed
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert all(i.filename.endswith(".npy") for i in zf.infolist())


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from(
                [np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex128, ">f4"]
            ),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_numeric_arrays_round_trip_bit_for_bit(tmp_path: Path, arrays: list) -> None:
    params = {f"p{i}": a for i, a in enumerate(arrays)}
    content = {**make_content(), "params": params}
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "h.npz", **content))
    for name, a in params.items():
        assert bits_equal(ckpt.params[name], a), name


def test_model_parameters_round_trip_into_a_new_model(tmp_path: Path) -> None:
    from npgru.model import GRULanguageModel

    model = GRULanguageModel(11, 6, num_layers=2, variant="reset_after", dtype="float64", seed=1)
    model.params.flat[...] += np.linspace(0.0, 1.0, model.params.flat.shape[0])  # "trained"
    path = save_checkpoint(
        tmp_path / "m.npz",
        params={k: model.backend.asnumpy(v) for k, v in model.params.items()},
        config=model.config,
        vocab=[chr(97 + i) for i in range(11)],
        epoch=1,
        history={},
        rng_states={},
    )
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, config=model.config, vocab=[chr(97 + i) for i in range(11)])
    fresh = GRULanguageModel(**ckpt.config, seed=99)
    assert set(fresh.params) == set(ckpt.params)
    for name, a in ckpt.params.items():
        fresh.params[name] = fresh.backend.asarray(a)
    X = np.array([[1, 2, 3], [4, 5, 6]])
    state = model.begin_state(2)
    assert bits_equal(model.forward(X, state)[0], fresh.forward(X, state)[0])


def test_path_is_used_exactly_as_given(tmp_path: Path) -> None:
    content = make_content()
    path = save_checkpoint(str(tmp_path / "run.ckpt"), **content)
    assert path == tmp_path / "run.ckpt"
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]
    assert_same_content(load_checkpoint(tmp_path / "run.ckpt"), content)


def test_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.npz", **make_content())
    save_checkpoint(tmp_path / "b.npz", **make_content())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_overwriting_replaces_the_content(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    save_checkpoint(path, **make_content(0))
    new = make_content(1)
    save_checkpoint(path, **new)
    assert_same_content(load_checkpoint(path), new)
    assert tmp_files(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_file_mode_follows_umask_or_the_old_file(tmp_path: Path) -> None:
    old_umask = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "model.npz", **make_content())
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        path.chmod(0o604)
        save_checkpoint(path, **make_content(1))
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"params": {}}, "non-empty"),
        ({"params": {"W_xz": [[1.0, 2.0]]}}, "asnumpy"),
        ({"params": {"W_xz": np.array([object()], dtype=object)}}, "numeric"),
        ({"params": {"W_xz": np.array(["a"])}}, "numeric"),
        ({"params": {"__meta__": np.zeros(2)}}, "name"),
        ({"params": {"a/b": np.zeros(2)}}, "name"),
        ({"params": {"": np.zeros(2)}}, "name"),
        ({"config": {1: "one"}}, "non-string key"),
        ({"config": {"f": open}}, "builtin_function_or_method"),
        ({"config": ["vocab_size", 28]}, "must be a dict"),
        ({"vocab": "abc"}, "list of str"),
        ({"vocab": ["a", 1]}, "list of str"),
        ({"epoch": -1}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"epoch": 1.5}, "epoch"),
        ({"history": {"perplexity": 1.5}}, "list of numbers"),
        ({"history": {"perplexity": ["1.5"]}}, "list of numbers"),
        ({"rng_states": {"data": 42}}, "rng_states"),
    ],
)
def test_unstorable_arguments_are_refused(tmp_path: Path, change: dict, words: str) -> None:
    content = {**make_content(), **change}
    with pytest.raises(CheckpointError) as excinfo:
        save_checkpoint(tmp_path / "bad.npz", **content)
    assert words in one_line_error(excinfo)
    assert os.listdir(tmp_path) == []


def test_self_containing_config_is_refused(tmp_path: Path) -> None:
    config: dict = {"vocab_size": 28}
    config["again"] = [config]
    with pytest.raises(CheckpointError) as excinfo:
        save_checkpoint(tmp_path / "bad.npz", **{**make_content(), "config": config})
    assert "contains itself" in one_line_error(excinfo)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Atomicity and crash safety


def _fail(exc: BaseException):
    def raiser(*args, **kwargs):
        raise exc

    return raiser


@pytest.mark.parametrize(
    ("target", "exc", "expected"),
    [
        ("os.replace", OSError(errno.EIO, "Input/output error"), CheckpointError),
        ("os.fsync", OSError(errno.ENOSPC, "No space left on device"), CheckpointError),
        ("write_array", OSError(errno.ENOSPC, "No space left on device"), CheckpointError),
        ("write_array", RuntimeError("simulated crash"), RuntimeError),
        ("write_array", KeyboardInterrupt(), KeyboardInterrupt),
        ("os.replace", KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_failed_save_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, exc: BaseException, expected
) -> None:
    path = tmp_path / "model.npz"
    old = make_content(0)
    save_checkpoint(path, **old)
    before = path.read_bytes()
    if target == "write_array":
        monkeypatch.setattr(checkpoint.npy_format, "write_array", _fail(exc))
    else:
        monkeypatch.setattr(os, target.split(".")[1], _fail(exc))
    with pytest.raises(expected) as excinfo:
        save_checkpoint(path, **make_content(1))
    monkeypatch.undo()
    if expected is CheckpointError:
        msg = one_line_error(excinfo)
        assert str(path) in msg and (exc.strerror in msg)
    assert path.read_bytes() == before
    assert_same_content(load_checkpoint(path), old)
    assert tmp_files(tmp_path) == []


def test_save_into_missing_directory_or_onto_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        save_checkpoint(tmp_path / "nope" / "model.npz", **make_content())
    assert "does not exist" in one_line_error(excinfo)
    (tmp_path / "adir").mkdir()
    with pytest.raises(CheckpointError) as excinfo:
        save_checkpoint(tmp_path / "adir", **make_content())
    assert "is a directory" in one_line_error(excinfo)
    assert os.listdir(tmp_path / "adir") == []


def _chmod_is_enforced(directory: Path) -> bool:
    """False where permissions do not bind us (running as root, some file systems)."""
    probe = directory / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_save_into_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    save_checkpoint(ro / "model.npz", **make_content(0))
    ro.chmod(0o555)
    try:
        if not _chmod_is_enforced(ro):
            pytest.skip("directory permissions are not enforced here (root?)")
        with pytest.raises(CheckpointError) as excinfo:
            save_checkpoint(ro / "model.npz", **make_content(1))
        assert "permission denied" in one_line_error(excinfo)
        assert_same_content(load_checkpoint(ro / "model.npz"), make_content(0))
    finally:
        ro.chmod(0o755)


KILL_CHILD = """
import sys
import numpy as np
from npgru.checkpoint import save_checkpoint

path, n = sys.argv[1], int(sys.argv[2])
i = 0
while True:
    i += 1
    save_checkpoint(
        path,
        params={"W": np.full(n + 1000 * (i % 5), i, dtype=np.float64),
                "b": np.arange(i % 7 + 1, dtype=np.float32)},
        config={"i": i}, vocab=["a"], epoch=i, history={"loss": [float(i)]}, rng_states={},
    )
    if i == 1:
        print("saving", flush=True)
"""


def _check_kill_content(ckpt: Checkpoint) -> int:
    i = ckpt.epoch
    assert ckpt.config == {"i": i} and ckpt.history == {"loss": [float(i)]}
    assert bits_equal(ckpt.params["b"], np.arange(i % 7 + 1, dtype=np.float32))
    W = ckpt.params["W"]
    assert W.dtype == np.float64 and bool(np.all(W == i))
    return i


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_saves_never_leaves_a_damaged_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    n = 1_000_000  # 8 MB per save: a kill lands inside a write more often than not
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    rnd = random.Random(1234)
    deadline = time.monotonic() + 4.0
    seen = []
    for _ in range(6):
        if time.monotonic() > deadline:
            break
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(path), str(n)],
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
        seen.append(_check_kill_content(load_checkpoint(path)))  # old or new, never damaged
    assert seen and min(seen) >= 1  # every kill came after the first complete save
    # stale temporaries from the kills do not disturb the next save
    content = make_content()
    save_checkpoint(path, **content)
    assert_same_content(load_checkpoint(path), content)


# ---------------------------------------------------------------------------------------------
# Damaged, foreign and hostile files


def test_every_truncation_is_refused(tmp_path: Path, original: tuple[bytes, dict]) -> None:
    data, _ = original
    lengths = sorted({*range(0, len(data), 37), 1, 2, 3, 4, len(data) - 22, len(data) - 1})
    for n in lengths:
        with pytest.raises(CheckpointError) as excinfo:
            load_bytes(tmp_path, data[:n])
        msg = one_line_error(excinfo)
        assert "damaged.npz" in msg, (n, msg)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=st.floats(0.0, 1.0, exclude_max=True), xor=st.integers(1, 255))
def test_changed_byte_is_detected_or_harmless(
    tmp_path: Path, original: tuple[bytes, dict], where: float, xor: int
) -> None:
    data, content = original
    damaged = bytearray(data)
    damaged[int(where * len(data))] ^= xor
    try:
        ckpt = load_bytes(tmp_path, bytes(damaged))
    except CheckpointError as exc:
        assert "\n" not in str(exc)
    else:  # the byte was one zipfile ignores (a timestamp, an attribute): content unchanged
        assert_same_content(ckpt, content)


def test_every_single_byte_flip_is_detected_or_harmless(
    tmp_path: Path, original: tuple[bytes, dict]
) -> None:
    data, content = original
    path = tmp_path / "flipped.npz"
    path.write_bytes(data)
    harmless = 0
    fd = os.open(path, os.O_RDWR)  # flip in place: rewriting the whole file is 30x slower
    try:
        for offset in range(len(data)):
            os.pwrite(fd, bytes([data[offset] ^ 0xFF]), offset)
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError:
                continue
            finally:
                os.pwrite(fd, data[offset : offset + 1], offset)
            assert_same_content(ckpt, content)
            harmless += 1
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert harmless < len(data) // 10


def test_changed_parameter_data_is_caught(tmp_path: Path, original: tuple[bytes, dict]) -> None:
    data, content = original
    raw = np.ascontiguousarray(content["params"]["W_xz_l1"]).tobytes()
    offset = data.index(raw) + 5
    damaged = bytearray(data)
    damaged[offset] ^= 0x10
    with pytest.raises(CheckpointError) as excinfo:
        load_bytes(tmp_path, bytes(damaged))
    assert "is damaged" in one_line_error(excinfo)


def test_digest_catches_a_consistent_archive_with_changed_values(
    tmp_path: Path, original: tuple[bytes, dict]
) -> None:
    """A rebuilt zip (valid CRCs) whose values differ from the metadata's digest."""
    data, content = original
    src = tmp_path / "orig.npz"
    src.write_bytes(data)
    meta = read_meta(src)
    arrays = {k: np.ascontiguousarray(a).copy() for k, a in content["params"].items()}
    write_npz(tmp_path / "same.npz", meta, arrays)
    assert_same_content(load_checkpoint(tmp_path / "same.npz"), content)  # control
    arrays["b_z"][3] = np.nextafter(arrays["b_z"][3], np.float32(np.inf))
    write_npz(tmp_path / "changed.npz", meta, arrays)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path / "changed.npz")
    assert "SHA-256" in one_line_error(excinfo)


def _mutations() -> list:
    def set_key(key, value):
        return lambda meta, arrays: meta.__setitem__(key, value)

    def drop_array(meta, arrays):
        del arrays["b_z"]

    def add_array(meta, arrays):
        arrays["W_extra"] = np.zeros(3)

    def widen(meta, arrays):
        arrays["b_z"] = arrays["b_z"].astype(np.float64)

    def reshape(meta, arrays):
        arrays["W_xz"] = arrays["W_xz"].reshape(-1)

    def drop_meta_entry(meta, arrays):
        meta["params"] = meta["params"][1:]

    return [
        ("format", set_key("format", "something-else"), "not an npgru checkpoint"),
        ("future", set_key("version", FORMAT_VERSION + 1), "upgrade npgru"),
        ("version0", set_key("version", 0), "format version"),
        ("epoch", set_key("epoch", -3), "epoch"),
        ("vocab", set_key("vocab", "abc"), "vocab"),
        ("history", set_key("history", {"p": ["x"]}), "history"),
        ("rng", set_key("rng_states", {"data": 5}), "rng_states"),
        ("digest", set_key("params_sha256", "0" * 63), "params_sha256"),
        ("noparams", set_key("params", []), "parameter list"),
        ("missing", drop_array, "missing: b_z"),
        ("extra", add_array, "unexpected arrays: W_extra"),
        ("dtype", widen, "b_z is <f8"),
        ("shape", reshape, "W_xz is"),
        ("unlisted", drop_meta_entry, "unexpected arrays"),
    ]


@pytest.mark.parametrize(
    ("label", "mutate", "words"), _mutations(), ids=[m[0] for m in _mutations()]
)
def test_inconsistent_archives_are_refused(
    tmp_path: Path, original: tuple[bytes, dict], label: str, mutate, words: str
) -> None:
    data, content = original
    src = tmp_path / "orig.npz"
    src.write_bytes(data)
    meta = read_meta(src)
    arrays = {k: np.ascontiguousarray(a) for k, a in content["params"].items()}
    mutate(meta, arrays)
    bad = tmp_path / f"{label}.npz"
    write_npz(bad, meta, arrays)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(bad)
    msg = one_line_error(excinfo)
    assert words in msg and str(bad) in msg


@pytest.mark.parametrize(
    ("label", "data", "words"),
    [
        ("empty", b"", "empty"),
        ("random", bytes(np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8)), ""),
        ("text", b"It was a dark and stormy night.\n" * 20, "not an npgru checkpoint"),
        ("zip magic", b"PK\x03\x04" + b"\x00" * 100, "damaged"),
        ("pickle", pickle.dumps({"W_xz": [1.0]}), "not an npgru checkpoint"),
    ],
    ids=["empty", "random", "text", "zip-magic", "pickle"],
)
def test_foreign_files_are_refused(tmp_path: Path, label: str, data: bytes, words: str) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_bytes(tmp_path, data, "x.npz")
    assert words in one_line_error(excinfo)


def test_other_npz_and_npy_files_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros(3))
    write_npz(tmp_path / "plain.npz", None, {"W_xz": np.zeros(3)})
    write_npz(tmp_path / "badjson.npz", '{"format": "npgru-checkpoint", ', {"W_xz": np.zeros(3)})
    write_npz(tmp_path / "list.npz", "[1, 2]", {"W_xz": np.zeros(3)})
    with open(tmp_path / "meta2d.npz", "wb") as fh:
        np.savez(fh, __meta__=np.array(["{}", "{}"]))
    with zipfile.ZipFile(tmp_path / "notnpy.npz", "w") as zf:
        zf.writestr("__meta__.npy", b"")
        zf.writestr("readme.txt", "hello")
    expected = {
        "one.npy": "single .npy array",
        "plain.npz": "no __meta__",
        "badjson.npz": "not valid JSON",
        "list.npz": "does not name format",
        "meta2d.npz": "0-d unicode",
        "notnpy.npz": "unexpected entry 'readme.txt'",
    }
    for name, words in expected.items():
        with pytest.raises(CheckpointError) as excinfo:
            load_checkpoint(tmp_path / name)
        msg = one_line_error(excinfo)
        assert words in msg and name in msg, msg


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path / "nope.npz")
    assert "does not exist" in one_line_error(excinfo)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(tmp_path)
    assert "directory" in one_line_error(excinfo)


class _TouchOnUnpickle:
    """Unpickling this calls Path.touch(marker): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoint_is_refused_without_running_it(
    tmp_path: Path, original: tuple[bytes, dict]
) -> None:
    data, content = original
    src = tmp_path / "orig.npz"
    src.write_bytes(data)
    meta = read_meta(src)
    payload = np.empty(1, dtype=object)
    control_marker, marker = tmp_path / "control-ran", tmp_path / "payload-ran"

    # control: the payload is live (allow_pickle=True would run it)
    payload[0] = _TouchOnUnpickle(control_marker)
    with open(tmp_path / "control.npz", "wb") as fh:
        np.savez(fh, W_xz=payload)
    with np.load(tmp_path / "control.npz", allow_pickle=True) as npz:
        npz["W_xz"]
    assert control_marker.exists()

    # as a parameter of an otherwise valid checkpoint (with metadata that does or does not
    # admit it), and as the metadata itself
    payload[0] = _TouchOnUnpickle(marker)
    arrays = {k: np.ascontiguousarray(a) for k, a in content["params"].items()}
    write_npz(tmp_path / "param.npz", meta, {**arrays, "W_xz": payload})
    meta["params"] = [
        {"name": "W_xz", "shape": [1], "dtype": "|O"} if e["name"] == "W_xz" else e
        for e in meta["params"]
    ]
    write_npz(tmp_path / "admitted.npz", meta, {**arrays, "W_xz": payload})
    with open(tmp_path / "meta.npz", "wb") as fh:
        np.savez(fh, __meta__=payload, **arrays)
    messages = []
    for name in ("param.npz", "admitted.npz", "meta.npz"):
        with pytest.raises(CheckpointError) as excinfo:
            load_checkpoint(tmp_path / name)
        messages.append(one_line_error(excinfo))
    assert not marker.exists()
    assert all("holds pickled Python objects" in m for m in messages), messages


# ---------------------------------------------------------------------------------------------
# Compatibility with the run being resumed


def _ckpt(config: dict, vocab: list[str]) -> Checkpoint:
    return Checkpoint(
        params={"b_q": np.zeros(2)},
        config=config,
        vocab=vocab,
        epoch=3,
        history={},
        rng_states={},
        path=Path("runs/x.npz"),
    )


BASE = {
    "vocab_size": 28,
    "num_hiddens": 256,
    "num_layers": 1,
    "variant": "d2l",
    "dtype": "float32",
    "lr": 1.0,
}
VOCAB = ["<unk>", " ", "e", "t"]


def test_compatible_run_passes() -> None:
    ckpt = _ckpt(BASE, VOCAB)
    check_compatible(ckpt, config={**BASE, "lr": 0.5, "num_layers": np.int64(1)}, vocab=VOCAB)
    check_compatible(ckpt, config=BASE, vocab=None)
    check_compatible(_ckpt({**BASE, "sizes": [1, 2]}, VOCAB), config={**BASE, "sizes": (1, 2)},
                     keys=(*COMPAT_KEYS, "sizes"))  # fmt: skip


def test_hidden_size_mismatch_is_named() -> None:
    with pytest.raises(CheckpointError) as excinfo:
        check_compatible(_ckpt(BASE, VOCAB), config={**BASE, "num_hiddens": 128}, vocab=VOCAB)
    msg = one_line_error(excinfo)
    assert os.path.join("runs", "x.npz") in msg
    assert "num_hiddens=256" in msg and "num_hiddens=128" in msg
    assert "--resume" in msg and "vocabulary" not in msg and "num_layers" not in msg


def test_every_differing_setting_is_listed() -> None:
    run = {**BASE, "num_layers": 2, "variant": "reset_after", "lr": 5.0}
    del run["dtype"]
    with pytest.raises(CheckpointError) as excinfo:
        check_compatible(_ckpt(BASE, VOCAB), config=run)
    msg = one_line_error(excinfo)
    for words in ("num_layers=1", "num_layers=2", "variant=d2l", "variant=reset_after"):
        assert words in msg
    assert "dtype=float32" in msg and "dtype=<unset>" in msg and "lr" not in msg
    with pytest.raises(CheckpointError) as excinfo:
        check_compatible(_ckpt(BASE, VOCAB), config=run, keys=("lr",))
    assert "lr=1.0" in one_line_error(excinfo)


@pytest.mark.parametrize(
    ("vocab", "words"),
    [(["<unk>", " ", "a", "t"], "token 2 is 'e' there, 'a' here"), (VOCAB[:3], "4 tokens")],
)
def test_vocabulary_mismatch_is_named(vocab: list[str], words: str) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        check_compatible(_ckpt(BASE, VOCAB), config=BASE, vocab=vocab)
    msg = one_line_error(excinfo)
    assert "different vocabulary" in msg and words in msg and "same text" in msg


def test_settings_and_vocabulary_mismatch_in_one_message() -> None:
    with pytest.raises(CheckpointError) as excinfo:
        check_compatible(_ckpt(BASE, VOCAB), config={**BASE, "vocab_size": 30}, vocab=["x"])
    msg = one_line_error(excinfo)
    assert "vocab_size=28" in msg and "vocab_size=30" in msg and "different vocabulary" in msg


# ---------------------------------------------------------------------------------------------
# Before training: can we save there?


def test_check_writable_accepts_good_paths(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "model.npz") == tmp_path / "model.npz"
    assert os.listdir(tmp_path) == []  # the probe file is gone
    save_checkpoint(tmp_path / "model.npz", **make_content())
    check_writable(tmp_path / "model.npz")  # an existing checkpoint may be replaced
    (tmp_path / "empty.npz").write_bytes(b"")
    check_writable(tmp_path / "empty.npz")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        check_writable("relative.npz")
    finally:
        os.chdir(old)


def test_check_writable_refuses_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text("the time machine")
    cases = {
        tmp_path / "missing" / "model.npz": "does not exist",
        tmp_path: "is a directory",
        tmp_path / "text.txt" / "model.npz": "is not a directory",
        tmp_path / "text.txt": "is not a checkpoint",
    }
    for path, words in cases.items():
        with pytest.raises(CheckpointError) as excinfo:
            check_writable(path)
        assert words in one_line_error(excinfo), path
    assert (tmp_path / "text.txt").read_text() == "the time machine"


def test_check_writable_refuses_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not _chmod_is_enforced(ro):
            pytest.skip("directory permissions are not enforced here (root?)")
        with pytest.raises(CheckpointError) as excinfo:
            check_writable(ro / "model.npz")
        assert "writable" in one_line_error(excinfo)
    finally:
        ro.chmod(0o755)


def test_module_imports_only_numpy_stdlib_and_errors() -> None:
    """A bottom-layer module: a static look at its own import lines."""
    source = Path(checkpoint.__file__).read_text()
    imports = {
        line.split()[1]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    }
    outside_stdlib = {m for m in imports if m.split(".")[0] not in sys.stdlib_module_names}
    assert outside_stdlib <= {"numpy", "numpy.lib", "npgru.errors"}

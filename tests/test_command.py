"""The ``npgru`` command (``python -m npgru``, the console script): train, generate, info,
export.

Most tests call :func:`npgru.__main__.main` in this process; a few run ``python -m npgru`` in
a real process for the exit status. Every run is tiny (the book's first 3000 characters,
16 or 32 hidden units, 2 epochs).
"""

from __future__ import annotations

import builtins
import configparser
import importlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import BOOK

import npgru
import npgru.__main__ as command
import npgru.commands
import npgru.timemachine
from npgru.checkpoint import VERSION, describe, format_info, load_model, read_run
from npgru.train import predict

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--num-hiddens", "32", "--batch-size", "4", "--num-steps", "8", "--max-tokens", "3000"]
TINY = ["--data", str(BOOK), "--epochs", "2", *SIZES]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cmd_example", ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "no-such-cache"))


def npgru_cmd(capsys, *argv):
    """``npgru argv`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = command.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_process(*argv, env=None):
    """``python -m npgru argv`` in a real process, with this tree's npgru."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "npgru", *map(str, argv)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("cmd") / "run.npz"
    assert command.main(["train", *TINY, "--save", str(path)]) == 0
    return path


def one_error_line(err: str, start: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(start) and "Traceback" not in err, err
    return err.rstrip("\n")


# --------------------------------------------------------------------------- train, generate, info


def test_train_then_generate_a_prefix_with_capitals(run_npz, capsys):
    status, out, err = npgru_cmd(capsys, "generate", run_npz, "--prefix", "The Time Traveller",
                                 "--num-chars", "40")  # fmt: skip
    assert (status, err) == (0, "")  # no note: every character is known, once lower-cased
    model, vocab, _ = load_model(run_npz)
    assert out == predict("the time traveller", 40, model, vocab) + "\n"


def test_generate_notes_only_what_lower_casing_cannot_fix(run_npz, capsys):
    flags = ["--prefix", "The End?", "--num-chars", "5", "--temperature", "0.7", "--seed", "3"]
    status, out, err = npgru_cmd(capsys, "generate", run_npz, *flags)
    assert status == 0 and err == "note: '?' not in the model's vocabulary\n"
    model, vocab, _ = load_model(run_npz)
    assert out == predict("the end?", 5, model, vocab, temperature=0.7, seed=3) + "\n"


def test_as_trained_lowers_only_what_the_vocabulary_lacks():
    d2l = ["<unk>", " ", *"etaoinshrdlcumwfgypbvkxjqz"]
    assert npgru.commands.as_trained("The Time Traveller", d2l) == "the time traveller"
    assert npgru.commands.as_trained("Time? İ", d2l) == "time? İ"  # 'İ'.lower() is 2 characters
    assert npgru.commands.as_trained("Tea", ["<unk>", "T", "e", "a", "t"]) == "Tea"


def test_info_says_what_the_checkpoint_holds(run_npz, capsys):
    status, out, err = npgru_cmd(capsys, "info", run_npz)
    assert (status, err) == (0, "")
    state = read_run(run_npz)
    d = describe(run_npz)
    assert (d.format, d.npgru_version) == (VERSION, npgru.__version__)
    assert (d.num_hiddens, d.num_layers, d.variant, d.dtype) == (32, 1, "d2l", "float32")
    assert (d.epochs, d.vocab_size, d.file_size) == (2, 28, run_npz.stat().st_size)
    assert d.corpus_sha256 == state.config["corpus_sha256"]
    assert d.num_params == sum(a.size for a in state.params.values())
    assert out == format_info(d) + "\n"
    assert state.config["corpus_sha256"][:8] in out and "32" in out
    assert f"format:          {VERSION}, written by npgru {npgru.__version__}" in out


def test_info_with_a_validation_set_names_the_best_epoch(tmp_path, capsys):
    path = tmp_path / "val.npz"
    flags = ["--val-fraction", "0.2", "--save", path]
    assert npgru_cmd(capsys, "train", *TINY, *flags)[0] == 0
    history = read_run(path).history
    best = int(np.argmin(history["val_perplexity"])) + 1
    d = describe(path)
    assert d.best_epoch == best
    assert d.best_val_perplexity == history["val_perplexity"][best - 1]
    status, out, _ = npgru_cmd(capsys, "info", path)
    assert status == 0 and f"{history['val_perplexity'][best - 1]:.4f} at epoch {best}" in out


@pytest.mark.parametrize("sub", ["generate", "info"])
def test_a_missing_or_foreign_checkpoint_is_one_line(sub, tmp_path, capsys):
    for path in (tmp_path / "missing.npz", BOOK, tmp_path):
        status, out, err = npgru_cmd(capsys, sub, path)
        assert (status, out) == (2, "")
        one_error_line(err, "error: ")
        assert "checkpoint" in err


# --------------------------------------------------------------------------- export


def test_export_writes_what_onnxruntime_runs_as_the_checkpoints_model(run_npz, tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    path = tmp_path / "model.onnx"
    status, out, err = npgru_cmd(capsys, "export", run_npz, path)
    assert (status, err) == (0, "")
    assert out == (f"wrote {path} (ONNX opset 17, d2l, float32): X (B, T) int64, state (1, B, "
                   "32) -> logits (T*B, 28), new_state (1, B, 32)\n")  # fmt: skip
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    model, vocab, _ = load_model(run_npz)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["npgru.vocab"]) == vocab.idx_to_token
    X = np.array([vocab[list("the time machine")]] * 2)
    state = np.full((1, 2, 32), 0.1, np.float32)
    run = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, new_state = run.run(None, {"X": X.astype(np.int64), "state": state})
    ours, our_state = model.forward(X, state)
    np.testing.assert_allclose(logits, ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state, our_state, rtol=1e-5, atol=1e-5)


def test_export_refusals_are_one_line(run_npz, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    status, out, err = npgru_cmd(capsys, "export", tmp_path / "missing.npz", tmp_path / "m.onnx")
    assert (status, out) == (2, "") and "checkpoint" in one_error_line(err, "error: ")
    status, out, err = npgru_cmd(capsys, "export", run_npz, tmp_path / "no" / "m.onnx")
    assert (status, out) == (1, "")  # the output could not be written
    assert "cannot write" in one_error_line(err, "error: ")
    status, out, err = npgru_cmd(capsys, "export", run_npz, tmp_path / "m.onnx", "--dtype", "f")
    assert (status, out) == (2, "") and "--dtype" in one_error_line(err, "npgru export: error:")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the onnx extra were not installed
    status, out, err = npgru_cmd(capsys, "export", run_npz, tmp_path / "m.onnx")
    assert (status, out) == (2, "")
    assert one_error_line(err, "error: ").endswith("pip install 'npgru[onnx]'")
    assert sorted(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- the same as the example


def masked(text: str) -> str:
    """Output without what differs from run to run: speed and time."""
    text = re.sub(r"[\d,]+\.\d tokens/sec", "N tokens/sec", text)
    return re.sub(r"this run \d+\.\d s", "this run T s", text)


def test_the_example_and_npgru_train_give_the_same_output_and_files(tmp_path, capsys):
    example = load_example("timemachine.py")
    flags = [*TINY, "--val-fraction", "0.2", "--temperature", "0.5"]
    capsys.readouterr()
    assert example.main([*flags, "--save", str(tmp_path / "a.npz")]) == 0
    out_a = capsys.readouterr().out
    status, out_b, _ = npgru_cmd(capsys, "train", *flags, "--save", tmp_path / "b.npz")
    assert status == 0
    assert masked(out_a) == masked(out_b) and out_a.count("\n") == 5
    a, b = read_run(tmp_path / "a.npz"), read_run(tmp_path / "b.npz")
    assert a.config == b.config and a.epoch == b.epoch and a.vocab == b.vocab
    assert a.history["val_perplexity"] == b.history["val_perplexity"]
    for name, p in a.params.items():
        assert p.tobytes() == b.params[name].tobytes(), name


@pytest.mark.parametrize(
    "flags",
    [["--epochs", "0"], ["--lr", "nan"], ["--backend", "torch"], ["--bogus"],
     ["--data", "/no/such/file.txt", "--epochs", "1"]],
)  # fmt: skip
def test_bad_values_get_the_examples_message_under_the_commands_name(flags, capsys):
    example = load_example("timemachine.py")
    capsys.readouterr()
    status_a = example.main(flags)
    err_a = capsys.readouterr().err
    status_b, out_b, err_b = npgru_cmd(capsys, "train", *flags)
    assert status_a == status_b == 2 and out_b == ""
    one_error_line(err_b, "npgru train: error: " if "--data" not in flags else "error: ")
    assert err_b == err_a.replace("timemachine.py: ", "npgru train: ")


def test_generate_is_the_examples(run_npz, capsys):
    example = load_example("generate.py")
    flags = [run_npz, "--prefix", "Time", "--num-chars", "30", "--temperature", "1", "--seed", "2"]
    capsys.readouterr()
    assert example.main([str(f) for f in flags]) == 0
    from_example = capsys.readouterr()
    assert npgru_cmd(capsys, "generate", *flags) == (0, from_example.out, from_example.err)
    assert npgru_cmd(capsys, "generate", run_npz, "--num-chars", "0")[2].startswith(
        "npgru generate: error: argument --num-chars: '0': give a whole number from 1 to 1,000,000"
    )


# --------------------------------------------------------------------------- the data


def test_without_data_a_checkout_trains_on_its_shipped_copy(tmp_path):
    path = npgru.timemachine.data_path(None)
    assert path == npgru.timemachine.SHIPPED / "timemachine.txt" and path.is_file()
    assert not (tmp_path / "no-such-cache").exists()  # nothing downloaded
    assert npgru.timemachine.data_path("~/x.txt") == Path.home() / "x.txt"


def test_offline_first_run_names_data_and_leaves_no_cache(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError("Temporary failure in name resolution"))

    monkeypatch.setattr(npgru.timemachine, "SHIPPED", tmp_path / "installed")  # no checkout copy
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    status, out, err = npgru_cmd(capsys, "train", "--epochs", "1", *SIZES)
    assert (status, out) == (2, "")
    line = one_error_line(err, "error: download of http")
    assert "timemachine.txt failed (Temporary failure in name resolution)" in line
    assert line.endswith(" with --data PATH"), line
    assert not (tmp_path / "no-such-cache").exists()


# --------------------------------------------------------------------------- the command itself


def test_help_lists_the_commands(capsys):
    status, out, err = npgru_cmd(capsys, "--help")
    assert (status, err) == (0, "") and out.startswith("usage: npgru ")
    for name in ("train", "generate", "info", "export"):
        assert re.search(rf"^ +{name} +\S", out, re.M), out
    for sub, flag in (("train", "--val-fraction"), ("generate", "--temperature"), ("info", ""),
                      ("export", "--dtype")):  # fmt: skip
        status, out, _ = npgru_cmd(capsys, sub, "--help")
        assert status == 0 and out.startswith(f"usage: npgru {sub} ") and flag in out


def test_version(capsys):
    assert npgru_cmd(capsys, "--version") == (0, f"npgru {npgru.__version__}\n", "")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [([], "give a command: train, generate, info, export"),
     (["trian"], "unknown command 'trian'"),
     (["--epochs", "2"], "unrecognized arguments: --epochs"),
     (["generate"], "required: checkpoint"),
     (["export", "run.npz"], "required: output")],
)  # fmt: skip
def test_no_or_unknown_command_is_one_line_and_status_2(argv, needle, capsys):
    status, out, err = npgru_cmd(capsys, *argv)
    assert (status, out) == (2, "")
    assert needle in one_error_line(err, "npgru")


def test_ctrl_c_while_generating_or_loading_exits_130_quietly(run_npz, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(npgru.commands, "predict", interrupted)
        status, out, err = npgru_cmd(capsys, "generate", run_npz)
    assert (status, out, err) == (130, "", "error: interrupted, nothing generated\n")

    real_import = builtins.__import__

    def import_interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "npgru" and "timemachine" in (fromlist or ()):
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", import_interrupted)
    assert npgru_cmd(capsys, "train", *TINY) == (130, "", "")


def test_the_console_script_is_main():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"].split()
    assert scripts == ["npgru", "=", "npgru.__main__:main"]
    module, _, name = scripts[2].partition(":")
    assert getattr(importlib.import_module(module), name) is command.main


def test_as_a_program(run_npz):
    ok = run_process("--version")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"npgru {npgru.__version__}\n", "")
    text = run_process("generate", run_npz, "--prefix", "The Time", "--num-chars", "20")
    assert (text.returncode, text.stderr) == (0, "")
    model, vocab, _ = load_model(run_npz)
    assert text.stdout == predict("the time", 20, model, vocab) + "\n"
    for argv in ([], ["nonsense"], ["info", run_npz.with_suffix(".missing")]):
        bad = run_process(*argv)
        assert (bad.returncode, bad.stdout) == (2, ""), bad
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- output and limits


@pytest.mark.parametrize("sub", ["generate", "info"])
def test_a_closed_pipe_ends_quietly_with_141(run_npz, sub):
    """Hostile case: ``npgru generate run.npz | head -c 10`` was a BrokenPipeError traceback."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write is a broken pipe
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with os.fdopen(writer, "w") as out:
        r = subprocess.run([sys.executable, "-m", "npgru", sub, str(run_npz)], stdout=out,
                           stderr=subprocess.PIPE, text=True, env=env, timeout=60)  # fmt: skip
    assert (r.returncode, r.stderr) == (141, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
@pytest.mark.parametrize("sub", ["generate", "info"])
def test_a_full_disk_for_stdout_is_one_line_and_status_1(run_npz, sub):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "npgru", sub, str(run_npz)], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert "could not write the output" in one_error_line(r.stderr, "error: ")


def test_characters_the_terminal_cannot_show_are_escaped(run_npz):
    """Hostile case: an ASCII terminal and a prefix 'é' made a UnicodeEncodeError traceback."""
    r = run_process("generate", run_npz, "--prefix", "é time", "--num-chars", "5",
                    env={"PYTHONIOENCODING": "ascii"})  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("\\xe9 time")


def test_a_huge_number_of_characters_is_refused(run_npz, capsys):
    """Hostile case: --num-chars 1000000000000 was accepted and ran until killed."""
    status, out, err = npgru_cmd(capsys, "generate", run_npz, "--num-chars", "1000000000000")
    assert (status, out) == (2, "")
    assert "1,000,000" in one_error_line(err, "npgru generate: error:")


def test_a_save_name_too_long_for_its_temporary_file_is_refused_before_training(tmp_path, capsys):
    """Hostile case: a --save name of 245 characters trained every epoch, then could not
    write its temporary file (14 characters longer) and lost the run."""
    name = tmp_path / ("r" * 241 + ".npz")  # fits the folder; ".NAME.XXXXXXXX.tmp" does not
    status, out, err = npgru_cmd(capsys, "train", *TINY, "--save", name)
    assert (status, out) == (2, "")
    line = one_error_line(err, "error: --save")
    assert "symlink" not in line and not name.exists()


def test_a_closed_stderr_loses_only_the_note(run_npz):
    """Review case: the "note:" line went to stderr unguarded: a closed pipe there was a
    BrokenPipeError traceback (on stdout, here, since stderr is gone) and status 1."""
    reader, writer = os.pipe()
    os.close(reader)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with os.fdopen(writer, "w") as err:
        r = subprocess.run([sys.executable, "-m", "npgru", "generate", str(run_npz), "--prefix",
                            "time?", "--num-chars", "5"], stdout=subprocess.PIPE, stderr=err,
                           text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("time?"), r.stdout
    assert "Traceback" not in r.stdout

"""examples/generate.py and npgru.checkpoint.load_model: text from a saved model.

The checkpoints are made here, by ``examples/timemachine.py``'s own ``main`` on the book in
``tests/data`` (a few epochs at tiny sizes), and read back by the example's ``main``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BOOK, one_line, save_run_unchecked

import npgru.commands
from npgru import CheckpointError, ConfigError, GRULanguageModel
from npgru.checkpoint import load_model, read_run
from npgru.data import Vocab
from npgru.train import predict

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "4", "--num-hiddens", "16", "--batch-size", "4", "--num-steps", "8",
        "--max-tokens", "3000"]  # fmt: skip


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN, GENERATE = load_example("timemachine.py"), load_example("generate.py")


@pytest.fixture(autouse=True)
def _no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "no-such-cache"))


def train_tiny(path, *flags):
    assert TRAIN.main(["--data", str(BOOK), *TINY, *flags, "--save", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def run_npz(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("run") / "run.npz")


def generate(capsys, *argv):
    """``generate.py argv`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = GENERATE.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def saved_model(path):
    """The model of a checkpoint rebuilt by hand from np.load, not through load_model."""
    vocab = Vocab.from_tokens_list(read_run(path).vocab)
    model = GRULanguageModel(len(vocab), 16)
    with np.load(path) as saved:
        for name in model.params:
            model.params[name][...] = saved[name]
    return model, vocab


# --------------------------------------------------------------------------- the text


def test_greedy_text_is_the_saved_models_continuation(run_npz, capsys):
    status, out, err = generate(capsys, run_npz, "--prefix", "the time", "--num-chars", "120")
    assert (status, err) == (0, "")
    model, vocab = saved_model(run_npz)
    assert out == predict("the time", 120, model, vocab) + "\n"
    assert len(out) == len("the time") + 120 + 1


def test_the_defaults_continue_time_traveller_by_200_characters(run_npz, capsys):
    status, out, _ = generate(capsys, run_npz)
    assert status == 0
    assert out.startswith("time traveller") and len(out.rstrip("\n")) == 14 + 200


def test_the_same_seed_gives_the_same_sampled_text(run_npz, capsys):
    sample = ["--temperature", "1.5", "--num-chars", "200"]
    first = generate(capsys, run_npz, *sample, "--seed", "7")
    assert first == generate(capsys, run_npz, *sample, "--seed", "7")
    other = generate(capsys, run_npz, *sample, "--seed", "8")
    greedy = generate(capsys, run_npz, "--num-chars", "200")
    assert first[0] == other[0] == 0
    assert len({first[1], other[1], greedy[1]}) == 3  # sampled, resampled, greedy all differ
    model, vocab = saved_model(run_npz)
    expected = predict("time traveller", 200, model, vocab, temperature=1.5, seed=7)
    assert first[1] == expected + "\n"


def test_a_character_outside_the_vocabulary_is_noted(run_npz, capsys):
    status, out, err = generate(capsys, run_npz, "--prefix", "Time?", "--num-chars", "5")
    assert status == 0 and out.startswith("time?") and len(out) == 11
    assert err == "note: '?' not in the model's vocabulary\n"  # T is t, as in the training text


def test_capitals_are_lower_cased_as_the_training_text_was(run_npz, capsys):
    status, out, err = generate(capsys, run_npz, "--prefix", "The Time Traveller")
    assert (status, err) == (0, "")
    assert (status, out, err) == generate(capsys, run_npz, "--prefix", "the time traveller")
    model, vocab = saved_model(run_npz)
    assert out == predict("the time traveller", 200, model, vocab) + "\n"


def test_help(capsys):
    status, out, _ = generate(capsys, "--help")
    assert status == 0 and "--temperature" in out and "--num-chars" in out


def test_as_a_program(run_npz):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's npgru, installed or not
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generate.py"), str(run_npz), "--num-chars", "30"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    model, vocab = saved_model(run_npz)
    assert proc.stdout == predict("time traveller", 30, model, vocab) + "\n"
    bad = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generate.py"), str(run_npz) + ".missing"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1


# --------------------------------------------------------------------------- bad input


def damaged(run_npz, tmp_path):
    data = bytearray(run_npz.read_bytes())
    with np.load(run_npz) as saved:
        at = data.find(saved["W_hq"].tobytes())
    assert at > 0
    data[at + 5] ^= 0x10  # one flipped bit in a parameter
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    return path


BAD = {
    "missing file": (lambda r, t: t / "missing.npz", [], "error: cannot read checkpoint"),
    "a folder": (lambda r, t: t, [], "error: cannot read checkpoint"),
    "damaged": (damaged, [], "error: checkpoint"),
    "truncated": (
        lambda r, t: (t / "t.npz").write_bytes(r.read_bytes()[:2000]) and t / "t.npz",
        [],
        "error: checkpoint",
    ),
    "not a checkpoint": (lambda r, t: BOOK, [], "error: checkpoint"),
    "empty prefix": (lambda r, t: r, ["--prefix", ""], "generate.py: error: argument --prefix"),
    "negative temperature": (lambda r, t: r, ["--temperature", "-1"], "generate.py: error:"),
    "nan temperature": (lambda r, t: r, ["--temperature", "nan"], "generate.py: error:"),
    "inf temperature": (lambda r, t: r, ["--temperature", "inf"], "generate.py: error:"),
    "word temperature": (lambda r, t: r, ["--temperature", "hot"], "generate.py: error:"),
    "zero characters": (lambda r, t: r, ["--num-chars", "0"], "generate.py: error:"),
    "negative characters": (lambda r, t: r, ["--num-chars", "-5"], "generate.py: error:"),
    "fractional characters": (lambda r, t: r, ["--num-chars", "2.5"], "generate.py: error:"),
    "negative seed": (lambda r, t: r, ["--seed", "-1"], "generate.py: error:"),
    "unknown backend": (lambda r, t: r, ["--backend", "torch"], "generate.py: error:"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_status_2(case, run_npz, tmp_path, capsys):
    make_path, flags, start = BAD[case]
    status, out, err = generate(capsys, make_path(run_npz, tmp_path), *flags)
    assert (status, out) == (2, "")
    assert err.startswith(start) and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_no_checkpoint_given(capsys):
    status, out, err = generate(capsys)
    assert (status, out) == (2, "") and err.count("\n") == 1
    assert "required: checkpoint" in err


# --------------------------------------------------------------------------- load_model


def test_load_model_restores_the_saved_parameters_and_vocabulary(run_npz):
    model, vocab, state = load_model(run_npz)
    assert vocab.idx_to_token == state.vocab and len(vocab) == model.vocab_size == 28
    assert (model.num_hiddens, model.num_layers, model.variant, model.dtype) == (
        16, 1, "d2l", "float32",
    )  # fmt: skip
    assert state.epoch == 4 and len(state.history["perplexity"]) == 4
    with np.load(run_npz) as saved:
        for name, p in model.params.items():
            np.testing.assert_array_equal(p, saved[name])


def test_load_model_of_a_deeper_reset_after_float64_run(tmp_path, capsys):
    path = train_tiny(
        tmp_path / "deep.npz", "--num-layers", "2", "--variant", "reset_after", "--dtype", "float64"
    )
    model, vocab, _ = load_model(path)
    assert (model.num_layers, model.variant, model.dtype) == (2, "reset_after", "float64")
    assert "W_xz_l1" in model.params and "b_hh_l1" in model.params
    with np.load(path) as saved:
        assert all(np.array_equal(p, saved[n]) for n, p in model.params.items())
    status, out, _ = generate(capsys, path, "--num-chars", "40")
    assert status == 0 and out == predict("time traveller", 40, model, vocab) + "\n"


def rewritten(run_npz, tmp_path, **config):
    """The checkpoint saved again with some settings changed (a valid digest)."""
    state = read_run(run_npz)
    state = dataclasses.replace(state, config={**state.config, **config})
    save_run_unchecked(tmp_path / "rewritten.npz", state)
    return tmp_path / "rewritten.npz"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_hiddens": 32}, "holds W_xz as float32 (28, 16), the model has float32 (28, 32)"),
        ({"num_layers": 2}, "holds parameters of another model"),
        ({"variant": "reset_after"}, "holds parameters of another model"),
        ({"dtype": "float64"}, "holds W_xz as float32"),
        ({"num_hiddens": None}, "holds no valid model shape"),
        ({"num_hiddens": 0}, "holds no valid model shape"),
        ({"variant": "lstm"}, "holds no valid model shape"),
    ],
)
def test_load_model_refuses_parameters_that_do_not_fit_the_settings(
    run_npz, tmp_path, config, message
):
    with pytest.raises(CheckpointError) as exc:
        load_model(rewritten(run_npz, tmp_path, **config))
    assert message in one_line(exc.value)


def test_load_model_checks_the_backend_and_impl_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="impl='cuda' runs on the cupy backend only"):
        load_model(tmp_path / "missing.npz", impl="cuda")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "missing.npz")


def test_ctrl_c_while_generating_exits_130_quietly(run_npz, capsys, monkeypatch):
    def predict(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(npgru.commands, "predict", predict)  # the example runs npgru generate
    assert GENERATE.main([str(run_npz), "--num-chars", "1000000"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == "error: interrupted, nothing generated\n"

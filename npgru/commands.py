"""``npgru generate``, ``npgru info`` and ``npgru export``: what to do with a checkpoint once
it is saved.

Each command is a function ``command(argv, prog) -> exit status``; ``npgru`` (:mod:`npgru.__main__`)
dispatches to them, and ``examples/generate.py`` runs :func:`generate` under its own name.

Exit status: 0 done; 1 the output (stdout, or the file ``npgru export`` writes) could not be
written (one line); 2 bad input (one
``error:`` line on stderr: a missing or damaged checkpoint, a bad flag); 130 interrupted by
Ctrl-C; 141 the output was closed (piped into ``head``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from npgru.backend import BACKEND_NAMES
from npgru.checkpoint import describe, format_info, load_model
from npgru.cli import (
    EXIT_INTERRUPTED,
    EXIT_OS,
    EXIT_USAGE,
    Parser,
    fail,
    print_result,
    temperature,
    warn,
)
from npgru.errors import NpgruError
from npgru.train import predict

__all__ = ["as_trained", "export", "generate", "info"]

#: The most characters one ``npgru generate`` writes (a typo of a few zeros runs for days).
MAX_CHARS = 1_000_000


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed flags, or the exit status argparse chose (0 for --help, 2 for a bad flag)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _whole_number(low: int, high: int | None = None) -> Any:
    def parse(text: str) -> int:
        ok = text.strip().isdigit() and low <= int(text) <= (int(text) if high is None else high)
        if not ok:
            within = f">= {low}" if high is None else f"from {low} to {high:,}"
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number {within}")
        return int(text)

    return parse


def _nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("give at least one character to continue")
    return text


# --------------------------------------------------------------------------- generate


def as_trained(prefix: str, tokens: Any) -> str:
    """``prefix`` as the training text was written: d2l's pipeline lower-cases every line
    (:func:`npgru.data.preprocess_lines`), so a character the vocabulary ``tokens`` lacks
    is replaced by its lower case when the vocabulary has that. Other characters stay."""
    known = set(tokens)
    return "".join(c.lower() if c not in known and c.lower() in known else c for c in prefix)


def generate_parser(prog: str = "npgru generate") -> argparse.ArgumentParser:
    """The flags of ``npgru generate`` (and ``examples/generate.py``)."""
    p = Parser(
        prog=prog,
        description="Continue a prefix with a model saved by npgru train --save (or "
        "examples/timemachine.py --save): the most likely character each time, or sampled "
        "with --temperature. Capitals are lower-cased, as the training text was.",
        epilog="Exit status: 0 done, 1 output not written, 2 bad input, 130 interrupted, "
        "141 output closed.",
    )
    p.add_argument("checkpoint", help="a checkpoint saved by npgru train --save")
    p.add_argument("--prefix", type=_nonempty, default="time traveller",
                   help="the text to continue (default: 'time traveller')")  # fmt: skip
    p.add_argument("--num-chars", type=_whole_number(1, MAX_CHARS), default=200,
                   help="how many characters to generate (default: 200)")  # fmt: skip
    p.add_argument("--temperature", type=temperature, default=0.0,
                   help="0: the most likely character each time (default); > 0: sampled, "
                   "more varied the higher it is")  # fmt: skip
    p.add_argument("--seed", type=_whole_number(0), default=0,
                   help="seed of the sampling (default: 0)")  # fmt: skip
    p.add_argument("--backend", choices=BACKEND_NAMES, default="numpy",
                   help="numpy (CPU, the default), cupy (NVIDIA GPU) or auto")  # fmt: skip
    return p


def generate(argv: list[str], prog: str = "npgru generate") -> int:
    """``npgru generate CHECKPOINT [--prefix ...]``: print the continued prefix; the status.

    The checkpoint is read and checked by the same code as ``--resume``
    (:func:`npgru.checkpoint.load_model`), and the text comes from
    :func:`npgru.train.predict`. The same checkpoint, prefix, temperature and seed give the
    same text.
    """
    args = _parse(generate_parser(prog), argv)
    if isinstance(args, int):
        return args
    try:
        model, vocab, _ = load_model(args.checkpoint, backend=args.backend)
        prefix = as_trained(args.prefix, vocab.idx_to_token)
        unknown = sorted(set(prefix) - set(vocab.idx_to_token))
        if unknown:  # fed to the model as <unk>, as d2l does
            warn(f"note: {''.join(unknown)!r} not in the model's vocabulary")
        text = predict(prefix, args.num_chars, model, vocab,
                       temperature=args.temperature, seed=args.seed)  # fmt: skip
    except NpgruError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return fail("interrupted, nothing generated", EXIT_INTERRUPTED)
    return print_result(text)


# --------------------------------------------------------------------------- info


def info_parser(prog: str = "npgru info") -> argparse.ArgumentParser:
    """The flags of ``npgru info``."""
    p = Parser(
        prog=prog,
        description="What a checkpoint holds, read without building the model: its format "
        "number, the npgru version that wrote it, the model's settings, the epochs done, the "
        "best validation perplexity, the training text's fingerprint and the file's size.",
        epilog="Exit status: 0 done, 1 output not written, 2 bad input (a missing or damaged "
        "checkpoint), 130 interrupted, 141 output closed.",
    )
    p.add_argument("checkpoint", help="a checkpoint saved by npgru train --save")
    return p


def info(argv: list[str], prog: str = "npgru info") -> int:
    """``npgru info CHECKPOINT``: print what the checkpoint holds; the exit status."""
    args = _parse(info_parser(prog), argv)
    if isinstance(args, int):
        return args
    try:
        text = format_info(describe(args.checkpoint))
    except NpgruError as exc:
        return fail(exc)
    except OSError as exc:  # the file went away between reading and stat
        return fail(f"cannot read checkpoint {Path(args.checkpoint)}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    return print_result(text)


# --------------------------------------------------------------------------- export


def export_parser(prog: str = "npgru export") -> argparse.ArgumentParser:
    """The flags of ``npgru export``."""
    p = Parser(
        prog=prog,
        description="Write a model saved by npgru train --save as an ONNX file: the standard "
        "GRU operator per layer, the token lookup (OneHot) and the output layer (Gemm); inputs "
        "X (B, T) int64 token ids and state (num_layers, B, H), outputs logits (T*B, V) and "
        "new_state, as GRULanguageModel.forward. The vocabulary is stored in the file's "
        "metadata (npgru.vocab, a JSON list: position = token id). Needs pip install "
        "'npgru[onnx]'.",
        epilog="Exit status: 0 done, 1 the file could not be written (any earlier file there "
        "is unchanged), 2 bad input (a missing or damaged checkpoint, onnx not installed), 130 "
        "interrupted, 141 output closed.",
    )
    p.add_argument("checkpoint", help="a checkpoint saved by npgru train --save")
    p.add_argument("output", help="the ONNX file to write (replaced if it exists)")
    p.add_argument("--dtype", choices=("float32", "float64"),
                   help="the graph's float type (default: the checkpoint's; ONNX Runtime's GRU "
                   "runs float32 only)")  # fmt: skip
    return p


def export(argv: list[str], prog: str = "npgru export") -> int:
    """``npgru export CHECKPOINT OUTPUT``: write the model as ONNX, print one line saying what
    was written; the exit status.

    The checkpoint is read as ``npgru generate`` reads it (:func:`npgru.checkpoint.load_model`;
    averaged weights where the run kept them), and written by :func:`npgru.export.to_onnx`.
    """
    args = _parse(export_parser(prog), argv)
    if isinstance(args, int):
        return args
    try:
        from npgru.export import OPSET, to_onnx, vocab_metadata

        model, vocab, _ = load_model(args.checkpoint, impl="reference")
    except NpgruError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return fail("interrupted, nothing written", EXIT_INTERRUPTED)
    try:
        to_onnx(model, args.output, dtype=args.dtype,
                metadata=vocab_metadata(vocab.idx_to_token))  # fmt: skip
    except NpgruError as exc:  # the file could not be written (1), or onnx is missing (2)
        return fail(exc, EXIT_OS if isinstance(exc.__cause__, OSError) else EXIT_USAGE)
    except KeyboardInterrupt:  # the file is written whole or not at all
        return fail("interrupted, nothing written", EXIT_INTERRUPTED)
    L, H, V = model.num_layers, model.num_hiddens, model.vocab_size
    dtype = args.dtype or model.dtype
    return print_result(
        f"wrote {args.output} (ONNX opset {OPSET}, {model.variant}, {dtype}): X (B, T) int64, "
        f"state ({L}, B, {H}) -> logits (T*B, {V}), new_state ({L}, B, {H})"
    )

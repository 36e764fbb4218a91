#!/usr/bin/env python
"""Text from a saved model: continue a prefix with a checkpoint of ``timemachine.py``.

    python examples/timemachine.py --epochs 100 --save run.npz      # train and save
    python examples/generate.py run.npz --prefix "time traveller" --num-chars 200
    python examples/generate.py run.npz --temperature 0.8 --seed 1  # sampled, repeatable

The checkpoint is read and checked by the same code as ``--resume``
(:func:`npgru.checkpoint.load_model`: ``read_run``, then ``restore_run``), and the text comes
from :func:`npgru.train.predict`, as in training: the most likely next character each time
(``--temperature 0``, the default, as d2l), or a draw from the softmax of the logits divided
by the temperature. The same checkpoint, prefix, temperature and seed give the same text.

Exit status: 0 done; 2 bad input (one ``error:`` line on stderr: a missing or damaged
checkpoint, an empty prefix, a bad temperature or number of characters); 130 interrupted by
Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

try:  # Ctrl-C while the imports run ends quietly, like any other Ctrl-C
    try:
        import npgru
    except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import npgru

    from npgru.backend import BACKEND_NAMES
    from npgru.checkpoint import load_model
    from npgru.train import predict
except KeyboardInterrupt:
    sys.exit(130)


def whole_number(low):
    def parse(text):
        if not text.strip().isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= {low}")
        return int(text)

    return parse


def temperature(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number >= 0")
    return value


def nonempty(text):
    if not text:
        raise argparse.ArgumentTypeError("give at least one character to continue")
    return text


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, as timemachine.py
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def main(argv=None):
    """Parse ``argv`` (default: the command line), print the text, return the exit status."""
    parser = Parser(
        prog="generate.py",
        description="Continue a prefix with a model saved by timemachine.py --save.",
        epilog="Exit status: 0 done, 2 bad input, 130 interrupted.",
    )
    parser.add_argument("checkpoint", help="a checkpoint saved by timemachine.py --save")
    parser.add_argument("--prefix", type=nonempty, default="time traveller",
                        help="the text to continue (default: 'time traveller')")  # fmt: skip
    parser.add_argument("--num-chars", type=whole_number(1), default=200,
                        help="how many characters to generate (default: 200)")  # fmt: skip
    parser.add_argument("--temperature", type=temperature, default=0.0,
                        help="0: the most likely character each time (default); > 0: sampled, "
                        "more varied the higher it is")  # fmt: skip
    parser.add_argument("--seed", type=whole_number(0), default=0,
                        help="seed of the sampling (default: 0)")  # fmt: skip
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="numpy",
                        help="numpy (CPU, the default), cupy (NVIDIA GPU) or auto")  # fmt: skip
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, one line printed)
        return exc.code if isinstance(exc.code, int) else 2

    try:
        model, vocab, _ = load_model(args.checkpoint, backend=args.backend)
        unknown = sorted(set(args.prefix) - set(vocab.idx_to_token))
        if unknown:  # fed to the model as <unk>, as d2l does; lower case is what it has seen
            print(f"note: {''.join(unknown)!r} not in the model's vocabulary", file=sys.stderr)
        text = predict(args.prefix, args.num_chars, model, vocab,
                       temperature=args.temperature, seed=args.seed)  # fmt: skip
    except npgru.NpgruError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted, nothing generated", file=sys.stderr)
        return 130
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Text from a saved model: continue a prefix with a checkpoint of ``timemachine.py``.

    python examples/timemachine.py --epochs 100 --save run.npz      # train and save
    python examples/generate.py run.npz --prefix "time traveller" --num-chars 200
    python examples/generate.py run.npz --temperature 0.8 --seed 1  # sampled, repeatable

This is ``npgru generate`` (:func:`npgru.commands.generate`) under the example's name. The
checkpoint is read and checked by the same code as ``--resume``
(:func:`npgru.checkpoint.load_model`: ``read_run``, then ``restore_run``), and the text comes
from :func:`npgru.train.predict`, as in training: the most likely next character each time
(``--temperature 0``, the default, as d2l), or a draw from the softmax of the logits divided
by the temperature. The same checkpoint, prefix, temperature and seed give the same text.
Capitals in the prefix are lower-cased, as d2l's pipeline lower-cased the training text.

Exit status: 0 done; 1 the output could not be written; 2 bad input (one ``error:`` line on
stderr: a missing or damaged checkpoint, an empty prefix, a bad temperature or number of
characters); 130 interrupted by Ctrl-C; 141 the output was closed.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # Ctrl-C while the imports run ends quietly, like any other Ctrl-C
    try:
        from npgru.commands import generate
    except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from npgru.commands import generate
except KeyboardInterrupt:
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), print the text, return the exit status."""
    return generate(sys.argv[1:] if argv is None else argv, prog="generate.py")


if __name__ == "__main__":
    sys.exit(main())

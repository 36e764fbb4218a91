#!/usr/bin/env python
"""Train d2l's character-level GRU on H. G. Wells' *The Time Machine*, with npgru.

This is ``train_ch8`` of the GRU chapter of *Dive into Deep Learning* on plain arrays, with
d2l's defaults (batch 32, 35 steps, 256 hidden units, 500 epochs, lr 1, sequential
partitioning). The loop lives in the library, so that an installed npgru has it too
(``npgru train`` runs the same code, with the same flags): read ``train_ch8`` in
``npgru/timemachine.py`` top to bottom: the data, the model, the training loop
(:func:`npgru.train.train`), then some generated text. The flags, checkpoints, Ctrl-C and
exit status are the library's (:mod:`npgru.cli`).

    python examples/timemachine.py                      # NumPy on the CPU
    python examples/timemachine.py --backend cupy       # an NVIDIA GPU
    python examples/timemachine.py --epochs 50 --plot ppl.png --save run.npz
    python examples/timemachine.py --resume run.npz --epochs 100   # 50 more, exactly
    python examples/timemachine.py --max-tokens -1 --val-fraction 0.1   # held-out perplexity

Exit status: 0 done; 1 the output could not be written (the run went on and saved) or a
system error stopped it; 2 bad input (one ``error:`` line on stderr); 3 training diverged;
130 interrupted by Ctrl-C, 143 by SIGTERM, 129 by SIGHUP; 141 the output was closed (piped
into ``head``). A run stopped early saves its last completed epoch first (with --save).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # Ctrl-C while the imports run ends quietly, like any other Ctrl-C
    try:
        from npgru import cli
    except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from npgru import cli
    from npgru.timemachine import train_ch8
except KeyboardInterrupt:
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run ``train_ch8``, return the status."""
    return cli.main(sys.argv[1:] if argv is None else argv, train_ch8, prog="timemachine.py")


if __name__ == "__main__":
    try:  # a Ctrl-C between the run's end and the exit is no traceback either
        status = main()
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)

"""The ``npgru`` command (also ``python -m npgru``): train, generate, info, export.

    npgru train --epochs 50 --save run.npz        # d2l's train_ch8 (npgru/timemachine.py)
    npgru generate run.npz --prefix "The Time Traveller" --num-chars 200
    npgru info run.npz                            # what the checkpoint holds
    npgru export run.npz model.onnx               # the model as ONNX (npgru[onnx])
    npgru train --help                            # a command's flags

Each command parses its own flags: ``npgru train`` is :func:`npgru.cli.main` running
:func:`npgru.timemachine.train_ch8` (the flags of ``examples/timemachine.py``),
``generate``, ``info`` and ``export`` are in :mod:`npgru.commands`.

Exit status: 0 done; 1 the output could not be written or a system error stopped a run; 2
bad input (one ``error:`` line on stderr), an unknown or missing command included; 3
training diverged; 130 interrupted by Ctrl-C (143 by SIGTERM, 129 by SIGHUP); 141 the output
was closed. A run stopped early saves its last completed epoch first (``--save``).
"""

from __future__ import annotations

import argparse
import sys

from npgru.cli import EXIT_INTERRUPTED, EXIT_USAGE, Parser
from npgru.version import __version__

__all__ = ["COMMANDS", "main"]


#: Each command and its line in ``npgru --help``.
COMMANDS = {
    "train": "train d2l's character-level GRU on The Time Machine or any text (d2l's train_ch8)",
    "generate": "continue a prefix with a model saved by npgru train --save",
    "info": "what a checkpoint holds (settings, epochs, perplexity, data), without loading it",
    "export": "write a model saved by npgru train --save as an ONNX file (needs npgru[onnx])",
}


def build_parser() -> argparse.ArgumentParser:
    """The top level of ``npgru``: its help lists the commands; the commands parse the rest."""
    p = Parser(
        prog="npgru",
        description="A GRU on plain arrays (NumPy or CuPy) with backpropagation through time "
        "derived by hand: train d2l's character model and use what it saved.",
        epilog="'npgru COMMAND --help' lists a command's flags. Exit status: 0 done, 1 output "
        "not written or a system error, 2 bad input, 3 training diverged, 130 interrupted (143 "
        "SIGTERM, 129 SIGHUP), 141 output closed.",
    )
    p.add_argument(
        "--version", action="version", version=f"npgru {__version__}", help="print the version"
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def run(command: str, argv: list[str]) -> int:
    """Run ``npgru command argv``; the exit status. The command's modules load only now."""
    prog = f"npgru {command}"
    if command == "train":
        from npgru import cli, timemachine

        return cli.main(argv, timemachine.train_ch8, prog=prog)
    from npgru import commands

    run_command = {"generate": commands.generate, "info": commands.info, "export": commands.export}
    return run_command[command](argv, prog)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the command, return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in COMMANDS:
        try:
            return run(argv[0], argv[1:])
        except KeyboardInterrupt:  # while its modules load: quietly, as any other Ctrl-C
            return EXIT_INTERRUPTED
    try:
        if not argv:
            parser.error(f"give a command: {', '.join(COMMANDS)} ('npgru --help' says more)")
        if argv[0].startswith("-"):
            parser.parse_args(argv[:1])  # --help, --version, or an unknown option
        parser.error(f"unknown command {argv[0]!r}: choose from {', '.join(COMMANDS)}")
    except SystemExit as exc:  # --help, --version (0) or an error (2, one line printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return EXIT_USAGE  # not reached: parser.error exits


if __name__ == "__main__":
    try:  # a Ctrl-C between the command's end and the exit is no traceback either
        status = main()
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    sys.exit(status)

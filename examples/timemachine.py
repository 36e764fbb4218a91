#!/usr/bin/env python
"""Train d2l's character-level GRU on H. G. Wells' *The Time Machine*, with npgru.

This is the GRU chapter of *Dive into Deep Learning* (``train_ch8``) on plain arrays, with
the same defaults (batch 32, 35 steps, 256 hidden units, 500 epochs, lr 1, sequential
sampling). The whole training loop is in :func:`main`, below.

    python examples/timemachine.py                      # NumPy on the CPU
    python examples/timemachine.py --backend cupy       # an NVIDIA GPU
    python examples/timemachine.py --epochs 50 --plot ppl.png --save run.npz
    python examples/timemachine.py --resume run.npz --epochs 100   # 50 more, exactly

Exit status: 0 done; 2 bad input (one ``error:`` line on stderr); 3 training diverged;
130 interrupted by Ctrl-C (after saving the last completed epoch, with --save).
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

try:
    import npgru
except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import npgru

import numpy as np
from tqdm import tqdm

from npgru.backend import BACKEND_NAMES
from npgru.checkpoint import check_compatible, check_writable, load_checkpoint, save_checkpoint
from npgru.data import load_data_time_machine
from npgru.errors import CheckpointError, ConfigError, DivergenceError, NpgruError
from npgru.flat import FlatDict
from npgru.train import predict, train_epoch

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130

# d2l's settings. The flags below default to None so that --resume can tell "not given"
# (take the checkpoint's value) from "given" (use it).
DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "num_steps": 35,
    "num_hiddens": 256,
    "num_layers": 1,
    "variant": "d2l",
    "dtype": "float32",
    "epochs": 500,
    "lr": 1.0,
    "max_tokens": 10000,
    "use_random_iter": False,
    "seed": 0,
    "data": None,
}


# --------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """argparse, but every error is exactly one line (``timemachine.py: error: ...``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


def _number(kind: type, low: float, *, strict: bool = True, allow: Any = None) -> Any:
    """An argparse type: a ``kind`` above ``low`` (at least ``low`` if not ``strict``), finite,
    or exactly ``allow``."""
    noun = "an integer" if kind is int else "a finite number"
    rule = f"{noun} {'>' if strict else '>='} {low:g}"
    if allow is not None:
        rule += f", or {allow}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value == allow:
            return value
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give {rule}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=Path(sys.argv[0]).name or "timemachine.py",
        description="Train d2l's character-level GRU language model on The Time Machine "
        "(or any UTF-8 text) with npgru. Defaults are d2l's. With --resume, every setting "
        "you do not pass is taken from the checkpoint.",
        epilog="Exit status: 0 done, 2 bad input, 3 training diverged, 130 interrupted.",
    )
    d = DEFAULTS
    g = p.add_argument_group("model and training")
    g.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default="numpy",
        help="numpy (CPU), cupy (NVIDIA GPU) or auto (default: numpy)",
    )
    g.add_argument(
        "--impl",
        choices=npgru.model.IMPLS,
        default="auto",
        help="how the GRU runs: reference (the readable array code), cuda (npgru's CUDA "
        "kernels, --backend cupy only) or auto: cuda on cupy, else reference (default: auto)",
    )
    g.add_argument(
        "--epochs",
        type=_number(int, 0),
        help=f"total number of epochs, counting those of a resumed run (default: {d['epochs']})",
    )
    g.add_argument("--lr", type=_number(float, 0), help=f"SGD learning rate (default: {d['lr']:g})")
    g.add_argument(
        "--batch-size",
        type=_number(int, 0),
        help=f"sequences per minibatch (default: {d['batch_size']})",
    )
    g.add_argument(
        "--num-steps",
        type=_number(int, 0),
        help=f"time steps per minibatch (default: {d['num_steps']})",
    )
    g.add_argument(
        "--num-hiddens",
        type=_number(int, 0),
        help=f"hidden units per layer (default: {d['num_hiddens']})",
    )
    g.add_argument(
        "--num-layers",
        type=_number(int, 0),
        help=f"stacked GRU layers (default: {d['num_layers']})",
    )
    g.add_argument(
        "--variant",
        choices=("d2l", "reset_after"),
        help=f"GRU equations: d2l's, or cuDNN/PyTorch's reset_after (default: {d['variant']})",
    )
    g.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help=f"floating-point type (default: {d['dtype']})",
    )
    g.add_argument(
        "--random-iter",
        dest="use_random_iter",
        action="store_const",
        const=True,
        help="random sampling instead of sequential partitioning "
        "(the state is reset at every minibatch)",
    )
    g.add_argument(
        "--seed",
        type=_number(int, 0, strict=False),
        help="seed of the initial weights and of the data loader; same seed and "
        f"backend, same run bit for bit (default: {d['seed']})",
    )
    g.add_argument(
        "--temperature",
        type=_number(float, 0, strict=False),
        default=0.0,
        help="0: greedy continuations, as d2l (default); > 0: sample from "
        "softmax(logits / temperature)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        metavar="PATH",
        help="train on this UTF-8 text file (default: The Time Machine from the "
        "cache, $NPGRU_DATA_DIR or ~/.cache/npgru, downloaded once)",
    )
    g.add_argument(
        "--max-tokens",
        type=_number(int, 0, allow=-1),
        help=f"keep the first N characters, -1 for all (default: {d['max_tokens']})",
    )
    g = p.add_argument_group("output and checkpoints")
    g.add_argument(
        "--plot",
        metavar="PATH",
        help="write the perplexity-per-epoch curve to this PNG (needs matplotlib: "
        "pip install 'npgru[plot]')",
    )
    g.add_argument(
        "--save",
        metavar="PATH",
        help="save a checkpoint (.npz) here at the end, every --save-every epochs "
        "and on Ctrl-C (the state after the last completed epoch)",
    )
    g.add_argument(
        "--save-every",
        metavar="N",
        type=_number(int, 0),
        help="also save every N epochs (default: only at the end and on Ctrl-C)",
    )
    g.add_argument(
        "--resume",
        metavar="PATH",
        help="continue the run saved in this checkpoint, exactly, up to --epochs "
        "in total; it keeps saving to PATH unless --save names another file",
    )
    return p


# --------------------------------------------------------------------------- helpers


def fail(message: Any, status: int = EXIT_USAGE) -> int:
    """Print one ``error:`` line to stderr and return the exit status."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def check_plot(path: str) -> Any:
    """matplotlib's pyplot with the Agg backend, checked before any training."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed: install npgru[plot] "
            "(pip install 'npgru[plot]') or leave out --plot"
        ) from None
    target = Path(path)
    if target.is_dir() or not target.parent.is_dir():
        raise ConfigError(f"cannot write the plot to {target}: give a file in an existing folder")
    return plt


def plot(plt: Any, path: str, perplexity: list[float], title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(perplexity) + 1), perplexity)
    ax.set(xlabel="epoch", ylabel="perplexity", title=title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """Each setting from the command line, else the checkpoint, else d2l's default."""
    settings = {}
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        if value is None and saved is not None and key in saved:
            value = saved[key]
        settings[key] = default if value is None else value
    if args.data is not None:  # store an absolute path, so a resume works from anywhere
        settings["data"] = str(Path(args.data).expanduser().resolve())
    return settings


class Snapshot(NamedTuple):
    """The state after a completed epoch: all a checkpoint needs to resume exactly."""

    epoch: int
    params: Any  # a FlatDict copy, on the device
    rng_state: dict[str, Any]


def snapshot(epoch: int, model: Any, loader: Any) -> Snapshot:
    # ndarray.copy() exists in NumPy and every CuPy (asarray(copy=True) needs CuPy >= 14)
    params = FlatDict(model.params.flat.copy(), model.params.layout)
    return Snapshot(epoch, params, loader.rng.bit_generator.state)


def save(path: str, snap: Snapshot, model: Any, vocab: Any, config: dict, history: dict) -> None:
    save_checkpoint(
        path,
        params={name: model.backend.asnumpy(a) for name, a in snap.params.items()},
        config=config,
        vocab=vocab.idx_to_token,
        epoch=snap.epoch,
        history={k: v[: snap.epoch] for k, v in history.items()},
        rng_states={"loader": snap.rng_state},
    )


def restore(ckpt: Any, model: Any, loader: Any) -> None:
    """Put a checkpoint's parameters and loader state into ``model`` and ``loader``."""
    if set(ckpt.params) != set(model.params):
        raise CheckpointError(
            f"checkpoint {ckpt.path} holds parameters {sorted(ckpt.params)}, the model has "
            f"{sorted(model.params)}: it was saved by another model"
        )
    for name, value in ckpt.params.items():
        model.params[name] = model.backend.asarray(value)
    try:
        loader.rng.bit_generator.state = ckpt.rng_states["loader"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {ckpt.path} has no usable data-loader random state ({exc!r})"
        ) from exc
    for key in ("perplexity", "tokens_per_sec"):
        if len(ckpt.history.get(key, ())) != ckpt.epoch:
            raise CheckpointError(
                f"checkpoint {ckpt.path} is damaged: its history does not cover its "
                f"{ckpt.epoch} epochs"
            )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except NpgruError as exc:  # the user's input, files or machine: one line, no traceback
        return fail(exc)
    except KeyboardInterrupt:  # before training started: nothing to save
        return fail("interrupted", EXIT_INTERRUPTED)


def run(args: argparse.Namespace) -> int:
    # ---- check everything that can fail before spending any time on training
    plt = check_plot(args.plot) if args.plot else None
    ckpt = load_checkpoint(args.resume) if args.resume else None
    s = resolve_settings(args, ckpt.config if ckpt else None)
    save_path = args.save or args.resume
    if save_path:
        check_writable(save_path)
    if ckpt is not None and s["epochs"] < ckpt.epoch:
        raise ConfigError(
            f"checkpoint {args.resume} already has {ckpt.epoch} epochs, more than "
            f"--epochs {s['epochs']} (the total): pass a larger --epochs"
        )
    backend = npgru.get_backend(args.backend)

    # ---- data and model (d2l: load_data_time_machine, then the model)
    loader, vocab = load_data_time_machine(
        s["batch_size"],
        s["num_steps"],
        use_random_iter=s["use_random_iter"],
        max_tokens=s["max_tokens"],
        path=s["data"],
        seed=np.random.default_rng([s["seed"], 1]),  # a stream of its own, from --seed
        backend=backend,
    )
    model = npgru.GRULanguageModel(
        len(vocab),
        s["num_hiddens"],
        num_layers=s["num_layers"],
        variant=s["variant"],
        dtype=s["dtype"],
        seed=s["seed"],
        backend=backend,
        impl=args.impl,
    )
    config = {**model.config, **s}
    history: dict[str, list[float]] = {"perplexity": [], "tokens_per_sec": []}
    start_epoch = 0
    if ckpt is not None:
        check_compatible(ckpt, config=config, vocab=vocab.idx_to_token)
        restore(ckpt, model, loader)
        history = {k: list(ckpt.history.get(k, [])) for k in history}
        start_epoch = ckpt.epoch
        print(f"resumed {args.resume} after epoch {start_epoch}", file=sys.stderr)

    def continuation(prefix: str, epoch: int) -> str:
        seed = (s["seed"], epoch, len(prefix))  # sampling (--temperature > 0) is repeatable
        return predict(prefix, 50, model, vocab, temperature=args.temperature, seed=seed)

    # ---- the training loop (d2l's train_ch8)
    good = snapshot(start_epoch, model, loader)  # the last completed epoch, for Ctrl-C
    bar = tqdm(
        range(start_epoch + 1, s["epochs"] + 1),
        initial=start_epoch,
        total=s["epochs"],
        desc="training",
        unit="epoch",
    )
    started = time.perf_counter()
    try:
        for epoch in bar:
            perplexity, speed = train_epoch(model, loader, s["lr"], epoch=epoch)
            history["perplexity"].append(perplexity)
            history["tokens_per_sec"].append(speed)
            good = snapshot(epoch, model, loader)
            bar.set_postfix(perplexity=f"{perplexity:.2f}", tokens_per_sec=f"{speed:,.0f}")
            if epoch % 10 == 0:
                tqdm.write(f"epoch {epoch}: {continuation('time traveller', epoch)}")
            if save_path and args.save_every and epoch % args.save_every == 0:
                save(save_path, good, model, vocab, config, history)
    except KeyboardInterrupt:
        bar.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the save
        if save_path:
            save(save_path, good, model, vocab, config, history)
            where = f"saved epoch {good.epoch} to {save_path}; continue with --resume {save_path}"
        else:
            where = "nothing saved (pass --save PATH to keep the progress)"
        print(f"interrupted after epoch {good.epoch}: {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DivergenceError as exc:
        bar.close()
        kept = ""
        if save_path:
            save(save_path, good, model, vocab, config, history)
            kept = f"; the last good state (epoch {good.epoch}) is saved in {save_path}"
        return fail(f"{exc}{kept}", EXIT_DIVERGED)
    bar.close()
    elapsed = time.perf_counter() - started

    # ---- results
    if save_path:
        save(save_path, good, model, vocab, config, history)
    if plt is not None:
        text = Path(s["data"]).name if s["data"] else "The Time Machine"
        title = f"{text}: GRU, {s['num_hiddens']} hidden units, {backend}"
        plot(plt, args.plot, history["perplexity"], title)
    speeds = history["tokens_per_sec"][start_epoch:] or history["tokens_per_sec"]
    final = history["perplexity"][-1]
    print(f"perplexity {final:.1f}, {statistics.median(speeds):,.1f} tokens/sec on {backend}")
    print(f"(perplexity {final:.4f} after {s['epochs']} epochs, this run {elapsed:.1f} s)")
    print(continuation("time traveller", s["epochs"]))
    print(continuation("traveller", s["epochs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

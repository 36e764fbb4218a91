"""The command line of ``npgru train`` (and ``examples/timemachine.py``): flags, checkpoints,
Ctrl-C, exit status.

The program is d2l's ``train_ch8`` on npgru (:func:`npgru.timemachine.train_ch8`): it builds
the data and the model and calls :func:`npgru.train.train`. What makes it a program lives
here, so that ``train_ch8`` reads top to bottom::

    def train_ch8(s, run): ...                      # s: the settings, run: a Run
    sys.exit(npgru.cli.main(sys.argv[1:], train_ch8, prog="npgru train"))

:func:`main` parses the flags, reads ``--resume``, checks every output path and the memory the
model will need, then calls the program. Its :class:`Run` continues a checkpoint
(:meth:`Run.resume`), saves after epochs (:meth:`Run.epoch_end`) and at the end
(:meth:`Run.finish`), and on Ctrl-C, SIGTERM, SIGHUP, divergence or any other error saves the
last completed epoch, if one was completed since the start (a file is never replaced by the
state the run started from).

The ``--save`` path belongs to the run: it is claimed (:func:`npgru.files.claim`, a lock file
``.NAME.lock`` beside it while the run lasts) so that a second run refuses it; a symlink is
written through to its target; a file that someone else puts there after the start is kept,
and the run saves beside it (``NAME.1.npz``) and says so. Output cannot stop a run: the
progress bar and the messages are best-effort.

Exit status: 0 done; 1 the output could not be written (a full disk, ``/dev/full``: the run
went on and saved; one line on stderr) or an operating-system error stopped the run; 2 bad
input (one ``error:`` line on stderr, no traceback); 3 training diverged; 130 interrupted by
Ctrl-C, 143 stopped by SIGTERM, 129 by SIGHUP; 141 the output was closed (a pipe into
``head``: the run stops as a Unix tool does on SIGPIPE). Whenever a run stops early, the last
good epoch is saved first (with ``--save``); a bug (any other exception) too, before its
traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import inspect
import math
import os
import signal
import stat
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from npgru.backend import BACKEND_NAMES, get_backend
from npgru.checkpoint import (
    DIGEST,
    META,
    RunState,
    capture,
    digest,
    read_run,
    restore_run,
    save_run,
)
from npgru.checks import VARIANTS, factor, float_dtype, fraction, gru_variant, integer
from npgru.errors import CheckpointError, ConfigError, DivergenceError, NpgruError, one_line
from npgru.files import PathBusy, atomic_write, claim, identity, real_path, remove_temporaries
from npgru.model import IMPLS
from npgru.optim import OPTIMIZERS, positive_float
from npgru.train import best_epoch, vanishing_epoch

__all__ = ["DEFAULTS", "FIXED", "Run", "build_parser", "estimate_bytes", "main"]

EXIT_OS, EXIT_USAGE, EXIT_DIVERGED = 1, 2, 3  # a signal's run exits 128 + its number
#: A closed pipe: the status of a Unix tool killed by SIGPIPE (the run saves first).
EXIT_PIPE = 128 + getattr(signal, "SIGPIPE", 13)
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C where there is nothing to save
#: The signals that stop a run the way Ctrl-C does (``kill``, ``timeout``, a closed terminal);
#: the exit status is then 128 + the signal's number, as a shell reports it.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

#: d2l's settings. A flag left out takes the resumed checkpoint's value, else this one.
DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "num_steps": 35,
    "num_hiddens": 256,
    "num_layers": 1,
    "variant": "d2l",
    "dtype": "float32",
    "epochs": 500,
    "lr": None,  # d2l's 1 for SGD; see LR
    "max_tokens": 10000,
    "use_random_iter": False,
    "seed": 0,
    "data": None,
    "val_fraction": 0.0,
    "patience": None,
    "dropout": 0.0,
    "lr_decay": 1.0,
    "optimizer": "sgd",
    "average": 0.0,
}
#: The learning rate when --lr is left out: d2l's 1 for SGD, the usual 0.001 for Adam.
LR = {"sgd": 1.0, "adam": 1e-3}
#: Settings newer than some checkpoints: one that lacks them was trained with these values.
LATER = {"val_fraction": 0.0, "patience": None, "dropout": 0.0, "lr_decay": 1.0,
         "optimizer": "sgd", "average": 0.0}  # fmt: skip
#: The settings a resumed run keeps: changing one would mix two runs in one history.
FIXED = tuple("batch_size num_steps num_hiddens num_layers variant dtype lr max_tokens "
              "use_random_iter seed val_fraction dropout lr_decay optimizer "
              "average".split())  # fmt: skip
_COUNTS = ("batch_size", "num_steps", "num_hiddens", "num_layers", "epochs", "save_every")
MAX_VOCAB = 28  # <unk>, space and a-z: all the cleaned text can hold


def check_setting(key: str, value: Any) -> Any:
    """``value`` if it is valid for the setting ``key``; ConfigError naming ``key`` if not."""
    if key == "seed":
        return integer(key, value, low=0)
    if key == "max_tokens" and value == -1 and type(value) is int:
        return value
    if key == "max_tokens":
        try:
            return integer(key, value, low=1)
        except ConfigError:
            msg = f"max_tokens must be a positive integer or -1 (all), got {value!r}"
            raise ConfigError(msg) from None
    if key in _COUNTS:
        return integer(key, value, low=1)
    if key == "lr":
        return positive_float(key, value)
    if key in ("val_fraction", "dropout", "average"):
        return fraction(key, value)
    if key == "lr_decay":
        return factor(key, value)
    if key == "optimizer" and value not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {value!r}")
    if key == "patience":
        return None if value is None else integer(key, value, low=1)
    if key == "variant":
        return gru_variant(value)
    if key == "dtype":
        return float_dtype(value)
    if key == "use_random_iter" and type(value) is not bool:
        raise ConfigError(f"use_random_iter must be true or false, got {value!r}")
    if key == "data" and not (value is None or (isinstance(value, str) and value)):
        raise ConfigError(f"data must be a file name or null, got {value!r}")
    return value


# --------------------------------------------------------------------------- flags


class Parser(argparse.ArgumentParser):
    """argparse, but every error is exactly one line (``npgru train: error: ...``), status 2;
    the parser of every npgru command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


def _flag(kind: type, key: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` checked by :func:`check_setting` (flags and
    checkpoints follow the same rules)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r}: give {what}") from None
        try:
            return check_setting(key, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


def temperature(text: str) -> float:
    """An argparse type: a sampling temperature, a finite number >= 0 (0: greedy)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number >= 0")
    return value


#: The settings' flags: ``--batch-size`` sets ``batch_size``, checked by :func:`check_setting`.
SETTING_FLAGS = {
    "epochs": (int, "total epochs, counting those of a resumed run"),
    "lr": (float, "learning rate"),
    "batch_size": (int, "sequences per minibatch"),
    "num_steps": (int, "time steps per minibatch"),
    "num_hiddens": (int, "hidden units per layer"),
    "num_layers": (int, "stacked GRU layers"),
    "seed": (int, "seed of the weights and of the data loader"),
    "max_tokens": (int, "keep the first N characters of the text, -1 for all"),
    "val_fraction": (float, "hold out this fraction of the text's end (after --max-tokens) "
                     "and report its perplexity each epoch; --save then keeps the best epoch"),
    "patience": (int, "with --val-fraction: stop after N epochs without a better validation "
                 "perplexity"),
    "dropout": (float, "drop states between layers and before the output layer with this "
                "probability while training"),
    "lr_decay": (float, "multiply the learning rate by this factor after every epoch"),
    "average": (float, "keep weights averaged over about the last 1/(1-AVERAGE) steps (e.g. "
                "0.998); validation, --save and the continuations use them; 0: none"),
}  # fmt: skip


def build_parser(prog: str = "npgru train") -> argparse.ArgumentParser:
    """The flags of the example; a setting's flag defaults to None (see :data:`DEFAULTS`)."""
    p = Parser(
        prog=prog,
        description="Train d2l's character-level GRU language model on The Time Machine "
        "(or any UTF-8 text) with npgru. Defaults are d2l's. With --resume, every setting "
        "you leave out is taken from the checkpoint.",
        epilog="Exit status: 0 done, 1 the output could not be written (the run went on) or "
        "a system error stopped it, 2 bad input, 3 training diverged, 130 interrupted (143 by "
        "SIGTERM, 129 by SIGHUP), 141 the output was closed (e.g. piped into head). A run "
        "stopped early saves its last completed epoch first (with --save).",
    )
    add = p.add_argument_group("model and training").add_argument
    add("--backend", choices=BACKEND_NAMES, default="numpy", help="numpy (CPU, the default), "
        "cupy (NVIDIA GPU) or auto")  # fmt: skip
    add("--impl", choices=IMPLS, default="auto", help="how the GRU runs: reference (the "
        "readable array code), cuda (npgru's CUDA kernels, --backend cupy only), numba (fused "
        "CPU steps, --backend numpy, needs npgru[fast]) or auto: cuda on cupy, numba on numpy "
        "where Numba is installed, else reference (default: auto)")  # fmt: skip
    for key, (kind, text) in SETTING_FLAGS.items():
        flag, default = "--" + key.replace("_", "-"), DEFAULTS[key]
        if key == "lr":
            default = ", ".join(f"{lr:g} with {name}" for name, lr in LR.items())
        add(flag, type=_flag(kind, key), help=f"{text} (default: {default})")
    add("--optimizer", choices=OPTIMIZERS, help="sgd (plain SGD, as d2l; the default) or adam")
    add("--variant", choices=VARIANTS, help="d2l's GRU equations (default) or cuDNN's reset_after")
    add("--dtype", choices=("float32", "float64"), help="floating-point type (default: float32)")
    add("--random-iter", dest="use_random_iter", action="store_const", const=True,
        help="random sampling instead of sequential partitioning")  # fmt: skip
    add("--temperature", type=temperature, default=0.0,
        help="0: greedy continuations, as d2l (default); > 0: sampled ones")  # fmt: skip
    add("--data", metavar="PATH", help="train on this UTF-8 text (default: The Time Machine, "
        "SHA-1 checked: the copy a checkout ships, else downloaded once into $NPGRU_DATA_DIR "
        "or ~/.cache/npgru)")  # fmt: skip
    add = p.add_argument_group("output and checkpoints").add_argument
    add("--plot", metavar="PATH", help="draw the perplexity per epoch into this image (.png, "
        ".svg, .pdf, ...; needs pip install 'npgru[plot]')")  # fmt: skip
    add("--save", metavar="PATH", help="save a checkpoint (.npz) here at the end, every "
        "--save-every epochs, on Ctrl-C and on divergence")  # fmt: skip
    add("--save-every", metavar="N", type=_flag(int, "save_every"), help="save every N epochs")
    add("--resume", metavar="PATH", help="continue the run saved here, exactly, up to --epochs "
        "in total; it goes on saving there unless --save says otherwise")  # fmt: skip
    return p


# --------------------------------------------------------------------------- resources


def estimate_bytes(s: Any, vocab_size: int = MAX_VOCAB) -> int:
    """About the most memory a training run with settings ``s`` holds at once, in bytes.

    Parameters, gradients, the saved copy and the fused weights (6 copies; Adam's moments 2
    more, averaged weights and their swap 2 more), the per-step
    activations of forward and backward (16 per hidden value per layer), the logits and their
    gradient, and some bookkeeping per layer.
    """
    V, H, L, B, T = vocab_size, s.num_hiddens, s.num_layers, s.batch_size, s.num_steps
    params = sum(3 * ((V if layer == 0 else H) + H + 1) * H + H for layer in range(min(L, 2)))
    params += (L - 2) * (3 * (2 * H + 1) * H + H) if L > 2 else 0
    params += (H + 1) * V
    itemsize = 8 if s.dtype == "float64" else 4
    copies = 6 + 2 * (getattr(s, "optimizer", "sgd") == "adam") + 2 * bool(getattr(s, "average", 0))
    return itemsize * (copies * params + 16 * L * T * B * H + 4 * T * B * V) + 2**16 * L


def available_bytes(backend: Any) -> int | None:
    """Free memory where the model will live (the GPU's, or the host's and its cgroup's
    limit on Linux), None if unknown."""
    if backend.name == "cupy":
        with contextlib.suppress(Exception):  # no device, an old driver: the run will say
            return int(backend.xp.cuda.Device().mem_info[0])
        return None
    free = []
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/meminfo") as f:
            free.append(next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvail")))
    with contextlib.suppress(OSError, ValueError):  # "max" (no limit) is a ValueError
        cgroup = Path("/sys/fs/cgroup")
        limit, used = ((cgroup / n).read_text() for n in ("memory.max", "memory.current"))
        free.append(int(limit) - int(used))
    return min(free) if free else None


def _check_output(path: str, flag: str) -> Path:
    """Refuse an output path that cannot be a new or replaced regular file; probe its folder."""
    if not path:
        raise ConfigError(f"{flag} needs a file name")
    if path.endswith(("/", os.sep, os.altsep or os.sep)):  # Path() would drop the slash
        raise ConfigError(f"{flag} {path}: that names a folder; give a file name in it")
    target = Path(path).expanduser()
    try:
        real = real_path(target)  # a symlink is written through: check where it leads
    except OSError as exc:
        hint = " (a symlink loop?)" * (exc.errno == errno.ELOOP)
        raise ConfigError(f"{flag} {target}: {exc.strerror or exc}{hint}") from exc
    if target.exists() and not target.is_file():
        raise ConfigError(f"{flag} {target}: it exists and is not a regular file")
    # the mode bits, not os.access: root may write anything, and a file made read-only is
    # still a wish not to have it replaced
    if target.exists() and not target.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{flag} {target}: the file is read-only; make it writable, or write elsewhere "
            f"({'--save' if flag == '--resume' else flag} PATH)"
        )
    try:  # a file named as atomic_write's will be: a long name must fit it, not only itself
        with tempfile.NamedTemporaryFile(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} {target}: cannot write in {real.parent} "
            f"({exc.strerror or exc}); choose an existing, writable folder"
        ) from exc
    return target


def _holds_something_else(path: Path) -> bool:
    """Whether ``path`` is a non-empty file without a checkpoint's entries (a zip is not enough:
    a .docx is one too)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return not {META + ".npy", DIGEST + ".npy"} <= set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return True


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def _check_plot_path(plot: Path, **inputs: Any) -> None:
    """Refuse a --plot path that would overwrite the run's own files or a checkpoint."""
    for flag, path in inputs.items():
        if path and _same_file(plot, Path(path).expanduser()):
            raise ConfigError(f"--plot {plot} is also the --{flag} file: name the plot otherwise")
    if plot.exists() and plot.stat().st_size > 0 and not _holds_something_else(plot):
        raise ConfigError(f"--plot {plot} holds an npgru checkpoint: name the plot otherwise")


def _pyplot(path: Path) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'npgru[plot]', or leave out --plot"
        ) from None
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if path.suffix[1:].lower() not in formats:
        raise ConfigError(
            f"--plot {path}: name an image file, ending in one of .{', .'.join(sorted(formats))}"
        )
    return plt


# --------------------------------------------------------------------------- the run


class Run:
    """One run of the program: its settings, checkpoints, Ctrl-C and exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ckpt: RunState | None = None  # the RunState to resume
        self.good: RunState | None = None  # the state after the last completed epoch
        self.saved_epoch: int | None = None
        self.start: int | None = None  # the epoch the run started from (0, or the resumed one)
        self.done: int | None = None  # the last completed epoch
        self.interrupted = self.deferring = False
        self.stopped_by: int = signal.SIGINT  # the signal that stopped the run, if one did
        self.bar: Any = None
        # what a signal or an error may meet before prepare() has set them
        self.settings: Any = None
        self.save_path: Path | None = None  # as given (for messages)
        self.save_file: Path | None = None  # where it is written: its symlinks resolved
        self.plot_path: Path | None = None
        self.claim: Any = None  # npgru.files.Claim on save_file while the run holds it
        self.seen: tuple[int, ...] | None = None  # save_file's identity when last looked at
        self.stdout: _Output | None = None  # the guarded streams, while main() runs
        self.stderr: _Output | None = None

    # ---- before the program
    def prepare(self) -> SimpleNamespace:
        """Check everything that can be checked before any data is read or memory taken."""
        a = self.args
        s = self._settings()
        if self.ckpt is not None and s["epochs"] < self.ckpt.epoch:
            raise ConfigError(
                f"checkpoint {a.resume} already has {self.ckpt.epoch} epochs, more than "
                f"--epochs {s['epochs']} (the total)"
            )
        zero = vanishing_epoch(s["lr"], s["lr_decay"], s["epochs"])
        if zero is not None:  # known now: refused now, not in epoch `zero`
            raise ConfigError(
                f"--lr-decay {s['lr_decay']:g} takes the learning rate {s['lr']:g} down to 0 "
                f"(below the smallest float) in epoch {zero} of --epochs {s['epochs']}: use a "
                f"--lr-decay closer to 1, or at most --epochs {zero - 1}"
            )
        if a.save is not None or a.resume is not None:
            flag = "--save" if a.save is not None else "--resume"  # where the path came from
            self.save_path = _check_output(a.resume if a.save is None else a.save, flag)
            if a.save is not None and _holds_something_else(self.save_path):
                raise ConfigError(
                    f"--save {self.save_path}: refusing to overwrite a file that is not an "
                    "npgru checkpoint; delete it or choose another path"
                )
            self._claim(self.save_path, flag)
        if s["patience"] is not None and not s["val_fraction"]:
            if self.ckpt is not None:  # --val-fraction is one of the settings a resume keeps
                raise ConfigError(
                    f"--patience needs a validation set, and {a.resume} was trained without "
                    "one: start a new run with --val-fraction F --patience N"
                )
            raise ConfigError("--patience needs a validation set: add --val-fraction F")
        if a.save_every is not None and self.save_path is None:
            raise ConfigError("--save-every needs --save PATH (or --resume PATH)")
        self.plot_path = _check_output(a.plot, "--plot") if a.plot is not None else None
        if self.plot_path is not None:
            _check_plot_path(self.plot_path, data=a.data, resume=a.resume, save=self.save_path)
        self.plt = _pyplot(self.plot_path) if self.plot_path else None
        self.settings = SimpleNamespace(
            **{**vars(a), **s}
        )  # every flag; a new one needs no code here
        backend = get_backend(a.backend)
        need, free = estimate_bytes(self.settings), available_bytes(backend)
        if free is not None and need > free:
            raise ConfigError(
                f"this model needs about {need / 2**30:,.1f} GiB of memory, more than the "
                f"{free / 2**30:,.1f} GiB free on {backend}: use a smaller --num-hiddens, "
                "--num-layers, --batch-size or --num-steps"
            )
        return self.settings

    def _settings(self) -> dict[str, Any]:
        """Each setting from its flag, else the resumed checkpoint, else :data:`DEFAULTS`."""
        a = self.args
        if a.resume is not None:
            if not a.resume:
                raise ConfigError("--resume needs a file name")
            self.ckpt = read_run(a.resume)
            best = best_epoch(self.ckpt.history)
            if best is not None and best != self.ckpt.epoch:
                # npgru train saves only its best epoch: a better one before it was edited in
                # (or saved by other code), and no later epoch would ever be saved
                raise CheckpointError(
                    f"checkpoint {a.resume} holds epoch {self.ckpt.epoch}, but its history "
                    f"has a better validation perplexity at epoch {best}: it was not saved by "
                    "npgru train, or was edited; start a new run"
                )
        saved: dict[str, Any] = self.ckpt.config if self.ckpt else {}
        s: dict[str, Any] = {}
        differ: list[str] = []
        for key, default in DEFAULTS.items():
            flag = getattr(a, key)
            if self.ckpt is not None:  # what is read is checked like a flag
                if key in LATER:
                    saved.setdefault(key, LATER[key])  # a checkpoint from before the setting
                try:
                    check_setting(key, saved[key])
                except (KeyError, ConfigError) as exc:
                    raise CheckpointError(
                        f"checkpoint {a.resume} holds no valid {key} ({exc}): it cannot be resumed"
                    ) from exc
                differ += [key] if key in FIXED and flag not in (None, saved[key]) else []
            s[key] = flag if flag is not None else saved.get(key, default)
        if s["lr"] is None:  # neither a flag nor a checkpoint: the optimiser's default
            s["lr"] = LR[s["optimizer"]]
        if differ:
            was = ", ".join(f"{k}={saved[k]}" for k in differ)
            now = ", ".join(f"{k}={s[k]}" for k in differ)
            raise ConfigError(
                f"checkpoint {a.resume} was trained with {was}, not {now}: a resumed run keeps "
                "its settings; leave those flags out, or start a new run without --resume"
            )
        if a.data is not None:  # an absolute path, so that a resume works from anywhere
            if not a.data:
                raise ConfigError("--data needs a file name")
            s["data"] = str(Path(a.data).expanduser().resolve())
        elif self.ckpt is not None and s["data"] and not Path(s["data"]).exists():
            raise ConfigError(
                f"checkpoint {a.resume} was trained on {s['data']}, which is not there any "
                "more: pass --data PATH with the same text"
            )
        return s

    # ---- called by the program
    def resume(
        self, model: Any, loader: Any, vocab: Any, opt_state: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, list]]:
        """Continue the checkpoint of ``--resume`` in ``model``, ``loader`` and the
        optimiser's ``opt_state`` (if any; :func:`npgru.optim.new_state`).

        Returns ``(start_epoch, history)``: ``(0, empty history)`` for a new run.
        """
        from tqdm import tqdm

        s = self.settings
        corpus = digest({"corpus": loader.corpus})
        self.config = {
            **model.config,
            **{k: getattr(s, k) for k in DEFAULTS},
            "corpus_sha256": corpus,
        }
        history: dict[str, list] = {"perplexity": [], "tokens_per_sec": []}
        if s.val_fraction:
            history["val_perplexity"] = []
        start = 0
        if self.ckpt is not None:
            if self.ckpt.config.get("corpus_sha256") != corpus:
                raise CheckpointError(
                    f"checkpoint {self.args.resume} was trained on another "
                    "text: pass the same --data file as before"
                )
            restore_run(self.ckpt, model, loader, vocab, opt_state)
            start, history = self.ckpt.epoch, self.ckpt.history
            print(f"resumed {self.args.resume} after epoch {start}", file=sys.stderr)
        self.model, self.loader, self.vocab, self.opt_state = model, loader, vocab, opt_state
        self.start = start
        self._capture(start, history)
        self.bar = tqdm(total=s.epochs, initial=start, desc="training", unit="epoch")
        return start, history

    def epoch_end(self, epoch: int, history: dict[str, list]) -> None:
        """After each epoch: the last good state, the progress bar, ``--save-every``; a closed
        output stops the run here (:class:`OutputClosed`), with this epoch kept."""
        self._capture(epoch, history)  # first: whatever happens next, this epoch is kept
        self.bar.update(1)
        shown = {"perplexity": f"{history['perplexity'][-1]:.2f}"}
        if history.get("val_perplexity"):
            shown["validation"] = f"{history['val_perplexity'][-1]:.2f}"
        self.bar.set_postfix(shown)
        if self.output_closed:
            raise OutputClosed
        every = self.args.save_every
        if every and epoch % every == 0:
            self._save()

    def log(self, text: str) -> None:
        """Print a line above the progress bar, and flush it: a reader sees it now (and a
        closed pipe is noticed now, not when a buffer fills)."""
        from tqdm import tqdm

        tqdm.write(text)
        sys.stdout.flush()

    @property
    def output_closed(self) -> bool:
        """Whether stdout or stderr turned out to be a closed pipe."""
        return any(out is not None and out.closed_pipe for out in (self.stdout, self.stderr))

    @property
    def progressed(self) -> bool:
        """Whether an epoch was completed since the start (there is something new to save)."""
        return self.done is not None and self.start is not None and self.done > self.start

    def release(self) -> None:
        """Give up the claim on the --save path (the lock file goes too)."""
        if self.claim is not None:
            self.claim.release()

    def finish(self, history: dict[str, list]) -> None:
        """After the last epoch: close the bar, save (``--save``), plot (``--plot``)."""
        self.bar.close()
        if self.save_path is not None:
            self._save()
            e = self.saved_epoch
            if "val_perplexity" in history and e is not None:
                best = f"{history['val_perplexity'][e - 1]:.4f}"
                if e == self.start and len(history["val_perplexity"]) > e:
                    # a resumed run whose later epochs never beat the best it had recorded
                    self._say(
                        f"no epoch after {e} beat the best validation perplexity recorded in "
                        f"{self.args.resume} ({best}, epoch {e}): {self.save_path} still holds "
                        f"epoch {e}"
                    )
                else:
                    self._say(
                        f"saved epoch {e}, the best by validation perplexity ({best}), in "
                        f"{self.save_path}"
                    )
        if self.plt is not None and self.plot_path is not None:
            fig, ax = self.plt.subplots(figsize=(6, 4))
            epochs = range(1, len(history["perplexity"]) + 1)
            ax.plot(epochs, history["perplexity"], label="training")
            top = best_epoch(history)
            if history.get("val_perplexity") and top is not None:
                ax.plot(epochs, history["val_perplexity"], label="validation")
                low = history["val_perplexity"][top - 1]
                ax.plot(top, low, "o", color="C1", label=f"best: {low:.2f}, epoch {top}")
                ax.legend()
            name = Path(self.settings.data).name if self.settings.data else "The Time Machine"
            title = f"{name}: GRU, {self.settings.num_hiddens} hidden units, {self.model.backend}"
            ax.set(xlabel="epoch", ylabel="perplexity", title=title)
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            kind = self.plot_path.suffix[1:].lower()
            try:
                atomic_write(self.plot_path, lambda fh: fig.savefig(fh, format=kind, dpi=100))
            except OSError as exc:
                raise ConfigError(f"cannot write the plot {self.plot_path}: {exc}") from exc
            finally:
                self.plt.close(fig)

    # ---- internals
    def _capture(self, epoch: int, history: dict[str, list]) -> None:
        """Keep the state after ``epoch`` for saving; with a validation set, only if
        ``epoch`` is the best so far (the checkpoint is the best epoch's whole run state)."""
        self.done = epoch
        best = best_epoch(history)
        if self.good is not None and best is not None and best != epoch:
            return
        if self.save_path is not None:
            self.good = capture(
                self.model,
                self.loader,
                self.vocab,
                config=self.config,
                epoch=epoch,
                history=history,
                opt_state=self.opt_state,
            )

    def _claim(self, path: Path, flag: str) -> None:
        """Claim the save path for this run, sweep up what a killed save left there, and
        note the file's identity (to see whether someone else writes it meanwhile)."""
        self.save_file = file = real_path(path)
        try:
            self.claim = claim(file)
        except PathBusy as exc:
            who = f" (pid {exc.pid})" if exc.pid else ""
            raise ConfigError(
                f"{flag} {self.save_path}: another run{who} is saving there; wait until it "
                "has finished, or save elsewhere (--save PATH)"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"{flag} {self.save_path}: cannot create its lock file beside it "
                f"({exc.strerror or exc}); choose a writable folder"
            ) from exc
        remove_temporaries(file)
        self.seen = identity(file)

    def _write(self, state: Any) -> None:
        """Save ``state`` in the save file, unless someone else changed that file since this
        run last looked: then it is kept, and the run saves beside it from now on. A file
        that was deleted meanwhile keeps nothing of anyone's: the run writes it again."""
        assert self.save_path is not None and self.save_file is not None  # (a save path given)
        now = identity(self.save_file)
        if now is not None and now != self.seen:
            self._divert(self.save_path)
        save_run(self.save_file, state)
        self.seen = identity(self.save_file)

    def _divert(self, old: Path) -> None:
        """Move the run's saving to ``NAME.1.npz`` (or .2, ...): the first free, claimable
        name beside the save path ``old``."""
        for n in range(1, 10_000):
            path = old.with_name(f"{old.stem}.{n}{old.suffix}")
            real = real_path(path)
            if os.path.lexists(path) or os.path.lexists(real):
                continue
            try:
                new = claim(real)
            except OSError:  # PathBusy, or no lock there: try the next name
                continue
            break
        else:
            raise CheckpointError(f"{old} was changed by another program, and no free name "
                                  "was found beside it")  # fmt: skip
        self.release()
        self.claim, self.save_path, self.save_file, self.seen = new, path, real, None
        self._say(
            f"warning: {old} was changed by another program after this run started; it is "
            f"left as it is, and this run saves in {path} instead"
        )

    def _say(self, text: str) -> None:
        """A line on stderr, on a line of its own even while the progress bar is drawn."""
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def _save(self) -> None:
        """Save the last good state; a Ctrl-C meanwhile waits until the file is written."""
        deferring, self.deferring = self.deferring, True
        try:
            assert self.good is not None  # an epoch was captured before any save is asked for
            self._write(self.good)
            self.saved_epoch = self.good.epoch
        finally:
            self.deferring = deferring
        if self.interrupted and not deferring:
            raise KeyboardInterrupt

    def on_signal(self, signum: int, frame: Any) -> None:
        """The first Ctrl-C (or SIGTERM, SIGHUP) stops training; later ones are only noted
        (the save goes on)."""
        if not self.interrupted:
            self.stopped_by = signum
        self.interrupted = True
        if not self.deferring:
            self.deferring = True
            raise KeyboardInterrupt

    def close_bar(self) -> None:
        """End the progress bar's line, so that what is printed next starts a line."""
        if self.bar is not None:
            self.bar.close()

    def when(self) -> str:
        """Where the run is: ``" in epoch 3"`` (none completed since the start), ``" after
        epoch 2"``, or ``""`` before training."""
        if self.done is not None and self.done == self.start:
            return f" in epoch {self.done + 1}"
        if self.done is not None:
            return f" after epoch {self.done}"
        return ""

    def stop(self, message: str, status: int) -> int:
        """Save the last good state (unless saved already, or no epoch was completed since the
        start), print one line, return ``status``."""
        self.deferring = True
        self.close_bar()
        good, keep = self.good, None  # keep: the checkpoint to continue from, if any
        if good is not None and good.epoch == self.start:  # nothing new: keep what is there
            if self.start:
                message += f"; nothing new to save since epoch {self.start} of {self.args.resume}"
            else:
                message += "; nothing saved, no epoch had finished"
                was = self.save_path is not None and self.save_path.exists()
                message += f" ({self.save_path} is as it was)" * was
            good, keep = None, self.args.resume
        try:
            if good is not None and self.saved_epoch != good.epoch:
                self._write(good)
                self.saved_epoch = good.epoch
        except (NpgruError, OSError) as exc:
            return fail(f"{message}; saving failed: {exc}", status)
        if good is not None:
            keep = self.save_path  # (known only now: a save may have moved it, see _divert)
            message += f"; epoch {good.epoch} is saved in {self.save_path}"
            message += " (the best by validation perplexity)" * ("val_perplexity" in good.history)
        elif self.save_path is None and status != EXIT_DIVERGED and self.bar is not None:
            message += "; nothing saved (pass --save PATH to keep the progress)"
        if status != EXIT_DIVERGED and keep is not None:
            message += f"; continue with --resume {keep}"
        return fail(message, status)


def warn(line: str) -> None:
    """Write ``line`` on stderr, best-effort: a closed or full stderr loses the line, never
    raises (inside a run, stderr is already guarded; a command's own lines go through here)."""
    err = sys.stderr if isinstance(sys.stderr, _Output) else _Output(sys.stderr)
    err.write(line + "\n")
    err.flush()
    if err is not sys.stderr and err.error is not None:
        err.give_up()  # no second failure when Python flushes stderr at exit


def fail(message: Any, status: int = EXIT_USAGE) -> int:
    """Print ``message`` as one ``error:`` line on stderr; return ``status``."""
    warn(f"error: {one_line(message)}")
    return status


def main(
    argv: list[str] | None,
    program: Callable[[SimpleNamespace, Run], Any],
    prog: str | None = None,
) -> int:
    """Run ``program(settings, run)`` as a command-line program named ``prog`` (default: the
    name of ``program``'s file); return the exit status."""
    prog = prog or Path(inspect.getfile(program)).name
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, one line printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = Run(args)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}  # a signal ignored where the run starts (nohup: SIGHUP) stays ignored
    for sig in STOP_SIGNALS if in_main else ():
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, run.on_signal)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = run.stdout, run.stderr = _Output(sys.stdout), _Output(sys.stderr)
    status = EXIT_OS  # (if a bug escapes)
    try:
        status = _run(run, program)
    finally:
        run.deferring = True  # a signal from here on is only noted: the run is over
        run.release()
        status = _end_output(run, status)
        sys.stdout, sys.stderr = streams
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if in_main:
            _quiet_exit()
    return status


def print_result(text: str) -> int:
    """Print ``text``, a command's whole output, on stdout; return the exit status: 0, or
    :data:`EXIT_PIPE` quietly when stdout is a closed pipe (``| head``), or :data:`EXIT_OS`
    with one line when it cannot be written (a full disk). Characters the terminal's
    encoding lacks are written as escapes, never a traceback."""
    out = _Output(sys.stdout)
    out.write(text + "\n")
    out.flush()
    if out.error is None:
        return 0
    out.give_up()
    if out.closed_pipe:
        return EXIT_PIPE
    return fail(f"could not write the output ({getattr(out.error, 'strerror', None) or out.error})",
                EXIT_OS)  # fmt: skip


class OutputClosed(Exception):
    """stdout or stderr is a closed pipe: the run stops as a Unix tool does (see main)."""


def _run(run: Run, program: Callable[[SimpleNamespace, Run], Any]) -> int:
    """``program(run.prepare(), run)``; every way it can end becomes an exit status, the
    last good epoch saved first where there is one (a bug is re-raised after that)."""
    try:
        program(run.prepare(), run)
        return 0
    except KeyboardInterrupt:
        how = "interrupted"
        if run.stopped_by != signal.SIGINT:
            how = f"stopped by {signal.Signals(run.stopped_by).name}"
        return run.stop(how + run.when(), 128 + run.stopped_by)
    except DivergenceError as exc:
        # a resumed run keeps its learning rate, so the advice is for a new run
        lr = run.settings.lr
        return run.stop(f"{exc}, e.g. --lr {lr / 10:g} in a new run", EXIT_DIVERGED)
    except (OutputClosed, BrokenPipeError):
        return run.stop(f"the output was closed{run.when()}", EXIT_PIPE)
    except (NpgruError, MemoryError, OSError) as exc:
        status = EXIT_OS if isinstance(exc, OSError) else EXIT_USAGE
        if isinstance(exc, MemoryError):  # more than estimate_bytes foresaw (a tighter limit)
            exc = ConfigError(f"out of memory ({exc}): use smaller sizes")
        if run.progressed:  # an epoch to keep: saved like Ctrl-C saves it
            return run.stop(one_line(exc), status)
        run.close_bar()
        return fail(exc, status)
    except Exception as exc:  # a bug: keep the work, then show the traceback
        if run.progressed:
            run.stop(f"{type(exc).__name__}: {exc} (a bug: please report it with the "
                     "traceback below)", EXIT_OS)  # fmt: skip
        run.close_bar()
        raise


def _end_output(run: Run, status: int) -> int:
    """Flush the guarded output and turn what happened to it into the exit status: a closed
    pipe ends quietly with :data:`EXIT_PIPE`; output that could not be written (a full disk)
    makes a finished run's status :data:`EXIT_OS`, with one line on stderr if it can."""
    for out in (run.stdout, run.stderr):
        if out is None:
            continue
        try:
            out.flush()
        except KeyboardInterrupt:  # Ctrl-C on a write that blocks (a reader that stopped)
            out.give_up()
            status = status or 128 + run.stopped_by
        if out.error is not None:
            out.give_up()
    if status == 0 and run.output_closed:
        return EXIT_PIPE
    failed = [out.error for out in (run.stdout, run.stderr) if out and out.error is not None]
    if status == 0 and failed:
        error = failed[0]
        why = getattr(error, "strerror", None) or error
        print(f"error: could not write the output ({why}); the run itself went on",
              file=run.stderr)  # fmt: skip
        return EXIT_OS
    return status


def _quiet_exit() -> None:
    """Once: at the interpreter's exit, ignore the stop signals that would still raise a
    KeyboardInterrupt (a traceback) or kill the process: the run is over, nothing to save."""
    global _QUIET_EXIT
    if _QUIET_EXIT:
        return
    _QUIET_EXIT = True

    def ignore() -> None:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(OSError, ValueError):
                if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL):
                    signal.signal(sig, signal.SIG_IGN)

    atexit.register(ignore)


_QUIET_EXIT = False


class _Output:
    """A standard stream that cannot stop the run: the first write or flush that fails
    (a closed pipe, a full disk) is kept in :attr:`error`, and from then on the stream
    drops what it is given. Everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: BaseException | None = None

    @property
    def closed_pipe(self) -> bool:
        return isinstance(self.error, BrokenPipeError)

    def write(self, text: str) -> int:
        if self.error is None and self.stream is not None:
            try:
                try:
                    self.stream.write(text)
                except UnicodeEncodeError:  # a character the terminal cannot show
                    encoding = getattr(self.stream, "encoding", None) or "ascii"
                    self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except (OSError, ValueError) as exc:  # ValueError: a stream someone closed
                self.error = exc
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.error is None and self.stream is not None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self.error = exc

    def give_up(self) -> None:
        """Point the stream's file descriptor at /dev/null: the text still in its buffer
        then goes there when Python flushes it at exit, instead of failing again (which
        prints "Exception ignored ..." and makes the exit status 120)."""
        with contextlib.suppress(Exception):  # no descriptor (a test's capture): nothing to do
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


if __name__ == "__main__":  # a module of the library, not a program: name the program
    print("npgru.cli is a module, not a program: run npgru --help (or python -m npgru --help)",
          file=sys.stderr)  # fmt: skip
    sys.exit(EXIT_USAGE)

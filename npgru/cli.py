"""The command line of ``examples/timemachine.py``: flags, checkpoints, Ctrl-C, exit status.

The example is d2l's ``train_ch8`` on npgru: it builds the data and the model and calls
:func:`npgru.train.train`. What makes it a program lives here, so that the example reads top
to bottom::

    def train_ch8(s, run): ...                      # s: the settings, run: a Run
    sys.exit(npgru.cli.main(sys.argv[1:], train_ch8))

:func:`main` parses the flags, reads ``--resume``, checks every output path and the memory the
model will need, then calls the program. Its :class:`Run` continues a checkpoint
(:meth:`Run.resume`), saves after epochs (:meth:`Run.epoch_end`) and at the end
(:meth:`Run.finish`), and on Ctrl-C, SIGTERM, SIGHUP or divergence saves the last completed
epoch, if one was completed since the start (a file is never replaced by the state the run
started from).

Exit status: 0 done; 2 bad input (one ``error:`` line on stderr, no traceback); 3 training
diverged (the last good epoch is saved); 130 interrupted by Ctrl-C, 143 stopped by SIGTERM,
129 by SIGHUP (likewise).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
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
    capture,
    digest,
    read_run,
    restore_run,
    save_run,
)
from npgru.checks import VARIANTS, factor, float_dtype, fraction, gru_variant, integer
from npgru.errors import CheckpointError, ConfigError, DivergenceError, NpgruError
from npgru.files import atomic_write
from npgru.model import IMPLS
from npgru.optim import OPTIMIZERS, positive_float
from npgru.train import best_epoch

__all__ = ["DEFAULTS", "FIXED", "Run", "build_parser", "estimate_bytes", "main"]

EXIT_USAGE, EXIT_DIVERGED = 2, 3  # a signal's run exits 128 + its number (Ctrl-C: 130)
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


class _Parser(argparse.ArgumentParser):
    """argparse, but every error is exactly one line (``timemachine.py: error: ...``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


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


def _temperature(text: str) -> float:
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
    p = _Parser(
        prog=prog,
        description="Train d2l's character-level GRU language model on The Time Machine "
        "(or any UTF-8 text) with npgru. Defaults are d2l's. With --resume, every setting "
        "you leave out is taken from the checkpoint.",
        epilog="Exit status: 0 done, 2 bad input, 3 training diverged, 130 interrupted "
        "(143 by SIGTERM, 129 by SIGHUP).",
    )
    add = p.add_argument_group("model and training").add_argument
    add("--backend", choices=BACKEND_NAMES, default="numpy", help="numpy (CPU, the default), "
        "cupy (NVIDIA GPU) or auto")  # fmt: skip
    add("--impl", choices=IMPLS, default="auto", help="how the GRU runs: reference (the "
        "readable array code), cuda (npgru's CUDA kernels, --backend cupy only) or auto: cuda "
        "on cupy, else reference (default: auto)")  # fmt: skip
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
    add("--temperature", type=_temperature, default=0.0,
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
    target = Path(path).expanduser()
    if target.exists() and not target.is_file():
        raise ConfigError(f"{flag} {target}: it exists and is not a regular file")
    # the mode bits, not os.access: root may write anything, and a file made read-only is
    # still a wish not to have it replaced
    if target.exists() and not target.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{flag} {target}: the file is read-only; make it writable, or write elsewhere "
            f"({'--save' if flag == '--resume' else flag} PATH)"
        )
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} {target}: cannot write in {target.parent} "
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
        self.ckpt = None  # the RunState to resume
        self.good = None  # the RunState after the last completed epoch (when saving)
        self.saved_epoch: int | None = None
        self.start: int | None = None  # the epoch the run started from (0, or the resumed one)
        self.done: int | None = None  # the last completed epoch
        self.interrupted = self.deferring = False
        self.stopped_by = signal.SIGINT  # the signal that stopped the run, if one did
        self.bar: Any = None

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
        self.save_path = None
        if a.save is not None or a.resume is not None:
            flag = "--save" if a.save is not None else "--resume"  # where the path came from
            self.save_path = _check_output(a.resume if a.save is None else a.save, flag)
            if a.save is not None and _holds_something_else(self.save_path):
                raise ConfigError(
                    f"--save {self.save_path}: refusing to overwrite a file that is not an "
                    "npgru checkpoint; delete it or choose another path"
                )
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
        saved = self.ckpt.config if self.ckpt else {}
        s, differ = {}, []
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
        """After each epoch: the progress bar, the last good state, ``--save-every``."""
        self.bar.update(1)
        shown = {"perplexity": f"{history['perplexity'][-1]:.2f}"}
        if history.get("val_perplexity"):
            shown["validation"] = f"{history['val_perplexity'][-1]:.2f}"
        self.bar.set_postfix(shown)
        self._capture(epoch, history)
        every = self.args.save_every
        if every and epoch % every == 0:
            self._save()

    def log(self, text: str) -> None:
        """Print a line above the progress bar."""
        from tqdm import tqdm

        tqdm.write(text)

    def finish(self, history: dict[str, list]) -> None:
        """After the last epoch: close the bar, save (``--save``), plot (``--plot``)."""
        self.bar.close()
        if self.save_path is not None:
            self._save()
            if "val_perplexity" in history:
                e = self.saved_epoch
                print(
                    f"saved epoch {e}, the best by validation perplexity "
                    f"({history['val_perplexity'][e - 1]:.4f}), in {self.save_path}",
                    file=sys.stderr,
                )
        if self.plt is not None:
            fig, ax = self.plt.subplots(figsize=(6, 4))
            epochs = range(1, len(history["perplexity"]) + 1)
            ax.plot(epochs, history["perplexity"], label="training")
            if history.get("val_perplexity"):
                best = best_epoch(history)
                ax.plot(epochs, history["val_perplexity"], label="validation")
                low = history["val_perplexity"][best - 1]
                ax.plot(best, low, "o", color="C1", label=f"best: {low:.2f}, epoch {best}")
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

    def _save(self) -> None:
        """Save the last good state; a Ctrl-C meanwhile waits until the file is written."""
        deferring, self.deferring = self.deferring, True
        try:
            save_run(self.save_path, self.good)
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

    def stop(self, message: str, status: int) -> int:
        """Save the last good state (unless saved already, or no epoch was completed since the
        start), print one line, return ``status``."""
        self.deferring = True
        if self.bar is not None:
            self.bar.close()
        good, keep = self.good, None  # keep: the checkpoint to continue from, if any
        if good is not None and good.epoch == self.start:  # nothing new: keep what is there
            if self.start:
                message += f"; nothing new to save since epoch {self.start} of {self.args.resume}"
            else:
                message += "; nothing saved, no epoch had finished"
                message += f" ({self.save_path} is as it was)" * self.save_path.exists()
            good, keep = None, self.args.resume
        elif good is not None:
            keep = self.save_path
        try:
            if good is not None and self.saved_epoch != good.epoch:
                save_run(self.save_path, good)
        except NpgruError as exc:
            return _fail(f"{message}; saving failed: {exc}", status)
        if good is not None:
            message += f"; epoch {good.epoch} is saved in {self.save_path}"
            message += " (the best by validation perplexity)" * ("val_perplexity" in good.history)
        elif self.save_path is None and status != EXIT_DIVERGED and self.bar is not None:
            message += "; nothing saved (pass --save PATH to keep the progress)"
        if status != EXIT_DIVERGED and keep is not None:
            message += f"; continue with --resume {keep}"
        return _fail(message, status)


def _fail(message: Any, status: int = EXIT_USAGE) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
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
    try:
        program(run.prepare(), run)
        return 0
    except KeyboardInterrupt:
        how = "interrupted"
        if run.stopped_by != signal.SIGINT:
            how = f"stopped by {signal.Signals(run.stopped_by).name}"
        if run.done is not None and run.done == run.start:
            how += f" in epoch {run.done + 1}"
        elif run.done is not None:
            how += f" after epoch {run.done}"
        return run.stop(how, 128 + run.stopped_by)
    except DivergenceError as exc:
        # a resumed run keeps its learning rate, so the advice is for a new run
        lr = run.settings.lr
        return run.stop(f"{exc}, e.g. --lr {lr / 10:g} in a new run", EXIT_DIVERGED)
    except NpgruError as exc:
        return _fail(exc)
    except MemoryError as exc:  # more than estimate_bytes foresaw (a tighter limit, say)
        return _fail(f"out of memory ({exc}): use smaller sizes")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

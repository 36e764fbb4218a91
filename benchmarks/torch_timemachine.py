#!/usr/bin/env python
"""d2l's GRU chapter trained in PyTorch: the baseline for examples/timemachine.py.

The model is the seed notebook's concise one, ``nn.GRU`` + ``nn.Linear`` on one-hot inputs
(d2l's ``RNNModel``), or with ``--scratch`` its from-scratch ``gru`` function with autograd.
The loop has d2l's ``train_ch8`` semantics: sequential partitioning (``--random-iter`` for
random sampling); the state starts at zeros at the first minibatch of every epoch (every
minibatch with random sampling) and is otherwise carried over, detached; labels are
``Y.T.reshape(-1)``; the loss is the mean cross-entropy; gradients are clipped to global
norm 1; plain SGD with lr 1. Per epoch: perplexity = exp(total loss / tokens) and
tokens/second of that epoch's training loop.

The minibatches come from ``npgru.data`` (the same text, vocabulary and partitioning as the
npgru example), so both see identical data for the same ``--seed``.

With ``--val-fraction F`` the end of the text is held out exactly as the example's
``--val-fraction`` does (``npgru.data.split_corpus``) and its perplexity is measured after
every epoch the way ``npgru.train.evaluate`` measures it (rows of consecutive text, read
``num_steps`` at a time, the state carried); the best epoch is printed at the end.

The example's recipe beyond d2l has the same flags here, with PyTorch's own tools:
``--num-layers``, ``--dropout P`` (``nn.GRU``'s dropout between layers and ``nn.Dropout``
before the output layer, as npgru drops), ``--optimizer adam`` (``torch.optim.Adam``, lr
0.001 unless ``--lr``) and ``--average D`` (``torch.optim.swa_utils.AveragedModel`` with an
exponential average of decay D; validation and the continuations use it).

The last lines are d2l's summary (the last epoch's speed, as d2l prints it) and two
continuations::

    perplexity 1.0, 52000.0 tokens/sec on cpu
    time traveller ...
    traveller ...

Run ``python benchmarks/torch_timemachine.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from npgru.data import load_data_time_machine  # noqa: E402


class ScratchGRU:
    """The seed notebook's GRU written out with tensors; autograd gives the gradients."""

    def __init__(self, vocab_size: int, num_hiddens: int, device: torch.device):
        V, H = vocab_size, num_hiddens
        self.vocab_size, self.num_hiddens, self.device = V, H, device

        def normal(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(size=shape, device=device) * 0.01

        params = []
        for _gate in "zrh":  # update gate, reset gate, candidate: W_x*, W_h*, b_*
            params += [normal((V, H)), normal((H, H)), torch.zeros(H, device=device)]
        params += [normal((H, V)), torch.zeros(V, device=device)]  # W_hq, b_q
        for p in params:
            p.requires_grad_(True)
        self.params = params

    def parameters(self) -> list[torch.Tensor]:
        return self.params

    def begin_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros((batch_size, self.num_hiddens), device=self.device)

    def __call__(self, X: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = self.params
        H = state
        outputs = []
        for X_t in F.one_hot(X.T, self.vocab_size).type(torch.float32):  # time-major
            Z = torch.sigmoid(X_t @ W_xz + H @ W_hz + b_z)
            R = torch.sigmoid(X_t @ W_xr + H @ W_hr + b_r)
            H_tilde = torch.tanh(X_t @ W_xh + (R * H) @ W_hh + b_h)
            H = Z * H + (1 - Z) * H_tilde
            outputs.append(H @ W_hq + b_q)
        return torch.cat(outputs, dim=0), H


class ConciseGRU(nn.Module):
    """``nn.GRU`` + ``nn.Linear`` on one-hot inputs (the shape of d2l's ``RNNModel``)."""

    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        device: torch.device,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.device = vocab_size, num_hiddens, device
        self.num_layers = num_layers
        self.rnn = nn.GRU(vocab_size, num_hiddens, num_layers, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(num_hiddens, vocab_size)
        self.to(device)

    def begin_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros((self.num_layers, batch_size, self.num_hiddens), device=self.device)

    def forward(self, X: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        Y, state = self.rnn(inputs, state)
        return self.linear(self.drop(Y.reshape(-1, Y.shape[-1]))), state


def sgd_step(params: list[torch.Tensor], lr: float) -> None:
    """p ← p − lr·g, then zero the gradient (d2l's ``sgd`` with batch_size 1)."""
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad.zero_()


def predict(prefix: str, num_preds: int, net: Any, vocab: Any, device: torch.device) -> str:
    """Greedy continuation of ``prefix`` by ``num_preds`` characters."""
    state = net.begin_state(1)
    outputs = [vocab[prefix[0]]]
    with torch.no_grad(), evaluating(net):
        for ch in prefix[1:]:  # warm the state up on the prefix
            X = torch.tensor([[outputs[-1]]], device=device)
            _, state = net(X, state)
            outputs.append(vocab[ch])
        for _ in range(num_preds):
            X = torch.tensor([[outputs[-1]]], device=device)
            y, state = net(X, state)
            outputs.append(int(y.argmax(dim=1).reshape(1)))
    return "".join(vocab.to_tokens(outputs))


def train_epoch(
    net: Any,
    loader: Any,
    lr: float,
    theta: float,
    random_iter: bool,
    device: torch.device,
    optimizer: Any,
    averaged: Any = None,
) -> tuple[float, float]:
    """One epoch of d2l's train_epoch_ch8; returns (perplexity, tokens/s)."""
    state = None
    total_loss, tokens = 0.0, 0
    params = list(net.parameters())
    t0 = time.perf_counter()
    for X_np, Y_np in loader:
        X = torch.from_numpy(X_np).to(device)
        Y = torch.from_numpy(Y_np).to(device)
        if state is None or random_iter:
            state = net.begin_state(X.shape[0])
        else:
            state = state.detach()
        y = Y.T.reshape(-1)
        y_hat, state = net(X, state)
        loss = F.cross_entropy(y_hat, y)  # the mean over all T·B predictions
        if optimizer is not None:
            optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, theta)
        if optimizer is not None:
            optimizer.step()
        else:
            sgd_step(params, lr)
        if averaged is not None:
            averaged.update_parameters(net)
        total_loss += float(loss.detach()) * y.numel()
        tokens += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return math.exp(total_loss / tokens), tokens / (time.perf_counter() - t0)


def evaluate(net: Any, corpus: Any, batch_size: int, num_steps: int, device: Any) -> float:
    """Held-out perplexity with the layout of ``npgru.train.evaluate``, forward only."""
    data = np.asarray(corpus, dtype=np.int64)
    B = min(batch_size, len(data) - 1)
    cols = (len(data) - 1) // B
    X = torch.from_numpy(data[: B * cols].reshape(B, cols)).to(device)
    Y = torch.from_numpy(data[1 : B * cols + 1].reshape(B, cols)).to(device)
    state, total = net.begin_state(B), 0.0
    with torch.no_grad(), evaluating(net):
        for start in range(0, cols, num_steps):
            y_hat, state = net(X[:, start : start + num_steps], state)
            y = Y[:, start : start + num_steps].T.reshape(-1)
            total += float(F.cross_entropy(y_hat, y, reduction="sum"))
    return math.exp(total / (B * cols))


@contextlib.contextmanager
def evaluating(net: Any) -> Iterator[None]:
    """Dropout off inside the block (``net.eval()``), back to training mode after it."""
    module = isinstance(net, nn.Module)
    if module:
        net.eval()
    try:
        yield
    finally:
        if module:
            net.train()


def default_data() -> str | None:
    path = ROOT / "tests" / "data" / "timemachine.txt"  # ships with the tests
    return str(path) if path.exists() else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-steps", type=int, default=35)
    ap.add_argument("--num-hiddens", type=int, default=256)
    ap.add_argument("--lr", type=float, default=None, help="1 with sgd (d2l), 0.001 with adam")
    ap.add_argument("--num-layers", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0, help="between layers and before "
                    "the output layer, while training")  # fmt: skip
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    ap.add_argument("--average", type=float, default=0.0, help="validate and generate with "
                    "weights exponentially averaged with this decay (0: none)")  # fmt: skip
    ap.add_argument("--theta", type=float, default=1.0, help="clipping norm (d2l: 1)")
    ap.add_argument("--max-tokens", type=int, default=10000)
    ap.add_argument("--val-fraction", type=float, default=None, help="hold out this end "
                    "fraction of the text and report its perplexity per epoch")  # fmt: skip
    ap.add_argument("--random-iter", action="store_true", help="random sampling")
    ap.add_argument("--scratch", action="store_true", help="the seed's from-scratch gru")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--data",
        default=None,
        help="the text (default: tests/data/timemachine.txt if present, "
        "else npgru.data's cached or downloaded copy)",
    )
    ap.add_argument("--seed", type=int, default=0, help="torch and data-loader seed")
    ap.add_argument("--quiet", action="store_true", help="no progress lines every 10 epochs")
    args = ap.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 1.0
    beyond_d2l = (args.num_layers, args.dropout, args.optimizer, args.average)
    if args.scratch and beyond_d2l != (1, 0.0, "sgd", 0.0):
        ap.error("--scratch is d2l's model: no --num-layers, --dropout, --optimizer, --average")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    loader, vocab = load_data_time_machine(
        args.batch_size,
        args.num_steps,
        use_random_iter=args.random_iter,
        max_tokens=args.max_tokens,
        path=args.data or default_data(),
        seed=args.seed,
        val_fraction=args.val_fraction,
    )
    V = len(vocab)
    averaged = None
    if args.scratch:
        net, optimizer = ScratchGRU(V, args.num_hiddens, device), None
    else:
        net = ConciseGRU(V, args.num_hiddens, device, args.num_layers, args.dropout)
        optim = torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD
        optimizer = optim(net.parameters(), lr=args.lr)
        if args.average:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.average))
    use = net if averaged is None else averaged.module  # what validation and text use
    model = "scratch gru" if args.scratch else "nn.GRU + nn.Linear"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {model}, "
        f"{len(loader)} minibatches of {args.batch_size}x{args.num_steps} per epoch",
        flush=True,
    )

    speeds, val = [], []
    ppl = speed = math.nan
    for epoch in range(args.epochs):
        ppl, speed = train_epoch(
            net, loader, args.lr, args.theta, args.random_iter, device, optimizer, averaged
        )
        speeds.append(speed)
        if len(loader.val_corpus):
            val.append(evaluate(use, loader.val_corpus, args.batch_size, args.num_steps, device))
        if not args.quiet and (epoch + 1) % 10 == 0:
            shown = f", validation {val[-1]:.2f}" if val else ""
            print(
                f"epoch {epoch + 1}: perplexity {ppl:.2f}{shown}, "
                f"{predict('time traveller', 50, use, vocab, device)!r}",
                flush=True,
            )
    where = "cpu" if device.type == "cpu" else str(torch.device(device.type, device.index or 0))
    if speeds:
        print(f"median over {len(speeds)} epochs: {statistics.median(speeds):.1f} tokens/sec")
    if val:
        best = int(np.argmin(val))
        print(f"validation perplexity {val[-1]:.4f}, best {val[best]:.4f} at epoch {best + 1}")
    print(f"perplexity {ppl:.1f}, {speed:.1f} tokens/sec on {where}")
    print(predict("time traveller", 50, use, vocab, device))
    print(predict("traveller", 50, use, vocab, device))


if __name__ == "__main__":
    main()

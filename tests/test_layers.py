"""The house: npgru's modules import each other in one direction only (no circle).

Every ``import npgru...`` of every module counts, at the top or inside a function, so that a
circle cannot hide behind a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "npgru"

#: The maths core and the thin application layer around it, lowest first: a module may
#: import only modules listed before it (errors, backend, checks, flat, files: the floor).
ORDER = [
    "version", "errors", "backend", "checks", "flat", "files",  # the floor
    "gru", "rnn", "loss", "cuda", "fused", "layer",  # the maths core ...
    "model", "optim", "gradcheck",  # ... and what builds on the layers
    "export", "interop",  # to and from other libraries
    "download", "data", "checkpoint", "train", "timemachine", "cli", "commands",  # the app
    "__main__",
]  # fmt: skip


def npgru_imports(path: Path) -> set[str]:
    """The npgru modules ``path`` imports (``from npgru import a, b`` counts a and b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("npgru.")}
        elif isinstance(node, ast.ImportFrom) and node.module == "npgru":
            found |= {f"npgru.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("npgru."):
            found.add(node.module)
    return {name.split(".")[1] for name in found if (PACKAGE / f"{name.split('.')[1]}.py").exists()}


def graph() -> dict[str, set[str]]:
    return {p.stem: npgru_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_place() -> None:
    assert set(graph()) <= set(ORDER), "add the new module to ORDER, above what it imports"


@pytest.mark.parametrize("module", [m for m in ORDER if (PACKAGE / f"{m}.py").exists()])
def test_a_module_imports_only_modules_below_it(module: str) -> None:
    below = set(ORDER[: ORDER.index(module)])
    assert graph()[module] <= below, f"{module} imports {graph()[module] - below} from above"


def test_no_circle() -> None:
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in g.get(m, ()):
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [])

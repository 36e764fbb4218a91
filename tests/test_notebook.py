"""examples/timemachine.ipynb runs top to bottom, on the book in tests/data, and is committed
without outputs. Executing it needs nbclient, nbformat and ipykernel (the ``test`` extra);
without them that test is skipped with the reason.

The cells that find the book (``BOOK`` at the top: a path, or None for the shipped copy, else a
download) also run here in-process, with the network replaced, in seconds: a failed download
is one line that says to set ``BOOK``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import BOOK

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "timemachine.ipynb"


def code_cells(nb):
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def book_cells(book: str | None = None) -> str:
    """The code cells up to the one that finds the book, with ``BOOK = book`` when given."""
    cells = [
        "".join(cell["source"]) for cell in code_cells(json.loads(NOTEBOOK.read_text("utf-8")))
    ]
    assert cells[0].rstrip().endswith("BOOK = None"), "the first code cell sets BOOK"
    if book is not None:
        cells[0] = cells[0].replace("BOOK = None", f"BOOK = {book!r}")
    last = next(i for i, cell in enumerate(cells) if "resolve_data_path(" in cell)
    return "\n".join(cells[: last + 1])


@pytest.fixture
def elsewhere(monkeypatch, tmp_path):
    """The notebook opened outside a checkout (no tests/data beside it), with an empty cache,
    and a network that a test replaces: by default any download fails as it does offline."""
    (tmp_path / "examples").mkdir()
    monkeypatch.chdir(tmp_path / "examples")
    monkeypatch.delenv("NPGRU_TEST_DATA", raising=False)
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "cache"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tmp_path


def test_without_network_the_notebook_says_to_set_book(elsewhere):
    import npgru

    with pytest.raises(npgru.DataError) as info:
        exec(book_cells(), {})
    message = str(info.value)
    assert "\n" not in message
    assert "download of http" in message and "set BOOK = 'path/to/timemachine.txt'" in message
    assert not (elsewhere / "cache").exists()  # a failed download leaves nothing


def test_book_names_the_copy_to_read(elsewhere):
    copy = elsewhere / "my copy.txt"
    shutil.copyfile(BOOK, copy)
    namespace: dict = {}
    exec(book_cells(str(copy)), namespace)  # offline: read without a download
    assert namespace["BOOK"] == copy

    import npgru

    with pytest.raises(npgru.DataError, match=r"which is not a file: set BOOK = "):
        exec(book_cells(str(elsewhere / "missing.txt")), {})


def test_in_a_checkout_the_shipped_copy_is_read(monkeypatch, elsewhere):
    monkeypatch.chdir(NOTEBOOK.parent)
    namespace: dict = {}
    exec(book_cells(), namespace)  # offline: the copy in tests/data, no download
    assert namespace["BOOK"] == ROOT / "tests" / "data" / "timemachine.txt"


def test_elsewhere_the_book_is_downloaded_once(monkeypatch, elsewhere):
    served = []

    class Response(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {}  # no Content-Length

    def online(url, *args, **kwargs):
        served.append(url)
        return Response(BOOK.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", online)
    for _ in range(2):
        namespace: dict = {}
        exec(book_cells(), namespace)
        assert namespace["BOOK"] == elsewhere / "cache" / "timemachine.txt"
    assert len(served) == 1  # the second run reads the cache


def test_the_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in code_cells(nb):
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]
    source = "".join("".join(cell["source"]) for cell in code_cells(nb))
    assert "gru.step_forward(" in source and "check_gradients(" in source


def test_the_notebook_runs_top_to_bottom(monkeypatch, tmp_path):
    for module in ("nbclient", "nbformat", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[test]' to run the notebook")
    import nbformat
    from nbclient import NotebookClient

    # the kernel inherits the environment: this tree's npgru, the shipped book, no download
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NPGRU_TEST_DATA", str(BOOK))
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "no-such-cache"))
    for threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(threads, "1")  # small matrices: a BLAS thread pool only waits
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,  # per cell; the whole notebook takes seconds on an idle machine
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # a cell that raises (a failed assert included) fails here

    outputs = [out for cell in code_cells(nb) for out in cell["outputs"]]
    assert not [out for out in outputs if out["output_type"] == "error"]
    text = "".join(out.get("text", "") for out in outputs)
    assert "PASSED: every relative error" in text
    assert "FAILED: 1 of 11 arrays" in text
    assert "epoch 40: perplexity" in text
    if importlib.util.find_spec("torch") is None:
        assert "the comparison with nn.GRU is skipped" in text
    else:
        assert "GRU(28, 64)" in text

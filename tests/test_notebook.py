"""examples/timemachine.ipynb runs top to bottom, on the book in tests/data, and is committed
without outputs. Executing it needs nbclient, nbformat and ipykernel (the ``test`` extra);
without them that test is skipped with the reason."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from conftest import BOOK

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "timemachine.ipynb"


def code_cells(nb):
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


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

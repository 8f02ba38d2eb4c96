"""Every notebook runs top to bottom in FAST mode, and the repository stores them without
outputs (readable diffs)."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
NOTEBOOK_IDS = [path.stem for path in NOTEBOOKS]
# FAST mode is sized to run in under 2 minutes each on a 2-core CPU; the limit leaves room for
# a machine busy with other tests.
CELL_TIMEOUT_SEC = 600


def test_the_four_tutorials_exist():
    assert NOTEBOOK_IDS == ["01_attention_and_vit", "02_train_vit", "03_distillation",
                            "04_seq2seq_decoding"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts; clear them with "
        f"`jupyter nbconvert --clear-output --inplace {path}`")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_runs_top_to_bottom_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_FAST", "1")
    monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path))
    # One simulated device: the notebooks show single-machine use (the kernel inherits the
    # test process's 8 simulated devices otherwise, which only slows the small runs down).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_SEC, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells
                 for output in cell.get("outputs", []))
    assert images >= 1, f"{path.name} drew no pictures"

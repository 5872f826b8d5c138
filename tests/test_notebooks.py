"""Execute every tutorial notebook top to bottom in the small (CI) setting.

Each notebook runs in a fresh ``python3`` kernel with ``cwd = notebooks/`` and
``BAYESPROMPT_NOTEBOOK_BUDGET=small``, which its first code cell reads to shrink budgets,
test sets and the prompt dimension. Any cell error fails the test; so does a cell that runs
longer than ``CELL_TIMEOUT`` seconds. Outputs are not written back.

Run just these with ``python -m pytest tests/test_notebooks.py -q``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SHARED_DATA = REPO.parent / "shared" / "data"
#: Longest a single cell may run in the small setting (seconds); the notebooks take 1-3 min.
CELL_TIMEOUT = 600

pytestmark = pytest.mark.slow

NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_every_tutorial_is_collected():
    names = [path.stem for path in NOTEBOOK_PATHS]
    assert names == ["01_quickstart", "02_priors_in_code", "03_likelihood_free", "04_engines_side_by_side"]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = Path(os.environ.get("BAYESPROMPT_DATA") or SHARED_DATA)
    for task in ("sst2", "imdb"):
        if not (data_dir / task / "test.jsonl").is_file():
            pytest.skip(f"task data not found under {data_dir} (set BAYESPROMPT_DATA)")
    # the kernel inherits this process's environment
    monkeypatch.setenv("BAYESPROMPT_NOTEBOOK_BUDGET", "small")
    monkeypatch.setenv("BAYESPROMPT_DATA", str(data_dir.resolve()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebooks use the inline backend

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the traceback) on the first failing cell
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.0f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors

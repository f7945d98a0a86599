"""The notebooks: committed without outputs, and each one runs top to bottom on the sample data
without an error, in a kernel of this virtualenv, writing nothing into the repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"01_bulk_load.ipynb", "02_group_query.ipynb", "03_embedding_map.ipynb",
            "04_explanations.ipynb", "05_evaluation.ipynb", "06_head.ipynb"}
# Seconds one cell may run before the notebook counts as broken (the slowest takes well under a
# minute on 2 cores).
CELL_TIMEOUT = 300


def test_the_notebooks_are_there():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; clear them with "
                       f"jupyter nbconvert --clear-output --inplace notebooks/{path.name}")


def _repo_changes() -> set:
    """Paths git would report as changed or new, ignored ones included (bytecode left out: the
    kernel imports the product from this checkout)."""
    out = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                         capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "__pycache__/" not in line and ".pytest_cache/" not in line}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, deepface_home):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # The last cell reports the kernel's environment: the notebooks must run on this virtualenv
    # (sys.prefix: a venv's interpreter is a link to the base Python, its prefix is the venv).
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix, end='')"))
    env = dict(os.environ)
    # This checkout first, whatever the virtualenv's editable install points at; the notebooks'
    # scratch folders (tempfile) under this test's own folder.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["TMPDIR"] = str(tmp_path)
    git = (ROOT / ".git").exists()
    before = _repo_changes() if git else set()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, on any error
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert printed == sys.prefix, f"the kernel ran in {printed}, not in this environment ({sys.prefix})"
    if git:
        assert _repo_changes() == before, "the notebook wrote into the repository"

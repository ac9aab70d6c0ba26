"""The Colab notebooks run headless on this CPU (shrunk by PMRL_JAX_NOTEBOOK_SMOKE=1),
are committed without outputs, and the README's badges open them."""

import os
import pathlib
import re
import tomllib

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["losses_quickstart.ipynb", "train_on_tpu.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_without_a_cell_error(path, monkeypatch):
    import nbclient

    # The kernel inherits this environment: the smoke sizes, and 2 fake CPU devices (a mesh
    # still spans several devices; 8 would only compile longer).
    monkeypatch.setenv("PMRL_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook draws its plots inline"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"


def test_readme_badges_and_notebook_installs_point_at_the_repository():
    with open(REPO / "pyproject.toml", "rb") as f:
        repository = tomllib.load(f)["project"]["urls"]["Repository"]
    owner_and_name = repository.removeprefix("https://github.com/")
    readme = (REPO / "README.md").read_text()
    for path in NOTEBOOKS:
        badge = f"https://colab.research.google.com/github/{owner_and_name}/blob/main/notebooks/{path.name}"
        assert badge in readme, f"README has no Open-in-Colab badge for {path.name}"
        text = path.read_text()
        assert badge in text and f'REPOSITORY = \\"{repository}\\"' in text
        assert re.search(r"google\.colab.*in sys\.modules", text) and "PMRL_JAX_NOTEBOOK_SMOKE" in text
    assert os.path.isdir(REPO / "configs")  # what the training notebook loads from its clone

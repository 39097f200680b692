"""``notebooks/quickstart.ipynb`` runs: its code cells as one script on a few training steps (fast), and
the notebook itself through a Jupyter kernel (slow; extra ``[notebook]``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
pytestmark = pytest.mark.usefixtures("one_thread")


def _code_cells() -> list[str]:
    doc = json.loads(NOTEBOOK.read_text())
    return ["".join(cell["source"]) for cell in doc["cells"] if cell["cell_type"] == "code"]


def test_the_notebooks_cells_run_as_a_script(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=True)  # plt.show() draws nothing
    monkeypatch.chdir(tmp_path)  # no ../demo/run here: the notebook trains
    monkeypatch.setenv("PF_QUICKSTART_STEPS", "3")
    monkeypatch.setenv("PF_QUICKSTART_OUT", str(tmp_path / "run"))
    namespace: dict = {"__name__": "__main__"}
    for source in _code_cells():
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert (tmp_path / "run" / "checkpoints" / "step-00000003.pt").is_file()
    results = namespace["results"]
    assert set(results) == {"euler-pf", "look-ahead"}
    for sampler, (x, info) in results.items():
        assert x.shape == (10, 1, 16, 16) and 14 <= info["nfe"] <= 16, sampler  # equal compute: at most 16 evaluations
    frame = namespace["frame"]
    assert frame["difficulty"] is not None and abs(float(frame["t"].mean()) - 0.5) < 0.2
    picture = namespace["picture"]
    assert picture.width > 4 * 3 * 16 and picture.height > 16 * 6  # four samples of three named panels, and a legend


@pytest.mark.slow
def test_the_notebook_executes_in_a_kernel(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="pip install 'patchforcing[notebook]'")
    nbformat = pytest.importorskip("nbformat")
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    monkeypatch.setenv("PF_QUICKSTART_STEPS", "300")
    monkeypatch.setenv("PF_QUICKSTART_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the two sample grids' figure and the difficulty map

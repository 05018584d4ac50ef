"""nbclient 0.11 and papermill 2.7 run notebooks on the kerneld kernelspec (run under
.venv-clients by tests/jupyter/test_notebooks.py): prints, a matplotlib figure, a display
updated by id, an error cell with allow_errors, ipywidgets state, a parameters cell."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import papermill
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

KERNEL = os.environ.get("KERNELD_JUPYTER_KERNEL", "kerneld-default")
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 2, 3])\nplt.show()"


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(source) for source in sources])
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    return nb


def _texts(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_nbclient_runs_a_notebook() -> None:
    nb = _notebook(
        "print('hello')\nprint('world')",
        PLOT,
        "from IPython.display import display\nh = display('first', display_id='d1')\n"
        "h.update('second')",
        "1/0",
        "import ipywidgets as w\nslider = w.IntSlider(value=7)\nslider",
        "slider.value = 9\nprint('after', slider.value)",
    )
    NotebookClient(nb, kernel_name=KERNEL, allow_errors=True, timeout=60).execute()
    prints, plot, update, error, widget, after = nb.cells
    assert _texts(prints) == "hello\nworld\n"
    pngs = [o for o in plot.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and len(pngs[0]["data"]["image/png"]) > 1000, plot.outputs
    assert [o["data"]["text/plain"] for o in update.outputs] == ["'second'"], update.outputs
    assert [(o.output_type, o.get("ename")) for o in error.outputs] == [
        ("error", "ZeroDivisionError")]
    view = widget.outputs[0]["data"]["application/vnd.jupyter.widget-view+json"]
    assert _texts(after) == "after 9\n"
    assert nb.metadata["language_info"]["name"] == "python"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert state[view["model_id"]]["state"]["value"] == 9, state[view["model_id"]]


def test_nbclient_stops_at_an_error_without_allow_errors() -> None:
    nb = _notebook("x = 1", "raise ValueError('boom')", "x = 2")
    with pytest.raises(CellExecutionError) as info:
        NotebookClient(nb, kernel_name=KERNEL, timeout=60).execute()
    assert "ValueError" in str(info.value) and "boom" in str(info.value)
    assert nb.cells[2].get("execution_count") is None and not nb.cells[2].outputs


def test_papermill_parameters(tmp_path: Path) -> None:
    nb = _notebook("x = 1", "print('x * 2 =', x * 2)")
    nb.cells[0].metadata["tags"] = ["parameters"]
    source, target = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    papermill.execute_notebook(str(source), str(target), parameters={"x": 21},
                               kernel_name=KERNEL, progress_bar=False)
    out = nbformat.read(target, as_version=4)
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "x = 21" in injected[0].source
    assert _texts(out.cells[-1]) == "x * 2 = 42\n"


def test_papermill_reports_the_error(tmp_path: Path) -> None:
    nb = _notebook("raise KeyError('missing')")
    source = tmp_path / "in.ipynb"
    nbformat.write(nb, source)
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"),
                                   kernel_name=KERNEL, progress_bar=False)
    assert info.value.ename == "KeyError" and "missing" in info.value.evalue

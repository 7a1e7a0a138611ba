"""The lab/ notebooks: each runs top to bottom in smoke mode, and each .ipynb matches its .py and has no outputs.

``lab/NN_name.py`` (jupytext percent format) is the source of truth; ``lab/NN_name.ipynb`` is its
paired notebook, committed without outputs. Notebooks are executed with nbclient in a fresh kernel
whose environment has ``WORKBENCH_SMOKE=1`` and ``WORKBENCH_LAB_RUNS`` pointing to a temp folder,
with ``lab/`` as the working directory.

Also here: the attribution helper of notebook 05 (``workbench.attribution``) against a per-sample loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab"
NOTEBOOKS = sorted(p.stem for p in LAB.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = 300


def test_lab_has_the_notebooks():
    assert {n[:2] for n in NOTEBOOKS} >= {"01", "02", "03", "04", "05", "06"}, NOTEBOOKS


def _code_cells(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_sync_and_without_outputs(name):
    import jupytext
    import nbformat

    ipynb = LAB / f"{name}.ipynb"
    assert ipynb.exists(), f"{ipynb} missing: run `jupytext --sync lab/{name}.py`"
    from_py = jupytext.read(LAB / f"{name}.py")
    from_ipynb = nbformat.read(ipynb, as_version=4)
    assert _code_cells(from_ipynb) == _code_cells(from_py), f"{name}.ipynb is out of sync with {name}.py: run jupytext --sync"
    md = lambda nb: [c.source.strip() for c in nb.cells if c.cell_type == "markdown"]  # noqa: E731
    assert md(from_ipynb) == md(from_py), f"{name}.ipynb markdown differs from {name}.py: run jupytext --sync"
    for i, cell in enumerate(from_ipynb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{name}.ipynb cell {i} has outputs committed"
            assert cell.get("execution_count") is None, f"{name}.ipynb cell {i} has an execution count committed"
    tagged = [c for c in from_ipynb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "SMOKE" in tagged[0].source, f"{name}: needs one cell tagged 'parameters' setting SMOKE"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # the kernel is a child process: it inherits this environment
    monkeypatch.setenv("WORKBENCH_SMOKE", "1")
    monkeypatch.setenv("WORKBENCH_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(LAB / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(LAB)}})
    try:
        client.execute()
    except CellExecutionError as e:  # names the cell and the traceback
        pytest.fail(f"{name} failed in smoke mode:\n{e}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "runs" / name).is_dir(), f"{name} must write its files under $WORKBENCH_LAB_RUNS/{name}"


# ---------------------------------------------------------------------- notebook 05's helper
def _tiny_model(head: str = "independent"):
    import pandas as pd

    from workbench.models import build_model
    from workbench.taxonomy import Taxonomy

    labels = pd.DataFrame({"a": ["x", "x", "y", "y", "y"], "b": ["x1", "x2", "y1", "y2", "y3"]})
    tax = Taxonomy.from_frame(labels, ["a", "b"])
    torch.manual_seed(0)
    return build_model("mlp", [8, 6], head, 5, tax, dropout=0.5), tax


@pytest.mark.parametrize("head", ["independent", "marginal"])
def test_input_gradients_match_a_per_sample_loop(head):
    from workbench.attribution import input_gradients

    model, tax = _tiny_model(head)
    x = torch.randn(7, 5)
    classes = torch.randint(0, 3, (7, 2))
    classes[:, 1] = torch.randint(0, 6, (7,))
    got = input_gradients(model, x, classes)  # (R, N, F)
    assert got.shape == (2, 7, 5)
    assert model.training, "input_gradients must restore the model's train/eval mode"
    model.eval()
    for i in range(7):
        for r in range(2):
            xi = x[i : i + 1].clone().requires_grad_(True)
            logp = torch.log_softmax(model(xi)[r], dim=1)[0, classes[i, r]]
            (g,) = torch.autograd.grad(logp, xi)
            torch.testing.assert_close(got[r, i], g[0], rtol=1e-5, atol=1e-6)
    # and against torch.func (vmap over samples of the per-sample gradient)
    from torch.func import grad, vmap

    for r in range(2):
        f = lambda xi, c: torch.log_softmax(model(xi[None])[r], dim=1)[0].gather(0, c[None])[0]  # noqa: E731
        torch.testing.assert_close(got[r], vmap(grad(f))(x, classes[:, r]), rtol=1e-5, atol=1e-6)
    assert not x.requires_grad


def test_input_gradients_default_to_predicted_classes_and_attribution_frame():
    from workbench.attribution import attribution_frame, input_gradients

    model, tax = _tiny_model()
    model.eval()
    x = torch.randn(4, 5)
    with torch.no_grad():
        pred = torch.stack([lg.argmax(dim=1) for lg in model(x)], dim=1)
    torch.testing.assert_close(input_gradients(model, x), input_gradients(model, x, pred))
    grads = input_gradients(model, x, pred)
    keep = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    frame = attribution_frame(grads, x, ["f0", "f1", "f2", "f3", "f4"], ["a", "b"], keep=keep)
    assert set(frame.columns) >= {"rank", "feature", "mean_abs_grad", "mean_abs_grad_x_input", "share"}
    b = frame[frame["rank"] == "b"].set_index("feature")
    expected = grads[1][keep[:, 1]].abs().mean(dim=0)  # rows 0 and 3 only
    torch.testing.assert_close(torch.tensor(b.loc[["f0", "f1", "f2", "f3", "f4"], "mean_abs_grad"].to_numpy()),
                               expected.double(), rtol=1e-6, atol=1e-9)
    for _, part in frame.groupby("rank"):
        assert abs(part["share"].sum() - 1.0) < 1e-9

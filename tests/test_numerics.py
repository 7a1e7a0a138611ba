"""Non-finite numbers never train silently to garbage.

- features that are not finite as float32 (NaN, inf, or beyond the float32 range) are refused before a run
  exists, whoever built the dataset;
- a non-finite training loss from real input fails the run ("failed", with a one-line reason in the store and
  on the CLI), instead of finishing with accuracies of 0 and a flag only in the store;
- weights that leave nothing to learn fire the ``zero_total_weight`` health check, which the CLI prints.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from workbench.cli import main as cli_main
from workbench.config import Config
from workbench.data import DataError, make_synthetic
from workbench.health import EXPLANATIONS, zero_total_weight
from workbench.store import RunStore
from workbench.trainer import Trainer

HEADER = "family,genus,x1,x2,w\n"
PATHS = ["A,a1", "A,a2", "B,b1", "B,b2"]


def table(n: int = 40, x1=lambda i: i % 7, w=lambda i: 1) -> str:
    return HEADER + "".join(f"{PATHS[i % 4]},{x1(i)},{i % 3},{w(i)}\n" for i in range(n))


def run_cli(tmp_path: Path, data_text: str, capsys, **overrides) -> tuple[int, str, str, Path]:
    """``python -m workbench train`` on a CSV, a 2-epoch tiny MLP, a fresh store; ``(rc, out, err, db)``."""
    data = tmp_path / "data.csv"
    data.write_text(data_text, encoding="utf-8")
    db = tmp_path / "runs" / "w.db"
    cfg = Config().with_overrides({
        "DATA.NAME": "file", "DATA.PATH": str(data), "DATA.RANKS": ["family", "genus"], "DATA.SAMPLE_WEIGHT": "w",
        "MODEL.HIDDEN": [8], "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 8, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(db), "TRACKING.WANDB.ENABLED": False, **overrides,
    })
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    rc = cli_main(["train", "--config", str(path), "--no-progress", "--run-id", "num"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, db


def run_row(db: Path) -> dict:
    return RunStore(db).run("num")


# ---------------------------------------------------------------------- features
def test_a_dataset_built_in_code_with_nan_features_is_refused_before_the_run_exists(tmp_path):
    ds = make_synthetic(n=200, branching=(2, 2), num_features=3, null_rates=(0.0, 0.0), seed=0)
    ds.features[[5, 17, 30], 2] = float("nan")
    cfg = Config().with_overrides({"TRACKING.STORE": str(tmp_path / "w.db"), "TRACKING.WANDB.ENABLED": False,
                                   "TRAIN.DEVICE": "cpu"})
    with pytest.raises(DataError) as e:
        Trainer(cfg, dataset=ds, progress=False)
    assert str(e.value) == ("synthetic: column 'x2': 3 value(s) are not finite as 32-bit floats (NaN and inf are "
                            "not numbers), e.g. nan in rows 5, 17, 30; fix or rescale them")
    assert RunStore(tmp_path / "w.db").runs().empty


def test_features_that_overflow_float32_are_refused(tmp_path, capsys):
    rc, out, err, db = run_cli(tmp_path, table(x1=lambda i: "3.5e38" if i == 9 else i % 7), capsys)
    assert rc == 2 and out == ""
    assert err == (f"error: {tmp_path / 'data.csv'}: column 'x1': 1 value(s) are not finite as 32-bit floats "
                   "(values beyond the float32 range (|x| > 3.4e+38) become inf), e.g. 3.5e+38 in row 11 "
                   "(spreadsheet row numbers, header = row 1); fix or rescale them\n")
    assert RunStore(db).runs().empty


# ---------------------------------------------------------------------- non-finite loss
def test_a_non_finite_loss_fails_the_run_with_the_reason(tmp_path, capsys):
    """Real input: finite float32 features so large that the loss overflows float32 in the first batch."""
    rc, out, err, db = run_cli(tmp_path, HEADER + "".join(f"{PATHS[i % 4]},3e38,3e38,1\n" for i in range(40)), capsys)
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    pattern = (r"error: run num failed: non-finite loss at epoch 1 \(batch 1 of 3\): loss (nan|inf) \(family \S+, "
               r"genus \S+\); the weights after it are not meaningful\. Look for huge feature or sample-weight values, "
               r"or lower TRAIN\.LR")
    assert re.fullmatch(pattern, lines[0]), lines[0]
    run = run_row(db)
    assert run["status"] == "failed"
    assert run["error"] == lines[0].removeprefix("error: ")  # the reason, not a traceback
    assert RunStore(db).metrics_wide(["num"]).empty  # no epoch of garbage was recorded as a result


def test_a_healthy_run_of_the_same_shape_finishes(tmp_path, capsys):
    """Control for the test above: the same data at a sane scale trains to the end, with no weight warning."""
    rc, out, err, db = run_cli(tmp_path, table(), capsys)
    assert rc == 0, err
    assert run_row(db)["status"] == "finished" and "zero_total_weight" not in run_row(db)["health"]
    assert "Nothing carries weight" not in out


# ---------------------------------------------------------------------- zero total weight
def genus_only_on_weightless_rows(n: int = 40) -> str:
    """Rows of weight 1 have no genus label, rows of weight 0 have one: the genus loss is 0, always."""
    return HEADER + "".join(
        f"{PATHS[i % 4].split(',')[0]},{PATHS[i % 4].split(',')[1] if i % 2 else ''},{i % 7},{i % 3},{0 if i % 2 else 1}\n"
        for i in range(n))


@pytest.mark.parametrize("text, message", [
    (table(w=lambda i: 0), "every training sample weight is 0 (24 samples)"),
    (genus_only_on_weightless_rows(), "every labelled training sample has sample weight 0 at rank(s) ['genus']"),
], ids=["all-samples", "one-rank"])
def test_zero_total_weight_fires_and_the_cli_prints_it(tmp_path, capsys, text, message):
    rc, out, err, db = run_cli(tmp_path, text, capsys)
    assert rc == 0, err
    health = json.loads(run_row(db)["health"])
    assert health["zero_total_weight"] == message
    advice = EXPLANATIONS["zero_total_weight"]
    assert f"  health warning: {advice.title}: {message}. {advice.meaning} Try: {advice.suggestion}\n" in out
    con = sqlite3.connect(db)
    fired = con.execute("SELECT value FROM metrics WHERE run_id = 'num' AND key = 'health/zero_total_weight' "
                        "ORDER BY epoch").fetchall()
    con.close()
    assert fired == [(1.0,), (1.0,)]  # every epoch


def test_zero_total_weight_rules():
    targets = torch.tensor([[1, 1], [1, 0], [2, 3]])  # (N, R)
    ranks = ("family", "genus")
    assert zero_total_weight(targets, None, torch.tensor([0.0, 0.0]), ranks) == {
        "zero_total_weight": "every rank weight is 0 ([0.0, 0.0])"}
    assert zero_total_weight(targets, None, torch.tensor([0.3, 0.7]), ranks) == {}
    assert zero_total_weight(targets, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.3, 0.7]), ranks) == {
        "zero_total_weight": "every labelled training sample has sample weight 0 at rank(s) ['genus']"}
    # a rank whose weight is 0 anyway (w = 1 leaves the finest rank out on purpose) is not reported
    assert zero_total_weight(targets, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0]), ranks) == {}

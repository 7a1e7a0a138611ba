"""One home per fact (issue 12, item 4): names, errors, "the value of a metric for a run", a light core.

Each shared name is defined once (names.py, errors.py) and re-exported by the modules that used to define
it; :func:`workbench.summaries.metric_values` is the one definition of a run's last / best / selected value.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench import errors, names
from workbench.summaries import metric_values, selected_epoch

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "workbench").glob("*.py"), *(REPO / "app_pages").glob("*.py"), REPO / "app.py",
                  REPO / "sweeps" / "run.py"])


def module_level_assignments(path: Path) -> set[str]:
    """Names bound at a module's top level by ``NAME = ...`` (imports are re-exports, not definitions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return out


def class_names(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}


SHARED = ("DEFAULT_STORE", "STATUSES", "ACTIVE", "RESUMABLE", "SWEEP_STATUSES", "SWEEP_ACTIVE", "CHECKPOINT_NAME",
          "CHECKPOINTS_DIR", "LOCK_NAME", "SWEEPS_DIR", "STATUS_FILE", "RESULTS_DIR", "MAX_TRIALS", "UI_STATE_FILE",
          "SELECTION_METRIC", "SELECT_BY_DEFAULT")


def test_each_shared_name_and_error_class_is_defined_in_one_module_only():
    for path in SOURCES:
        where = path.relative_to(REPO)
        if path.name != "names.py":
            again = module_level_assignments(path) & set(SHARED)
            assert not again, f"{where} defines {sorted(again)} again; import them from workbench.names"
        if path.name != "errors.py":
            again = class_names(path) & set(errors.__all__ if hasattr(errors, "__all__") else dir(errors))
            assert not again, f"{where} defines {sorted(again)} again; import them from workbench.errors"


def test_the_default_store_path_is_written_once():
    for path in SOURCES:
        literals = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and n.value == names.DEFAULT_STORE]
        if path.name != "names.py":
            assert not literals, f"{path.relative_to(REPO)} writes {names.DEFAULT_STORE!r}; use names.DEFAULT_STORE"


@pytest.mark.parametrize("module, attr", [
    ("workbench.config", "ConfigError"), ("workbench.data", "DataError"), ("workbench.data", "DataWarning"),
    ("workbench.taxonomy", "TaxonomyError"), ("workbench.taxonomy", "DataWarning"), ("workbench.store", "StoreError"),
    ("workbench.launch", "LaunchError"), ("workbench.events", "SinkError"), ("workbench.trainer", "TrainingFailed"),
])
def test_old_imports_of_errors_still_work_and_are_the_same_class(module, attr):
    import importlib

    assert getattr(importlib.import_module(module), attr) is getattr(errors, attr)


def test_old_imports_of_names_still_work():
    from workbench import launch, store, sweep
    from workbench.config import Config

    assert (launch.DEFAULT_STORE, launch.ACTIVE, launch.RESUMABLE) == (names.DEFAULT_STORE, names.ACTIVE, names.RESUMABLE)
    assert store.STATUSES == names.STATUSES and store.CHECKPOINT_NAME == names.CHECKPOINT_NAME
    assert (sweep.SWEEP_ACTIVE, sweep.RESULTS_DIR, sweep.MAX_TRIALS) == (names.SWEEP_ACTIVE, names.RESULTS_DIR, names.MAX_TRIALS)
    assert sweep.SELECTION_METRIC == names.SELECT_BY_DEFAULT == "core/val_partial_chain_acc"
    assert sweep.SweepSettings().store_path == Config().TRACKING.STORE == names.DEFAULT_STORE


def test_metric_key_builders_follow_the_convention():
    assert names.core_key("val", "chain_acc") == names.VAL_CHAIN_ACC == "core/val_chain_acc"
    assert names.val_acc("genus") == "val/acc/genus" and names.best_tau("genus") == "val/best_tau/genus"
    assert names.best_tau_value("micro_f1", "genus") == "val/best_tau_micro_f1/genus"
    assert names.rank_key("train", names.KEPT, "area") == "train/kept/area"


@pytest.mark.parametrize("key, expected", [
    ("core/val_chain_acc", "max"), ("core/val_partial_chain_acc", "max"), ("val/acc/area", "max"),
    ("val/consistency", "max"), ("coverage", "max"), ("micro_f1", "max"), ("val/best_tau_micro_f1/x", "max"),
    ("core/val_loss", "min"), ("val/loss/area", "min"), ("val/severity", "min"), ("val/hdist@1", "min"),
    ("val/ece", "min"), ("time/epoch_seconds", "min"), ("health/nonfinite_loss", "min"),
    ("time/train_samples_per_sec", "max"), ("val/best_tau_null_false_positive_rate/area", "min"),
    ("val/acc/Greece", "max"), ("val/acc/glossy_loss", "max"), ("val/loss/accurate", "min"),  # rank names never count
])
def test_direction_of_each_metric(key, expected):
    assert names.direction(key) == expected


# ---------------------------------------------------------------------- metric_values
@pytest.fixture
def long() -> pd.DataFrame:
    """Two runs: r1 over 4 epochs (its best partial-chain epoch is 1, where its loss is not its best);
    r2 whose partial-chain accuracy is never defined (NaN) and whose last value is NaN at epoch 1."""
    rows = []
    for epoch, (partial, chain, loss) in enumerate([(0.5, 0.4, 1.0), (0.9, 0.7, 0.6), (0.8, 0.75, 0.3), (0.7, 0.6, 0.5)]):
        rows += [("r1", epoch, names.VAL_PARTIAL_CHAIN_ACC, partial), ("r1", epoch, names.VAL_CHAIN_ACC, chain),
                 ("r1", epoch, names.VAL_LOSS, loss)]
    rows += [("r2", 0, names.VAL_PARTIAL_CHAIN_ACC, math.nan), ("r2", 0, names.VAL_CHAIN_ACC, 0.2),
             ("r2", 1, names.VAL_PARTIAL_CHAIN_ACC, math.nan), ("r2", 1, names.VAL_CHAIN_ACC, math.nan)]
    return pd.DataFrame(rows, columns=["run_id", "epoch", "key", "value"]).sample(frac=1, random_state=0)  # any order


def test_metric_values_last_best_min_max(long):
    P, C, L = names.VAL_PARTIAL_CHAIN_ACC, names.VAL_CHAIN_ACC, names.VAL_LOSS
    last = metric_values(long, "last")
    assert last.loc["r1", [P, C, L]].tolist() == [0.7, 0.6, 0.5]
    assert math.isnan(last.loc["r2", C]), "the last value is the last epoch's, NaN included (never an earlier one)"
    best = metric_values(long, "best")
    assert best.loc["r1", [P, C, L]].tolist() == [0.9, 0.75, 0.3], "best: max for accuracies, min for the loss"
    assert best.loc["r2", C] == 0.2 and math.isnan(best.loc["r2", P])
    assert metric_values(long, "min").loc["r1", [P, L]].tolist() == [0.5, 0.3]
    assert metric_values(long, "max").loc["r1", [P, L]].tolist() == [0.9, 1.0]


def test_metric_values_selected_is_every_key_at_the_select_by_epoch(long):
    P, C, L = names.VAL_PARTIAL_CHAIN_ACC, names.VAL_CHAIN_ACC, names.VAL_LOSS
    selected = metric_values(long, "selected")
    assert selected.loc["r1", [P, C, L]].tolist() == [0.9, 0.7, 0.6]  # epoch 1, not each key's own best
    assert selected_epoch(long).to_dict() == {"r1": 1, "r2": 1}, "no finite select_by value: the last epoch"
    by_loss = metric_values(long, "selected", select_by=L, keys=[P])
    assert by_loss.columns.tolist() == [P] and by_loss.loc["r1", P] == 0.8  # min loss at epoch 2


def test_metric_values_reads_the_tidy_frame_of_pull_wandb_and_refuses_bad_input(long):
    tidy = long.rename(columns={"run_id": "run", "key": "metric"})
    pd.testing.assert_frame_equal(metric_values(tidy, "best", run="run", key="metric").rename_axis(index="run_id"),
                                  metric_values(long, "best"))
    with pytest.raises(ValueError, match="`how` must be one of last, best, min, max, selected, got 'final'"):
        metric_values(long, "final")
    with pytest.raises(ValueError, match="missing run"):
        metric_values(long, "last", run="run")
    assert metric_values(long.iloc[:0], "last").empty


def test_sweep_summary_best_is_the_selected_epoch_and_final_the_last(long):
    from workbench.sweep_results import per_run_table

    tidy = long.rename(columns={"run_id": "run", "key": "metric"})
    tidy["config"] = [{"LOSS.W": 0.3}] * len(tidy)
    table = per_run_table(tidy, ["LOSS.W"]).set_index(["run", "at"])
    assert table.loc[("r1", "best"), ["epoch", names.VAL_CHAIN_ACC, names.VAL_LOSS]].tolist() == [1, 0.7, 0.6]
    assert table.loc[("r1", "final"), ["epoch", names.VAL_CHAIN_ACC]].tolist() == [3, 0.6]


# ---------------------------------------------------------------------- light imports
def test_the_pure_core_and_names_import_without_pandas():
    code = ("import sys, workbench.names, workbench.errors, workbench.taxonomy, workbench.masking, workbench.losses, "
            "workbench.metrics; print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'ray', 'wandb', 'streamlit'}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout.strip()) == (0, "[]"), res.stderr
    res = subprocess.run([sys.executable, "-c", "import sys, workbench.names, workbench.errors; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'numpy', 'yaml')))"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, "[]"), res.stderr


def test_taxonomy_still_treats_pandas_missing_values_as_null():
    from workbench.taxonomy import Taxonomy

    labels = pd.DataFrame({"region": ["North", "North", pd.NA, "South"], "area": ["a", pd.NA, pd.NA, "b"]}, dtype="string")
    tax = Taxonomy.from_frame(labels, ["region", "area"])
    codes = tax.encode(labels)
    assert codes[1, 1] == 0 and codes[2, 0] == 0
    decoded = tax.decode(codes).iloc[1]
    assert decoded["region"] == "North" and pd.isna(decoded["area"])


# ---------------------------------------------------------------------- the sweep driver's command
def test_launch_sweep_command_runs_the_package_entry_point_with_the_configs_wandb_settings(tmp_path):
    from workbench.config import Config
    from workbench.launch import sweep_command

    store = tmp_path / "runs" / "w.db"
    cfg = Config().with_overrides({"TRACKING.WANDB.MODE": "online", "TRACKING.WANDB.PROJECT": "hier"})
    cmd = sweep_command(cfg, {"LOSS.W": [0.2, 0.8]}, "sw-1", tmp_path / "c.yaml", store, tmp_path / "out", wandb=True)
    assert cmd[:4] == [sys.executable, "-m", "workbench", "sweep"] and not any(a.endswith("run.py") for a in cmd)
    flags = dict(zip(cmd[4::2], cmd[5::2]))
    assert (flags["--wandb-project"], flags["--wandb-mode"], flags["--wandb-dir"]) == ("hier", "online", str(store.parent))
    assert flags["--grid"] == "LOSS.W=0.2,0.8" and flags["--sweep-id"] == "sw-1"
    custom = cfg.with_overrides({"TRACKING.WANDB.MODE": "offline", "TRACKING.WANDB.DIR": str(tmp_path / "wb")})
    flags = dict(zip(*[iter(sweep_command(custom, {}, "s", tmp_path / "c.yaml", store, tmp_path / "o", wandb=True)[4:])] * 2))
    assert (flags["--wandb-mode"], flags["--wandb-dir"]) == ("offline", str(tmp_path / "wb"))
    for off in (False, True):  # W&B not asked for, or asked for with a config whose mode is disabled
        c = cfg.with_overrides({"TRACKING.WANDB.MODE": "disabled"}) if off else cfg
        assert "--wandb-project" not in sweep_command(c, {}, "s", tmp_path / "c.yaml", store, tmp_path / "o", wandb=off)

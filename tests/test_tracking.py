"""W&B as an extra sink and source: offline round trip, pull, import, failures, and the online API path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench import tracking
from workbench.config import Config
from workbench.events import EpochResult
from workbench.store import RunStore
from workbench.store import metric_split
from workbench.tracking import (
    SELECTED_EPOCH,
    WandbSink,
    import_wandb_runs,
    offline_run_dirs,
    pull_wandb,
    read_wandb_offline_run,
)
from workbench.trainer import Trainer

EPOCHS = 3
NAN_KEY = "custom/always_nan"


def wandb_cfg(tmp_path, **overrides) -> Config:
    base = {
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 600, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "MODEL.HIDDEN": [32], "TRAIN.EPOCHS": EPOCHS, "TRAIN.BATCH_SIZE": 64, "TRAIN.NUM_THREADS": 1,
        "TRAIN.DEVICE": "cpu", "LOSS.W": 0.37, "TRACKING.STORE": str(tmp_path / "runs" / "w.db"),
        "TRACKING.WANDB.ENABLED": True, "TRACKING.WANDB.MODE": "offline", "TRACKING.WANDB.GROUP": "grp-a",
        "TRACKING.WANDB.DIR": str(tmp_path),
    }
    base.update(overrides)
    return Config().with_overrides(base)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


class NanTrainer(Trainer):
    """Adds a metric that is NaN every epoch, to check NaN/NULL handling end to end."""

    def run_epoch(self, epoch: int) -> EpochResult:
        r = super().run_epoch(epoch)
        return EpochResult(r.run_id, r.epoch, {**r.metrics, NAN_KEY: float("nan")}, r.curves, r.health, r.checkpoint)


@pytest.fixture
def trained(offline):
    """One offline W&B run: (trainer, its offline run folder)."""
    trainer = NanTrainer(wandb_cfg(offline), progress=False)
    assert trainer.fit() == "finished"
    dirs = offline_run_dirs(offline)
    assert len(dirs) == 1, dirs
    return trainer, dirs[0]


def numeric_store_frame(store: RunStore, run_id: str) -> pd.DataFrame:
    return store.metrics_wide([run_id]).drop(columns="run_id").set_index("epoch").sort_index()


def test_offline_round_trip_config_and_history(trained):
    trainer, run_dir = trained
    info = read_wandb_offline_run(run_dir)
    assert info["run_id"] == trainer.run_id
    assert info["group"] == "grp-a" and info["project"] == "workbench"
    assert info["config"]["LOSS.W"] == 0.37
    assert info["config"]["TRAIN.EPOCHS"] == EPOCHS
    assert info["config"]["MODEL.HIDDEN"] == [32]

    stored = numeric_store_frame(trainer.store, trainer.run_id)
    history = info["history"]
    assert "epoch" in history
    history = history.set_index("epoch").sort_index()
    assert list(history.index) == list(range(EPOCHS))
    assert NAN_KEY in stored.columns and stored[NAN_KEY].isna().all(), "NaN is stored as NULL, read as NaN"
    test = [k for k in stored.columns if metric_split(k) == "test"]  # once, at the selected epoch: the summary
    assert test and info["summary"][SELECTED_EPOCH] == stored[test[0]].first_valid_index()
    for key in test:  # NaN: NULL in the store, null in the summary
        value = stored[key].dropna()
        assert info["summary"][key] == (pytest.approx(value.item()) if len(value) else None), key
    for key in stored.columns.drop(test):
        assert key in history.columns, key
        logged = pd.to_numeric(history[key], errors="coerce").astype(float)
        np.testing.assert_allclose(logged.to_numpy(), stored[key].to_numpy(), rtol=1e-6, equal_nan=True,
                                   err_msg=key)


def test_pull_wandb_tidy_frame(trained):
    trainer, _ = trained
    tidy = pull_wandb(trained[0].cfg.TRACKING.WANDB.DIR)
    assert list(tidy.columns) == ["run", "group", "config", "epoch", "metric", "value"]
    assert set(tidy["run"]) == {trainer.run_id}
    assert set(tidy["group"]) == {"grp-a"}
    assert tidy["config"].iloc[0]["LOSS.W"] == 0.37
    assert not tidy.duplicated(["run", "epoch", "metric"]).any(), "one row per epoch per metric"
    stored = trainer.store.metrics(trainer.run_id).dropna(subset=["value"])
    # exactly the metrics the store has a value for: NaN is absent, nothing else (e.g. table metadata) added
    assert set(tidy["metric"]) == set(stored["key"])
    assert NAN_KEY not in set(tidy["metric"])
    merged = stored.merge(tidy, left_on=["epoch", "key"], right_on=["epoch", "metric"], suffixes=("_s", "_w"))
    assert len(merged) == len(stored) == len(tidy)
    np.testing.assert_allclose(merged["value_w"], merged["value_s"], rtol=1e-6)
    # filters
    assert pull_wandb(trainer.cfg.TRACKING.WANDB.DIR, group="other").empty
    assert len(pull_wandb(trainer.cfg.TRACKING.WANDB.DIR, project="workbench")) == len(tidy)


def test_import_into_a_fresh_store(trained, tmp_path):
    trainer, _ = trained
    tidy = pull_wandb(trainer.cfg.TRACKING.WANDB.DIR)
    fresh = RunStore(tmp_path / "imported" / "w.db")
    ids = import_wandb_runs(tidy, fresh)
    assert ids == [trainer.run_id]
    run = fresh.run(trainer.run_id)
    assert run["status"] == "finished" and run["sweep_id"] == "grp-a"
    assert run["config"]["LOSS"]["W"] == 0.37
    # NaN (NAN_KEY, and a metric NaN at every epoch) is not logged, so not imported either
    original = numeric_store_frame(trainer.store, trainer.run_id).dropna(axis=1, how="all")
    assert NAN_KEY not in original
    imported = numeric_store_frame(fresh, trainer.run_id)
    pd.testing.assert_frame_equal(imported[sorted(original.columns)], original[sorted(original.columns)],
                                  check_exact=False, rtol=1e-6)
    assert set(imported.columns) == set(original.columns)
    # importing again is a no-op
    assert import_wandb_runs(tidy, fresh) == [trainer.run_id]
    assert len(fresh.metrics(trainer.run_id)) == int(imported.notna().sum().sum())  # test: one epoch only


def test_wandb_failure_does_not_stop_training(offline, monkeypatch):
    sinks: list[WandbSink] = []
    original_init = WandbSink._init

    def init_then_break(self, event):
        original_init(self, event)
        sinks.append(self)
        real_log, calls = self.run.log, []

        def flaky_log(*args, **kwargs):
            calls.append(args)
            if len(calls) > 1:
                raise ConnectionError("W&B went away")
            return real_log(*args, **kwargs)

        self.run.log = flaky_log

    monkeypatch.setattr(WandbSink, "_init", init_then_break)
    trainer = Trainer(wandb_cfg(offline), progress=False)
    try:
        assert trainer.fit() == "finished"
    finally:
        for sink in sinks:  # the sink stops using W&B after a failure; close the run for the next test
            if sink.run is not None:
                sink.run.finish()
    assert len(sinks) == 1 and sinks[0].failed and "W&B went away" in sinks[0].failed
    run = trainer.store.run(trainer.run_id)
    assert run["status"] == "finished" and run["epochs_done"] == EPOCHS
    assert sorted(trainer.store.metrics(trainer.run_id)["epoch"].unique()) == list(range(EPOCHS))


def test_wandb_import_failure_does_not_stop_training(offline, monkeypatch):
    """No usable wandb at all (init raises): training still runs and the store has everything."""

    def broken(self, event):
        raise RuntimeError("wandb is not installed")

    monkeypatch.setattr(WandbSink, "_init", broken)
    trainer = Trainer(wandb_cfg(offline), progress=False)
    assert trainer.fit() == "finished"
    assert trainer.store.run(trainer.run_id)["epochs_done"] == EPOCHS


def test_disabled_wandb_adds_no_sink(tmp_path):
    cfg = wandb_cfg(tmp_path, **{"TRACKING.WANDB.ENABLED": False})
    assert tracking.default_sinks(cfg, RunStore(cfg.TRACKING.STORE)) == []
    cfg = wandb_cfg(tmp_path, **{"TRACKING.WANDB.MODE": "disabled"})
    assert tracking.default_sinks(cfg, RunStore(cfg.TRACKING.STORE)) == []
    cfg = wandb_cfg(tmp_path)
    (sink,) = tracking.default_sinks(cfg, RunStore(cfg.TRACKING.STORE))
    assert isinstance(sink, WandbSink) and sink.mode == "offline" and sink.group == "grp-a"


# ---------------------------------------------------------------------- the online API path
# The W&B cloud cannot be reached from here, so ``pull_wandb(api=...)`` is tested with a small fake
# object that has the public API's shape: ``api.runs(path, filters)`` returning runs with ``id``,
# ``group``, ``config`` and ``scan_history()``.
class FakeRun:
    def __init__(self, run_id, group, config, rows):
        self.id, self.group, self.config, self._rows = run_id, group, config, rows

    def scan_history(self):
        return iter(self._rows)


class FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.calls = []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        group = (filters or {}).get("group")
        return [r for r in self._runs if group is None or r.group == group]


def test_pull_wandb_online_with_a_fake_api():
    rows_a = [{"_step": e, "_runtime": 1.0 + e, "epoch": e, "core/val_loss": 1.0 / (e + 1),
               "core/val_chain_acc": 0.1 * e, "note": "text"} for e in range(3)]
    rows_b = [{"_step": 0, "epoch": 0, "core/val_loss": 0.5, "core/val_chain_acc": math.nan}]
    api = FakeApi([FakeRun("ra", "g1", {"LOSS.W": 0.3}, rows_a), FakeRun("rb", "g2", {"LOSS.W": 0.6}, rows_b)])
    tidy = pull_wandb(project="proj", entity="me", group="g1", api=api)
    assert api.calls == [("me/proj", {"group": "g1"})]
    assert list(tidy.columns) == ["run", "group", "config", "epoch", "metric", "value"]
    assert set(tidy["run"]) == {"ra"} and set(tidy["metric"]) == {"core/val_loss", "core/val_chain_acc"}
    assert len(tidy) == 6 and not tidy.duplicated(["run", "epoch", "metric"]).any()
    loss = tidy[tidy.metric == "core/val_loss"].sort_values("epoch")["value"].tolist()
    assert loss == pytest.approx([1.0, 0.5, 1 / 3])
    assert tidy["config"].iloc[0] == {"LOSS.W": 0.3}

    everything = pull_wandb(project="proj", api=api)
    assert api.calls[-1] == ("proj", None)
    # rb's NaN chain accuracy is absent, not a row with NaN
    rb = everything[everything.run == "rb"]
    assert set(rb["metric"]) == {"core/val_loss"}
    with pytest.raises(ValueError):
        pull_wandb(api=api)  # neither offline files nor a project

"""RunStore: runs, per-epoch transactions, idempotent re-writes, NaN as NULL, concurrent writers."""

from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3

import numpy as np
import pandas as pd
import pytest

from workbench.config import Config
from workbench.store import RunStore, StoreError, metric_split


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs" / "w.db")


def curves_frame(epoch: int = 0, n_tau: int = 5) -> pd.DataFrame:
    rows = []
    for rank in ("genus", "species"):
        for curve in ("coverage", "accuracy"):
            for tau in np.linspace(0, 1, n_tau):
                rows.append({"split": "val", "rank": rank, "curve": curve, "tau": float(tau),
                             "value": float(tau) * 0.5 + epoch * 0.01})
    return pd.DataFrame(rows)


def count(store, table: str, run_id: str) -> int:
    with sqlite3.connect(store.path) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]


# ---------------------------------------------------------------------- runs
def test_create_update_read(store):
    cfg = Config().to_dict()
    rid = store.create_run(cfg, name="first", parent_id="p0", sweep_id="s1")
    assert store.has_run(rid) and not store.has_run("nope")
    run = store.run(rid)
    assert run["name"] == "first" and run["status"] == "queued"
    assert run["config"] == cfg and run["parent_id"] == "p0" and run["sweep_id"] == "s1"
    store.update_run(rid, status="running", pid=123)
    assert store.run(rid)["status"] == "running" and store.run(rid)["pid"] == 123
    store.update_run(rid, status="failed", error="boom")
    assert store.run(rid)["error"] == "boom"
    with pytest.raises(StoreError):
        store.update_run(rid, status="exploded")
    with pytest.raises(StoreError):
        store.update_run(rid, bogus=1)
    with pytest.raises(StoreError):
        store.update_run("missing", status="running")
    with pytest.raises(StoreError) as e:
        store.run("missing")
    assert "missing" in str(e.value)
    other = store.create_run(cfg, run_id="explicit-id")
    assert other == "explicit-id"
    assert set(store.runs()["id"]) == {rid, other}
    assert list(store.runs(sweep_id="s1")["id"]) == [rid]


def test_metric_split():
    assert metric_split("core/val_loss") == "val"
    assert metric_split("core/train_partial_chain_acc") == "train"
    assert metric_split("train/acc/genus") == "train"
    assert metric_split("val/loss/species") == "val"
    assert metric_split("schedule/null_inclusion_prob") == "run"


def test_write_and_read_epoch(store):
    rid = store.create_run({})
    for epoch in range(3):
        store.write_epoch(rid, epoch, {"core/val_loss": 1.0 / (epoch + 1), "core/train_loss": 2.0 - epoch,
                                       "schedule/null_inclusion_prob": epoch / 2}, curves_frame(epoch))
    long = store.metrics(rid)
    assert len(long) == 9
    assert set(long.columns) == {"run_id", "epoch", "split", "key", "value"}
    assert dict(zip(long[long.epoch == 1].key, long[long.epoch == 1].split)) == {
        "core/val_loss": "val", "core/train_loss": "train", "schedule/null_inclusion_prob": "run"}
    assert store.run(rid)["epochs_done"] == 3
    assert store.last_epoch(rid) == 2
    assert len(store.metrics(rid, keys=["core/val_loss"])) == 3
    assert list(store.metrics(rid, since_epoch=2)["epoch"].unique()) == [2]

    wide = store.metrics_wide([rid])
    assert wide.shape == (3, 2 + 3)
    assert list(wide["epoch"]) == [0, 1, 2]
    assert wide["core/val_loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])

    for epoch in range(3):
        got = store.curves(rid, epoch=epoch)
        expected = curves_frame(epoch).drop(columns="split").sort_values(["rank", "curve", "tau"])
        pd.testing.assert_frame_equal(
            got.drop(columns="epoch").reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    assert len(store.curves(rid)) == 3 * len(curves_frame())
    assert store.curves(rid, split="train").empty


def test_write_epoch_is_one_transaction(store):
    rid = store.create_run({})
    store.write_epoch(rid, 0, {"core/val_loss": 1.0}, curves_frame())
    bad = curves_frame()
    bad["tau"] = bad["tau"].astype(object)
    bad.loc[len(bad) // 2, "tau"] = "not a number"  # fails halfway through the curve rows
    with pytest.raises(ValueError):
        store.write_epoch(rid, 1, {"core/val_loss": 0.5, "core/train_loss": 0.7}, bad, health={"x": "y"})
    assert store.last_epoch(rid) == 0
    assert store.metrics(rid, since_epoch=1).empty, "no partial metrics rows for the failed epoch"
    assert store.curves(rid, epoch=1).empty
    assert store.run(rid)["epochs_done"] == 1
    assert store.run(rid)["health"] is None
    # a frame without the curve columns fails the same way
    with pytest.raises(KeyError):
        store.write_epoch(rid, 1, {"core/val_loss": 0.5}, bad.drop(columns="curve"))
    assert store.metrics(rid, since_epoch=1).empty


def test_rewriting_an_epoch_is_idempotent(store):
    rid = store.create_run({})
    store.write_epoch(rid, 0, {"core/val_loss": 1.0, "core/train_loss": 2.0}, curves_frame())
    store.write_epoch(rid, 1, {"core/val_loss": 0.9, "core/train_loss": 1.9}, curves_frame(1))
    n_metrics, n_curves = count(store, "metrics", rid), count(store, "curves", rid)
    store.write_epoch(rid, 1, {"core/val_loss": 0.8, "core/train_loss": 1.8}, curves_frame(1))
    assert count(store, "metrics", rid) == n_metrics
    assert count(store, "curves", rid) == n_curves
    m = store.metrics(rid, keys=["core/val_loss"])
    assert m["value"].tolist() == pytest.approx([1.0, 0.8]), "the re-written epoch replaces the old values"
    assert store.run(rid)["epochs_done"] == 2


def test_nan_is_stored_as_null(store):
    rid = store.create_run({})
    store.write_epoch(rid, 0, {"core/val_partial_chain_acc": float("nan"), "core/val_loss": 1.0})
    with sqlite3.connect(store.path) as con:
        raw = con.execute("SELECT value FROM metrics WHERE key = 'core/val_partial_chain_acc'").fetchone()[0]
    assert raw is None
    long = store.metrics(rid)
    value = long.loc[long.key == "core/val_partial_chain_acc", "value"].iloc[0]
    assert math.isnan(value)
    wide = store.metrics_wide([rid])
    assert "core/val_partial_chain_acc" in wide.columns and math.isnan(wide["core/val_partial_chain_acc"].iloc[0])
    assert wide["core/val_loss"].iloc[0] == 1.0


def test_metrics_wide_several_runs(store):
    a, b = store.create_run({}), store.create_run({})
    for epoch in range(4):
        store.write_epoch(a, epoch, {"k1": epoch, "k2": -epoch})
    for epoch in range(2):
        store.write_epoch(b, epoch, {"k1": 10 + epoch})
    wide = store.metrics_wide([a, b])
    assert wide.shape == (6, 4)
    assert wide[wide.run_id == b]["k2"].isna().all()
    assert store.metrics_wide(["nobody"]).empty


def test_stop_flag(store):
    rid = store.create_run({})
    assert not store.stop_requested(rid)
    store.request_stop(rid)
    assert store.stop_requested(rid)
    assert not store.stop_requested("someone-else")


def test_runs_with_config_columns(store):
    cfg = Config().with_overrides({"LOSS.W": 0.7, "DATA.NULL_VALUES": {"genus": ["Rodent"]}})
    rid = store.create_run(cfg.to_dict())
    runs = store.runs(with_config=True)
    assert {"LOSS.W", "SCHEDULE.NULL_MASKING.END_EPOCH", "TRAIN.EPOCHS"} <= set(runs.columns)
    row = runs.set_index("id").loc[rid]
    assert row["LOSS.W"] == 0.7
    assert row["SCHEDULE.NULL_MASKING.END_EPOCH"] == cfg.SCHEDULE.NULL_MASKING.END_EPOCH
    assert "LOSS.W" not in store.runs().columns


def test_delete_run(store):
    rid = store.create_run({})
    store.write_epoch(rid, 0, {"a": 1.0}, curves_frame())
    store.update_run(rid, status="finished")  # a queued or running run is refused (test_store_tracker.py)
    store.delete_run(rid)
    assert not store.has_run(rid)
    assert count(store, "metrics", rid) == 0 and count(store, "curves", rid) == 0


# ---------------------------------------------------------------------- concurrency
def _writer(path: str, run_id: str, epochs: int) -> None:
    store = RunStore(path)
    curves = curves_frame(n_tau=21)
    for epoch in range(epochs):
        metrics = {f"m/{k}": float(epoch * 100 + k) for k in range(20)}
        store.write_epoch(run_id, epoch, metrics, curves)
        store.update_run(run_id, status="running")


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "runs" / "w.db"
    store = RunStore(path)
    ids = [store.create_run({}, run_id=f"proc{i}") for i in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), rid, 30)) for rid in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0], "a writer failed (database is locked?)"
    for rid in ids:
        m = store.metrics(rid)
        assert len(m) == 30 * 20
        assert sorted(m.epoch.unique()) == list(range(30))
        assert count(store, "curves", rid) == 30 * len(curves_frame(n_tau=21))
        assert store.run(rid)["epochs_done"] == 30


def _create(path: str, run_id: str, barrier) -> None:
    barrier.wait(timeout=60)  # all imported: open the new store at the same moment
    RunStore(path).create_run({}, run_id=run_id)


def test_processes_creating_one_new_store_at_once(tmp_path):
    """The schema, its version and WAL mode are set once; a process that finds the store half-made waits
    for it instead of taking it for someone else's database."""
    path = tmp_path / "runs" / "new.db"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_create, args=(str(path), f"p{i}", barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(RunStore(path).runs()["id"]) == ["p0", "p1", "p2", "p3"]

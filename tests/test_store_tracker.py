"""The store side of the tracker (issue 17): schema 3 (tags, notes, archive, summaries), the v2 -> v3
migration, delete with its plan, metric_summary == summaries.metric_values (a property test over random
stores), the reused connection, and bench_store's smoke mode. Real SQLite files in tmp_path throughout."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.names import SELECT_BY_DEFAULT
from workbench.store import (
    NOTES_MAX, SCHEMA_VERSION, TAG_MAX, DeletePlan, RunStore, StoreError, validate_tag,
)
from workbench.summaries import HOWS, metric_values

REPO = Path(__file__).resolve().parents[1]
TABLES = ("runs", "metrics", "curves", "health", "tags", "summaries")

# The summaries of every run and key by window functions: an independent reference for the store's one-pass
# summary_rows and its per-epoch upserts (same columns as the summaries table)
SUMMARY_SELECT = """
SELECT run_id, MIN(split), key,
       MAX(CASE WHEN r_last = 1 THEN epoch END), MAX(CASE WHEN r_last = 1 THEN value END),
       MIN(value), MAX(CASE WHEN r_lo = 1 AND value IS NOT NULL THEN epoch END),
       MAX(value), MAX(CASE WHEN r_hi = 1 AND value IS NOT NULL THEN epoch END)
FROM (SELECT run_id, split, key, epoch, value,
             ROW_NUMBER() OVER (PARTITION BY run_id, key ORDER BY epoch DESC) AS r_last,
             ROW_NUMBER() OVER (PARTITION BY run_id, key ORDER BY value IS NULL, value, epoch) AS r_lo,
             ROW_NUMBER() OVER (PARTITION BY run_id, key ORDER BY value IS NULL, value DESC, epoch) AS r_hi
      FROM metrics)
GROUP BY run_id, key
"""

# The schema of version 2, as workbench wrote it before issue 17 (kept here: the migration must take it as it was)
V2_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    config TEXT NOT NULL, parent_id TEXT, sweep_id TEXT, error TEXT, pid INTEGER, epochs_done INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0, health TEXT, ranks TEXT, environment TEXT);
CREATE TABLE metrics (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, split TEXT NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, epoch, split, key));
CREATE TABLE curves (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, split TEXT NOT NULL, rank TEXT NOT NULL,
    curve TEXT NOT NULL, tau REAL NOT NULL, value REAL, PRIMARY KEY (run_id, epoch, split, rank, curve, tau));
CREATE TABLE health (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, "check" TEXT NOT NULL, message TEXT,
    PRIMARY KEY (run_id, epoch, "check"));
CREATE INDEX runs_sweep ON runs (sweep_id);
PRAGMA user_version = 2;
"""


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs" / "w.db")


def snapshot(path: Path) -> dict:
    """Every row of every table (a fresh connection of its own), in a fixed order: to prove a refused
    command changed nothing (also used by tests/test_cli_tracker.py)."""
    con = sqlite3.connect(path)
    try:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        con.close()


def rows_of(path: Path, run_id: str) -> dict:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t} WHERE {'id' if t == 'runs' else 'run_id'} = ?",
                               (run_id,)).fetchone()[0] for t in TABLES}
    finally:
        con.close()


def curves(n_tau: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{"split": "val", "rank": r, "curve": c, "tau": t, "value": t / 2}
                         for r in ("genus", "species") for c in ("coverage", "selective_accuracy")
                         for t in np.linspace(0, 1, n_tau)])


def same_frame(got: pd.DataFrame, want: pd.DataFrame, context: str = "") -> None:
    """Equal values, index and column set (column order may differ), NaN where NaN."""
    assert got.index.name == want.index.name == "run_id", context
    assert sorted(got.columns) == sorted(want.columns), context
    assert list(got.index) == list(want.index), context
    if len(got.columns):
        pd.testing.assert_frame_equal(got[sorted(got.columns)], want[sorted(want.columns)], check_index_type=False,
                                      check_column_type=False, check_dtype=False, obj=context)


# ---------------------------------------------------------------------- tags
ODD_TAGS = ['it\'s "quoted"', "<b>bold</b><script>alert(1)</script>", "🦊 fox", "**md** _x_ `code`", "a" * TAG_MAX,
            "Ünïcødé  spaced"]


def test_odd_tags_are_stored_inert_and_returned_exactly(store):
    run = store.create_run({}, run_id="r1")
    other = store.create_run({}, run_id="r2")
    before = store.data_version()
    assert store.add_tags(run, ODD_TAGS + ["  padded  "]) == sorted(ODD_TAGS + ["padded"])
    assert store.data_version() != before, "tagging bumps runs.updated"
    assert store.add_tags(run, ["padded"]) == sorted(ODD_TAGS + ["padded"]), "adding a tag twice keeps one"
    store.add_tags(other, ["🦊 fox", "b"])
    assert store.tags() == {run: sorted(ODD_TAGS + ["padded"]), other: ["b", "🦊 fox"]}
    assert store.tags([other]) == {other: ["b", "🦊 fox"]}
    assert store.all_tags() == sorted(set(ODD_TAGS) | {"padded", "b"})
    table = store.runs().set_index("id")
    assert table.loc[run, "tags"] == sorted(ODD_TAGS + ["padded"]) and table.loc[other, "tags"] == ["b", "🦊 fox"]
    assert store.remove_tags(run, ["padded", "never-there"]) == sorted(ODD_TAGS)
    assert store.remove_tags(other, ["b", "🦊 fox"]) == [] and other not in store.tags()
    assert store.runs().set_index("id").loc[other, "tags"] == []


@pytest.mark.parametrize("tag, message", [
    ("", "tag '' is empty; a tag is 1 to 64 characters"),
    ("   ", "tag '   ' is empty; a tag is 1 to 64 characters"),
    ("a" * (TAG_MAX + 1), f"tag {'a' * (TAG_MAX + 1)!r} is 65 characters; a tag is 1 to 64 characters"),
    ("two\nlines", r"tag 'two\nlines' must be printable text; a control character '\n' at position 3"),
    ("tab\there", r"tag 'tab\there' must be printable text; a control character '\t' at position 3"),
    ("nul\x00", r"tag 'nul\x00' must be printable text; a control character '\x00' at position 3"),
    ("baseline\n", r"tag 'baseline\n' must be printable text; a control character '\n' at position 8"),
    ("esc\x1b[31m", r"tag 'esc\x1b[31m' must be printable text; a control character '\x1b' at position 3"),
    (5, "tag must be text, got 5"),
])
def test_bad_tags_are_refused_and_nothing_changes(store, tag, message):
    run = store.create_run({}, run_id="r1")
    store.add_tags(run, ["keep"])
    before = snapshot(store.path)
    with pytest.raises(StoreError) as e:
        store.add_tags(run, ["fine", tag])  # a good tag beside a bad one is not written either
    assert str(e.value) == message
    with pytest.raises(StoreError):
        store.remove_tags(run, [tag])
    assert snapshot(store.path) == before
    if isinstance(tag, str) and tag.strip() and len(tag) <= TAG_MAX:
        with pytest.raises(StoreError, match="must be printable"):
            validate_tag(tag)


def test_tagging_a_missing_run_is_an_error(store):
    with pytest.raises(StoreError, match="no run with id 'ghost'"):
        store.add_tags("ghost", ["x"])
    assert store.all_tags() == []


# ---------------------------------------------------------------------- notes, rename, archive
def test_notes_rename_archive(store):
    run = store.create_run({}, run_id="r1", name="first")
    store.create_run({}, run_id="r2")
    text = "Line one\n\tindented <b>not bold</b> 🦊\r\n**not markdown**"
    store.set_notes(run, text)
    assert store.runs().set_index("id").loc[run, "notes"] == text
    assert store.runs().set_index("id").loc["r2", "notes"] is None
    for clear in ("", None, "  \n "):
        store.set_notes(run, "x")
        store.set_notes(run, clear)
        assert store.runs().set_index("id").loc[run, "notes"] is None
    before = snapshot(store.path)
    with pytest.raises(StoreError, match=f"notes must be at most {NOTES_MAX:,} characters, got 20,001"):
        store.set_notes(run, "x" * (NOTES_MAX + 1))
    with pytest.raises(StoreError, match=r"notes must be printable text \(newlines and tabs are fine\); a control "
                                         r"character '\\x00' at position 1"):
        store.set_notes(run, "a\x00b")
    with pytest.raises(StoreError, match="run name must not be empty"):
        store.rename(run, "  ")
    with pytest.raises(StoreError, match="run name must be printable text"):
        store.rename(run, "a\nb")
    assert snapshot(store.path) == before
    store.rename(run, "<i>renamed</i> 🦊")
    assert store.run(run)["name"] == "<i>renamed</i> 🦊" and store.run(run)["id"] == run
    version = store.data_version()
    store.set_archived(run)
    assert store.data_version() != version
    runs = store.runs()
    assert runs.set_index("id")["archived"].to_dict() == {run: True, "r2": False}
    assert runs["archived"].dtype == bool
    assert store.runs(include_archived=False)["id"].tolist() == ["r2"]
    store.set_archived(run, False)
    assert store.runs(include_archived=False)["id"].tolist() == ["r2", run]
    with pytest.raises(StoreError, match="no run with id 'ghost'"):
        store.set_archived("ghost")


# ---------------------------------------------------------------------- delete
def _files(store: RunStore, run_id: str) -> dict:
    """A finished run's files beside the store: checkpoint folder, config, log, W&B folder."""
    folder = store.run_folder(run_id)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"c" * 3000)
    (folder / "best.pt").write_bytes(b"b" * 2000)
    config = store.run_file("configs", run_id, ".yaml")
    config.parent.mkdir(exist_ok=True)
    config.write_text("LOSS: {W: 0.3}\n")
    log = store.run_file("logs", run_id, ".log")
    log.parent.mkdir(exist_ok=True)
    log.write_text("epoch 0\n")
    wandb = store.path.parent / "wandb" / f"offline-run-20260101_120000-{run_id}"
    wandb.mkdir(parents=True)
    (wandb / "run.wandb").write_bytes(b"w" * 100)
    return {"folder": folder, "config": config, "log": log, "wandb": wandb}


def _finished_run(store: RunStore, run_id: str, **kw) -> str:
    store.create_run({"LOSS": {"W": 0.3}}, run_id=run_id, name=f"name-{run_id}", **kw)
    for epoch in range(3):
        store.write_epoch(run_id, epoch, {"core/val_loss": 1.0 / (epoch + 1), "core/val_partial_chain_acc": 0.5},
                          curves(), health={"plateau": "flat"} if epoch == 2 else {})
    store.write_once(run_id, "test", 1, {"core/test_loss": 0.4})
    store.add_tags(run_id, ["a", "b"])
    store.update_run(run_id, status="finished")
    return run_id


def test_delete_plan_names_rows_files_and_children(store):
    run = _finished_run(store, "abc")
    files = _files(store, run)
    _finished_run(store, "abc2", parent_id=run)
    _finished_run(store, "x-abc")  # its W&B folder also ends in "-abc": not abc's
    _files(store, "x-abc")
    plan = store.delete_plan(run)
    assert isinstance(plan, DeletePlan)
    assert (plan.run_id, plan.name, plan.status, plan.epochs) == (run, "name-abc", "finished", 3)
    assert (plan.metric_rows, plan.curve_rows, plan.health_rows, plan.tags) == (7, 36, 1, ["a", "b"])
    assert plan.paths == [files["folder"], files["config"], files["log"], files["wandb"]]
    assert plan.bytes == 3000 + 2000 + len("LOSS: {W: 0.3}\n") + len("epoch 0\n") + 100
    assert plan.children == ["abc2"]
    root = store.path.parent
    assert plan.describe() == (
        f"run abc (name 'name-abc', finished, 3 epochs): 7 metric rows, 36 curve rows, 1 health row, 2 tags "
        f"('a', 'b'), and 4 files (5.1 kB): {root}/checkpoints/abc/, {root}/configs/abc.yaml, {root}/logs/abc.log, "
        f"{root}/wandb/offline-run-20260101_120000-abc/. Phase-2 runs abc2 keep their rows; their parent link "
        "will dangle.")
    bare = store.create_run({}, run_id="bare", name="it's <b>")
    store.update_run(bare, status="failed")
    assert store.delete_plan(bare).describe() == ("run bare (name \"it's <b>\", failed, 0 epochs): 0 metric rows, "
                                                  "0 curve rows, 0 health rows, 0 tags, and no files.")


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_refuses_an_active_run_and_changes_nothing(store, status):
    run = _finished_run(store, "abc")
    _files(store, run)
    store.update_run(run, status=status)
    before = snapshot(store.path)
    files = sorted(p for p in store.path.parent.rglob("*") if "w.db" not in p.name)
    with pytest.raises(StoreError) as e:
        store.delete_run(run)
    assert str(e.value) == (f"run abc is {status}: stop it first (Stop on the Train page, or wait for it to end); "
                            "nothing was deleted")
    assert snapshot(store.path) == before
    assert sorted(p for p in store.path.parent.rglob("*") if "w.db" not in p.name) == files


def test_delete_removes_every_row_and_file_and_nothing_outside(store, tmp_path):
    run = _finished_run(store, "abc")
    keep = _finished_run(store, "keep")
    files = _files(store, run)
    keep_files = _files(store, keep)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.log").write_text("mine")
    files["log"].unlink()
    files["log"].symlink_to(outside / "precious.log")  # a link to a file outside the store's folder
    (files["folder"] / "elsewhere").symlink_to(outside)  # a link inside the run folder to a folder outside
    kept = snapshot(store.path)
    assert rows_of(store.path, run) == {"runs": 1, "metrics": 7, "curves": 36, "health": 1, "tags": 2, "summaries": 3}
    plan = store.delete_run(run)
    assert plan.paths == [files["folder"], files["config"], files["log"], files["wandb"]]
    assert rows_of(store.path, run) == dict.fromkeys(TABLES, 0)
    assert not any(p.exists() or p.is_symlink() for p in files.values())
    assert (outside / "precious.log").read_text() == "mine" and sorted(outside.iterdir()) == [outside / "precious.log"]
    assert all(p.exists() for p in keep_files.values())
    after = snapshot(store.path)
    for table in TABLES:
        assert after[table] == [r for r in kept[table] if run not in r[:1]], table
    with pytest.raises(StoreError, match="no run with id 'abc'"):
        store.delete_run(run)


def test_delete_leaves_a_folder_outside_the_store_alone_and_says_so(store, tmp_path):
    run = _finished_run(store, "abc")
    files = _files(store, run)
    checkpoints = files["folder"].parent
    outside = tmp_path / "elsewhere"
    checkpoints.rename(outside)
    checkpoints.symlink_to(outside)  # checkpoints/ now leads out of the store's folder
    with pytest.raises(StoreError) as e:
        store.delete_run(run)
    root = store.path.parent.resolve()
    assert str(e.value) == (f"run abc: its rows were deleted, but {files['folder']} (it lies outside the store's "
                            f"folder {root}: left alone) could not be removed; remove by hand what should go")
    assert rows_of(store.path, run) == dict.fromkeys(TABLES, 0)
    assert sorted(p.name for p in (outside / "abc").iterdir()) == ["best.pt", "checkpoint.pt"], "untouched"
    assert not files["config"].exists() and not files["log"].exists() and not files["wandb"].exists()


# ---------------------------------------------------------------------- migration v2 -> v3
def _v2_store(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.executescript(V2_SCHEMA)
    con.executemany("INSERT INTO runs (id, name, status, created, updated, config) VALUES (?, ?, ?, ?, ?, '{}')",
                    [("r1", "one", "finished", 1.0, 1.0), ("r2", "two", "failed", 2.0, 2.0)])
    rows = [("r1", e, "val", "core/val_loss", v) for e, v in enumerate([0.9, 0.5, None, 0.5, 0.7])]
    rows += [("r1", e, "val", SELECT_BY_DEFAULT, v) for e, v in enumerate([0.1, 0.6, 0.6, None, 0.2])]
    rows += [("r1", 1, "test", "core/test_loss", 0.55), ("r2", 0, "val", SELECT_BY_DEFAULT, None),
             ("r2", 0, "train", "core/train_loss", 2.0), ("r2", 1, "train", "core/train_loss", 1.0)]
    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
    con.execute("INSERT INTO curves VALUES ('r1', 0, 'val', 'genus', 'coverage', 0.5, 0.25)")
    con.commit()
    con.close()
    return path


def test_v2_store_reads_read_only_then_migrates_without_losing_a_row(tmp_path):
    path = _v2_store(tmp_path / "runs" / "w.db")
    before = snapshot(path)
    reader = RunStore.open_existing(path)
    runs = reader.runs()
    assert runs["tags"].tolist() == [[], []] and runs["notes"].tolist() == [None, None]
    assert runs["archived"].tolist() == [False, False] and reader.runs(include_archived=False)["id"].tolist() == ["r2", "r1"]
    assert reader.tags() == {} and reader.all_tags() == []
    for how in HOWS:  # computed from the metric rows: there is no summaries table
        same_frame(reader.metric_summary(how), metric_values(reader.metrics(), how), how)
    assert reader.summaries().set_index("key").loc["core/val_loss"].to_dict() == {
        "run_id": "r1", "split": "val", "last_epoch": 4, "last": 0.7, "min": 0.5, "min_epoch": 1, "max": 0.9,
        "max_epoch": 0}
    with pytest.raises(StoreError, match="read-only"):
        reader.add_tags("r1", ["x"])
    assert snapshot(path) == before, "a reader does not migrate"

    store = RunStore(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    rebuilt = sorted(con.execute(SUMMARY_SELECT).fetchall())
    con.close()
    after = snapshot(path)
    assert after["runs"] == [row + (None, 0) for row in before["runs"]], "notes NULL, archived 0"
    assert {t: after[t] for t in before if t != "runs"} == {t: before[t] for t in before if t != "runs"}
    assert after["tags"] == [] and sorted(after["summaries"]) == rebuilt and len(rebuilt) == 5
    assert store.summaries().set_index(["run_id", "key"]).loc[("r1", SELECT_BY_DEFAULT)].to_dict() == {
        "split": "val", "last_epoch": 4, "last": 0.2, "min": 0.1, "min_epoch": 0, "max": 0.6, "max_epoch": 1}
    for how in HOWS:
        same_frame(store.metric_summary(how), metric_values(store.metrics(), how), how)
    assert store.add_tags("r1", ["new"]) == ["new"]


# ---------------------------------------------------------------------- metric_summary == metric_values
KEYS = ("core/val_loss", SELECT_BY_DEFAULT, "val/acc/genus", "core/train_loss", "schedule/null_inclusion_prob")
TEST_KEYS = ("core/test_loss", "test/acc/genus")
VALUES = st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, math.nan, math.nan, math.inf])
EPOCH_WRITE = st.tuples(st.integers(0, 5), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=len(KEYS)))
TEST_WRITE = st.tuples(st.integers(0, 5), st.dictionaries(st.sampled_from(TEST_KEYS), VALUES, min_size=1))
RUN_OPS = st.lists(st.one_of(EPOCH_WRITE, st.tuples(st.just("test"), TEST_WRITE)), max_size=8)


def expected_summary(store: RunStore, how: str, keys, run_ids, select_by) -> pd.DataFrame:
    """What metric_summary must return, from workbench.summaries.metric_values over the metric rows.

    ``selected`` picks each run's epoch by its select_by key even when ``keys`` leaves it out (then its
    column is left out too), so it is metric_values of the rows of ``keys`` and that key, with ``keys``."""
    if how != "selected":
        return metric_values(store.metrics(run_ids, keys), how)
    present = store.metrics(run_ids)["run_id"].unique()
    groups: dict[str, list] = {}
    for run in present:
        by = select_by.get(run, SELECT_BY_DEFAULT) if isinstance(select_by, dict) else select_by
        groups.setdefault(by, []).append(run)
    parts = [metric_values(store.metrics(runs, None if keys is None else [*keys, by]), "selected", by, keys=keys)
             for by, runs in groups.items()]
    if not parts:
        return pd.DataFrame(index=pd.Index([], name="run_id"))
    return pd.concat(parts).sort_index().rename_axis(index="run_id", columns=None)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store file for every example (emptied at each): creating a store per example costs fsyncs."""
    return RunStore(tmp_path_factory.mktemp("prop") / "w.db")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(RUN_OPS, min_size=1, max_size=4), data=st.data())
def test_metric_summary_equals_metric_values_over_random_stores(shared_store, ops, data):
    store = shared_store
    with store._connect(write=True) as con:
        for table in TABLES:
            con.execute(f"DELETE FROM {table}")
    runs = [store.create_run({}, run_id=f"r{i}") for i in range(len(ops))]
    for run, run_ops in zip(runs, ops):
        for epoch, values in run_ops:
            if epoch == "test":
                store.write_once(run, "test", *values)
            else:  # an epoch at or below one already written is a re-report (resume)
                store.write_epoch(run, epoch, values)
    con = sqlite3.connect(store.path)
    rebuilt = sorted(con.execute(SUMMARY_SELECT).fetchall(), key=repr)
    kept = sorted(con.execute("SELECT * FROM summaries").fetchall(), key=repr)
    con.close()
    assert kept == rebuilt, "summaries kept by the writers == summaries rebuilt from the metric rows"
    all_keys = list(KEYS + TEST_KEYS)
    for how in HOWS:
        same_frame(store.metric_summary(how), metric_values(store.metrics(), how), f"{how}, every key")
        keys = data.draw(st.none() | st.lists(st.sampled_from(all_keys), min_size=1, unique=True), label="keys")
        if keys is not None and how in ("best", "min", "max"):
            keys = [k for k in keys if k not in TEST_KEYS] or None
        run_ids = data.draw(st.none() | st.lists(st.sampled_from(runs), unique=True), label="run_ids")
        select_by = data.draw(st.sampled_from(all_keys) | st.dictionaries(st.sampled_from(runs),
                                                                          st.sampled_from(all_keys)), label="select_by")
        same_frame(store.metric_summary(how, keys, run_ids, select_by),
                   expected_summary(store, how, keys, run_ids, select_by), f"{how} {keys} {run_ids} {select_by}")


def test_summaries_follow_resume_and_test_rewrites(store):
    run = store.create_run({}, run_id="r1")
    for epoch, value in enumerate([0.2, 0.8, 0.8, 0.4]):
        store.write_epoch(run, epoch, {SELECT_BY_DEFAULT: value, "core/val_loss": 1 - value})
    row = store.summaries(run, [SELECT_BY_DEFAULT]).iloc[0]
    assert (row["last_epoch"], row["last"], row["max"], row["max_epoch"], row["min"], row["min_epoch"]) == (
        3, 0.4, 0.8, 1, 0.2, 0)
    store.write_epoch(run, 1, {SELECT_BY_DEFAULT: 0.1, "core/val_loss": 0.9})  # resumed: epoch 1 again, worse
    row = store.summaries(run, [SELECT_BY_DEFAULT]).iloc[0]
    assert (row["last"], row["max"], row["max_epoch"], row["min"], row["min_epoch"]) == (0.4, 0.8, 2, 0.1, 1)
    store.write_once(run, "test", 2, {"core/test_loss": 0.3})
    store.write_once(run, "test", 3, {"core/test_loss": 0.6})  # a resumed run selected another epoch
    row = store.summaries(run, ["core/test_loss"]).iloc[0]
    assert (row["split"], row["last_epoch"], row["last"], row["min"], row["max"]) == ("test", 3, 0.6, 0.6, 0.6)
    assert store.metric_summary("selected", ["core/val_loss"]).loc[run, "core/val_loss"] == pytest.approx(0.2)


# ---------------------------------------------------------------------- the reused connection
def test_one_connection_per_thread_and_process(store):
    run = store.create_run({}, run_id="r1")
    first = store._connection()
    store.write_epoch(run, 0, {"core/val_loss": 1.0})
    store.runs()
    assert store._connection() is first, "one connection for this thread, reused"
    seen = []
    thread = threading.Thread(target=lambda: seen.append((store._connection(), store.last_epoch(run))))
    thread.start()
    thread.join()
    assert seen[0][0] is not first and seen[0][1] == 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a connection of its own; it writes, then exits without closing the parent's
        ok = store._connection() is not first
        store.write_epoch(run, 1, {"core/val_loss": 0.5})
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1", "the forked child opened its own connection"
    assert store.last_epoch(run) == 1 and store._connection() is first
    store.close()
    assert not Path(f"{store.path}-wal").exists(), "closing the last connection folds the WAL in"
    assert store.last_epoch(run) == 1, "usable after close"


def test_no_read_transaction_is_held_between_calls(store):
    run = store.create_run({}, run_id="r1")
    for epoch in range(3):
        store.write_epoch(run, epoch, {"core/val_loss": 1.0}, curves())
    store.runs()
    store.metrics()
    con = sqlite3.connect(store.path)
    busy, log, done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    con.close()
    assert (busy, log, done) == (0, 0, 0), "an idle kept connection must not pin the WAL"


def test_an_error_rolls_back_the_whole_epoch(store):
    run = store.create_run({}, run_id="r1")
    bad = curves().assign(tau="not a number")
    with pytest.raises(ValueError):
        store.write_epoch(run, 0, {"core/val_loss": 1.0}, bad)
    assert rows_of(store.path, run) == {**dict.fromkeys(TABLES, 0), "runs": 1}
    store.write_epoch(run, 0, {"core/val_loss": 1.0})  # the connection is still good
    assert rows_of(store.path, run)["summaries"] == 1


def test_a_replaced_or_removed_store_file_is_noticed(store, tmp_path):
    store.create_run({}, run_id="old")
    assert store.runs()["id"].tolist() == ["old"]
    other = RunStore(tmp_path / "other" / "w.db")
    other.create_run({}, run_id="new")
    other.close()
    # (SQLite cannot tell a stale -wal from the new file's: whoever swaps a file in folds the WAL in first)
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
    con.close()
    os.replace(other.path, store.path)  # swapped under the open store (a restored backup)
    assert store.runs()["id"].tolist() == ["new"], "the kept connection was dropped, the new file read"
    store.path.unlink()
    with pytest.raises(StoreError, match="the store file is gone"):
        store.runs()
    assert not store.path.exists(), "nothing was created in its place"


# ---------------------------------------------------------------------- bench_store's smoke mode (as test_bench_smoke)
def test_bench_store_smoke_mode_runs():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_store.py"), "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "write_epoch / raw" in lines[1], proc.stdout
    assert [line.split()[:2] for line in lines[2:]] == [["26", "metrics"], ["26", "metrics"]], proc.stdout
    assert all(line.endswith(("meets the 2x aim)", "misses the 2x aim)")) for line in lines[2:]), proc.stdout


def test_opening_another_store_object_never_drops_the_locks_of_a_kept_connection(store):
    """Regression: recognising a store read its header with open()/close(), and closing any descriptor of a
    file drops every POSIX lock this process holds on it. Another process then believed it was alone,
    checkpointed and deleted ``-wal``, and the kept connection read a stale store (a run went missing)."""
    for i in range(4):
        store.create_run({}, run_id=f"r{i}", status="finished")
    RunStore(store.path).add_tags("r1", ["x"])  # a second store object in this process: probes the file
    code = f"from workbench.store import RunStore; RunStore({str(store.path)!r}).set_notes('r1', 'x')"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    RunStore(store.path).rename("r1", "new")
    assert sorted(store.runs()["id"]) == ["r0", "r1", "r2", "r3"]
    assert store.run("r1")["notes"] == "x" and store.run("r1")["name"] == "new"

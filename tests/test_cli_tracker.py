"""``python -m workbench runs`` as a tracker (issue 17): tag / untag / note / rename / archive / delete, ``--filter``
and ``--summary``, through real subprocess calls on a real store written with the store API (no training)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.cli import main
from workbench.config import Config
from workbench.names import (
    CONFIGS_DIR, LOGS_DIR, TEST_PARTIAL_CHAIN_ACC, VAL_CHAIN_ACC, VAL_LOSS, VAL_PARTIAL_CHAIN_ACC,
)
from workbench.store import RunStore
from workbench.summaries import HOWS, metric_values
from workbench.tracker import ABSENT, RUN_COLUMNS, diff_configs, lineage, run_table
from test_store_tracker import snapshot  # every row of every table (one helper for both files)

REPO = Path(__file__).resolve().parents[1]
ODD_TAGS = ["it's \"quoted\"", "<b>bold</b>", "🎉 party", "[x](http://e.com)"]
GENUS = "val/acc/genus"


def cli(*argv, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m workbench ARGV`` in a fresh interpreter; stdin is a pipe (never a terminal)."""
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, argv)], cwd=REPO, input=stdin or "",
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)


@pytest.fixture
def store(tmp_path) -> RunStore:
    """Four runs: two finished phase-1 runs (one with test numbers, curves, health, files beside the store),
    a phase-2 child of the first, and one still running. Newest first: live, child, base-b, base-a."""
    store = RunStore(tmp_path / "runs" / "w.db")
    curves = pd.DataFrame({"split": "val", "rank": "genus", "curve": "coverage", "tau": [0.0, 0.5, 1.0],
                           "value": [1.0, 0.6, 0.0]})
    specs = [("base-a", 0.2, None, {}), ("base-b", 0.5, None, {"TRAIN.SELECT_BY": VAL_LOSS}),
             ("child", 0.5, "base-a", {}), ("live", 0.8, None, {})]
    for i, (run_id, w, parent, extra) in enumerate(specs):
        cfg = Config().with_overrides({"LOSS.W": w, **extra}).to_dict()
        store.create_run(cfg, run_id=run_id, name=f"{run_id} w={w}", parent_id=parent, status="running")
        with sqlite3.connect(store.path) as con:  # distinct creation times: a fixed newest-first order
            con.execute("UPDATE runs SET created = ? WHERE id = ?", (1000.0 + i, run_id))
        for epoch in range(3):
            partial = 0.5 + 0.1 * epoch * (1 + i) if epoch < 2 else 0.55 + 0.05 * i  # best at epoch 1
            store.write_epoch(run_id, epoch, {VAL_PARTIAL_CHAIN_ACC: partial, VAL_CHAIN_ACC: 0.3 + 0.05 * epoch,
                                              VAL_LOSS: 1.0 - 0.2 * epoch + 0.01 * i,
                                              GENUS: float("nan") if epoch == 2 else 0.4 + 0.1 * i},
                              curves=curves, health={"loss_spike": "x"} if epoch == 1 else {})
        if run_id != "live":
            store.write_once(run_id, "test", 1, {TEST_PARTIAL_CHAIN_ACC: 0.6 + 0.01 * i})
            store.update_run(run_id, status="finished")
    store.add_tags("base-a", ["baseline"])
    store.add_tags("child", ["baseline", "phase2"])
    folder = store.run_folder("base-a")
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"0" * 2000)
    for sub, suffix in ((CONFIGS_DIR, ".yaml"), (LOGS_DIR, ".log")):
        store.run_file(sub, "base-a", suffix).parent.mkdir(parents=True, exist_ok=True)
        store.run_file(sub, "base-a", suffix).write_text("x\n")
    return store


def reopened(store: RunStore) -> RunStore:
    """A new RunStore on the same file, for reads after other processes wrote to it. A connection kept
    open by an older object can read a stale view: opening a RunStore reads the file's header with a plain
    open()/close(), which drops this process's SQLite locks, so another process's last close removes the
    WAL under the kept connection (reported to the store's owner; this test is about the CLI)."""
    return RunStore(store.path)


def records(store, *argv) -> dict[str, dict]:
    res = cli("runs", "--json", "--store", store.path, *argv)
    assert res.returncode == 0, res.stderr
    return {r["id"]: r for r in json.loads(res.stdout)}


def test_tag_untag_note_rename_and_archive_round_trip_through_runs_json(store):
    res = cli("runs", "tag", "base-b", *ODD_TAGS, "gone", "--store", store.path)
    assert res.returncode == 0 and "'<b>bold</b>'" in res.stdout and "'🎉 party'" in res.stdout
    # in-process from here where the subprocess adds nothing (the same main(); --store before ACTION works too)
    assert main(["runs", "--store", str(store.path), "untag", "base-b", "gone", "never-had-it"]) == 0
    notes = "line one\n<script>alert(1)</script> **not markdown**"
    res = cli("runs", "note", "base-b", "-", "--store", store.path, stdin=notes + "\n")  # `-`: read stdin
    assert res.returncode == 0 and f"notes saved ({len(notes)} characters)" in res.stdout
    assert main(["runs", "rename", "base-b", "renamed 'b' 🎉", "--store", str(store.path)]) == 0
    assert main(["runs", "archive", "base-a", "--store", str(store.path)]) == 0

    listed = cli("runs", "--store", store.path)
    assert listed.returncode == 0
    listed_ids = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert listed_ids == ["live", "child", "base-b"], "an archived run is hidden"
    got = records(store, "--archived")
    assert list(got) == ["live", "child", "base-b", "base-a"]
    b = got["base-b"]
    assert b["tags"] == sorted(ODD_TAGS) and b["notes"] == notes and b["name"] == "renamed 'b' 🎉"
    assert (b["archived"], got["base-a"]["archived"]) == (False, True)
    assert (got["base-a"]["tags"], got["live"]["notes"]) == (["baseline"], None)
    assert set(b) >= {"last", "best", "min", "max", "selected", "test", "selected_epoch"}

    # clearing notes, undoing an archive; a bad tag, a missing run, an empty name change nothing
    assert main(["runs", "note", "base-b", "", "--store", str(store.path)]) == 0
    assert main(["runs", "archive", "base-a", "--undo", "--store", str(store.path)]) == 0
    before = snapshot(store.path)
    assert main(["runs", "tag", "base-b", "ok", "two\nlines", "--store", str(store.path)]) == 2
    assert main(["runs", "tag", "no-such-run", "ok", "--store", str(store.path)]) == 2
    assert main(["runs", "rename", "base-b", "  ", "--store", str(store.path)]) == 2
    assert snapshot(store.path) == before, "a refused change writes nothing (not even the valid tag beside a bad one)"
    runs = reopened(store).runs().set_index("id")
    assert runs.loc["base-b", "notes"] is None and not runs.loc["base-a", "archived"]


def test_delete_asks_first_refuses_without_a_terminal_and_then_removes_rows_and_files(store, tmp_path):
    plan = store.delete_plan("base-a")
    assert len(plan.paths) == 3 and all(p.exists() for p in plan.paths)
    before = snapshot(store.path)
    res = cli("runs", "delete", "base-a", "--store", store.path)  # stdin is a pipe: no one to ask
    assert res.returncode == 2 and "stdin is not a terminal" in res.stderr and "--yes" in res.stderr
    assert plan.describe() in res.stdout, "the plan is printed even when refused: what --yes would delete"
    assert "Phase-2 runs child keep their rows" in res.stdout
    assert snapshot(store.path) == before and all(p.exists() for p in plan.paths)

    # on a terminal it asks; "y" deletes (a real pseudo-terminal as stdin)
    controller, terminal = os.openpty()
    try:
        argv = [sys.executable, "-m", "workbench", "runs", "delete", "base-a", "--store", str(store.path)]
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=terminal,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(controller, b"y\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0, err
    assert "Delete? [y/N]" in out and "deleted run base-a" in out
    after = snapshot(store.path)
    for table, rows in after.items():  # every table's first column is the run id
        assert not [r for r in rows if r[0] == "base-a"], f"{table} still holds rows of base-a"
    assert not any(p.exists() for p in plan.paths)
    store = reopened(store)
    assert store.run("child")["parent_id"] == "base-a", "the child keeps its rows and its (now dangling) link"
    assert lineage(run_table(store), "child") == {"parent": None, "children": [], "missing_parent": "base-a",
                                                 "sweep_id": None}

    res = cli("runs", "delete", "base-b", "--yes", "--store", store.path)
    assert res.returncode == 0 and "deleted run base-b" in res.stdout
    store = reopened(store)
    assert not store.has_run("base-b") and store.metrics(["base-b"]).empty


def test_a_running_run_cannot_be_deleted_and_nothing_changes(store):
    before = snapshot(store.path)
    res = cli("runs", "delete", "live", "--yes", "--store", store.path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: run live is running: stop it first") and "nothing was deleted" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, "one line, no traceback"
    assert snapshot(store.path) == before


def test_bad_filter_expressions_exit_2_with_a_caret_under_the_bad_token(store):
    before = snapshot(store.path)
    res = cli("runs", "--filter", "LOSS.W >= 0.2 and core/val_partial_chain > 0.7", "--store", store.path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "error: bad --filter: no run has the key `core/val_partial_chain`; did you mean core/val_partial_chain_acc, "
        "core/test_partial_chain_acc or core/val_chain_acc?",
        "  LOSS.W >= 0.2 and core/val_partial_chain > 0.7",
        "                    ^"]
    # syntax errors are found before the store is even opened (in-process: same main)
    for expression, reason in (("LOSS.W >=", "unexpected end of expression: expected a value after `>=`"),
                               ("status == running)", "unmatched `)`"), ("status > 3", "`status` holds text")):
        assert main(["runs", "--json", "--filter", expression, "--store", str(store.path)]) == 2, expression
    assert snapshot(store.path) == before


def test_filter_over_config_metric_tag_and_status_in_the_table_and_in_json(store, capsys):
    expression = "LOSS.W >= 0.4 and core/val_partial_chain_acc > 0.55 and tag:baseline and status != running"
    res = cli("runs", "--filter", expression, "--store", store.path)
    assert res.returncode == 0, res.stderr
    assert [line.split()[0] for line in res.stdout.splitlines()[1:]] == ["child"]
    cases = {
        expression: ["child"],
        "tag:baseline": ["child", "base-a"],
        "not tag:baseline or LOSS.W == 0.8": ["live", "base-b"],
        "status == running or name ~ 'BASE-B'": ["live", "base-b"],
        f"{GENUS} == null": ["live", "child", "base-b", "base-a"],  # its last epoch is NaN: `last` keeps NaN
        "core/test_partial_chain_acc >= 0.615": ["child"],
        "parent_id == base-a": ["child"],
        "parent_id == null and epochs_done == 3": ["live", "base-b", "base-a"],
        "TRAIN.SELECT_BY == core/val_loss": ["base-b"],
        "'no match' == 1 or tag:nobody": None,  # an unknown key is an error even beside a good condition
    }
    for expr, expected in cases.items():
        rc = main(["runs", "--json", "--filter", expr, "--store", str(store.path)])
        out, err = capsys.readouterr()
        if expected is None:
            assert rc == 2 and "no run has the key `no match`" in err
        else:
            assert rc == 0 and [r["id"] for r in json.loads(out)] == expected, expr
    # the filter reads metrics as --summary says: genus's best is finite in every run
    best = ["runs", "--json", "--summary", "best", "--filter", f"{GENUS} == null", "--store", str(store.path)]
    assert main(best) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--json", "--limit", "1", "--filter", "tag:baseline", "--store", str(store.path)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["child"], "filter first, then the newest N"


def test_summary_choices_equal_metric_values_in_the_table_run_table_and_json(store, capsys):
    long = store.metrics()
    keys = [VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, VAL_LOSS, GENUS]
    select_by = {"base-b": VAL_LOSS}
    for how in HOWS:
        table = run_table(store, how).set_index("id")
        if how == "selected":  # each run by its own TRAIN.SELECT_BY
            parts = [metric_values(long[long["run_id"] == r], how, select_by.get(r, VAL_PARTIAL_CHAIN_ACC))
                     for r in long["run_id"].unique()]
            expected = pd.concat(parts)
        else:
            expected = metric_values(long, how)
        pd.testing.assert_frame_equal(table.loc[expected.index, keys], expected[keys], check_names=False,
                                      check_dtype=False)
        assert table[TEST_PARTIAL_CHAIN_ACC].drop("live").tolist() == pytest.approx([0.62, 0.61, 0.6]), \
            f"{how}: a test column holds the test number, never an extreme over epochs"
        assert main(["runs", "--summary", how, "--store", str(store.path)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[-3:] == ["val_chain", "val_partial_chain", "test_partial_chain"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}  # names hold spaces: read from the right
        for run in expected.index:
            shown = float(rows[run][-2])
            assert shown == round(expected.loc[run, VAL_PARTIAL_CHAIN_ACC], 4), (how, run)
    res = cli("runs", "--summary", "min", "--store", store.path)
    mins = metric_values(long, "min")
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines()[1:]}
    assert [float(rows[r][-3]) for r in mins.index] == [round(v, 4) for v in mins[VAL_CHAIN_ACC]]

    got = records(store)
    for how in ("last", "best", "min", "max"):
        expected = metric_values(long, how)
        for run in expected.index:
            assert got[run][how][VAL_LOSS] == pytest.approx(expected.loc[run, VAL_LOSS]), (how, run)
            assert not [k for k in got[run][how] if "test" in k]
    assert got["base-b"]["selected_epoch"] == 1 and got["base-b"]["selected"][VAL_LOSS] == pytest.approx(0.81)
    assert got["live"]["selected"][GENUS] == pytest.approx(0.7) and got["live"]["last"][GENUS] is None


def test_runs_actions_and_filters_never_import_torch_ray_wandb_or_streamlit(store):
    """One fresh interpreter runs several commands through main(), then reports the heavy packages it imported."""
    script = """
import json, sys
from workbench.cli import main
store = sys.argv[1]
commands = [["--filter", "tag:baseline and LOSS.W > 0.1", "--summary", "best"], ["--json", "--archived"],
            ["tag", "base-b", "t"], ["note", "base-b", "n"], ["rename", "base-b", "b2"], ["archive", "base-b"],
            ["untag", "base-b", "t"], ["delete", "base-b", "--yes"]]
codes = [main(["runs", *argv, "--store", store]) for argv in commands]
heavy = sorted({m.split('.')[0] for m in sys.modules} & {"torch", "ray", "wandb", "streamlit"})
print(json.dumps({"codes": codes, "heavy": heavy}), file=sys.stderr)
"""
    res = subprocess.run([sys.executable, "-c", script, str(store.path)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert json.loads(res.stderr.strip().splitlines()[-1]) == {"codes": [0] * 8, "heavy": []}


# ---------------------------------------------------------------------- diff and lineage (pure)
def test_diff_configs_shows_only_differing_keys_absent_ones_and_neutral_keys_last():
    a = Config().with_overrides({"LOSS.W": 0.2, "TRAIN.DEVICE": "cpu"}).to_dict()
    b = Config().with_overrides({"LOSS.W": 0.5, "TRAIN.DEVICE": "cuda", "TRACKING.STORE": "other.db"}).to_dict()
    c = json.loads(json.dumps(a))
    c["EXTRA"] = {"KEY": [1, 2]}  # a key only one run has
    diff = diff_configs({"a": a, "b": b, "c": c})
    assert list(diff.columns) == ["a", "b", "c"]
    assert list(diff.index) == ["LOSS.W", "EXTRA.KEY", "TRAIN.DEVICE", "TRACKING.STORE"]
    assert diff.loc["LOSS.W"].tolist() == ["0.2", "0.5", "0.2"]
    assert diff.loc["EXTRA.KEY"].tolist() == [ABSENT, ABSENT, "[1, 2]"]
    assert diff.loc["TRAIN.DEVICE"].tolist() == ["cpu", "cuda", "cpu"]
    assert diff_configs({"a": a, "a2": json.loads(json.dumps(a))}).empty
    assert diff_configs({"a": a}).empty and diff_configs({}).empty
    one, true = json.loads(json.dumps(a)), json.loads(json.dumps(a))
    one["LOSS"]["W"], true["LOSS"]["W"] = 1, True
    assert list(diff_configs({"one": one, "true": true}).index) == ["LOSS.W"], "True is not the number 1 in a config"


def test_run_table_columns_archive_keys_and_it_reads_summaries_never_every_metric_row(store, tmp_path):
    class NoMetricRows(RunStore):
        def metrics(self, *args, **kwargs):
            raise AssertionError("run_table must read the store's summaries, never every metric row")

    guarded = NoMetricRows(store.path)
    for how in HOWS:
        table = run_table(guarded, how)
        assert list(table.columns[:len(RUN_COLUMNS)]) == list(RUN_COLUMNS) and "LOSS.W" in table
        assert {VAL_LOSS, GENUS, TEST_PARTIAL_CHAIN_ACC} <= set(table.columns)
    assert list(table["id"]) == ["live", "child", "base-b", "base-a"] and list(table.index) == [0, 1, 2, 3]
    assert table.set_index("id").loc["child", "tags"] == ["baseline", "phase2"]
    store.set_archived("base-b")
    assert "base-b" not in set(run_table(store)["id"])
    archived = run_table(store, include_archived=True).set_index("id")["archived"]
    assert archived.loc["base-b"] and not archived.drop("base-b").any()
    only = run_table(store, "best", keys=[VAL_LOSS, TEST_PARTIAL_CHAIN_ACC])
    assert [c for c in only.columns if "/" in c] == [VAL_LOSS, TEST_PARTIAL_CHAIN_ACC]
    empty = run_table(RunStore(tmp_path / "empty.db"))
    assert empty.empty and list(empty.columns) == list(RUN_COLUMNS)

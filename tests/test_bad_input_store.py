"""Bad input at the store boundary: run ids and names, store files, read commands, checkpoints.

Like ``test_bad_input.py`` (whose seeded store and snapshot this file reuses), every case goes through
``python -m workbench`` (``workbench.cli.main`` in-process): exit code 2, exactly one ``error: ...`` line
naming the id / file / key and what was expected, no traceback, and the run store that already holds one
finished run (rows, metrics, curves and checkpoint bytes) is left exactly as it was. The fault tests
reproduce the damage the audit found (a run id that aliased another run's checkpoint folder; a foreign
SQLite database written to) and check it cannot happen.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bad_input import (  # noqa: F401  (db and seeded_dir are fixtures)
    REPO, SEED_RUN, assert_error_line, checkpoint, db, seeded_dir, snapshot, store_unchanged, train, write_config,
)

from workbench.cli import main as cli_main
from workbench.store import RUN_ID_RULE, RUN_NAME_MAX, SCHEMA_VERSION, RunStore, StoreError

ID_RULE = f"run id must be {RUN_ID_RULE}"
STORE_TABLES = ("curves", "health", "metrics", "runs", "summaries", "tags")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = cli_main([str(a) for a in argv])
    except SystemExit as e:  # argparse exits by itself
        rc = e.code
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------- 1. run ids and names
RUN_ID_CASES = [
    # (id, run id, expected message)
    ("dot-slash-alias", "./" + SEED_RUN, f"{ID_RULE}, got './seed-run'"),
    ("dot-dot", "../escape", f"{ID_RULE}, got '../escape'"),
    ("absolute", "/tmp/workbench-abs-run", f"{ID_RULE}, got '/tmp/workbench-abs-run'"),
    ("nested", "a/b", f"{ID_RULE}, got 'a/b'"),
    ("dot", ".", f"{ID_RULE}, got '.'"),
    ("empty", "", f"{ID_RULE}, got ''"),
    ("leading-underscore", "_x", f"{ID_RULE}, got '_x'"),
    ("space", "my run", f"{ID_RULE}, got 'my run'"),
    ("too-long-for-the-file-system", "r" * 300, f"{ID_RULE}, got '{'r' * 79}... (300 characters)"),
    ("surrogate", "run\udcff", f"{ID_RULE}, got 'run\\udcff'"),
]


@pytest.mark.parametrize("run_id, expected", [c[1:] for c in RUN_ID_CASES], ids=[c[0] for c in RUN_ID_CASES])
def test_bad_run_id_for_train(tmp_path, db, capsys, run_id, expected):
    cfg = write_config(tmp_path / "good.yaml", db)
    before = files_under(tmp_path)
    with store_unchanged(db):
        rc, err = train(capsys, cfg, "--run-id", run_id)
    assert_error_line(rc, err, expected)
    assert files_under(tmp_path) == before, "no file or folder was created anywhere"
    assert not Path("/tmp/workbench-abs-run").exists()


@pytest.mark.parametrize("run_id", ["./" + SEED_RUN, "../runs/checkpoints/" + SEED_RUN, "r" * 65])
def test_bad_run_id_for_resume(db, capsys, run_id):
    with store_unchanged(db):
        rc, err = cli(capsys, "resume", run_id, "--store", db)
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"error: {ID_RULE}, got ")


def test_run_id_alias_cannot_overwrite_another_runs_checkpoint(tmp_path, db, capsys):
    """Fault: ``--run-id ./seed-run`` used to create a new run whose checkpoint path was seed-run's own
    (``checkpoints/./seed-run/checkpoint.pt``), so training it overwrote the finished run's weights."""
    store = RunStore(db)
    assert store.checkpoint_path(SEED_RUN).resolve() == checkpoint(db).resolve()
    with pytest.raises(StoreError, match="run id must be"):
        store.checkpoint_path("./" + SEED_RUN)
    with pytest.raises(StoreError, match="run id must be"):
        store.create_run({}, run_id="./" + SEED_RUN)
    cfg = write_config(tmp_path / "good.yaml", db)
    with store_unchanged(db):
        rc, err = train(capsys, cfg, "--run-id", "./" + SEED_RUN)
    assert rc == 2 and "run id must be" in err


def test_symlinked_run_folder_cannot_lead_outside(tmp_path, db):
    """A run folder that is a symlink out of the store is refused, not written through."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (db.parent / "checkpoints" / "linked").symlink_to(outside)
    with pytest.raises(StoreError, match="resolves outside"):
        RunStore(db).checkpoint_path("linked")


NAME_CASES = [
    ("newline", "a\nb",
     "`TRACKING.RUN_NAME` must be printable text; a control character '\\n' at position 1, got 'a\\nb'"),
    ("escape-sequence", "x\x1b[31m", "`TRACKING.RUN_NAME` must be printable text; a control character '\\x1b' at "
                                      "position 1, got 'x\\x1b[31m'"),
    ("surrogate", "caf\udce9", "`TRACKING.RUN_NAME` must be printable text; an unpaired surrogate (undecodable byte) "
                               "'\\udce9' at position 3, got 'caf\\udce9'"),
    ("too-long", "n" * (RUN_NAME_MAX + 1),
     f"`TRACKING.RUN_NAME` must be at most {RUN_NAME_MAX} characters, got {RUN_NAME_MAX + 1}: '{'n' * 79}... "
     f"({RUN_NAME_MAX + 1} characters)"),
]


@pytest.mark.parametrize("name, expected", [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_bad_run_name(tmp_path, db, capsys, name, expected):
    if "\udce9" in name:  # in-process argv: a surrogate is what Python makes of an undecodable byte in argv
        cfg, extra = write_config(tmp_path / "good.yaml", db), ["--set", f"TRACKING.RUN_NAME={name}"]
    else:  # in the YAML file (an override value is parsed as YAML, which folds a newline into a space)
        cfg, extra = write_config(tmp_path / "bad.yaml", db, **{"TRACKING.RUN_NAME": name}), []
    with store_unchanged(db):
        rc, err = train(capsys, cfg, *extra)
    assert_error_line(rc, err, expected)


def test_unicode_run_names_are_fine(db):
    store = RunStore(db)
    for name in ("Mäuse 🐭 w=0.3", "ラット", "x" * RUN_NAME_MAX):
        rid = store.create_run({}, name=name)
        assert store.run(rid)["name"] == name


# ---------------------------------------------------------------------- 2. store files
def foreign_db(path: Path, journal_mode: str = "delete") -> Path:
    """Another tool's SQLite database, with a ``runs`` table of its own (the conflicting case)."""
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={journal_mode}")
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, title TEXT)")
    con.execute("CREATE TABLE notes (body TEXT)")
    con.execute("INSERT INTO runs (title) VALUES ('morning jog')")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
@pytest.mark.parametrize("command", ["train", "runs", "resume"])
def test_foreign_database_is_refused_untouched(tmp_path, db, capsys, command, journal_mode):
    """Fault: pointing TRACKING.STORE at another tool's database added our tables to it and switched it
    to WAL mode, even when the run was then refused. Now it is recognised before anything is written."""
    other = foreign_db(tmp_path / "tracker.sqlite", journal_mode)
    digest = sha256(other)
    argv = {"train": ["train", "--config", write_config(tmp_path / "good.yaml", db), "--no-progress",
                      "--set", f"TRACKING.STORE={other}"],
            "runs": ["runs", "--store", other],
            "resume": ["resume", SEED_RUN, "--store", other]}[command]
    files = files_under(tmp_path)
    with store_unchanged(db):
        rc, err = cli(capsys, *argv)
    assert_error_line(rc, err, f"{other}: not a workbench run store (a SQLite database with tables: notes, runs; "
                               "user_version 0); it was left untouched: point TRACKING.STORE / --store at a new file")
    assert sha256(other) == digest, "the foreign database changed"
    assert files_under(tmp_path) == files, "no -wal/-shm/-journal file (or anything else) left behind"


def test_newer_store_is_refused(tmp_path, capsys):
    path = tmp_path / "new.db"
    RunStore(path).create_run({}, run_id="r1")
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    digest = sha256(path)
    for argv in (["runs", "--store", path], ["resume", "r1", "--store", path]):
        rc, err = cli(capsys, *argv)
        assert_error_line(rc, err, f"{path}: written by a newer workbench (store schema version 99; this one reads up "
                                   f"to {SCHEMA_VERSION}); upgrade workbench to use this store")
    assert sha256(path) == digest


@pytest.mark.parametrize("damage, reason", [
    (lambda data: b"\x00garbage" * 500, "file is not a database"),
    (lambda data: data[:len(data) // 2], "database disk image is malformed"),
    (lambda data: b"SQLite format 3\x00" + b"\xff" * 200, "file is not a database"),
], ids=["garbage", "truncated", "bad-header"])
def test_damaged_store_is_a_clear_error(db, tmp_path, capsys, damage, reason):
    path = tmp_path / "damaged.db"
    path.write_bytes(damage(db.read_bytes()))
    digest = sha256(path)
    rc, err = cli(capsys, "runs", "--store", path)
    assert_error_line(rc, err, f"{path}: cannot open the run store: {reason}")
    assert sha256(path) == digest


def test_unversioned_store_is_migrated_without_losing_a_row(db):
    """A store written before the schema carried a version (user_version 0, the same tables) is ours:
    a reader leaves it as it is, a writer migrates it to the current version and every row survives."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 0")
    con.execute("DROP INDEX runs_sweep")
    for statement in ("DROP TABLE tags", "DROP TABLE summaries", "ALTER TABLE runs DROP COLUMN notes",
                      "ALTER TABLE runs DROP COLUMN archived",  # what version 3 added
                      "DROP TABLE health", "ALTER TABLE runs DROP COLUMN ranks",
                      "ALTER TABLE runs DROP COLUMN environment"):  # what version 2 added
        con.execute(statement)
    con.commit()
    con.close()
    before = snapshot(db)
    RunStore.open_existing(db).runs()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 0, "a reader does not migrate"
    store = RunStore(db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'runs_sweep'").fetchone()
    con.close()
    after = snapshot(db)
    v0_columns = len(before["runs"][0])  # versions 2 and 3 add columns (ranks, environment; notes, archived)
    assert [row[v0_columns:] for row in after["runs"]] == [(None, None, None, 0)] * len(before["runs"])
    after["runs"] = [row[:v0_columns] for row in after["runs"]]
    assert after == before
    assert store.run(SEED_RUN)["status"] == "finished"


def test_new_store_carries_the_schema_version(tmp_path):
    store = RunStore(tmp_path / "fresh.db")
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    assert tuple(tables) == STORE_TABLES


# ---------------------------------------------------------------------- 3. read commands never write
def test_runs_on_a_missing_store_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "rnus" / "workbench.db"
    rc, err = cli(capsys, "runs", "--store", missing)
    assert_error_line(rc, err, f"{missing}: no run store here (file not found); check the path (a store is "
                               "created by the first `train`)")
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("limit, expected", [
    ("0", "argument --limit: must be >= 1, got 0"),
    ("-5", "argument --limit: must be >= 1, got -5"),
    ("2.5", "argument --limit: invalid int value: '2.5'"),
])
def test_bad_limit(db, capsys, limit, expected):
    with store_unchanged(db):
        rc, err = cli(capsys, "runs", "--store", db, "--limit", limit)
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"python -m workbench runs: error: {expected}"


def test_runs_reads_without_writing(db, capsys):
    digest = sha256(db)
    assert cli_main(["runs", "--store", str(db), "--limit", "1"]) == 0
    assert SEED_RUN in capsys.readouterr().out
    assert sha256(db) == digest
    with pytest.raises(StoreError, match="the run store is read-only"):
        RunStore.open_existing(db).create_run({})


# root ignores file permissions; without these capabilities it obeys them like any user
DROP_ROOT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                      "--inh-caps", "-dac_override,-dac_read_search", "--"]


def _as_unprivileged(argv: list) -> subprocess.CompletedProcess:
    """``python -m workbench argv`` in a process that file permissions apply to."""
    prefix = DROP_ROOT_OVERRIDE if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([*prefix, sys.executable, "-m", "workbench", *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root without setpriv ignores chmod")
def test_read_only_store(db):
    """A store the user may not write (file 444 in a 555 folder): reads work, writes are a clear error."""
    folder = db.parent
    for p in (*folder.rglob("*"), folder):
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        files = files_under(folder)
        listed = _as_unprivileged(["runs", "--store", db])
        assert listed.returncode == 0, listed.stderr
        assert SEED_RUN in listed.stdout and "finished" in listed.stdout
        resumed = _as_unprivileged(["resume", SEED_RUN, "--store", db, "--no-progress"])
        assert resumed.returncode == 2, resumed.stderr
        assert resumed.stderr == (f"error: {db}: the run store is read-only (no write permission); reading works, "
                                  "writing needs write permission on the file and its folder\n")
        assert files_under(folder) == files
    finally:
        for p in (folder, *folder.rglob("*")):
            p.chmod(stat.S_IRWXU)


# ---------------------------------------------------------------------- 4. INIT_FROM that is not a checkpoint
class Exploit:
    """Unpickled by plain pickle, this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _write_init(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("these are notes, not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "no-taxonomy":
        torch.save({"model": {"w": torch.zeros(2)}}, path)
    elif kind == "exploit":
        with open(path, "wb") as f:
            pickle.dump({"model": Exploit(tmp_path / "pwned"), "taxonomy": {}}, f)
    return path


WHAT = "a checkpoint is a file the trainer wrote (torch.save of a dict with keys model, taxonomy)"
INIT_CASES = [
    # the unpickler's own complaint about a text file depends on the text: only its start is pinned
    ("text", "not a readable checkpoint (not written by torch.save, or damaged: "),
    ("empty", "not a readable checkpoint (the file is empty or cut short); " + WHAT),
    ("tensor", "not a workbench checkpoint: it holds a Tensor; " + WHAT),
    ("no-taxonomy", "not a workbench checkpoint: no 'taxonomy' in it (keys: model); " + WHAT),
    ("exploit", "not a workbench checkpoint: it holds objects other than tensors and plain data (refused without "
                "loading them: that could run code); " + WHAT),
]


@pytest.mark.parametrize("kind, expected", INIT_CASES, ids=[c[0] for c in INIT_CASES])
def test_init_from_that_is_not_a_checkpoint(tmp_path, db, capsys, kind, expected):
    init = _write_init(tmp_path, kind)
    cfg = write_config(tmp_path / "bad.yaml", db, **{"TRAIN.INIT_FROM": str(init)})
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    if kind == "text":
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: `TRAIN.INIT_FROM` {init}: {expected}") and err.endswith(f"); {WHAT}\n")
    else:
        assert_error_line(rc, err, f"`TRAIN.INIT_FROM` {init}: {expected}")
    assert not (tmp_path / "pwned").exists(), "the pickled code ran"


def test_damaged_own_checkpoint_on_resume(db, capsys):
    checkpoint(db).write_bytes(b"")
    rc, err = cli(capsys, "resume", SEED_RUN, "--store", db, "--no-progress")
    assert_error_line(rc, err, f"{checkpoint(db)}: not a readable checkpoint (the file is empty or cut short); "
                               "a checkpoint is a file the trainer wrote (torch.save of a dict with keys epoch, model, optimizer, rng, "
                               "shuffle_rng, mask_rng)")

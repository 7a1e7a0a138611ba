"""RunStore: the embedded SQLite run store (DESIGN.md section 5).

Tables: ``runs`` (one row per run, with its resolved config, ordered ranks and reproducibility
record), ``metrics`` (run, epoch, split, key, value), ``curves`` (run, epoch, split, rank, curve,
tau, value) and ``health`` (run, epoch, check, message: the checks that fired). Only the trainer's
event stream writes a run's record (:class:`workbench.tracking.StoreSink`), for single runs and
sweep trials alike. WAL mode and a busy timeout make it safe for several
writer processes (a sweep writes from many trials); each epoch is written in one transaction with
``INSERT OR REPLACE``, so a killed process leaves whole epochs only and a resumed run that
re-reports an epoch replaces it instead of duplicating it. Readers return pandas DataFrames.

A store is recognised before anything is written to it: an existing file is first opened read-only
and must carry our schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, or the unversioned
first schema, migrated on open). Another tool's database, a newer workbench's store or a damaged
file is refused untouched. ``RunStore(path, create=False)`` never creates a store and
``RunStore.open_existing(path)`` only reads.

Run ids become folder names (``<store dir>/checkpoints/<run id>/``), so they are validated
(:func:`validate_run_id`) and every path built from one is checked to stay inside its folder.

A connection is opened per call: SQLite connections must not cross threads (Streamlit reruns)
or processes (forked trainers), and opening one costs well under a millisecond.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    config TEXT NOT NULL,
    parent_id TEXT,
    sweep_id TEXT,
    error TEXT,
    pid INTEGER,
    epochs_done INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    health TEXT,
    ranks TEXT,
    environment TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, split TEXT NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, epoch, split, key)
);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, split TEXT NOT NULL, rank TEXT NOT NULL,
    curve TEXT NOT NULL, tau REAL NOT NULL, value REAL,
    PRIMARY KEY (run_id, epoch, split, rank, curve, tau)
);
CREATE TABLE IF NOT EXISTS health (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, "check" TEXT NOT NULL, message TEXT,
    PRIMARY KEY (run_id, epoch, "check")
);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id);
"""

# The schema version this code writes (``PRAGMA user_version``). Version 0 is the first, unversioned
# schema: exactly these tables and columns. Bump the version with a migration in MIGRATIONS.
SCHEMA_VERSION = 2
V0_TABLES = {
    "runs": ("id", "name", "status", "created", "updated", "config", "parent_id", "sweep_id", "error", "pid",
             "epochs_done", "stop_requested", "health"),
    "metrics": ("run_id", "epoch", "split", "key", "value"),
    "curves": ("run_id", "epoch", "split", "rank", "curve", "tau", "value"),
}
# version -> the statements that bring a store of that version to the next one (no row is lost)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: ("CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id)",),  # v0 -> v1: only the version is new
    # v1 -> v2: each run's ordered ranks and reproducibility record; health checks per epoch
    1: ("ALTER TABLE runs ADD COLUMN ranks TEXT", "ALTER TABLE runs ADD COLUMN environment TEXT",
        'CREATE TABLE IF NOT EXISTS health (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, "check" TEXT NOT NULL, '
        'message TEXT, PRIMARY KEY (run_id, epoch, "check"))'),
}
# runs columns that hold JSON (parsed by the readers); absent in stores older than version 2
JSON_RUN_COLUMNS = ("ranks", "environment")

from workbench.names import CHECKPOINT_NAME, CHECKPOINTS_DIR, LOCK_NAME, SPLITS, STATUSES, ranks_of  # noqa: E402,F401 (one home: names.py)

RUN_ID_MAX = 64
RUN_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{RUN_ID_MAX - 1}}}")
RUN_ID_RULE = f"1 to {RUN_ID_MAX} letters, digits, '_', '.' or '-', starting with a letter or digit"
RUN_NAME_MAX = 200


from workbench.errors import StoreError  # noqa: F401 (defined once in errors.py; re-exported here)


def new_run_id() -> str:
    """Sortable, unique: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _shown(value, limit: int = 80) -> str:
    """``repr`` of a user value for an error message, cut to ``limit`` characters (a 5000-character id)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(value) if isinstance(value, str) else len(text)} characters)"


def validate_run_id(run_id) -> str:
    """``run_id`` if it is a safe folder name (:data:`RUN_ID_RULE`), else a :class:`StoreError`.

    A run id names the run's checkpoint folder, config and log files: ``./x``, ``../x``, an absolute
    path, a separator or an over-long id would alias another run's folder or write outside the store.
    """
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise StoreError(f"run id must be {RUN_ID_RULE}, got {_shown(run_id)}")
    return run_id


def validate_run_name(name, what: str = "run name") -> str | None:
    """A run's display name: any printable text up to :data:`RUN_NAME_MAX` characters (None: none).

    Control characters (newlines, escapes) and unpaired surrogates (undecodable bytes in a command
    line) are refused: they garble tables and logs and cannot be stored as UTF-8. ``what`` names
    the value in the message (e.g. ```TRACKING.RUN_NAME```).
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise StoreError(f"{what} must be text, got {_shown(name)}")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        surrogate = unicodedata.category(bad) == "Cs"
        kind = "an unpaired surrogate (undecodable byte)" if surrogate else "a control character"
        raise StoreError(f"{what} must be printable text; {kind} {bad!r} at position {name.index(bad)}, "
                         f"got {_shown(name)}")
    if len(name) > RUN_NAME_MAX:
        raise StoreError(f"{what} must be at most {RUN_NAME_MAX} characters, got {len(name)}: {_shown(name)}")
    return name


def _wal_mode(path: Path) -> bool:
    """Whether a SQLite file's header says WAL mode (read and write versions 2, bytes 18-19)."""
    with open(path, "rb") as f:
        header = f.read(20)
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


def inside(root: Path, *parts: str) -> Path:
    """``root / parts`` after checking that it resolves to a path inside ``root`` (symlinks followed)."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise StoreError(f"{path}: resolves outside {root}; refusing to use it")
    return path


class RunStore:
    """The run store at ``path``.

    Args:
        path: the SQLite file (``TRACKING.STORE``).
        create: create the store (and its folder) when the file does not exist; False: a missing
            store is a :class:`StoreError`.
        readonly: open every connection read-only (readers such as ``workbench runs``); writes
            raise :class:`StoreError`. Implies ``create=False``.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder; the run store is a file (e.g. runs/workbench.db)")
        if not self.path.is_file() or self.path.stat().st_size == 0:
            if readonly or not create:
                what = "empty file" if self.path.is_file() else "file not found"
                raise StoreError(f"{self.path}: no run store here ({what}); check the path "
                                 "(a store is created by the first `train`)")
            self._initialise()
        version = self._recognise()
        if not readonly and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            # SQLite needs the folder too (-wal, -shm): reads work read-only, writes get a clear error
            self.readonly = True
        if version < SCHEMA_VERSION and not self.readonly:
            self._migrate(version)

    @classmethod
    def open_existing(cls, path: str | os.PathLike) -> RunStore:
        """A read-only view of the store at ``path``; never creates or changes anything."""
        return cls(path, create=False, readonly=True)

    # ------------------------------------------------------------------ opening
    def _error(self, e: sqlite3.Error, doing: str = "cannot open the run store") -> StoreError:
        """A SQLite error as a StoreError naming the file (read-only stores get a clear reason)."""
        text = str(e)
        if "readonly" in text or "read-only" in text:
            return self._read_only_error(text)
        return StoreError(f"{self.path}: {doing}: {text}")

    def _read_only_error(self, detail: str) -> StoreError:
        return StoreError(f"{self.path}: the run store is read-only ({detail}); reading works, writing needs "
                          "write permission on the file and its folder")

    def check_writable(self) -> None:
        """Raise the read-only :class:`StoreError` now (before a run starts) rather than at its first write."""
        if self.readonly:
            writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
            raise self._read_only_error("opened for reading only" if writable else "no write permission")

    def _initialise(self) -> None:
        """Create a new store: the schema and its version in one transaction, then WAL mode.

        The version is written with the tables, so a half-created store never exists; a second
        process creating the same store at the same moment waits for the lock and finds it done.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create the run store's folder: {e}") from None
        try:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                if con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            con.execute(statement)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                con.execute("COMMIT")
                con.execute("PRAGMA journal_mode=WAL")  # persistent: the file is ours now
            finally:
                con.close()
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _recognise(self) -> int:
        """The schema version of the existing file, read without writing a byte; refuses what is not ours."""
        try:
            con = self._ro_connect(probe=True)
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                tables = {name: tuple(c[1] for c in con.execute(f"PRAGMA table_info({name!r})"))
                          for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                     "AND name NOT LIKE 'sqlite_%' ORDER BY name")}
            finally:
                con.close()
        except (sqlite3.Error, OSError) as e:  # not a SQLite file, truncated, unreadable
            raise self._error(e) from None
        ours = all(set(columns) <= set(tables.get(name, ())) for name, columns in V0_TABLES.items())
        if ours and version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer workbench (store schema version {version}; this one "
                             f"reads up to {SCHEMA_VERSION}); upgrade workbench to use this store")
        if (ours and 0 < version <= SCHEMA_VERSION) or (version == 0 and tables == V0_TABLES):
            return version
        found = ", ".join(tables) or "none"
        raise StoreError(f"{self.path}: not a workbench run store (a SQLite database with tables: {found}; "
                         f"user_version {version}); it was left untouched: point TRACKING.STORE / --store at "
                         "a new file")

    def _migrate(self, version: int) -> None:
        """Bring a store of an older schema ``version`` to :data:`SCHEMA_VERSION` in one transaction."""
        try:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                current = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
                for v in range(current, SCHEMA_VERSION):
                    for statement in MIGRATIONS[v]:
                        con.execute(statement)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                con.execute("COMMIT")
            finally:
                con.close()
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _ro_connect(self, probe: bool = False) -> sqlite3.Connection:
        """A read-only connection that leaves no file behind when it can.

        A plain read-only open honours other processes' locks and creates nothing for a file in
        rollback-journal mode. For a WAL-mode file with no ``-wal`` beside it (nobody has it open)
        it would create ``-wal`` and ``-shm`` files, next to someone else's database when ``probe``-ing
        a file not yet known to be ours, or fail in a read-only folder; the main file then holds
        the whole database and is read ``immutable`` instead. Readers of our own store do that only
        when the plain open fails, since a writer may start at any moment.
        """
        uri = self.path.resolve().as_uri()
        idle_wal = _wal_mode(self.path) and not self.path.with_name(self.path.name + "-wal").exists()
        if probe and idle_wal:
            return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=60.0)
        con = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=60.0)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opening is lazy; this opens the file
            return con
        except sqlite3.OperationalError:
            con.close()
            if not idle_wal:
                raise
            return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=60.0)
        except sqlite3.Error:
            con.close()
            raise

    @contextmanager
    def _connect(self):
        try:
            con = self._ro_connect() if self.readonly else sqlite3.connect(self.path, timeout=60.0)
        except (sqlite3.Error, OSError) as e:  # the file was replaced or removed since the store was opened
            raise self._error(e, "run store error") from None
        try:
            if not self.readonly:
                con.execute("PRAGMA journal_mode=WAL")  # persistent; a no-op once set
            con.execute("PRAGMA busy_timeout=60000")
            con.execute("PRAGMA synchronous=NORMAL")
            with con:  # one transaction: commit on success, roll back on error
                yield con
        except sqlite3.OperationalError as e:  # locked past the timeout, read-only, disk I/O
            raise self._error(e, "run store error") from None
        finally:
            con.close()

    # ------------------------------------------------------------------ run folders
    def run_folder(self, run_id: str) -> Path:
        """``<store dir>/checkpoints/<run id>``: the run's checkpoint and lock (checked to stay inside)."""
        return inside(self.path.parent / CHECKPOINTS_DIR, validate_run_id(run_id))

    def checkpoint_path(self, run_id: str) -> Path:
        """Where a run's checkpoint lives: ``<store dir>/checkpoints/<run id>/checkpoint.pt``.

        The one definition of the layout, for the trainer and for launchers that must not import torch.
        """
        return inside(self.run_folder(run_id), CHECKPOINT_NAME)

    def lock_path(self, run_id: str) -> Path:
        """The file a trainer holds an exclusive lock on while it trains the run (``<run folder>/lock``)."""
        return inside(self.run_folder(run_id), LOCK_NAME)

    def run_file(self, folder: str, run_id: str, suffix: str) -> Path:
        """``<store dir>/<folder>/<run id><suffix>`` (configs, logs), checked to stay inside ``folder``."""
        return inside(self.path.parent / folder, validate_run_id(run_id) + suffix)

    # ------------------------------------------------------------------ runs
    def create_run(
        self, config: Mapping, name: str | None = None, run_id: str | None = None,
        parent_id: str | None = None, sweep_id: str | None = None, status: str = "queued",
    ) -> str:
        """Insert a run row; ``run_id`` and ``name`` are validated (:func:`validate_run_id`,
        :func:`validate_run_name`) before anything is written."""
        run_id = validate_run_id(run_id or new_run_id())
        name = validate_run_name(name)
        for what, ref in (("parent", parent_id), ("sweep", sweep_id)):
            if ref is not None and not isinstance(ref, str):
                raise StoreError(f"{what} id must be text, got {_shown(ref)}")
        now = time.time()
        with self._connect() as con:
            con.execute(
                "INSERT INTO runs (id, name, status, created, updated, config, parent_id, sweep_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name or run_id, status, now, now, json.dumps(config), parent_id, sweep_id),
            )
        return run_id

    def has_run(self, run_id: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def run(self, run_id: str) -> dict:
        """One run's row as a dict: ``config`` (dict), ``ranks`` (the ordered rank names, coarse to fine)
        and ``environment`` (the reproducibility record) parsed; the last two are None for rows written
        before the store recorded them (see :meth:`run_ranks` for a run's ranks in every case)."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no run with id {run_id!r}")
        out = dict(row)
        out["config"] = json.loads(out["config"])
        for column in JSON_RUN_COLUMNS:
            out[column] = _json_or_none(out.get(column))
        return out

    def run_ranks(self, run_id: str) -> list[str]:
        """A run's ordered ranks, coarse to fine: the stored ones, or for a row written before ranks
        were stored, :func:`fallback_ranks` of its config and its metric keys as first written."""
        row = self.run(run_id)
        if row["ranks"] is not None:
            return list(row["ranks"])
        with self._connect() as con:  # rowid order = the order the trainer wrote its first epoch's keys
            keys = [k for (k,) in con.execute(
                "SELECT key FROM metrics WHERE run_id = ? AND key LIKE 'val/acc/%' ORDER BY epoch, rowid", (run_id,))]
        return fallback_ranks(row["config"], keys)

    def update_run(self, run_id: str, **fields) -> None:
        allowed = {"name", "status", "error", "pid", "parent_id", "sweep_id", "config", "health", "epochs_done",
                   *JSON_RUN_COLUMNS}
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"cannot update run field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise StoreError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        if "name" in fields:
            fields["name"] = validate_run_name(fields["name"])
        if "ranks" in fields and fields["ranks"] is not None:
            fields["ranks"] = list(fields["ranks"])
            if not all(isinstance(r, str) for r in fields["ranks"]):
                raise StoreError(f"ranks must be a list of rank names, got {_shown(fields['ranks'])}")
        for key in ("config", *JSON_RUN_COLUMNS):
            if key in fields and (key == "config" or fields[key] is not None):
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as con:
            cur = con.execute(
                f"UPDATE runs SET {sets}, updated = ? WHERE id = ?", (*fields.values(), time.time(), run_id)
            )
            if cur.rowcount == 0:
                raise StoreError(f"{self.path}: no run with id {run_id!r}")

    def request_stop(self, run_id: str) -> None:
        with self._connect() as con:
            con.execute("UPDATE runs SET stop_requested = 1, updated = ? WHERE id = ?", (time.time(), run_id))

    def clear_stop(self, run_id: str) -> None:
        """Withdraw a stop request (a resumed run must not stop at once on its old request)."""
        with self._connect() as con:
            con.execute("UPDATE runs SET stop_requested = 0, updated = ? WHERE id = ?", (time.time(), run_id))

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as con:
            row = con.execute("SELECT stop_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        with self._connect() as con:
            for table, col in (("metrics", "run_id"), ("curves", "run_id"), ("health", "run_id"), ("runs", "id")):
                con.execute(f"DELETE FROM {table} WHERE {col} = ?", (run_id,))

    # ------------------------------------------------------------------ epochs
    def write_epoch(
        self, run_id: str, epoch: int, metrics: Mapping[str, float], curves: pd.DataFrame | None = None,
        health: Mapping | None = None,
    ) -> None:
        """One epoch's metrics (``{"core/val_loss": 0.4, ...}``), curves and health in one transaction.

        The split of a metric is the part of its name before the first ``/`` that is ``train`` or
        ``val`` (``core/val_loss`` -> ``val``); anything else (``schedule/...``) is ``run``.
        ``curves`` has columns ``split, rank, curve, tau, value``. ``health`` (``{check: message}`` of the
        checks that fired this epoch, empty when healthy) replaces the epoch's health rows and becomes
        the run's latest health (``runs.health``).
        """
        rows = [(run_id, epoch, metric_split(k), k, _finite_or_none(v)) for k, v in metrics.items()]
        with self._connect() as con:
            con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            if curves is not None and len(curves):
                c = curves[["split", "rank", "curve", "tau", "value"]]
                con.executemany(
                    "INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, epoch, s, r, cv, float(t), _finite_or_none(v)) for s, r, cv, t, v in c.itertuples(index=False)],
                )
            sets, args = "epochs_done = MAX(epochs_done, ?), updated = ?", [epoch + 1, time.time()]
            if health is not None:
                # a re-reported epoch (resume) replaces its checks, like its metrics
                con.execute("DELETE FROM health WHERE run_id = ? AND epoch = ?", (run_id, epoch))
                con.executemany('INSERT INTO health (run_id, epoch, "check", message) VALUES (?, ?, ?, ?)',
                                [(run_id, epoch, str(c), str(m)) for c, m in health.items()])
                sets += ", health = ?"
                args.append(json.dumps(dict(health)))
            con.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*args, run_id))

    def write_once(
        self, run_id: str, split: str, epoch: int, metrics: Mapping[str, float], curves: pd.DataFrame | None = None,
    ) -> None:
        """The metrics and curves of a split evaluated once per run (``test``, at the selected ``epoch``), in one
        transaction that first deletes the run's earlier rows of that split: a resumed run that selects
        another epoch leaves one epoch of test rows, not two. Every metric key must belong to ``split``."""
        other = sorted(k for k in metrics if metric_split(k) != split)
        assert not other, f"write_once({split!r}) given metrics of other splits: {other[:5]}"
        rows = [(run_id, epoch, split, k, _finite_or_none(v)) for k, v in metrics.items()]
        with self._connect() as con:
            for table in ("metrics", "curves"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND split = ?", (run_id, split))
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            if curves is not None and len(curves):
                c = curves[["rank", "curve", "tau", "value"]]
                con.executemany(
                    "INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, epoch, split, r, cv, float(t), _finite_or_none(v)) for r, cv, t, v in c.itertuples(index=False)],
                )
            con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    # ------------------------------------------------------------------ readers
    def runs(self, sweep_id: str | None = None, with_config: bool = False) -> pd.DataFrame:
        """All runs, newest first; ``with_config`` adds one column per config key (``LOSS.W``, ...).

        ``config`` is JSON text; ``ranks`` (list of rank names, coarse to fine) and ``environment``
        (dict) are parsed, None for rows written before they were stored (and in an older store
        opened read-only).
        """
        query, args = "SELECT * FROM runs", ()
        if sweep_id is not None:
            query, args = query + " WHERE sweep_id = ?", (sweep_id,)
        with self._connect() as con:
            df = pd.read_sql_query(query + " ORDER BY created DESC", con, params=args)
        for column in JSON_RUN_COLUMNS:
            df[column] = [_json_or_none(v) for v in df[column]] if column in df else [None] * len(df)
        if with_config and len(df):
            from workbench.config import flatten

            flat = pd.DataFrame([flatten(json.loads(c)) for c in df["config"]], index=df.index)
            df = pd.concat([df, flat], axis=1)
        return df

    def metrics(
        self, run_ids: str | Sequence[str] | None = None, keys: Iterable[str] | None = None, since_epoch: int | None = None,
    ) -> pd.DataFrame:
        """Long frame ``run_id, epoch, split, key, value`` ordered by run and epoch."""
        where, args = _in_clause("run_id", run_ids)
        if keys is not None:
            w, a = _in_clause("key", list(keys))
            where, args = where + w, args + a
        if since_epoch is not None:
            where, args = where + ["epoch >= ?"], args + [since_epoch]
        query = "SELECT run_id, epoch, split, key, value FROM metrics"
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._connect() as con:
            df = pd.read_sql_query(query + " ORDER BY run_id, epoch, key", con, params=args)
        df["value"] = df["value"].astype(float)
        return df

    def metrics_wide(self, run_ids=None, keys=None) -> pd.DataFrame:
        """One row per (run, epoch), one column per metric key."""
        long = self.metrics(run_ids, keys)
        if long.empty:
            return pd.DataFrame(columns=["run_id", "epoch"])
        # pivot, not pivot_table(dropna=False): that one fills in the cross product of runs and epochs,
        # inventing rows for epochs a run never had; (run, epoch, key) is unique here (primary key)
        wide = long.pivot(index=["run_id", "epoch"], columns="key", values="value")
        return wide.reset_index().rename_axis(columns=None)

    def curves(self, run_id: str, epoch: int | None = None, split: str = "val") -> pd.DataFrame:
        """Curves of one run: ``epoch, rank, curve, tau, value`` (all epochs when ``epoch`` is None)."""
        query = "SELECT epoch, rank, curve, tau, value FROM curves WHERE run_id = ? AND split = ?"
        args: list = [run_id, split]
        if epoch is not None:
            query, args = query + " AND epoch = ?", args + [epoch]
        with self._connect() as con:
            df = pd.read_sql_query(query + " ORDER BY epoch, rank, curve, tau", con, params=args)
        df["value"] = df["value"].astype(float)
        return df

    def health(self, run_id: str) -> pd.DataFrame:
        """The health checks that fired, per epoch: ``epoch, check, message`` (empty for a healthy run,
        and for epochs written before the store kept health per epoch)."""
        with self._connect() as con:
            if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'health'").fetchone() is None:
                return pd.DataFrame({"epoch": pd.Series(dtype=int), "check": pd.Series(dtype=str),
                                     "message": pd.Series(dtype=str)})  # an older store opened read-only
            return pd.read_sql_query('SELECT epoch, "check", message FROM health WHERE run_id = ? '
                                     'ORDER BY epoch, "check"', con, params=(run_id,))

    def last_epoch(self, run_id: str) -> int | None:
        with self._connect() as con:
            row = con.execute("SELECT MAX(epoch) FROM metrics WHERE run_id = ?", (run_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    def data_version(self) -> tuple:
        """A cheap fingerprint that changes whenever anything is written (for live views)."""
        with self._connect() as con:
            return con.execute("SELECT COUNT(*), MAX(updated) FROM runs").fetchone()


def metric_split(key: str) -> str:
    """``core/val_loss`` -> ``val``; ``train/acc/genus`` -> ``train``; ``test/hF`` -> ``test``;
    ``schedule/...`` -> ``run``."""
    head = key.split("/")
    for part in head[:2]:
        for split in SPLITS:
            if part == split or part.startswith(split + "_"):
                return split
    return "run"


def fallback_ranks(config: Mapping, val_acc_keys: Sequence[str] = ()) -> list[str]:
    """The ranks of a run recorded before the store kept them (the one home of this guess).

    From its config's ``DATA.RANKS`` or, failing that, the ``val/acc/<rank>`` keys in the order the
    trainer first wrote them (``val_acc_keys``; never sorted: the order is the rank order). Runs
    recorded since store schema 2 carry their ranks (``runs.ranks``).
    """
    ranks = (config.get("DATA") or {}).get("RANKS") if isinstance(config, Mapping) else None
    if ranks:
        return [str(r) for r in ranks]
    return list(dict.fromkeys(ranks_of(val_acc_keys)))


def _json_or_none(text):
    """A JSON column's value parsed (None stays None)."""
    return None if text is None or (isinstance(text, float) and text != text) else json.loads(text)


def _finite_or_none(v) -> float | None:
    """NaN (e.g. partial-chain accuracy with no labelled sample) is stored as NULL."""
    v = float(v)
    return v if v == v else None


def _in_clause(column: str, values) -> tuple[list[str], list]:
    if values is None:
        return [], []
    if isinstance(values, str):
        values = [values]
    values = list(values)
    return [f"{column} IN ({', '.join('?' * len(values))})"], values

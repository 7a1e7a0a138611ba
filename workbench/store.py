"""RunStore: the embedded SQLite run store (DESIGN.md section 5).

Tables: ``runs`` (one row per run, with its resolved config, ordered ranks and reproducibility
record, notes and archived flag), ``metrics`` (run, epoch, split, key, value), ``curves`` (run, epoch,
split, rank, curve, tau, value), ``health`` (run, epoch, check, message: the checks that fired),
``tags`` (run, tag) and ``summaries`` (per run and metric key: the last value and the min / max with
the first epoch reaching each, kept by the writers in the epoch's transaction so tables of hundreds
of runs never read every metric row; see :meth:`RunStore.metric_summary`). Only the trainer's
event stream writes a run's record (:class:`workbench.tracking.StoreSink`), for single runs and
sweep trials alike. WAL mode and a busy timeout make it safe for several
writer processes (a sweep writes from many trials); each epoch is written in one transaction with
``INSERT OR REPLACE``, so a killed process leaves whole epochs only and a resumed run that
re-reports an epoch replaces it instead of duplicating it. Readers return pandas DataFrames.

A store is recognised before anything is written to it: an existing file is first opened read-only
and must carry our schema (``PRAGMA user_version`` up to :data:`SCHEMA_VERSION`, or the unversioned
first schema). A writer migrates an older store on open (:data:`MIGRATIONS`, one transaction, no row
lost); a reader reads it as it is (schema 2: no tags, notes or summaries, which read as empty and are
computed from the metric rows). Another tool's database, a newer workbench's store or a damaged
file is refused untouched. ``RunStore(path, create=False)`` never creates a store and
``RunStore.open_existing(path)`` only reads.

Run ids become folder names (``<store dir>/checkpoints/<run id>/``), so they are validated
(:func:`validate_run_id`) and every path built from one is checked to stay inside its folder.

Runs are annotated in place (:meth:`RunStore.add_tags`, :meth:`RunStore.set_notes`, :meth:`RunStore.rename`,
:meth:`RunStore.set_archived`; tags and notes are stored exactly as given, validated by
:func:`validate_tag` / :func:`validate_notes`) and deleted with :meth:`RunStore.delete_run`, which
refuses a queued or running run and says first what goes (:meth:`RunStore.delete_plan`). Every change
bumps the run's ``updated``, so :meth:`RunStore.data_version` tells live views.

One connection is kept per (process, thread) and store: SQLite connections must not cross threads
(Streamlit reruns) or processes (forked trainers), and opening one with its pragmas per call made an
epoch's write ~11x a raw write (more when it was the only connection: closing the last one checkpoints
the WAL; ``bench/bench_store.py``). It runs in autocommit mode with an explicit ``BEGIN`` / ``COMMIT``
per call, so an idle connection never holds a read transaction (which would block WAL checkpoints and
show stale data), and it is reopened when the store file is replaced or removed. Read-only stores
open a connection per call (:meth:`RunStore._ro_connect` picks how).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    environment TEXT,
    notes TEXT,
    archived INTEGER NOT NULL DEFAULT 0
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
# schema 3's tables (in SCHEMA and in the v2 -> v3 migration). WITHOUT ROWID: the primary key is the table's
# only b-tree, so write_epoch's per-key upsert touches one tree instead of a table and its key index.
TAGS_TABLE = ("CREATE TABLE IF NOT EXISTS tags (run_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (run_id, tag)) "
              "WITHOUT ROWID")
SUMMARIES_TABLE = ("CREATE TABLE IF NOT EXISTS summaries (run_id TEXT NOT NULL, split TEXT NOT NULL, key TEXT NOT NULL, "
                   "last_epoch INTEGER NOT NULL, last REAL, lo REAL, lo_epoch INTEGER, hi REAL, hi_epoch INTEGER, "
                   "PRIMARY KEY (run_id, key)) WITHOUT ROWID")
SCHEMA += TAGS_TABLE + ";\n" + SUMMARIES_TABLE + ";\n"

SUMMARY_COLUMNS = ("run_id", "split", "key", "last_epoch", "last", "lo", "lo_epoch", "hi", "hi_epoch")


def summary_rows(rows: Iterable[tuple]) -> list[tuple]:
    """The summaries of metric rows ``(run_id, split, key, epoch, value)`` given in any order: one tuple of
    :data:`SUMMARY_COLUMNS` per (run, key): the latest epoch and its value (None = NaN stays), and the
    smallest / largest non-None value with the FIRST epoch reaching it (as :mod:`workbench.summaries` picks).

    One pass in Python: over 5.2 million rows (2,000 runs x 100 epochs x 26 keys) it takes a fifth of the
    time of the equivalent window-function query, which sorts the rows three times.
    """
    acc: dict[tuple, list] = {}
    for run_id, split, key, epoch, value in rows:
        s = acc.get((run_id, key))
        if s is None:
            first = None if value is None else epoch
            acc[(run_id, key)] = [split, epoch, value, value, first, value, first]
            continue
        if epoch > s[1]:
            s[1], s[2] = epoch, value
        if value is not None:
            if s[3] is None or value < s[3] or (value == s[3] and epoch < s[4]):
                s[3], s[4] = value, epoch
            if s[5] is None or value > s[5] or (value == s[5] and epoch < s[6]):
                s[5], s[6] = value, epoch
    return [(run_id, s[0], key, *s[1:]) for (run_id, key), s in acc.items()]


def fill_summaries(con: sqlite3.Connection, run_id: str | None = None) -> None:
    """(Re)build the summaries of one run (a re-reported epoch) or of every run (the v2 -> v3 migration)
    from its metric rows, inside the caller's transaction."""
    where, args = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
    con.execute(f"DELETE FROM summaries {where}", args)
    rows = summary_rows(con.execute(f"SELECT run_id, split, key, epoch, value FROM metrics {where}", args))
    con.executemany(f"INSERT INTO summaries ({', '.join(SUMMARY_COLUMNS)}) VALUES ({', '.join('?' * 9)})", rows)


# One epoch's value folded into a key's summary. Valid only for an epoch later than every epoch the key
# already has (write_epoch rebuilds the run's summaries from its metrics otherwise); on a tie the earlier
# epoch keeps the min / max. SQLite evaluates every right-hand side on the row before the update.
SUMMARY_UPSERT = """
INSERT INTO summaries (run_id, split, key, last_epoch, last, lo, lo_epoch, hi, hi_epoch)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, key) DO UPDATE SET
    split = excluded.split, last_epoch = excluded.last_epoch, last = excluded.last,
    lo = CASE WHEN lo IS NULL OR excluded.lo < lo THEN COALESCE(excluded.lo, lo) ELSE lo END,
    lo_epoch = CASE WHEN excluded.lo IS NOT NULL AND (lo IS NULL OR excluded.lo < lo) THEN excluded.lo_epoch
               ELSE lo_epoch END,
    hi = CASE WHEN hi IS NULL OR excluded.hi > hi THEN COALESCE(excluded.hi, hi) ELSE hi END,
    hi_epoch = CASE WHEN excluded.hi IS NOT NULL AND (hi IS NULL OR excluded.hi > hi) THEN excluded.hi_epoch
               ELSE hi_epoch END
"""

# The schema version this code writes (``PRAGMA user_version``). Version 0 is the first, unversioned
# schema: exactly these tables and columns. Bump the version with a migration in MIGRATIONS.
SCHEMA_VERSION = 3
V0_TABLES = {
    "runs": ("id", "name", "status", "created", "updated", "config", "parent_id", "sweep_id", "error", "pid",
             "epochs_done", "stop_requested", "health"),
    "metrics": ("run_id", "epoch", "split", "key", "value"),
    "curves": ("run_id", "epoch", "split", "rank", "curve", "tau", "value"),
}
# version -> the statements that bring a store of that version to the next one (no row is lost); a
# callable step is called with the migrating connection
MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: ("CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id)",),  # v0 -> v1: only the version is new
    # v1 -> v2: each run's ordered ranks and reproducibility record; health checks per epoch
    1: ("ALTER TABLE runs ADD COLUMN ranks TEXT", "ALTER TABLE runs ADD COLUMN environment TEXT",
        'CREATE TABLE IF NOT EXISTS health (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, "check" TEXT NOT NULL, '
        'message TEXT, PRIMARY KEY (run_id, epoch, "check"))'),
    # v2 -> v3: notes, archive flag and tags per run; per-key summaries, filled from the metric rows
    2: ("ALTER TABLE runs ADD COLUMN notes TEXT", "ALTER TABLE runs ADD COLUMN archived INTEGER NOT NULL DEFAULT 0",
        TAGS_TABLE, SUMMARIES_TABLE, fill_summaries),
}
# the schema version that added tags, notes, the archive flag and summaries (older stores opened read-only lack them)
TRACKER_VERSION = 3
# runs columns that hold JSON (parsed by the readers); absent in stores older than version 2
JSON_RUN_COLUMNS = ("ranks", "environment")

from workbench.names import (  # noqa: E402,F401 (one home: names.py)
    ACTIVE, CHECKPOINT_NAME, CHECKPOINTS_DIR, LOCK_NAME, SELECT_BY_DEFAULT, SPLITS, STATUSES, config_file, direction,
    log_file, ranks_of,
)

RUN_ID_MAX = 64
RUN_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{RUN_ID_MAX - 1}}}")
RUN_ID_RULE = f"1 to {RUN_ID_MAX} letters, digits, '_', '.' or '-', starting with a letter or digit"
RUN_NAME_MAX = 200
TAG_MAX = 64  # characters in a tag
NOTES_MAX = 20_000  # characters in a run's notes
# W&B's run folders beside the store (TRACKING.WANDB.DIR unset): wandb/[offline-]run-<date>_<time>-<run id>
WANDB_RUN_DIR_RE = r"(?:offline-)?run-\d{{8}}_\d{{6}}-{run_id}"


from workbench.errors import StoreError  # noqa: F401 (defined once in errors.py; re-exported here)

# connections a forked child inherited from its parent's RunStores: kept referenced, never used or closed
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _release(con: sqlite3.Connection, pid: int) -> None:
    """Close a connection opened by process ``pid``. In a forked child the parent's connection is never
    closed (that could release the parent's locks or checkpoint its WAL under it) nor left to the garbage
    collector (which would close it): it stays referenced in :data:`_INHERITED_CONNECTIONS`."""
    if pid == os.getpid():
        con.close()
    else:
        _INHERITED_CONNECTIONS.append(con)


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


def _unprintable(text: str, allowed: str = "") -> str | None:
    """The first control character (or unpaired surrogate, or line / paragraph separator) in ``text``
    that is not in ``allowed``, described for an error message; None when there is none."""
    bad = next((c for c in text if c not in allowed and unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")), None)
    if bad is None:
        return None
    kind = ("an unpaired surrogate (undecodable byte)" if unicodedata.category(bad) == "Cs"
            else "a control character")
    return f"{kind} {bad!r} at position {text.index(bad)}"


def validate_tag(tag) -> str:
    """A tag as stored: ``tag`` stripped of surrounding spaces, 1 to :data:`TAG_MAX` characters, without
    control characters (newline, tab, NUL, escape, ...) or unpaired surrogates; any other text is fine
    (quotes, ``<b>``, emoji, inner spaces) and is stored and returned exactly. Else a :class:`StoreError`
    naming the tag and the rule."""
    if not isinstance(tag, str):
        raise StoreError(f"tag must be text, got {_shown(tag)}")
    stripped = tag.strip()
    bad = _unprintable(tag)  # anywhere, ends included: "baseline\n" is a mistake, not a tag
    if bad is not None:
        raise StoreError(f"tag {_shown(tag)} must be printable text; {bad}")
    if not stripped:
        raise StoreError(f"tag {_shown(tag)} is empty; a tag is 1 to {TAG_MAX} characters")
    if len(stripped) > TAG_MAX:
        raise StoreError(f"tag {_shown(tag)} is {len(stripped)} characters; a tag is 1 to {TAG_MAX} characters")
    return stripped


def validate_notes(text) -> str | None:
    """A run's notes as stored: None for None, "" or only spaces (no notes); else the text exactly, at most
    :data:`NOTES_MAX` characters; newlines, tabs and any printable text are fine, other control characters
    (NUL, escape sequences that would drive a terminal) and unpaired surrogates are refused."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise StoreError(f"notes must be text, got {_shown(text)}")
    if not text.strip():
        return None
    bad = _unprintable(text, allowed="\n\r\t")
    if bad is not None:
        raise StoreError(f"notes must be printable text (newlines and tabs are fine); {bad}")
    if len(text) > NOTES_MAX:
        raise StoreError(f"notes must be at most {NOTES_MAX:,} characters, got {len(text):,}")
    return text


def _set_wal(con: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """``PRAGMA journal_mode=WAL``, retried while the database is locked (up to ``wait_s``, like the busy
    timeout). The switch needs an exclusive lock, and SQLite answers "database is locked" at once, without
    the busy handler, when another process holds a write lock meanwhile (several processes creating one
    new store at the same moment)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _wal_mode(path: Path) -> bool:
    """Whether a SQLite file's header says WAL mode (read and write versions 2, bytes 18-19).

    Only for a file no connection of this process holds open: see :meth:`RunStore._ro_connect`."""
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
        self._local = threading.local()  # this thread's connection (see _connection)
        self._lock = threading.Lock()  # guards _opened and _generation
        self._opened: list[tuple[threading.Thread, int, sqlite3.Connection]] = []  # (thread, pid, connection)
        self._generation = 0  # bumped by close(): every thread's cached connection is then stale
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
            version = SCHEMA_VERSION
        self.version = version  # an older store opened read-only keeps its version (no tags, notes, summaries)

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
                _set_wal(con)  # persistent: the file is ours now
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
                        statement(con) if callable(statement) else con.execute(statement)
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
        # ``-wal`` first: while a connection has the file open in WAL mode its ``-wal`` exists, and reading the
        # header with open()/close() would then drop every POSIX lock this process holds on the file (closing
        # any descriptor of a file does), so another process could checkpoint and delete ``-wal`` under our
        # kept connections (stale reads, a malformed store). No ``-wal``: nobody has it open in WAL mode.
        idle_wal = not self.path.with_name(self.path.name + "-wal").exists() and _wal_mode(self.path)
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
    def _connect(self, write: bool = False):
        """One transaction: commit on success, roll back on error (SQLite errors become StoreErrors).

        ``write`` takes the write lock at ``BEGIN IMMEDIATE`` (waiting up to the busy timeout): a write
        transaction that reads first (write_epoch's re-report check) must not start on a snapshot that
        another writer moves past, which SQLite answers with "database is locked" at once, not waiting.
        """
        if self.readonly:
            with self._ro_transaction() as con:
                yield con
            return
        con = self._connection()
        con.row_factory = None  # a caller may have set one (run()); the connection outlives it
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield con
            except BaseException:
                self._rollback(con)
                raise
            con.execute("COMMIT")
        except sqlite3.OperationalError as e:  # locked past the timeout, read-only, disk I/O
            self._rollback(con)
            self._drop_current()  # the next call opens afresh (the file may have been replaced)
            raise self._error(e, "run store error") from None

    @contextmanager
    def _ro_transaction(self):
        """A read-only store: a connection per call, opened by :meth:`_ro_connect` (which of its ways
        works can change between calls, as writers come and go)."""
        try:
            con = self._ro_connect()
        except (sqlite3.Error, OSError) as e:  # the file was replaced or removed since the store was opened
            raise self._error(e, "run store error") from None
        try:
            con.execute("PRAGMA busy_timeout=60000")
            with con:
                yield con
        except sqlite3.OperationalError as e:
            raise self._error(e, "run store error") from None
        finally:
            con.close()

    def _connection(self) -> sqlite3.Connection:
        """This (process, thread)'s connection, opened on first use and reopened when the store file
        was replaced or removed (its device and inode changed: a kept connection would go on reading
        the old file) or :meth:`close` was called."""
        local = self._local
        try:
            stat = os.stat(self.path)
        except OSError as e:
            self._drop_current()
            raise StoreError(f"{self.path}: run store error: the store file is gone ({e.strerror}); it was "
                             "removed or moved after the store was opened") from None
        ident = (os.getpid(), stat.st_dev, stat.st_ino, self._generation)
        con = getattr(local, "con", None)
        if con is not None and local.ident != ident:
            self._drop_current()
            con = None
        if con is None:
            try:
                # check_same_thread=False only so that close() / __del__ / pruning may close a connection
                # from another thread; each connection is used by its own thread alone
                con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
                _set_wal(con)  # persistent; a no-op once set
                con.execute("PRAGMA busy_timeout=60000")
                con.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise self._error(e, "run store error") from None
            with self._lock:
                # a thread that ended left its connection here: close it now (sqlite3 connections sit in a
                # reference cycle, so without close() they and the -wal / -shm files outlive their thread)
                ended = [entry for entry in self._opened if not entry[0].is_alive() and entry[1] == ident[0]]
                self._opened = [e for e in self._opened if e not in ended]
                self._opened.append((threading.current_thread(), ident[0], con))
            for _, _, old in ended:
                old.close()
            local.con, local.ident = con, ident
        return con

    def _drop_current(self) -> None:
        """Forget (and close) this thread's connection; the next call opens a new one."""
        con = getattr(self._local, "con", None)
        self._local.con = None
        if con is None:
            return
        with self._lock:
            self._opened = [e for e in self._opened if e[2] is not con]
        _release(con, self._local.ident[0])

    def _rollback(self, con: sqlite3.Connection) -> None:
        """Roll back an open transaction; a connection that cannot is dropped (the next call reopens)."""
        if con.in_transaction:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                self._drop_current()

    def close(self) -> None:
        """Close the store's connections in this process (every thread's: call it when no other thread is
        using the store). The store stays usable: the next call opens a new connection. Closing the last
        connection lets SQLite fold the ``-wal`` file into the store and remove ``-wal`` / ``-shm``."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._generation += 1  # other threads' cached connections are stale now
        self._local.con = None
        for _, pid, con in opened:
            _release(con, pid)

    def __del__(self):
        for _, pid, con in getattr(self, "_opened", ()):  # __init__ may have failed before it was set
            _release(con, pid)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        with self._connect(write=True) as con:
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
        with self._connect(write=True) as con:
            cur = con.execute(
                f"UPDATE runs SET {sets}, updated = ? WHERE id = ?", (*fields.values(), time.time(), run_id)
            )
            if cur.rowcount == 0:
                raise StoreError(f"{self.path}: no run with id {run_id!r}")

    def request_stop(self, run_id: str) -> None:
        with self._connect(write=True) as con:
            con.execute("UPDATE runs SET stop_requested = 1, updated = ? WHERE id = ?", (time.time(), run_id))

    def clear_stop(self, run_id: str) -> None:
        """Withdraw a stop request (a resumed run must not stop at once on its old request)."""
        with self._connect(write=True) as con:
            con.execute("UPDATE runs SET stop_requested = 0, updated = ? WHERE id = ?", (time.time(), run_id))

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as con:
            row = con.execute("SELECT stop_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    # ------------------------------------------------------------------ annotations (schema 3)
    def _require_tracker_schema(self, what: str) -> None:
        """Writers of tags / notes / archive need schema 3; an older store only gets here read-only."""
        if self.version < TRACKER_VERSION:
            raise self._read_only_error(f"opened for reading only; {what} needs the store migrated to schema "
                                        f"{TRACKER_VERSION}, which opening it for writing does")

    def _touch(self, con: sqlite3.Connection, run_id: str) -> None:
        """Bump the run's ``updated`` (so :meth:`data_version` changes); a StoreError when there is no such run."""
        if con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id)).rowcount == 0:
            raise StoreError(f"{self.path}: no run with id {run_id!r}")

    def add_tags(self, run_id: str, tags: Iterable[str]) -> list[str]:
        """Tag a run (:func:`validate_tag` each; all are checked before any is written; a tag the run has
        already is fine). Returns the run's tags after, sorted."""
        return self._change_tags(run_id, tags, "INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)", "tagging")

    def remove_tags(self, run_id: str, tags: Iterable[str]) -> list[str]:
        """Remove tags from a run (a tag it does not have is not an error). Returns its tags after, sorted."""
        return self._change_tags(run_id, tags, "DELETE FROM tags WHERE run_id = ? AND tag = ?", "untagging")

    def _change_tags(self, run_id: str, tags: Iterable[str], statement: str, doing: str) -> list[str]:
        """Run ``statement`` (``run_id, tag`` parameters) for each validated tag in one transaction that also
        bumps the run's ``updated``; returns the run's tags after, sorted."""
        if isinstance(tags, str):
            tags = [tags]
        clean = [validate_tag(t) for t in tags]
        self._require_tracker_schema(doing)
        with self._connect(write=True) as con:
            self._touch(con, run_id)
            con.executemany(statement, [(run_id, t) for t in clean])
            return [t for (t,) in con.execute("SELECT tag FROM tags WHERE run_id = ? ORDER BY tag", (run_id,))]

    def tags(self, run_ids: str | Sequence[str] | None = None) -> dict[str, list[str]]:
        """``{run id: sorted tags}`` of the runs (all when None); runs without tags are absent."""
        if self.version < TRACKER_VERSION:
            return {}
        where, args = _in_clause("run_id", run_ids)
        query = "SELECT run_id, tag FROM tags" + (" WHERE " + where[0] if where else "") + " ORDER BY run_id, tag"
        out: dict[str, list[str]] = {}
        with self._connect() as con:
            for run_id, tag in con.execute(query, args):
                out.setdefault(run_id, []).append(tag)
        return out

    def all_tags(self) -> list[str]:
        """Every tag any run has, sorted, each once."""
        if self.version < TRACKER_VERSION:
            return []
        with self._connect() as con:
            return [t for (t,) in con.execute("SELECT DISTINCT tag FROM tags ORDER BY tag")]

    def set_notes(self, run_id: str, text: str | None) -> None:
        """A run's notes (:func:`validate_notes`; None or "" clears them)."""
        text = validate_notes(text)
        self._require_tracker_schema("notes")
        with self._connect(write=True) as con:
            self._touch(con, run_id)
            con.execute("UPDATE runs SET notes = ? WHERE id = ?", (text, run_id))

    def rename(self, run_id: str, name: str) -> None:
        """Give a run a new display name (:func:`validate_run_name`; not empty). Its id never changes."""
        if isinstance(name, str) and not name.strip():
            raise StoreError(f"run name must not be empty, got {_shown(name)}")
        if name is None:
            raise StoreError("run name must not be empty, got None")
        self.update_run(run_id, name=name)

    def set_archived(self, run_id: str, archived: bool = True) -> None:
        """Archive a run (hidden from tables by default; nothing is deleted) or, ``archived=False``, bring it back."""
        if not isinstance(archived, bool):
            raise StoreError(f"archived must be True or False, got {_shown(archived)}")
        self._require_tracker_schema("archiving")
        with self._connect(write=True) as con:
            self._touch(con, run_id)
            con.execute("UPDATE runs SET archived = ? WHERE id = ?", (int(archived), run_id))

    # ------------------------------------------------------------------ delete
    def run_paths(self, run_id: str) -> list[Path]:
        """The files and folders of a run beside the store that exist: its run folder (checkpoints, lock),
        its launcher's config and log, and its W&B run folders when W&B writes beside the store."""
        root = self.path.parent
        # the entries themselves, symlinks not followed (run_folder / run_file refuse a link leading out;
        # delete_run removes such a link, never what it points to)
        candidates = [root / CHECKPOINTS_DIR / validate_run_id(run_id), config_file(self.path, run_id),
                      log_file(self.path, run_id)]
        wandb = root / "wandb"
        if wandb.is_dir():
            pattern = re.compile(WANDB_RUN_DIR_RE.format(run_id=re.escape(run_id)))
            candidates += sorted(p for p in wandb.iterdir() if pattern.fullmatch(p.name))
        return [p for p in candidates if p.is_symlink() or p.exists()]

    def delete_plan(self, run_id: str) -> DeletePlan:
        """What :meth:`delete_run` would remove (nothing is changed): row counts, files and their size, and
        the runs whose parent this is (their rows stay; their parent link will dangle)."""
        validate_run_id(run_id)
        with self._connect() as con:
            row = con.execute("SELECT name, status, epochs_done FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"{self.path}: no run with id {run_id!r}")
            counts = {table: con.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]
                      for table in ("metrics", "curves", "health")}
            children = [c for (c,) in con.execute("SELECT id FROM runs WHERE parent_id = ? ORDER BY created, id",
                                                  (run_id,))]
        paths = self.run_paths(run_id)
        return DeletePlan(run_id=run_id, name=row[0], status=row[1], epochs=int(row[2]), metric_rows=counts["metrics"],
                          curve_rows=counts["curves"], health_rows=counts["health"],
                          tags=self.tags(run_id).get(run_id, []), paths=paths, bytes=sum(map(_size, paths)),
                          children=children)

    def delete_run(self, run_id: str) -> DeletePlan:
        """Delete a run: its rows in every table in one transaction, then its files (:meth:`delete_plan`).

        Refuses a queued or running run (:data:`workbench.names.ACTIVE`; reconcile dead processes first,
        :func:`workbench.launch.reconcile`), leaving everything as it was. Each path is checked to lie
        inside the store's folder before it is removed (a symlink is removed, never followed). Returns
        the plan that was carried out.
        """
        plan = self.delete_plan(run_id)
        with self._connect(write=True) as con:
            row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            status = row[0] if row else None  # read again under the write lock: it may have started meanwhile
            if status in ACTIVE:
                raise StoreError(f"run {run_id} is {status}: stop it first (Stop on the Train page, or wait for it "
                                 "to end); nothing was deleted")
            for table in ("metrics", "curves", "health", "tags", "summaries"):
                if table in ("tags", "summaries") and self.version < TRACKER_VERSION:
                    continue
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        root = self.path.parent.resolve()
        failed = []
        for path in plan.paths:
            where = path.parent.resolve() / path.name  # the entry itself: a symlink is not followed
            if not where.is_relative_to(root):
                failed.append(f"{path} (it lies outside the store's folder {root}: left alone)")
                continue
            try:
                if where.is_dir() and not where.is_symlink():
                    shutil.rmtree(where)
                else:
                    where.unlink(missing_ok=True)
            except OSError as e:
                failed.append(f"{path} ({e.strerror or e})")
        if failed:
            raise StoreError(f"run {run_id}: its rows were deleted, but {'; '.join(failed)} could not be removed; "
                             "remove by hand what should go")
        return plan

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
        with self._connect(write=True) as con:
            # a re-reported epoch (resume) may replace a min / max: rebuild the run's summaries from its
            # rows; else fold this epoch's values in (each key's epochs only grow)
            rebuild = bool(rows) and con.execute("SELECT 1 FROM metrics WHERE run_id = ? AND epoch >= ? LIMIT 1",
                                                 (run_id, epoch)).fetchone() is not None
            con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            if rebuild:
                fill_summaries(con, run_id)
            elif rows:
                con.executemany(SUMMARY_UPSERT, _upsert_args(rows))
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
        with self._connect(write=True) as con:
            for table in ("metrics", "curves", "summaries"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND split = ?", (run_id, split))
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            con.executemany(SUMMARY_UPSERT, _upsert_args(rows))
            if curves is not None and len(curves):
                c = curves[["rank", "curve", "tau", "value"]]
                con.executemany(
                    "INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, epoch, split, r, cv, float(t), _finite_or_none(v)) for r, cv, t, v in c.itertuples(index=False)],
                )
            con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    # ------------------------------------------------------------------ readers
    def runs(self, sweep_id: str | None = None, with_config: bool = False, include_archived: bool = True) -> pd.DataFrame:
        """All runs, newest first; ``with_config`` adds one column per config key (``LOSS.W``, ...).

        ``config`` is JSON text; ``ranks`` (list of rank names, coarse to fine) and ``environment``
        (dict) are parsed, None for rows written before they were stored (and in an older store
        opened read-only). ``notes`` (text or None), ``archived`` (bool) and ``tags`` (sorted list, []
        when none) are there in every store (None / False / [] in an older one opened read-only);
        ``include_archived=False`` leaves archived runs out.
        """
        where, args = [], []
        if sweep_id is not None:
            where, args = ["sweep_id = ?"], [sweep_id]
        if not include_archived and self.version >= TRACKER_VERSION:
            where.append("archived = 0")
        query = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as con:
            df = pd.read_sql_query(query + " ORDER BY created DESC", con, params=args)
        for column in JSON_RUN_COLUMNS:
            df[column] = [_json_or_none(v) for v in df[column]] if column in df else [None] * len(df)
        if "notes" not in df:  # an older store opened read-only
            df["notes"] = None
        df["notes"] = df["notes"].astype(object).where(df["notes"].notna(), None)
        df["archived"] = df["archived"].astype(bool) if "archived" in df else False
        tags = self.tags() if len(df) else {}
        df["tags"] = [tags.get(r, []) for r in df["id"]]
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

    def summaries(self, run_ids: str | Sequence[str] | None = None, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """Per run and metric key: ``run_id, split, key, last_epoch, last, min, min_epoch, max, max_epoch``
        (``last``: the value at the key's latest epoch, NaN when it was NaN; ``min`` / ``max``: the smallest /
        largest non-NaN value over epochs and the first epoch reaching it, NaN / None when every value was
        NaN). Ordered by run and key. An older store opened read-only computes them from its metric rows."""
        where, args = _in_clause("run_id", run_ids)
        if keys is not None:
            w, a = _in_clause("key", list(keys))
            where, args = where + w, args + a
        clause = " WHERE " + " AND ".join(where) if where else ""
        names = ["run_id", "split", "key", "last_epoch", "last", "min", "min_epoch", "max", "max_epoch"]
        with self._connect() as con:
            if self.version >= TRACKER_VERSION:
                rows = con.execute(f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM summaries{clause} ORDER BY run_id, key",
                                   args).fetchall()
            else:  # an older store opened read-only: from its metric rows
                rows = sorted(summary_rows(con.execute(f"SELECT run_id, split, key, epoch, value FROM metrics{clause}",
                                                       args)), key=lambda r: (r[0], r[2]))
        df = pd.DataFrame(rows, columns=names)
        for column in ("last", "min", "max"):
            df[column] = df[column].astype(float)
        for column in ("min_epoch", "max_epoch"):
            df[column] = df[column].astype("Int64")
        df["last_epoch"] = df["last_epoch"].astype(int)
        return df

    def metric_summary(
        self, how: str = "last", keys: Iterable[str] | None = None, run_ids: str | Sequence[str] | None = None,
        select_by: str | Mapping[str, str] = SELECT_BY_DEFAULT,
    ) -> pd.DataFrame:
        """One value per run and metric key, read from the summaries (never every metric row):
        exactly :func:`workbench.summaries.metric_values` of ``self.metrics(run_ids, keys)`` with ``how`` and
        ``select_by`` (see there: test keys are left out of best / min / max; index ``run_id``, sorted; one
        column per key; column order aside).

        ``"selected"``: each run's selected epoch comes from its ``select_by`` key's min / max epoch (by the
        key's direction; the run's last epoch when it has no finite value), even when ``keys`` leaves that
        key out (then its column is left out too, as ``metric_values(..., keys=keys)`` does); the values
        are the metric rows at those (run, epoch) pairs, read in one query. ``select_by`` may map run ids
        to keys (each run's ``TRAIN.SELECT_BY``; a run not in it: :data:`SELECT_BY_DEFAULT`).
        An older store opened read-only (no summaries table) computes it from its metric rows.
        """
        from workbench.summaries import EXTREMES, HOWS, test_mask

        if how not in HOWS:
            raise ValueError(f"`how` must be one of {', '.join(HOWS)}, got {how!r}")
        keys = None if keys is None else list(dict.fromkeys(keys))
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if self.version < TRACKER_VERSION:
            return self._metric_summary_from_rows(how, keys, run_ids, select_by)
        by_run = dict(select_by) if isinstance(select_by, Mapping) else {}
        default_by = SELECT_BY_DEFAULT if isinstance(select_by, Mapping) else select_by
        sel_keys = set(by_run.values()) | {default_by} if how == "selected" else set()
        wanted = None if keys is None else keys + sorted(sel_keys - set(keys))
        table = self.summaries(run_ids, wanted)
        empty = pd.DataFrame(index=pd.Index([], name="run_id"))
        if how in EXTREMES and len(table):
            table = table[~test_mask(table["key"])]
        if table.empty:
            return empty
        if how != "selected":
            if how == "best":  # each key's direction, looked up once per distinct key
                low = table["key"].isin([k for k in table["key"].unique() if direction(k) == "min"])
                value = table["min"].where(low, table["max"])
            else:
                value = table[how]
            runs = sorted(table["run_id"].unique())
            frame = table.assign(value=value)
            if how != "last":  # keys with no finite value in any run have no column, as in metric_values
                frame = frame[frame["value"].notna()]
            out = frame.pivot(index="run_id", columns="key", values="value") if len(frame) else empty
            return out.reindex(runs).rename_axis(index="run_id", columns=None)
        # selected: one epoch per run, then the metric rows at those (run, epoch) pairs. A run's rows here are
        # those metric_values would see: its keys' (every key when keys is None) and its own select_by key's
        by = table["run_id"].map(by_run).fillna(default_by) if by_run else pd.Series(default_by, index=table.index)
        if keys is not None:
            table, by = (t[table["key"].isin(keys) | (table["key"] == by)] for t in (table, by))
        if table.empty:
            return empty
        picks = table.groupby("run_id")["last_epoch"].max()  # no finite select_by value: the last epoch
        own = table[table["key"] == by]
        low = own["key"].isin([k for k in own["key"].unique() if direction(k) == "min"])
        best = own["min_epoch"].where(low, own["max_epoch"]).set_axis(own["run_id"]).dropna()
        picks.loc[best.index] = best.astype(int)
        clause, args = "", [json.dumps([[run, int(epoch)] for run, epoch in picks.items()])]
        if keys is not None:
            clause, args = " AND m.key IN (SELECT value FROM json_each(?))", args + [json.dumps(keys)]
        query = ("SELECT m.run_id, m.key, m.value FROM json_each(?) AS p JOIN metrics AS m "
                 "ON m.run_id = json_extract(p.value, '$[0]') AND m.epoch = json_extract(p.value, '$[1]')" + clause)
        with self._connect() as con:
            at = pd.DataFrame(con.execute(query, args).fetchall(), columns=["run_id", "key", "value"])
        at["value"] = at["value"].astype(float)
        out = at.pivot(index="run_id", columns="key", values="value") if len(at) else empty
        return out.reindex(sorted(picks.index)).rename_axis(index="run_id", columns=None)

    def _metric_summary_from_rows(self, how, keys, run_ids, select_by) -> pd.DataFrame:
        """:meth:`metric_summary` of a store without summaries (an older one opened read-only)."""
        from workbench.summaries import metric_values

        if how != "selected":
            return metric_values(self.metrics(run_ids, keys), how)
        groups: dict[str, list] = {}
        if isinstance(select_by, Mapping):
            for run in self.metrics(run_ids, keys)["run_id"].unique():
                groups.setdefault(select_by.get(run) or SELECT_BY_DEFAULT, []).append(run)
        else:
            groups[select_by] = run_ids
        parts = []
        for by, runs in groups.items():
            rows = self.metrics(runs, None if keys is None else [*keys, by])
            parts.append(metric_values(rows, "selected", by, keys=keys))
        out = pd.concat(parts) if len(parts) > 1 else parts[0]
        return out.sort_index().rename_axis(index="run_id", columns=None)

    def data_version(self) -> tuple:
        """A cheap fingerprint that changes whenever anything is written (for live views)."""
        with self._connect() as con:
            return con.execute("SELECT COUNT(*), MAX(updated) FROM runs").fetchone()


@functools.lru_cache(maxsize=4096)  # called per metric row on every write; a run has a few dozen keys
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


def _upsert_args(rows: list[tuple]) -> list[tuple]:
    """:data:`SUMMARY_UPSERT` arguments of metric rows ``(run_id, epoch, split, key, value)``: each value as
    its key's last, min and max at its epoch (a None value: no min / max epoch)."""
    return [(r, s, k, e, v, v, None if v is None else e, v, None if v is None else e) for r, e, s, k, v in rows]


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


@dataclass
class DeletePlan:
    """What deleting a run removes (:meth:`RunStore.delete_plan`); :meth:`describe` says it in words."""

    run_id: str
    name: str | None
    status: str
    epochs: int
    metric_rows: int
    curve_rows: int
    health_rows: int
    tags: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # existing files and folders beside the store
    bytes: int = 0  # their total size
    children: list[str] = field(default_factory=list)  # runs whose parent_id is this run

    def __post_init__(self):
        # which paths are folders, noted now: describe() may be called after they are gone
        self._folders = {p for p in self.paths if p.is_dir() and not p.is_symlink()}

    def describe(self) -> str:
        """One plain-text paragraph naming everything that goes (and the runs whose parent link will dangle)."""
        rows = [_count(self.metric_rows, "metric row"), _count(self.curve_rows, "curve row"),
                _count(self.health_rows, "health row"), _count(len(self.tags), "tag")]
        if self.tags:
            rows[-1] += " (" + ", ".join(repr(t) for t in self.tags) + ")"
        if self.paths:
            shown = ", ".join(str(p) + ("/" if p in self._folders else "") for p in self.paths)
            files = f"{_count(len(self.paths), 'file')} ({human_bytes(self.bytes)}): {shown}"
        else:
            files = "no files"
        text = (f"run {self.run_id} (name {self.name!r}, {self.status}, {_count(self.epochs, 'epoch')}): "
                f"{', '.join(rows)}, and {files}.")
        if self.children:
            text += (f" Phase-2 runs {', '.join(self.children)} keep their rows; their parent link will dangle.")
        return text


def _count(n: int, noun: str) -> str:
    """``_count(12120, "curve row") == "12,120 curve rows"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def human_bytes(n: int) -> str:
    """``14_200_000 -> "14.2 MB"``, ``512 -> "512 bytes"`` (decimal units, as file managers show)."""
    if n < 1000:
        return f"{n} byte{'' if n == 1 else 's'}"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


def _size(path: Path) -> int:
    """Bytes under ``path`` (a file, or a folder walked without following symlinks)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())

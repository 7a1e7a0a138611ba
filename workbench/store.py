"""RunStore: the embedded SQLite run store (DESIGN.md section 5).

Tables: ``runs`` (one row per run), ``metrics`` (run, epoch, split, key, value) and ``curves``
(run, epoch, split, rank, curve, tau, value). WAL mode and a busy timeout make it safe for several
writer processes (a sweep writes from many trials); each epoch is written in one transaction with
``INSERT OR REPLACE``, so a killed process leaves whole epochs only and a resumed run that
re-reports an epoch replaces it instead of duplicating it. Readers return pandas DataFrames.

A connection is opened per call: SQLite connections must not cross threads (Streamlit reruns)
or processes (forked trainers), and opening one costs well under a millisecond.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
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
    health TEXT
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
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id);
"""

STATUSES = ("queued", "running", "finished", "failed", "stopped")
CHECKPOINT_NAME = "checkpoint.pt"


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message names the store path and the run."""


def new_run_id() -> str:
    """Sortable, unique: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RunStore:
    """The run store at ``path`` (created with its folder on first use)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder; the run store is a file (e.g. runs/workbench.db)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:  # not a SQLite file, unreadable, ...
            raise StoreError(f"{self.path}: cannot open the run store: {e}") from None

    @contextmanager
    def _connect(self):
        con = sqlite3.connect(self.path, timeout=60.0)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=60000")
            con.execute("PRAGMA synchronous=NORMAL")
            with con:  # one transaction: commit on success, roll back on error
                yield con
        finally:
            con.close()

    def checkpoint_path(self, run_id: str) -> Path:
        """Where a run's checkpoint lives: ``<store dir>/checkpoints/<run id>/checkpoint.pt``.

        The one definition of the layout, for the trainer and for launchers that must not import torch.
        """
        return self.path.parent / "checkpoints" / run_id / CHECKPOINT_NAME

    # ------------------------------------------------------------------ runs
    def create_run(
        self, config: Mapping, name: str | None = None, run_id: str | None = None,
        parent_id: str | None = None, sweep_id: str | None = None, status: str = "queued",
    ) -> str:
        run_id = run_id or new_run_id()
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
        """One run's row as a dict (``config`` parsed)."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no run with id {run_id!r}")
        out = dict(row)
        out["config"] = json.loads(out["config"])
        return out

    def update_run(self, run_id: str, **fields) -> None:
        allowed = {"name", "status", "error", "pid", "parent_id", "sweep_id", "config", "health", "epochs_done"}
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"cannot update run field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise StoreError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
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

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as con:
            row = con.execute("SELECT stop_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        with self._connect() as con:
            for table, col in (("metrics", "run_id"), ("curves", "run_id"), ("runs", "id")):
                con.execute(f"DELETE FROM {table} WHERE {col} = ?", (run_id,))

    # ------------------------------------------------------------------ epochs
    def write_epoch(
        self, run_id: str, epoch: int, metrics: Mapping[str, float], curves: pd.DataFrame | None = None,
        health: Mapping | None = None,
    ) -> None:
        """One epoch's metrics (``{"core/val_loss": 0.4, ...}``) and curves in one transaction.

        The split of a metric is the part of its name before the first ``/`` that is ``train`` or
        ``val`` (``core/val_loss`` -> ``val``); anything else (``schedule/...``) is ``run``.
        ``curves`` has columns ``split, rank, curve, tau, value``.
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
                sets += ", health = ?"
                args.append(json.dumps(health))
            con.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*args, run_id))

    # ------------------------------------------------------------------ readers
    def runs(self, sweep_id: str | None = None, with_config: bool = False) -> pd.DataFrame:
        """All runs, newest first; ``with_config`` adds one column per config key (``LOSS.W``, ...)."""
        query, args = "SELECT * FROM runs", ()
        if sweep_id is not None:
            query, args = query + " WHERE sweep_id = ?", (sweep_id,)
        with self._connect() as con:
            df = pd.read_sql_query(query + " ORDER BY created DESC", con, params=args)
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

    def last_epoch(self, run_id: str) -> int | None:
        with self._connect() as con:
            row = con.execute("SELECT MAX(epoch) FROM metrics WHERE run_id = ?", (run_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    def data_version(self) -> tuple:
        """A cheap fingerprint that changes whenever anything is written (for live views)."""
        with self._connect() as con:
            return con.execute("SELECT COUNT(*), MAX(updated) FROM runs").fetchone()


def metric_split(key: str) -> str:
    """``core/val_loss`` -> ``val``; ``train/acc/genus`` -> ``train``; ``schedule/...`` -> ``run``."""
    head = key.split("/")
    for part in head[:2]:
        for split in ("train", "val"):
            if part == split or part.startswith(split + "_"):
                return split
    return "run"


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

"""Benchmark: ``RunStore.write_epoch`` against a raw single-connection write of the same rows.

    python bench/bench_store.py [--epochs 200] [--rounds 5] [--smoke]

One epoch as the trainer writes it: 26 metric keys, without curves and with a trainer-like curve block
(3 ranks x 4 curves x 51 taus = 612 rows). Three ways, interleaved round by round in one store:

- ``write_epoch``: the store's call (kept connection, one transaction, summaries upserted, run row updated);
- raw: one open connection, ``BEGIN`` / ``executemany`` of the metric (and curve) rows / ``COMMIT``, rows
  built from the same dict and frame in the loop (the floor for these rows in this schema);
- raw + connection per call: the raw write with a connection and the store's pragmas opened and closed
  per call, which is what ``write_epoch`` paid before the store kept its connection (issue 17: ~11x raw;
  alone on the store, each close is the last one and checkpoints the WAL, so it can be far more).

Prints microseconds per epoch (median over rounds) and the ratios; the aim is write_epoch <= 2x raw.
``write_ratio(epochs=...)`` returns the same numbers as a dict (``bench_app.py`` prints them in its run).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from workbench.store import RunStore, metric_split  # noqa: E402

RANKS = ("order", "family", "genus")
CURVES = ("coverage", "selective_accuracy", "risk", "f1")
TAUS = 51
AIM = 2.0  # write_epoch within 2x of the raw write (issue 17)


def epoch_metrics(epoch: int) -> dict[str, float]:
    """26 metric keys, as a 3-rank trainer logs them (core, per-rank, whole-split, schedule, time)."""
    rng = np.random.default_rng(epoch)
    keys = [f"core/{s}_{w}" for s in ("train", "val") for w in ("loss", "chain_acc", "partial_chain_acc")]
    keys += [f"{s}/{k}/{r}" for s in ("train", "val") for k in ("acc", "loss") for r in RANKS]
    keys += ["val/consistency", "val/severity", "val/hdist@1", "val/hP", "val/hR", "val/hF",
             "schedule/null_inclusion_prob", "time/epoch_seconds"]
    assert len(keys) == 26
    return {k: float(v) for k, v in zip(keys, rng.random(len(keys)))}


def curve_block(epoch: int) -> pd.DataFrame:
    """``split, rank, curve, tau, value``: 3 ranks x 4 curves x 51 taus."""
    taus = np.linspace(0, 1, TAUS)
    return pd.DataFrame([{"split": "val", "rank": r, "curve": c, "tau": float(t), "value": float(t) * 0.5 + epoch * 1e-3}
                         for r in RANKS for c in CURVES for t in taus])


def _raw_write(con: sqlite3.Connection, run_id: str, epoch: int, metrics: dict, curves: pd.DataFrame | None) -> None:
    con.execute("BEGIN")
    con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                    [(run_id, epoch, metric_split(k), k, v) for k, v in metrics.items()])
    if curves is not None:
        con.executemany("INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(run_id, epoch, s, r, c, float(t), float(v))
                         for s, r, c, t, v in curves[["split", "rank", "curve", "tau", "value"]].itertuples(index=False)])
    con.execute("COMMIT")


def _connect_per_call(path: Path) -> sqlite3.Connection:
    """A connection as the store opened one per call before issue 17 (with its pragmas)."""
    con = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    for pragma in ("journal_mode=WAL", "busy_timeout=60000", "synchronous=NORMAL"):
        con.execute(f"PRAGMA {pragma}")
    return con


def _measure(epochs: int, rounds: int, with_curves: bool) -> dict[str, float]:
    """Microseconds per epoch (median over rounds) of the three ways; each round writes fresh runs.

    Each way runs with no other connection open, as a trainer writes its run: closing the last connection
    to a WAL store checkpoints it, which is what a connection per call paid at every epoch."""
    inputs = [(epoch_metrics(e), curve_block(e) if with_curves else None) for e in range(epochs)]
    times: dict[str, list[float]] = {"write_epoch": [], "raw": [], "per_call": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "store.db")
        for rnd in range(rounds):
            run_id = store.create_run({}, run_id=f"store-{rnd}", status="running")
            t0 = time.perf_counter()
            for e, (m, c) in enumerate(inputs):
                store.write_epoch(run_id, e, m, c)
            times["write_epoch"].append(time.perf_counter() - t0)
            store.close()
            raw = _connect_per_call(store.path)  # the raw baseline's one open connection
            _raw_write(raw, f"warm-{rnd}", 0, *inputs[0])  # warmed like the store's (create_run used it)
            t0 = time.perf_counter()
            for e, (m, c) in enumerate(inputs):
                _raw_write(raw, f"raw-{rnd}", e, m, c)
            times["raw"].append(time.perf_counter() - t0)
            raw.close()
            t0 = time.perf_counter()
            for e, (m, c) in enumerate(inputs):
                con = _connect_per_call(store.path)
                _raw_write(con, f"percall-{rnd}", e, m, c)
                con.close()
            times["per_call"].append(time.perf_counter() - t0)
        store.close()
    return {k: statistics.median(v) / epochs * 1e6 for k, v in times.items()}


def write_ratio(epochs: int = 200, rounds: int | None = None) -> dict:
    """``write_epoch`` vs raw, without and with curves: microseconds per epoch and the ratios."""
    rounds = rounds or (3 if epochs <= 50 else 5)
    out: dict = {}
    for label, with_curves in (("26 metrics", False), (f"26 metrics + {len(RANKS) * len(CURVES) * TAUS} curve rows", True)):
        us = _measure(epochs, rounds, with_curves)
        out[f"{label}: write_epoch us/epoch"] = us["write_epoch"]
        out[f"{label}: raw us/epoch"] = us["raw"]
        out[f"{label}: raw + connection per call us/epoch"] = us["per_call"]
        out[f"{label}: write_epoch / raw"] = us["write_epoch"] / us["raw"]
        out[f"{label}: connection per call / raw"] = us["per_call"] / us["raw"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run and way (default 200; smoke 10)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds, median taken (default 5; smoke 2)")
    ap.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    args = ap.parse_args(argv)
    epochs = args.epochs or (10 if args.smoke else 200)
    rounds = args.rounds or (2 if args.smoke else 5)
    result = write_ratio(epochs, rounds)
    print(f"bench_store: {epochs} epochs x {rounds} rounds per way (load average {os.getloadavg()[0]:.1f})"
          f"{' [smoke]' if args.smoke else ''}")
    print(f"{'epoch written':<34} {'write_epoch':>12} {'raw':>10} {'conn/call':>10} {'write_epoch / raw':>18} "
          f"{'conn/call / raw':>16}")
    for label in dict.fromkeys(k.split(":")[0] for k in result):
        ratio = result[f"{label}: write_epoch / raw"]
        print(f"{label:<34} {result[f'{label}: write_epoch us/epoch']:>9.0f} us {result[f'{label}: raw us/epoch']:>7.0f} us "
              f"{result[f'{label}: raw + connection per call us/epoch']:>7.0f} us {ratio:>16.2f}x "
              f"{result[f'{label}: connection per call / raw']:>15.2f}x  "
              f"({'meets' if ratio <= AIM else 'misses'} the {AIM:g}x aim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

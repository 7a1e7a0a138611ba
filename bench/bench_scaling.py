"""Scaling series: how metrics, threshold curves, training and the run store grow with size.

    python bench/bench_scaling.py            # the full series (a few minutes on 2 cores)
    python bench/bench_scaling.py --smoke    # tiny sizes, < 30 s: checks the script runs

Each table has a baseline timed in the same run, and ratios against it:
(a) partial_chain_accuracy and rank_accuracy vs N = 1e3..1e7 (4 ranks of 5/10/20/40 classes, ~10%
    null targets), in ns per sample; baseline: one fused pass ``(preds == targets).all(1).sum()``,
    the least work any chain metric must do.
(b) threshold_curves vs N = 1e3..1e6 (1e7 when its memory estimate fits ``--max-gb``); baseline:
    the naive loop over the 101 thresholds (bench_metrics.py), at small N only, checked to agree.
(c) Trainer.train_epoch throughput (samples/s) vs batch size 64..4096 on synthetic N=50,000 with
    64 features; baseline: the bare PyTorch loop of bench_trainer.py on the same model and data.
(d) RunStore: write time per epoch (``write_epoch``, ~30 metric keys, no curves) and read time
    (``runs()``, ``metrics_wide()`` of all runs) vs 10 / 100 / 1000 stored runs of 50 epochs;
    baseline: raw sqlite3 on one open connection doing the same inserts / the same SELECT; plus
    one row with curves (4 ranks x 4 curves x 101 taus per epoch).
The 1-minute load average is printed at the start and the end: the machine is shared, so judge
the noise by it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the baselines of the sibling benchmarks

from bench_metrics import threshold_curves_naive  # noqa: E402
from bench_trainer import bare_epoch  # noqa: E402

from workbench import names as N  # noqa: E402
from workbench.config import Config  # noqa: E402
from workbench.data import make_synthetic  # noqa: E402
from workbench.metrics import (  # noqa: E402
    default_thresholds,
    partial_chain_accuracy,
    rank_accuracy,
    threshold_curves,
)
from workbench.store import RunStore  # noqa: E402
from workbench.trainer import Trainer  # noqa: E402

CLASSES = (5, 10, 20, 40)  # real classes per rank; heads have K + 1 outputs (79 in all)
NULL_FRACTION = 0.1


# ---------------------------------------------------------------------- helpers
def best_of(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def repeats_for(n: int) -> int:
    return 7 if n <= 10_000 else 5 if n <= 100_000 else 3 if n <= 1_000_000 else 2


def print_table(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    print(f"\n{title}")
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    for note in notes:
        print(note)


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def labels(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``preds, targets``: ``LongTensor (N, 4)``, 80% of predictions right, ~10% null targets."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.stack([torch.randint(1, k + 1, (n,), generator=g) for k in CLASSES], dim=1)  # (N, R)
    targets[torch.rand(n, len(CLASSES), generator=g) < NULL_FRACTION] = 0
    noise = torch.stack([torch.randint(0, k + 1, (n,), generator=g) for k in CLASSES], dim=1)
    preds = torch.where(torch.rand(n, len(CLASSES), generator=g) < 0.8, targets, noise)
    return preds, targets


def probabilities(targets: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """Softmax ``R x (N, K_r + 1)`` float32 with some signal on the true class."""
    g = torch.Generator().manual_seed(seed)
    n, out = targets.shape[0], []
    for r, k in enumerate(CLASSES):
        logits = 2 * torch.randn(n, k + 1, generator=g)  # (N, K + 1)
        logits[torch.arange(n), targets[:, r]] += 3.0
        out.append(torch.softmax(logits, dim=1))
        del logits
    return out


# ---------------------------------------------------------------------- (a) accuracy metrics
def bench_accuracy(sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        preds, targets = labels(n)
        rep = repeats_for(n)
        floor = best_of(lambda: (preds == targets).all(dim=1).sum(), rep)
        t_pc = best_of(lambda: partial_chain_accuracy(preds, targets), rep)
        t_ra = best_of(lambda: rank_accuracy(preds, targets), rep)
        ns = lambda t: f"{t / n * 1e9:,.2f}"  # noqa: E731
        rows.append([f"{n:,}", ns(floor), ns(t_pc), f"{t_pc / floor:.1f}x", ns(t_ra), f"{t_ra / floor:.1f}x",
                     f"{t_pc * 1e3:,.3f}"])
        del preds, targets
    print_table(
        f"(a) accuracy metrics vs N ({len(CLASSES)} ranks, ns per sample, best of 7/5/3/2 by size)",
        ["N", "floor ns", "partial_chain ns", "vs floor", "rank_acc ns", "vs floor", "partial_chain ms"], rows,
        ["floor = (preds == targets).all(1).sum(): one fused pass, the least work a chain metric needs"],
    )


# ---------------------------------------------------------------------- (b) threshold curves
def curves_peak_gb(n: int) -> float:
    """Peak memory estimate: the probs (N x 79 float32), the logits a rank's probs are made from, and
    per rank the confidence / sort / cumulative-count buffers (~7 tensors of N x 8 bytes)."""
    k_total = sum(k + 1 for k in CLASSES)
    return (n * k_total * 4 + n * (max(CLASSES) + 1) * 4 + n * 7 * 8 + n * len(CLASSES) * 8 * 2) / 1e9


def bench_curves(sizes: list[int], naive_up_to: int, max_gb: float) -> None:
    taus = default_thresholds()
    rows, notes = [], []
    for n in sizes:
        need = curves_peak_gb(n)
        if need > max_gb:
            notes.append(f"N={n:,} skipped: probs alone are {n * sum(k + 1 for k in CLASSES) * 4 / 1e9:.1f} GB "
                         f"(N x {sum(k + 1 for k in CLASSES)} float32); estimated peak {need:.1f} GB > "
                         f"--max-gb {max_gb:g}")
            continue
        _, targets = labels(n)
        probs = probabilities(targets)
        rep = repeats_for(n)
        t_fast = best_of(lambda: threshold_curves(probs, targets, thresholds=taus), rep)
        naive_cell, ratio = "-", "-"
        if n <= naive_up_to:
            t_naive = best_of(lambda: threshold_curves_naive(probs, targets, taus), max(1, rep // 2))
            fast, slow = threshold_curves(probs, targets, thresholds=taus), threshold_curves_naive(probs, targets, taus)
            for r in slow:
                for name, values in slow[r].items():
                    torch.testing.assert_close(fast[r][name], values, equal_nan=True, atol=1e-9, rtol=0)
            naive_cell, ratio = f"{t_naive * 1e3:,.2f}", f"{t_naive / t_fast:.1f}x"
        rows.append([f"{n:,}", f"{need:.2f}", f"{t_fast * 1e3:,.2f}", f"{t_fast / n * 1e9:,.1f}", naive_cell, ratio])
        del probs, targets
    notes.append(f"naive = a loop over the {len(taus)} thresholds recomputing the masks (N <= {naive_up_to:,} "
                 "only); its curves agree with the workbench's to 1e-9")
    print_table(f"(b) threshold_curves vs N ({len(CLASSES)} ranks of {'/'.join(map(str, CLASSES))} classes, "
                f"{len(taus)} taus)",
                ["N", "est. peak GB", "workbench ms", "ns/sample", "naive ms", "naive / workbench"], rows, notes)


# ---------------------------------------------------------------------- (c) trainer throughput
def bench_trainer(n: int, features: int, hidden: list[int], batch_sizes: list[int], threads: int) -> None:
    ds = make_synthetic(n=n, num_features=features, null_rates=(0.0, 0.1, 0.3), seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "bench.db")
        for bs in batch_sizes:
            cfg = Config().with_overrides({
                "MODEL.HIDDEN": hidden, "TRAIN.BATCH_SIZE": bs, "TRAIN.NUM_THREADS": threads, "TRAIN.DEVICE": "cpu",
                "TRAIN.EPOCHS": 1, "TRACKING.STORE": str(Path(tmp) / "bench.db"), "TRACKING.WANDB.ENABLED": False,
            })
            trainer = Trainer(cfg, store=store, dataset=ds, progress=False)
            bare_model = copy.deepcopy(trainer.model)
            bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WEIGHT_DECAY)
            x, y = trainer.train_ds.features, trainer.train_ds.targets
            g = torch.Generator().manual_seed(0)
            m = len(y)
            bare_epoch(bare_model, bare_opt, x[: bs * 3], y[: bs * 3], bs, g)  # warm-up (allocator, threads)
            t_bare = t_wb = math.inf
            for _ in range(2):  # best of 2, interleaved so that machine noise hits both alike
                t_bare = min(t_bare, best_of(lambda: bare_epoch(bare_model, bare_opt, x, y, bs, g), 1))
                t_wb = min(t_wb, best_of(lambda: trainer.train_epoch(0), 1))
            rows.append([f"{bs:,}", f"{trainer.train_ds.num_batches(bs):,}", f"{m / t_bare:,.0f}", f"{m / t_wb:,.0f}",
                         f"{t_wb / t_bare:.2f}x"])
    print_table(f"(c) Trainer.train_epoch throughput vs batch size (synthetic N={n:,}, {m:,} training samples, "
                f"{features} features, MLP {hidden}, 3 ranks, {threads} threads)",
                ["batch", "batches", "bare samples/s", "workbench samples/s", "workbench time / bare"], rows,
                ["bare = plain PyTorch loop (CE summed over ranks, no masking/metrics), same model and weights; "
                 "best of 2 epochs each, interleaved, after a short warm-up"])


# ---------------------------------------------------------------------- (d) run store
RANKS = ("order", "family", "genus")
METRIC_KEYS = (
    [N.TRAIN_LOSS, N.VAL_LOSS, N.TRAIN_CHAIN_ACC, N.VAL_CHAIN_ACC, N.TRAIN_PARTIAL_CHAIN_ACC,
     N.VAL_PARTIAL_CHAIN_ACC, N.NULL_INCLUSION_PROB, N.EPOCH_SECONDS, N.VAL_CONSISTENCY,
     N.VAL_SEVERITY, N.VAL_HDIST, *(N.HEALTH_PREFIX + c for c in ("nonfinite_loss", "collapsed_embeddings", "empty_sets",
                                                                  "constant_predictions"))]
    + [N.rank_key(s, m, r) for r in RANKS for s, m in (("train", "acc"), ("train", "loss"), ("val", "acc"),
                                                  ("val", "loss"), ("val", "best_tau"))]
)  # 30 keys


def epoch_metrics(run: int, epoch: int) -> dict[str, float]:
    return {k: (run * 31 + epoch * 7 + i) % 997 / 997 for i, k in enumerate(METRIC_KEYS)}


def curves_frame():
    import pandas as pd

    taus = default_thresholds().tolist()
    rows = [("val", r, c, t, 0.5) for r in RANKS + ("species",)
            for c in ("coverage", "selective_accuracy", "accuracy", "null_false_positive_rate") for t in taus]
    return pd.DataFrame(rows, columns=["split", "rank", "curve", "tau", "value"])


def bulk_fill(db: Path, run_ids: list[str], epochs: int, config: str) -> None:
    """Untimed filler: whole runs in one transaction (the timed writes go through write_epoch)."""
    from workbench.store import metric_split

    now = time.time()
    con = sqlite3.connect(db)
    with con:
        con.executemany("INSERT INTO runs (id, name, status, created, updated, config, epochs_done) VALUES "
                        "(?, ?, 'finished', ?, ?, ?, ?)", [(r, r, now, now, config, epochs) for r in run_ids])
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                        [(r, e, metric_split(k), k, v) for i, r in enumerate(run_ids) for e in range(epochs)
                         for k, v in epoch_metrics(i, e).items()])
    con.close()


def bench_store(levels: list[int], epochs: int, timed_runs: int, curve_epochs: int) -> None:
    import json

    import pandas as pd

    from workbench.store import metric_split

    config = Config().to_dict()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "store.db"
        store = RunStore(db)
        have = 0
        for level in levels:
            add = level - have
            timed = min(timed_runs, add)
            # filler first, so the timed writes land in a store of about this size
            bulk_fill(db, [f"fill-{have + i:05d}" for i in range(add - timed)], epochs, json.dumps(config))
            t_write = 0.0
            for i in range(timed):
                rid = store.create_run(config, run_id=f"run-{have + add - timed + i:05d}", status="running")
                for e in range(epochs):
                    m = epoch_metrics(i, e)
                    t0 = time.perf_counter()
                    store.write_epoch(rid, e, m)
                    t_write += time.perf_counter() - t0
            have = level
            # baseline: the same rows through one open connection, one transaction per epoch
            con = sqlite3.connect(db)
            con.execute("PRAGMA synchronous=NORMAL")
            t0 = time.perf_counter()
            for i in range(timed):
                for e in range(epochs):
                    with con:
                        con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                                        [(f"raw-{i}", e, metric_split(k), k, v) for k, v in epoch_metrics(i, e).items()])
            t_raw = time.perf_counter() - t0
            with con:
                con.execute("DELETE FROM metrics WHERE run_id LIKE 'raw-%'")
            n_writes = timed * epochs
            t_runs = best_of(lambda: store.runs(), 3)
            t_wide = best_of(lambda: store.metrics_wide(), 1 if level >= 1000 else 2)
            t_select = best_of(lambda: pd.read_sql_query("SELECT run_id, epoch, key, value FROM metrics", con),
                               1 if level >= 1000 else 2)
            con.close()
            n_rows = level * epochs * len(METRIC_KEYS)
            rows.append([f"{level:,}", f"{n_rows:,}", f"{t_write / n_writes * 1e3:.2f}", f"{t_raw / n_writes * 1e3:.2f}",
                         f"{t_write / t_raw:.1f}x", f"{t_runs * 1e3:,.1f}", f"{t_wide * 1e3:,.0f}",
                         f"{t_select * 1e3:,.0f}", f"{t_wide / t_select:.1f}x"])
        # one run with curves, in the largest store
        frame = curves_frame()
        rid = store.create_run(config, run_id="with-curves", status="running")
        t_curves = 0.0
        for e in range(curve_epochs):
            t0 = time.perf_counter()
            store.write_epoch(rid, e, epoch_metrics(0, e), curves=frame)
            t_curves += time.perf_counter() - t0
        t_read_curves = best_of(lambda: store.curves(rid), 3)
        notes.append(f"with curves ({len(frame):,} curve rows per epoch: 4 ranks x 4 curves x 101 taus), in the "
                     f"{levels[-1]:,}-run store: write_epoch {t_curves / curve_epochs * 1e3:.1f} ms per epoch; "
                     f"store.curves(run) of {curve_epochs} epochs {t_read_curves * 1e3:.1f} ms")
    notes.insert(0, f"write ms = mean write_epoch of {timed_runs} runs x {epochs} epochs ({len(METRIC_KEYS)} keys, no "
                    "curves) in a store of that size; raw = same rows, one open sqlite3 connection, a transaction "
                    "per epoch; read raw = pd.read_sql_query of the metrics table (no pivot)")
    print_table(f"(d) RunStore vs stored runs ({epochs} epochs each, {len(METRIC_KEYS)} metric keys)",
                ["runs", "metric rows", "write ms/epoch", "raw ms/epoch", "vs raw", "runs() ms",
                 "metrics_wide ms", "raw SELECT ms", "wide / raw"], rows, notes)


# ---------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (< 30 s): checks that the script runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-gb", type=float, default=4.0, help="memory budget of one threshold_curves size")
    p.add_argument("--only", nargs="*", choices=["a", "b", "c", "d"], default=None, help="run these sections only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(f"workbench scaling benchmark{' (smoke: tiny sizes, numbers not meaningful)' if args.smoke else ''}: "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"1-min load average at start {load()}")
    only = set(args.only or "abcd")
    if args.smoke:
        acc, curves, naive_n = [1_000, 10_000], [1_000, 10_000], 10_000
        trainer = dict(n=2_000, features=16, hidden=[32], batch_sizes=[64, 512])
        store = dict(levels=[5, 10], epochs=5, timed_runs=2, curve_epochs=2)
    else:
        acc = [10**k for k in range(3, 8)]
        curves, naive_n = [10**k for k in range(3, 8)], 100_000
        trainer = dict(n=50_000, features=64, hidden=[256, 128], batch_sizes=[64, 128, 256, 512, 1024, 2048, 4096])
        store = dict(levels=[10, 100, 1000], epochs=50, timed_runs=10, curve_epochs=20)
    if "a" in only:
        bench_accuracy(acc)
    if "b" in only:
        bench_curves(curves, naive_n, args.max_gb)
    if "c" in only:
        bench_trainer(threads=args.threads, **trainer)
    if "d" in only:
        bench_store(**store)
    print(f"\n1-min load average at end {load()}; total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

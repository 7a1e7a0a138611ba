"""Sweep throughput: the same trials through Ray Tune (2 concurrent) vs one after another in one process.

    python bench/bench_sweep.py [--trials 8] [--epochs 8] [--n 50000] [--smoke]

Prints the wall time of each, the speed-up (the ceiling on 2 cores is 2x), Tune's overhead per trial
((tune wall * concurrency - sum of in-process trial times) / trials) against the aim (<= 0.5 s per trial,
>= 1.7x), and where Tune's time went, read from the run store the sweep wrote: until the first trial
started (Tune's setup, the trial actors' processes), each trial from its start to its end (vs the same
trial in process), after the last trial ended (actor cleanup), and how many processes ran the trials
(reused actors: at most the concurrency).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.config import Config  # noqa: E402
from workbench.store import RunStore  # noqa: E402
from workbench.sweep import SweepSettings, SweepSpec, connect_ray, run_sweep  # noqa: E402
from workbench.trainer import Trainer  # noqa: E402

CONCURRENCY = 2  # trials at once, one CPU (one torch thread) each: the 2-core machine the aim is set for
AIM_SPEEDUP, AIM_OVERHEAD_S = 1.7, 0.5  # issue 16's aim for 8 trials on 2 cores


def base_config(tmp: Path, epochs: int, n: int) -> dict:
    return Config.from_dict({
        "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": n, "NUM_FEATURES": 16}},
        "MODEL": {"HIDDEN": [64, 32]},
        "TRAIN": {"EPOCHS": epochs, "BATCH_SIZE": 128, "NUM_THREADS": 1},
        "TRACKING": {"STORE": str(tmp / "runs" / "w.db")},
    }).to_dict()


def sequential(base: dict, ws: list[float], tmp: Path) -> tuple[float, list[float]]:
    store = RunStore(tmp / "seq" / "w.db")
    times = []
    t0 = time.perf_counter()
    for w in ws:
        t = time.perf_counter()
        Trainer(Config.from_dict(base).with_overrides({"LOSS.W": w}), store=store, progress=False).fit()
        times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, times


def through_tune(base: dict, ws: list[float], tmp: Path) -> tuple[float, dict]:
    """The sweep's wall time and where it went (from the rows its driver wrote, stamped with time.time)."""
    spec = SweepSpec(base=base, grid={"w": ws})
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp / "rr"), cpus_per_trial=1,
                             max_concurrent=CONCURRENCY, verbose=0)
    t0, start = time.perf_counter(), time.time()
    sweep_id, grid = run_sweep(spec, settings)
    wall, end = time.perf_counter() - t0, time.time()
    assert not [r for r in grid if r.error], "a trial failed"
    runs = RunStore(settings.store_path).runs(sweep_id=sweep_id).sort_values("created")
    parts = {
        "first_start": float(runs["created"].min() - start),
        "trial": (runs["updated"] - runs["created"]).tolist(),
        "after_last": float(end - runs["updated"].max()),
        "processes": runs["pid"].nunique(),
    }
    return wall, parts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.trials, a.epochs, a.n = 2, 1, 1000
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ws = [round(i / max(1, a.trials - 1), 3) for i in range(a.trials)]
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        tmp = Path(d)
        base = base_config(tmp, a.epochs, a.n)
        import torch

        torch.set_num_threads(1)  # the same per-trial threads as the Tune trials
        seq_wall, seq_times = sequential(base, ws, tmp)
        t0 = time.perf_counter()
        connect_ray(None, temp_dir=str(tmp / "ray"), num_cpus=CONCURRENCY)
        ray_start = time.perf_counter() - t0
        tune_wall, parts = through_tune(base, ws, tmp)
    overhead = (tune_wall * CONCURRENCY - sum(seq_times)) / len(ws)
    speedup = seq_wall / tune_wall
    mean_seq = sum(seq_times) / len(seq_times)
    first, rest = parts["trial"][:CONCURRENCY], parts["trial"][CONCURRENCY:] or [float("nan")]
    print(f"{len(ws)} trials x {a.epochs} epochs, synthetic N={a.n}, 1 thread per trial, {CONCURRENCY} at once")
    print(f"{'mode':<28}{'wall s':>10}")
    print(f"{'sequential, one process':<28}{seq_wall:>10.1f}")
    print(f"{'Ray Tune, 2 concurrent':<28}{tune_wall:>10.1f}   (+ ray.init {ray_start:.1f} s, not counted)")
    print(f"speed-up: {speedup:.2f}x (ceiling on 2 cores: 2x; aim >= {AIM_SPEEDUP}x: {'met' if speedup >= AIM_SPEEDUP else 'MISSED'})")
    print(f"Tune overhead per trial: {overhead:.2f} s (aim <= {AIM_OVERHEAD_S} s: "
          f"{'met' if overhead <= AIM_OVERHEAD_S else 'MISSED'}; mean in-process trial: {mean_seq:.2f} s)")
    print("where Tune's wall time went:")
    print(f"  until the first trial started (Tune setup, actor processes): {parts['first_start']:.2f} s")
    print(f"  a trial, start to end: the first {len(first)} (new processes) {sum(first) / len(first):.2f} s each, "
          f"the others {sum(rest) / len(rest):.2f} s each ({CONCURRENCY} share the cores)")
    print(f"  in process: the first trial {seq_times[0]:.2f} s (lazy imports), the others "
          f"{sum(seq_times[1:]) / max(1, len(seq_times) - 1):.2f} s each")
    print(f"  after the last trial ended (actor cleanup, results): {parts['after_last']:.2f} s")
    print(f"  processes that ran the {len(ws)} trials: {parts['processes']} (reused actors)")


if __name__ == "__main__":
    main()

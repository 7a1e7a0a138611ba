"""Sweep throughput: the same trials through Ray Tune (2 concurrent) vs one after another in one process.

    python bench/bench_sweep.py [--trials 8] [--epochs 3] [--smoke]

Prints wall time of each, the speed-up (the ceiling on 2 cores is 2x) and Tune's per-trial
overhead ((tune wall * concurrency - sum of in-process trial times) / trials).
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


def through_tune(base: dict, ws: list[float], tmp: Path) -> float:
    spec = SweepSpec(base=base, grid={"w": ws})
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp / "rr"), cpus_per_trial=1,
                             max_concurrent=2, verbose=0)
    t0 = time.perf_counter()
    _, grid = run_sweep(spec, settings)
    wall = time.perf_counter() - t0
    assert not [r for r in grid if r.error], "a trial failed"
    return wall


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
        connect_ray(None, temp_dir=str(tmp / "ray"), num_cpus=2)
        ray_start = time.perf_counter() - t0
        tune_wall = through_tune(base, ws, tmp)
    overhead = (tune_wall * 2 - sum(seq_times)) / len(ws)
    print(f"{len(ws)} trials x {a.epochs} epochs, synthetic N={a.n}, 1 thread per trial")
    print(f"{'mode':<28}{'wall s':>10}")
    print(f"{'sequential, one process':<28}{seq_wall:>10.1f}")
    print(f"{'Ray Tune, 2 concurrent':<28}{tune_wall:>10.1f}   (+ ray.init {ray_start:.1f} s, not counted)")
    print(f"speed-up: {seq_wall / tune_wall:.2f}x (ceiling on 2 cores: 2x)")
    print(f"Tune overhead per trial: {overhead:.1f} s (mean in-process trial: {sum(seq_times) / len(seq_times):.1f} s)")


if __name__ == "__main__":
    main()

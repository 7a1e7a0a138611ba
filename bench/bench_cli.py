"""CLI start-up: ``python -m workbench --help``, ``runs`` on a 200-run store and ``sweep --help``, each against
``python -c "import torch"`` timed in the same run.

    python bench/bench_cli.py [--runs 200] [--repeats 5] [--smoke]

Each command is a fresh process (what a user or a script pays); the median wall time of ``--repeats`` is
reported with its ratio to the torch import (aim: every command under 0.3x: the CLI answers without
importing torch, Ray, W&B or Streamlit). The store is made with the store API: ``--runs`` finished runs
of 20 epochs and 12 metric keys each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench.config import Config  # noqa: E402
from workbench.names import (  # noqa: E402
    LOSS, VAL_CHAIN_ACC, VAL_LOSS, VAL_PARTIAL_CHAIN_ACC, best_tau, core_key, rank_key, val_acc,
)
from workbench.store import RunStore  # noqa: E402

AIM = 0.3  # each CLI command should cost under this fraction of importing torch
EPOCHS = 20
RANKS = ("region", "area")


def make_store(path: Path, n_runs: int) -> RunStore:
    """``n_runs`` finished runs of :data:`EPOCHS` epochs each, written with the store API."""
    store = RunStore(path)
    cfg = Config().with_overrides({"DATA.NAME": "olive"})
    for i in range(n_runs):
        run_id = store.create_run(cfg.with_overrides({"LOSS.W": round(i / n_runs, 3)}).to_dict(), run_id=f"run-{i:04d}",
                                  status="running")
        for epoch in range(EPOCHS):
            acc = 0.5 + 0.4 * epoch / EPOCHS
            metrics = {VAL_CHAIN_ACC: acc, VAL_PARTIAL_CHAIN_ACC: acc + 0.01, VAL_LOSS: 1 - acc,
                       core_key("train", "loss"): 1.1 - acc, core_key("train", "chain_acc"): acc - 0.02,
                       core_key("train", "partial_chain_acc"): acc - 0.01}
            for r in RANKS:
                metrics[val_acc(r)] = acc + 0.05
                metrics[rank_key("val", LOSS, r)] = 1 - acc
                metrics[best_tau(r)] = 0.4
            store.write_epoch(run_id, epoch, metrics)
        store.update_run(run_id, status="finished", epochs_done=EPOCHS, ranks=list(RANKS))
    return store


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall seconds of ``cmd`` as a fresh process (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="20 runs, 1 repeat (checks the script runs)")
    a = p.parse_args()
    if a.smoke:
        a.runs, a.repeats = 20, 1
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        store = make_store(Path(tmp) / "runs" / "w.db", a.runs)
        cases = [
            ("python -c 'pass' (interpreter)", [py, "-c", "pass"]),
            ("python -m workbench --help", [py, "-m", "workbench", "--help"]),
            (f"python -m workbench runs ({a.runs}-run store)", [py, "-m", "workbench", "runs", "--store", str(store.path)]),
            (f"python -m workbench runs --json ({a.runs} runs)",
             [py, "-m", "workbench", "runs", "--json", "--store", str(store.path)]),
            ("python -m workbench sweep --help", [py, "-m", "workbench", "sweep", "--help"]),
        ]
        torch_s = wall([py, "-c", "import torch"], a.repeats)
        rows = [(name, wall(cmd, a.repeats)) for name, cmd in cases]
    width = max(len(n) for n, _ in rows) + 2
    print(f"median of {a.repeats} fresh processes; baseline python -c 'import torch': {torch_s:.3f} s\n")
    print(f"{'command':<{width}}{'wall (s)':>10}{'x torch import':>16}   aim < {AIM}x")
    for name, s in rows:
        ok = "" if name.startswith("python -c") else ("yes" if s / torch_s < AIM else "NO")
        print(f"{name:<{width}}{s:>10.3f}{s / torch_s:>16.2f}   {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

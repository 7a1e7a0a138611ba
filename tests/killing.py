"""Kill a real training process mid-run, then resume it: the fault pattern that several test files share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbench.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def train_then_sigkill(config_path: Path, store_path: Path, run_id: str, after_epochs: int = 2,
                       settle_s: float = 0.0, timeout_s: float = 120) -> dict:
    """``python -m workbench train`` in a subprocess, SIGKILLed once ``after_epochs`` epochs are stored
    (``settle_s`` later, to land inside the next epoch's batches). Returns the killed run's row."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "train", "--config", str(config_path), "--run-id", run_id, "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and proc.poll() is None:
            if store_path.exists():
                store = RunStore(store_path)
                if store.has_run(run_id) and store.run(run_id)["epochs_done"] >= after_epochs:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(settle_s)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    return RunStore(store_path).run(run_id)


def resume(store_path: Path, run_id: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """``python -m workbench resume RUN_ID`` in a subprocess; asserts it exits 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "workbench", "resume", run_id, "--store", str(store_path), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def kill_mid_run_then_resume(config_path: Path, store_path: Path, run_id: str, epochs: int, settle_s: float,
                             metric: str) -> None:
    """SIGKILL a CLI run of ``epochs`` epochs mid-run (after 2 epochs, ``settle_s`` into the next), resume it,
    and assert it finished with every epoch recorded exactly once (one ``metric`` row per epoch)."""
    killed = train_then_sigkill(config_path, store_path, run_id, settle_s=settle_s)  # into the next epoch's batches
    assert killed["status"] == "running" and 2 <= killed["epochs_done"] < epochs, "the kill landed mid-run"
    resume(store_path, run_id)
    store = RunStore(store_path)
    run = store.run(run_id)
    assert run["status"] == "finished" and run["epochs_done"] == epochs
    hist = store.metrics(run_id)
    per_epoch = hist[hist["key"] == metric].groupby("epoch").size()
    assert list(per_epoch.index) == list(range(epochs)) and (per_epoch == 1).all(), per_epoch.to_dict()

"""Sweeps against a real `ray start --head` cluster on 127.0.0.1 through the CLI (sweeps/run.py).

The drivers are subprocesses (this test process may already be attached to the local Ray
instance); they join by explicit address with RAY_AUTH_MODE=token, which Ray 2.60 requires.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import PYTHON, REPO
from workbench.store import RunStore

pytestmark = pytest.mark.ray

TINY_SETS = ["DATA.SYNTHETIC.N=600", "DATA.SYNTHETIC.NUM_FEATURES=8", "MODEL.HIDDEN=[16]", "TRAIN.BATCH_SIZE=128"]


def sweep_cmd(tmp_path, address, *extra):
    cmd = [PYTHON, str(REPO / "sweeps" / "run.py"), "--config", str(REPO / "configs" / "synthetic.yaml"),
           "--address", address, "--results-dir", str(tmp_path / "ray_results"), "--store", str(tmp_path / "runs" / "w.db"),
           "--out", str(tmp_path / "out")]
    for s in TINY_SETS:
        cmd += ["--set", s]
    return cmd + list(extra)


def driver_env():
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def epochs_per_run(store_path) -> dict[str, list[int]]:
    con = sqlite3.connect(store_path)
    rows = con.execute("SELECT run_id, epoch FROM metrics WHERE key = 'core/val_chain_acc' ORDER BY run_id, epoch").fetchall()
    con.close()
    out: dict[str, list[int]] = {}
    for run, epoch in rows:
        out.setdefault(run, []).append(epoch)
    return out


def test_smoke_sweep_on_loopback_cluster_reaches_local_store(ray_cluster, tmp_path):
    proc = subprocess.run(sweep_cmd(tmp_path, ray_cluster, "--w", "0.2,0.8", "--seeds", "2", "--smoke-test"),
                          env=driver_env(), capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "results of sweep-" in proc.stdout and "LOSS.W" in proc.stdout
    store = RunStore(tmp_path / "runs" / "w.db")
    runs = store.runs()
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    assert sorted(runs["sweep_id"].unique().tolist()) == [runs["sweep_id"].iloc[0]]
    # every trial's every epoch reached the local store through the driver callback, once
    assert all(epochs == [0, 1] for epochs in epochs_per_run(store.path).values())
    assert (tmp_path / "out" / "summary.csv").exists() and (tmp_path / "out" / "accuracy_vs_key.html").exists()


def test_interrupted_sweep_resumes_without_missing_or_duplicate_epochs(ray_cluster, tmp_path):
    epochs = 6
    # trials long enough (N=3000) that the driver can be killed while the first one is still running
    args = ["--w", "0.2,0.8", "--seeds", "1", "--set", f"TRAIN.EPOCHS={epochs}", "--set", "DATA.SYNTHETIC.N=3000",
            "--max-concurrent", "1"]
    store_path = tmp_path / "runs" / "w.db"
    driver = subprocess.Popen(sweep_cmd(tmp_path, ray_cluster, *args), env=driver_env(), cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # interrupt mid-trial, once Tune has saved its experiment state
        done = epochs_per_run(store_path) if store_path.exists() else {}
        saved = list((tmp_path / "ray_results").glob("*/experiment_state*.json"))
        if saved and sum(len(v) for v in done.values()) >= 2:
            break
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.05)
    else:
        pytest.fail("no trial finished in time")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    store = RunStore(store_path)
    sweep_id = store.runs()["sweep_id"].iloc[0]
    before = epochs_per_run(store_path)
    assert sum(len(v) for v in before.values()) < 2 * epochs  # really interrupted

    time.sleep(3)  # let the cluster reap the killed driver's trial actors
    proc = subprocess.run(sweep_cmd(tmp_path, ray_cluster, *args, "--resume", sweep_id), env=driver_env(),
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = store.runs(sweep_id=sweep_id)
    assert len(runs) == 2 and set(runs["status"]) == {"finished"}, runs[["id", "status", "error"]]
    assert epochs_per_run(store_path) == {rid: list(range(epochs)) for rid in runs["id"]}

"""Single runs on a real `ray start --head` cluster on 127.0.0.1 (Ray Train TorchTrainer, 2 workers).

One cluster for the session (conftest's ``ray_cluster``); the drivers are subprocesses that join it by
explicit address with RAY_AUTH_MODE=token (Ray 2.60's token auth). What a run sends lands in this
machine's store through the driver: every epoch once, curves, health, the test numbers, the status,
and the checkpoint (copied into the run's folder).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import PYTHON, REPO, free_port
from workbench.config import Config
from workbench.launch import ACTIVE, LaunchError, launch_run, run_alive, stop_run
from workbench.names import BEST_CHECKPOINT_NAME, TEST_CHAIN_ACC, VAL_CHAIN_ACC
from workbench.store import RunStore

TINY = {"DATA.SYNTHETIC.N": 400, "DATA.SYNTHETIC.NUM_FEATURES": 8, "MODEL.HIDDEN": [16], "TRAIN.BATCH_SIZE": 64}
RUN_TIMEOUT = 240  # a run's worker group takes ~30-60 s to start on a loaded 2-core machine
APP_EPOCHS = 5000  # the app's run is stopped long before its last epoch


@pytest.fixture
def driver_env(monkeypatch):
    """Token auth for drivers that join the cluster by address (launch_run's child inherits this process's env)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    return dict(os.environ)


def stored_epochs(store_path, run_id: str) -> list[int]:
    con = sqlite3.connect(store_path)
    rows = con.execute("SELECT epoch FROM metrics WHERE run_id = ? AND key = ? ORDER BY epoch",
                       (run_id, VAL_CHAIN_ACC)).fetchall()
    con.close()
    return [r[0] for r in rows]


def assert_recorded(store: RunStore, run_id: str, epochs: int) -> dict:
    """The run's record is complete for ``epochs`` epochs: each once, with curves, health, test numbers."""
    run = store.run(run_id)
    assert stored_epochs(store.path, run_id) == list(range(epochs))
    assert run["epochs_done"] == epochs
    long = store.metrics([run_id])
    assert TEST_CHAIN_ACC in set(long["key"]), "no test numbers"
    assert not long.duplicated(["epoch", "key"]).any()
    health = long[long["key"].str.startswith("health/")]
    assert sorted(health["epoch"].unique()) == list(range(epochs))  # the health checks ran every epoch
    assert len(store.curves(run_id)) > 0
    assert run["environment"].get("world_size") == 2  # two ranks trained it
    ckpt = store.checkpoint_path(run_id)
    assert ckpt.is_file() and (ckpt.parent / BEST_CHECKPOINT_NAME).is_file()
    return run


@pytest.fixture(scope="module")
def two_runs(ray_cluster, tmp_path_factory):
    """Two runs sent to the cluster at once (their worker groups start side by side, which halves the wait on
    2 cores): one through the CLI (2 epochs), one through the app's launcher (long; the test stops it). Each
    worker asks for half a CPU, so both runs' 2 workers fit the cluster's 2 CPUs together."""
    from workbench.cluster_run import ClusterSettings

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    cli_dir, app_dir = tmp_path_factory.mktemp("cli"), tmp_path_factory.mktemp("app")
    cli_store, app_store = cli_dir / "runs" / "w.db", app_dir / "runs" / "w.db"
    cmd = [PYTHON, "-m", "workbench", "train", "--config", str(REPO / "configs" / "synthetic.yaml"),
           "--address", ray_cluster, "--workers", "2", "--cpus-per-worker", "0.5", "--no-progress",
           "--set", f"TRACKING.STORE={cli_store}", "--set", "TRAIN.EPOCHS=2"]
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={value}"]
    with open(cli_dir / "out.txt", "w") as out, open(cli_dir / "err.txt", "w") as err:  # files: a pipe could fill
        cli = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=cli_dir, start_new_session=True)
    with pytest.MonkeyPatch.context() as mp:  # launch_run's child inherits this process's environment
        for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
            mp.setenv(key, env[key])
        config = Config().with_overrides({**TINY, "TRAIN.EPOCHS": APP_EPOCHS, "TRACKING.STORE": str(app_store)})
        run_id = launch_run(config, app_store, cluster=ClusterSettings(ray_cluster, workers=2, cpus_per_worker=0.5))
    yield {"cli": cli, "cli_dir": cli_dir, "cli_store": cli_store, "app_store": app_store, "app_run": run_id}
    if cli.poll() is None:  # never leave a driver behind
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()
    if RunStore(app_store).run(run_id)["status"] in ACTIVE:
        stop_run(run_id, app_store, force=True)


@pytest.mark.ray
def test_app_launch_to_cluster_then_stop(two_runs):
    """The app's code path (launch_run with the Train page's ClusterSettings), then the app's Stop (the store's
    stop flag, relayed by the driver): the run ends ``stopped`` after a few of its epochs, its record whole."""
    store_path, run_id = two_runs["app_store"], two_runs["app_run"]
    store = RunStore(store_path)
    deadline = time.time() + RUN_TIMEOUT
    while not stored_epochs(store_path, run_id):
        run = store.run(run_id)
        assert run["status"] in ACTIVE, run["error"]
        assert time.time() < deadline, "no epoch reached the store in time"
        time.sleep(0.2)
    run = store.run(run_id)
    assert run["status"] == "running"
    assert run_alive(run["pid"], run_id)  # the recorded pid is the driver's here (what Stop and reconcile use)
    stop_run(run_id, store_path)
    while store.run(run_id)["status"] in ACTIVE:
        assert time.time() < deadline, "the stop request did not end the run in time"
        time.sleep(0.2)
    run = store.run(run_id)
    assert run["status"] == "stopped", run["error"]
    done = run["epochs_done"]
    assert 1 <= done < APP_EPOCHS
    assert_recorded(store, run_id, done)


@pytest.mark.ray
def test_cli_run_on_loopback_cluster_lands_complete(two_runs):
    cli = two_runs["cli"]
    cli.wait(timeout=RUN_TIMEOUT)
    out, err = ((two_runs["cli_dir"] / name).read_text() for name in ("out.txt", "err.txt"))
    assert cli.returncode == 0, out[-3000:] + err[-3000:]
    assert "2 Ray Train workers on the Ray cluster" in out and "test at epoch" in out
    store = RunStore(two_runs["cli_store"])
    (run_id,) = store.runs()["id"]
    run = assert_recorded(store, run_id, 2)
    assert run["status"] == "finished" and run["error"] is None


def test_unreachable_address_fails_fast_with_no_run(tmp_path, driver_env):
    """No Ray cluster behind the address: the existing clear error within seconds, and no run row."""
    from workbench.cluster_run import ClusterSettings

    address = f"127.0.0.1:{free_port()}"
    store_path = tmp_path / "runs" / "w.db"
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "workbench", "train", "--config", str(REPO / "configs" / "synthetic.yaml"),
                           "--set", f"TRACKING.STORE={store_path}", "--address", address, "--workers", "2"],
                          env=driver_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"error: cannot reach the Ray cluster at {address}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
    with pytest.raises(LaunchError, match=f"cannot reach the Ray cluster at {address}"):
        launch_run(Config().with_overrides({"TRACKING.STORE": str(store_path)}), store_path,
                   cluster=ClusterSettings(address, workers=2))
    assert not store_path.exists() or RunStore(store_path).runs().empty


def test_worker_flags_need_an_address(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "workbench", "train", "--config", str(REPO / "configs" / "synthetic.yaml"),
                           "--set", f"TRACKING.STORE={tmp_path / 'w.db'}", "--workers", "2"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: --workers needs --address" in proc.stderr


def test_train_page_cluster_choice(tmp_path, monkeypatch):
    """The Train page's "Ray cluster" choice: without the sidebar's address Start explains what is missing and
    launches nothing; with an address that does not answer, the launcher's clear error is shown, no run made."""
    from streamlit.testing.v1 import AppTest

    store_path = tmp_path / "runs" / "workbench.db"
    monkeypatch.setenv("WORKBENCH_STORE", str(store_path))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py").run()
    assert not at.exception, at.exception
    at.radio(key="tr_where").set_value("cluster").run()
    assert any("address in the sidebar" in w.value for w in at.warning)
    at.button(key="tr_start").click().run()
    assert any("needs its address" in e.value for e in at.error), [e.value for e in at.error]
    address = f"127.0.0.1:{free_port()}"
    at.text_input(key="ray_address").set_value(address).run()
    at.button(key="tr_start").click().run()
    assert any("cannot reach the Ray cluster" in e.value for e in at.error), [e.value for e in at.error]
    assert not store_path.exists() or RunStore(store_path).runs().empty


def test_sweep_refuses_workers_per_trial_below_one(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "workbench", "sweep", "--config", str(REPO / "configs" / "synthetic.yaml"),
                           "--store", str(tmp_path / "w.db"), "--w", "0.5", "--workers-per-trial", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "error: `--workers-per-trial` must be >= 1, got 0" in proc.stderr
    assert not (tmp_path / "w.db").exists()

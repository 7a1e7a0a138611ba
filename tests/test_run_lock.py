"""One run, one trainer: a run's exclusive lock (``<store dir>/checkpoints/<run id>/lock``).

Two ``resume`` commands of the same run used to train it at the same time, interleaving epochs and
checkpoints. Now the trainer holds an ``flock`` for the whole fit; a second trainer is refused with
a message naming the holder's pid before it reads or writes anything, and the kernel releases the
lock when the holder dies, however it dies. The processes here are real ``python -m workbench``s.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.config import Config
from workbench.store import RunStore, StoreError
from workbench.trainer import Trainer, load_checkpoint, run_lock

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds, for a subprocess on a loaded 2-core machine


def config(store: Path, epochs: int) -> Config:
    return Config().with_overrides({
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 400, "DATA.SYNTHETIC.NUM_FEATURES": 4,
        "DATA.SYNTHETIC.BRANCHING": [2, 2], "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2], "MODEL.HIDDEN": [8],
        "TRAIN.EPOCHS": epochs, "TRAIN.BATCH_SIZE": 64, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(store), "TRACKING.WANDB.ENABLED": False,
    })


def workbench(*args) -> list[str]:
    return [sys.executable, "-m", "workbench", *map(str, args)]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}


def start_training(tmp_path: Path, run_id: str) -> tuple[subprocess.Popen, RunStore]:
    """``train --run-id`` of a run far too long to finish, in its own process; returns once it trains."""
    db = tmp_path / "runs" / "w.db"
    cfg = tmp_path / "long.yaml"
    config(db, epochs=10_000).save(cfg)
    proc = subprocess.Popen(workbench("train", "--config", cfg, "--run-id", run_id, "--no-progress"), cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.is_file():
            store = RunStore(db)
            if store.has_run(run_id) and store.run(run_id)["epochs_done"] >= 1:
                return proc, store
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the first trainer did not train an epoch in time")


def test_second_trainer_of_a_running_run_is_refused(tmp_path):
    proc, store = start_training(tmp_path, "locked")
    try:
        second = subprocess.run(workbench("resume", "locked", "--store", store.path, "--no-progress"), cwd=REPO,
                                env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1, second.stderr
        lock = store.lock_path("locked")
        assert re.fullmatch(
            rf"error: {re.escape(str(store.path))}: run 'locked' is being trained by pid {proc.pid} "
            rf"\(since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \w+\); one run is trained by one process at a time "
            rf"\(lock {re.escape(str(lock))}\)\n", second.stderr), second.stderr
        run = store.run("locked")
        assert run["status"] == "running" and run["pid"] == proc.pid, "the refused trainer changed the run's row"
    finally:
        store.request_stop("locked")  # the first stops after its current epoch
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    run = store.run("locked")
    assert run["status"] == "stopped"
    epochs = run["epochs_done"]
    metrics = store.metrics("locked", keys=["core/val_loss", "core/train_loss"])
    assert metrics.groupby("key")["epoch"].apply(list).to_dict() == {
        "core/train_loss": list(range(epochs)), "core/val_loss": list(range(epochs))}, "every epoch exactly once"
    assert load_checkpoint(store.checkpoint_path("locked"))["epoch"] == epochs - 1
    with run_lock(store, "locked"):  # released at exit
        pass


def test_killed_trainer_leaves_no_stale_lock(tmp_path):
    proc, store = start_training(tmp_path, "killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert store.run("killed")["status"] == "running"  # it had no chance to say otherwise
    with run_lock(store, "killed"):  # the kernel dropped the dead process's lock
        assert str(os.getpid()) in store.lock_path("killed").read_text()


def test_lock_is_taken_before_anything_is_written(tmp_path):
    """In one process: a trainer of a run whose lock is held changes nothing, and names the holder."""
    cfg = config(tmp_path / "runs" / "w.db", epochs=1)
    trainer = Trainer(cfg, run_id="held", progress=False)
    before = trainer.store.run("held")
    with run_lock(trainer.store, "held"):
        with pytest.raises(StoreError, match=rf"run 'held' is being trained by pid {os.getpid()} \(since "):
            trainer.fit()
    assert trainer.store.run("held") == before
    assert trainer.store.metrics("held").empty and not trainer.store.checkpoint_path("held").exists()
    assert trainer.fit() == "finished"  # and the lock, released, lets it train

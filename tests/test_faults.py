"""Faults: a real full disk (a small tmpfs mounted by the test) under the store and checkpoints.

Needs root for `mount -t tmpfs` (CI and the dev machines run as root); elsewhere the test is
skipped with the reason. Other faults live beside their subjects: SIGKILL + resume in
test_trainer.py, concurrent store writers in test_store.py, W&B failing mid-run in
test_tracking.py, killed sweeps in test_sweep_cluster.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid

import pytest

from workbench.config import Config
from workbench.store import RunStore
from workbench.trainer import CHECKPOINT_NAME, Trainer, checkpoint_dir, load_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount, leave_bytes: int):
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    filler = mount / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_full_disk_fails_the_run_cleanly_and_resume_finishes_it(small_disk):
    store_path = small_disk / "runs" / "w.db"
    cfg = Config.from_dict({
        "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": 300, "NUM_FEATURES": 4, "BRANCHING": [2, 3], "NULL_RATES": [0, 0.2]}},
        "MODEL": {"HIDDEN": [8]}, "TRAIN": {"EPOCHS": 40, "NUM_THREADS": 1},
        "TRACKING": {"STORE": str(store_path)},
    })
    store = RunStore(store_path)
    filler = _fill(small_disk, leave_bytes=400_000)
    trainer = Trainer(cfg, store=store, progress=False)
    with pytest.raises(Exception) as info:
        trainer.fit()
    assert "full" in str(info.value).lower() or "space" in str(info.value).lower(), info.value

    # what was stored is whole: every stored epoch has every metric key, and the epochs are 0..k
    con = sqlite3.connect(store_path)
    per_epoch = con.execute("SELECT epoch, COUNT(*) FROM metrics WHERE run_id = ? GROUP BY epoch ORDER BY epoch",
                            (trainer.run_id,)).fetchall()
    con.close()
    epochs = [e for e, _ in per_epoch]
    assert 0 < len(epochs) < 40 and epochs == list(range(len(epochs)))
    assert len({n for _, n in per_epoch}) == 1
    ckpt = checkpoint_dir(store, trainer.run_id) / CHECKPOINT_NAME
    if ckpt.exists():  # never torn: it loads, and it is at most one epoch ahead of or behind the store
        assert abs(load_checkpoint(ckpt)["epoch"] - epochs[-1]) <= 1

    filler.unlink()  # space again: resume completes with no missing or duplicated epoch
    assert Trainer(cfg, store=RunStore(store_path), run_id=trainer.run_id, progress=False).fit(resume=True) == "finished"
    metrics = RunStore(store_path).metrics(trainer.run_id, keys=["core/val_loss"])
    assert metrics["epoch"].tolist() == list(range(40))


KILL_DURING_CHECKPOINT = r"""
import os, signal, sys
from pathlib import Path
import workbench.trainer as T
from workbench.config import Config
from workbench.store import RunStore

real_save = T.torch.save
def torn_save(state, f, *a, **k):
    # the checkpoint after epoch 2: write half of it to the temp file, then die without cleanup
    if isinstance(state, dict) and state.get("epoch") == 2:
        import io
        buf = io.BytesIO(); real_save(state, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, f, *a, **k)
T.torch.save = torn_save
cfg = Config.load(sys.argv[1])
T.Trainer(cfg, run_id=sys.argv[2], progress=False).fit()
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_last_checkpoint_whole(tmp_path):
    import sys

    from workbench.config import Config

    store_path = tmp_path / "runs" / "w.db"
    cfg = Config.from_dict({
        "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": 300, "NUM_FEATURES": 4, "BRANCHING": [2, 3], "NULL_RATES": [0, 0.2]}},
        "MODEL": {"HIDDEN": [8]}, "TRAIN": {"EPOCHS": 5, "NUM_THREADS": 1}, "TRACKING": {"STORE": str(store_path)},
    })
    cfg.save(tmp_path / "cfg.yaml")
    script = tmp_path / "torn.py"
    script.write_text(KILL_DURING_CHECKPOINT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.yaml"), "torn-run"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed in the middle of writing
    store = RunStore(store_path)
    ckpt = checkpoint_dir(store, "torn-run") / CHECKPOINT_NAME
    assert list(ckpt.parent.glob("*.tmp*")), "the torn temp file should be there"
    assert load_checkpoint(ckpt)["epoch"] == 1  # the previous checkpoint, whole
    assert store.last_epoch("torn-run") == 2  # epoch 2 reached the store before its checkpoint
    assert Trainer(cfg, store=store, run_id="torn-run", progress=False).fit(resume=True) == "finished"
    assert store.metrics("torn-run", keys=["core/val_loss"])["epoch"].tolist() == [0, 1, 2, 3, 4]

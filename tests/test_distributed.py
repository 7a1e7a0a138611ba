"""Data-parallel runs (DESIGN.md 3.9; README "Many processes"): `train --nproc 2` and `resume --nproc 2` through the
real CLI, on real worker processes (torch.distributed.run's launcher, gloo on the CPU).

- the shard rule ``perm[rank::world]`` covers every row exactly once, and the gathered shards go back in row order;
- a 2-process run stores every epoch once; the stored val metrics of the last epoch and of the selected epoch
  (best.pt) equal a single-process evaluation of those weights (accuracies exactly, every other val metric to
  1e-6); epoch 0's train metrics equal a recomputation over all train rows (see ``_check_train_metrics``); the
  test metrics are stored once, at the selected epoch;
- SIGKILL of one worker mid-run: the run ends ``failed`` naming the dead rank, no half epoch is stored, no worker
  is left; a resume on another number of processes is refused; ``resume --nproc 2`` finishes the run with its
  epochs continuous.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench import names as N
from workbench.config import Config
from workbench.distributed import DistContext, shard, unshard_order
from workbench.masking import null_keep_mask
from workbench.store import RunStore
from workbench.trainer import Trainer, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
WORKER_MODULE = "workbench.distributed_worker"
# accuracies are ratios of integer counts: a data-parallel run must match them exactly
EXACT = (N.VAL_CHAIN_ACC, N.VAL_PARTIAL_CHAIN_ACC)


def _config(tmp_path: Path, epochs: int, n: int) -> tuple[Config, Path]:
    """A small synthetic run. One optimizer step per epoch (``TRAIN.ACCUMULATE`` above the batches per epoch), no
    dropout and no null masking: every batch of an epoch sees the weights the epoch began with, so epoch 0's train
    metrics are those of the initial weights on all train rows, which a single process can recompute."""
    store = tmp_path / "runs" / "w.db"
    cfg = Config.from_dict({
        "DATA": {"NAME": "synthetic", "TEST_FRACTION": 0.2,
                 "SYNTHETIC": {"N": n, "NUM_FEATURES": 6, "BRANCHING": [3, 3], "NULL_RATES": [0, 0.2]}},
        "MODEL": {"HIDDEN": [32], "DROPOUT": 0.0},
        "TRAIN": {"EPOCHS": epochs, "NUM_THREADS": 1, "BATCH_SIZE": 64, "ACCUMULATE": 4096, "LR": 0.05},
        "SCHEDULE": {"NULL_MASKING": {"ENABLED": False}},
        "TRACKING": {"STORE": str(store)},
    })
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    return cfg, path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _single_process(cfg: Config, tmp_path: Path) -> Trainer:
    """A store-less single-process trainer of ``cfg``: the same data, splits and initial weights."""
    return Trainer(cfg, checkpoint_path=tmp_path / "single" / "checkpoint.pt", progress=False)


def _stored(store: RunStore, run_id: str, epoch: int, split: str = "val") -> dict[str, float]:
    m = store.metrics(run_id)
    rows = m[(m["epoch"] == epoch) & (m["split"] == split)]
    return dict(zip(rows["key"], rows["value"]))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def _check_val_equals_single_process(single: Trainer, weights: dict, stored: dict[str, float], what: str) -> None:
    single.model.load_state_dict(weights)
    expected, _, _ = single.evaluate(single.val_ds, split="val")
    val_keys = [k for k in expected if N.is_val_key(k)]
    assert val_keys and set(val_keys) <= set(stored), f"{what}: stored val keys differ: {set(val_keys) - set(stored)}"
    for key in val_keys:
        if key in EXACT or key.startswith("val/acc/"):
            assert stored[key] == expected[key], f"{what}: {key} stored {stored[key]!r}, single process {expected[key]!r}"
        else:
            assert _same(stored[key], expected[key]), f"{what}: {key} stored {stored[key]!r}, single process {expected[key]!r}"


def _check_train_metrics(single: Trainer, stored: dict[str, float]) -> None:
    """Epoch 0's train metrics (all-reduced counts and loss sums of both ranks) against the single process's
    recomputation over every train row with the initial weights (the config makes the epoch's one step come last)."""
    metrics, _, _ = single.evaluate(single.train_ds, split="train")  # the initial weights: nothing trained yet
    for key in (N.TRAIN_CHAIN_ACC, N.TRAIN_PARTIAL_CHAIN_ACC,
                *(N.rank_key("train", N.ACC, rank) for rank in single.taxonomy.ranks)):
        assert stored[key] == metrics[key], f"{key}: stored {stored[key]!r}, recomputed {metrics[key]!r}"
    assert _same(stored[N.TRAIN_LOSS], metrics[N.TRAIN_LOSS]), (stored[N.TRAIN_LOSS], metrics[N.TRAIN_LOSS])
    for rank in single.taxonomy.ranks:
        assert _same(stored[N.rank_key("train", N.LOSS, rank)], metrics[N.rank_key("train", N.LOSS, rank)]), rank
    kept = null_keep_mask(single.train_ds.targets, 1.0, phase1=False, training=True).sum(dim=0)  # no masking
    for r, rank in enumerate(single.taxonomy.ranks):
        assert stored[N.rank_key("train", N.KEPT, rank)] == float(kept[r]), rank


# ---------------------------------------------------------------------- the shard rule
@pytest.mark.parametrize("n", [1, 7, 10, 257])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_row_exactly_once_and_unshard_restores_row_order(n, world):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n * 31 + world))
    parts = [shard(perm, DistContext(rank, world)) for rank in range(world)]
    together = torch.cat(parts)
    assert sorted(together.tolist()) == list(range(n))  # every row once: none missing, none twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert torch.equal(parts[0], perm[0::world])
    # the gather of each rank's shard of arange(n) (rank 0's rows first), put back in row order
    rows = torch.arange(n) * 10
    gathered = torch.cat([shard(rows, DistContext(rank, world)) for rank in range(world)])
    assert torch.equal(gathered[unshard_order(n, DistContext(0, world))], rows)


def test_dist_context_defaults_and_checks():
    one = DistContext.single()
    assert (one.rank, one.world, one.is_main, one.distributed) == (0, 1, True, False)
    assert DistContext(1, 2).distributed and not DistContext(1, 2).is_main
    with pytest.raises(ValueError, match="rank must be in"):
        DistContext(2, 2)


# ---------------------------------------------------------------------- a 2-process run through the CLI
def test_nproc2_run_stores_each_epoch_once_with_single_process_metrics(tmp_path):
    epochs = 4
    cfg, cfg_path = _config(tmp_path, epochs=epochs, n=900)
    res = _cli("train", "--config", str(cfg_path), "--nproc", "2", "--run-id", "two-procs", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    store = RunStore(cfg.TRACKING.STORE)
    run = store.run("two-procs")
    assert run["status"] == "finished" and run["epochs_done"] == epochs
    assert run["environment"]["world_size"] == 2
    m = store.metrics("two-procs")
    per_epoch = m[m["key"] == N.VAL_CHAIN_ACC].groupby("epoch").size()
    assert list(per_epoch.index) == list(range(epochs)) and (per_epoch == 1).all(), per_epoch.to_dict()

    single = _single_process(cfg, tmp_path)
    _check_train_metrics(single, _stored(store, "two-procs", 0, "train"))
    folder = store.checkpoint_path("two-procs").parent
    last = load_checkpoint(folder / N.CHECKPOINT_NAME, ("epoch", "model", "world", "rank_rng"))
    assert last["epoch"] == epochs - 1 and last["world"] == 2 and len(last["rank_rng"]) == 2
    # each rank masks its own rows: their null-mask generators differ
    assert not torch.equal(last["rank_rng"][0]["mask_rng"], last["rank_rng"][1]["mask_rng"])
    _check_val_equals_single_process(single, last["model"], _stored(store, "two-procs", epochs - 1), "last epoch")
    best = load_checkpoint(folder / N.BEST_CHECKPOINT_NAME, ("epoch", "model"))
    _check_val_equals_single_process(single, best["model"], _stored(store, "two-procs", int(best["epoch"])),
                                     f"selected epoch {int(best['epoch'])}")

    test = m[m["split"] == "test"]
    assert not test.empty and set(test["epoch"]) == {int(best["epoch"])}
    assert not test["key"].duplicated().any()  # stored once


# ---------------------------------------------------------------------- SIGKILL of one worker, then resume
def _workers(run_id: str) -> dict[int, int]:
    """``{rank: pid}`` of the live worker processes of ``run_id`` (their command line and RANK variable)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if WORKER_MODULE.encode() not in cmd or run_id.encode() not in cmd:
                continue
            env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # it exited meanwhile
            continue
        if state not in ("Z", "X"):
            found[int(env[b"RANK"])] = int(proc.name)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_sigkill_of_one_worker_fails_the_run_cleanly_and_resume_nproc2_finishes_it(tmp_path):
    epochs = 8
    cfg, cfg_path = _config(tmp_path, epochs=epochs, n=6000)
    store_path = Path(cfg.TRACKING.STORE)
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", "--config", str(cfg_path), "--nproc", "2",
                             "--run-id", "killed", "--no-progress"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, workers = time.time() + 180, {}
        while time.time() < deadline and proc.poll() is None:
            if store_path.exists() and RunStore(store_path).has_run("killed") \
                    and RunStore(store_path).run("killed")["epochs_done"] >= 2:
                workers = _workers("killed")
                break
            time.sleep(0.05)
        assert proc.poll() is None and set(workers) == {0, 1}, \
            f"the run ended before the kill: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else workers}"
        os.kill(workers[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 1, err.decode()[-3000:]

    store = RunStore(store_path)
    run = store.run("killed")
    assert run["status"] == "failed", run
    assert "worker rank 1" in run["error"] and "SIGKILL" in run["error"], run["error"]
    assert 2 <= run["epochs_done"] < epochs, "the kill landed mid-run"
    # no half epoch: every stored epoch has every key, and the epochs are 0..k
    m = store.metrics("killed")
    sizes = m.groupby("epoch").size()
    assert list(sizes.index) == list(range(len(sizes))) and sizes.nunique() == 1, sizes.to_dict()
    deadline = time.time() + 30  # the launcher stopped rank 0, and nothing else of the run is alive
    while time.time() < deadline and any(_alive(pid) for pid in workers.values()):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers.values()) and not _workers("killed")

    refused = _cli("resume", "killed", "--store", str(store_path), "--nproc", "1", "--no-progress")
    assert refused.returncode != 0 and "--nproc 2" in refused.stderr, refused.stderr[-2000:]

    res = _cli("resume", "killed", "--store", str(store_path), "--nproc", "2", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    run = RunStore(store_path).run("killed")
    assert run["status"] == "finished" and run["epochs_done"] == epochs and not run["error"]
    m = RunStore(store_path).metrics("killed")
    per_epoch = m[m["key"] == N.VAL_CHAIN_ACC].groupby("epoch").size()
    assert list(per_epoch.index) == list(range(epochs)) and (per_epoch == 1).all(), per_epoch.to_dict()

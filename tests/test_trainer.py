"""Trainer: learning on real data, phases, kill + resume, determinism, the schedule, stop, sinks, models, health."""

from __future__ import annotations

import copy
import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

from killing import resume, train_then_sigkill

from workbench.config import Config
from workbench.data import HierarchicalDataset, make_synthetic
from workbench.events import BaseSink, SinkError
from workbench.masking import NullMaskSchedule
from workbench.store import RunStore
from workbench.trainer import CHECKPOINT_NAME, Trainer, checkpoint_dir, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def tiny(tmp_path, **overrides) -> Config:
    """A small synthetic run that trains in well under a second."""
    base = {
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 800, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2, 0.4],
        "MODEL.HIDDEN": [32], "TRAIN.EPOCHS": 3, "TRAIN.BATCH_SIZE": 64, "TRAIN.LR": 0.01,
        "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu", "TRACKING.STORE": str(tmp_path / "runs" / "w.db"),
    }
    base.update(overrides)
    return Config().with_overrides(base)


def key_counts(store: RunStore, run_id: str) -> pd.DataFrame:
    """Per per-epoch metric key: number of rows and of distinct epochs, from SQL (test rows are written once,
    at the selected epoch: tests/test_selection.py checks them)."""
    with sqlite3.connect(store.path) as con:
        return pd.read_sql_query(
            "SELECT key, COUNT(*) AS n, COUNT(DISTINCT epoch) AS epochs, MIN(epoch) AS lo, MAX(epoch) AS hi "
            "FROM metrics WHERE run_id = ? AND split != 'test' GROUP BY key", con, params=(run_id,))


def assert_every_epoch_once(store: RunStore, run_id: str, epochs: int) -> None:
    counts = key_counts(store, run_id)
    assert len(counts) > 0
    bad = counts[(counts.n != epochs) | (counts.epochs != epochs) | (counts.lo != 0) | (counts.hi != epochs - 1)]
    assert bad.empty, f"keys without exactly one row per epoch 0..{epochs - 1}:\n{bad}"


class Capture(BaseSink):
    """Records the model's weights when the run starts (after INIT_FROM is applied)."""

    name = "capture"

    def __init__(self):
        self.trainer: Trainer | None = None
        self.start_state = None
        self.events = []

    def on_start(self, event):
        self.events.append(("start", event))
        self.start_state = copy.deepcopy(self.trainer.model.state_dict())

    def on_epoch(self, event):
        self.events.append(("epoch", event))

    def on_finish(self, event):
        self.events.append(("finish", event))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- (a) real data
def test_ratdat_learns_above_majority_baseline(tmp_path):
    cfg = Config.load(CONFIGS / "ratdat_phase1.yaml", [
        "TRAIN.EPOCHS=3", "MODEL.HIDDEN=[64]", "TRAIN.BATCH_SIZE=512", "TRAIN.NUM_THREADS=1",
        "TRAIN.DEVICE=cpu", f"TRACKING.STORE={tmp_path / 'runs' / 'w.db'}",
    ])
    trainer = Trainer(cfg, progress=False)
    assert trainer.fit() == "finished"
    store, rid = trainer.store, trainer.run_id

    # majority baseline: the most frequent training class at every rank, scored like the model
    train_y, val_y = trainer.train_ds.targets, trainer.val_ds.targets
    majority = torch.stack([torch.bincount(train_y[:, r]).argmax() for r in range(train_y.shape[1])])
    preds = majority.expand_as(val_y)
    labelled = val_y != 0
    scored = labelled.any(1)
    ok = ((preds == val_y) | ~labelled).all(1)
    baseline = float(ok[scored].float().mean())

    wide = store.metrics_wide([rid]).set_index("epoch")
    final = wide.loc[2]
    assert final["core/val_partial_chain_acc"] > baseline + 0.1, (final["core/val_partial_chain_acc"], baseline)

    assert_every_epoch_once(store, rid, 3)
    names = set(wide.columns)
    expected = {"core/train_chain_acc", "core/val_chain_acc", "core/train_partial_chain_acc",
                "core/val_partial_chain_acc", "core/train_loss", "core/val_loss", "schedule/null_inclusion_prob"}
    for rank in ("taxa", "genus", "species"):
        expected |= {f"val/acc/{rank}", f"val/loss/{rank}"}
    assert expected <= names, expected - names
    for key in ("core/train_chain_acc", "core/train_partial_chain_acc", "core/train_loss",
                "train/acc/taxa", "train/acc/genus", "train/acc/species"):
        assert (wide[key] > 0).all(), key
    assert wide["core/train_loss"].iloc[-1] < wide["core/train_loss"].iloc[0]
    assert store.run(rid)["status"] == "finished" and store.run(rid)["epochs_done"] == 3
    assert not store.curves(rid, epoch=2).empty


# ---------------------------------------------------------------------- (b) phases
def test_phase2_starts_from_phase1_weights(tmp_path):
    p1 = Trainer(tiny(tmp_path, **{"TRAIN.PHASE1_MASK_NULL_LOSS": True}), progress=False)
    assert p1.fit() == "finished"
    store = p1.store
    ckpt = load_checkpoint(checkpoint_dir(store, p1.run_id) / CHECKPOINT_NAME)
    assert same_state(ckpt["model"], p1.model.state_dict())

    # phase 1's stored val chain accuracy is the honest value of its final model
    logits, _ = p1.predict(p1.val_ds)
    preds = torch.stack([lg.argmax(1) for lg in logits], 1)
    honest = float((preds == p1.val_ds.targets).all(1).float().mean())
    stored = store.metrics_wide([p1.run_id]).set_index("epoch").loc[2, "core/val_chain_acc"]
    assert stored == pytest.approx(honest, abs=1e-6)
    assert stored > 0

    capture = Capture()
    cfg2 = tiny(tmp_path, **{"TRAIN.INIT_FROM": p1.run_id, "TRAIN.EPOCHS": 1})
    p2 = Trainer(cfg2, sinks=[capture], progress=False)
    capture.trainer = p2
    fresh = Trainer(tiny(tmp_path), progress=False)
    assert not same_state(fresh.model.state_dict(), ckpt["model"]), "a fresh model differs from phase 1's"
    assert p2.fit() == "finished"
    assert same_state(capture.start_state, ckpt["model"]), "phase 2 starts from phase 1's final weights"
    assert store.run(p2.run_id)["parent_id"] == p1.run_id
    started = capture.events[0][1]
    assert started.parent_id == p1.run_id and started.start_epoch == 0


def test_init_from_unknown_run_is_a_config_error(tmp_path):
    from workbench.config import ConfigError

    with pytest.raises(ConfigError) as e:
        Trainer(tiny(tmp_path, **{"TRAIN.INIT_FROM": "no-such-run"}), progress=False)
    assert "TRAIN.INIT_FROM" in str(e.value) and "no-such-run" in str(e.value)
    assert RunStore(tmp_path / "runs" / "w.db").runs().empty, "a bad parent stores no run"


# ---------------------------------------------------------------------- (c) kill + resume
def test_sigkill_then_resume_has_every_epoch_once(tmp_path):
    epochs = 10  # ~0.3 s each (100 small batches): the kill lands well before the end
    cfg = tiny(tmp_path, **{"DATA.SYNTHETIC.N": 1000, "TRAIN.BATCH_SIZE": 8, "TRAIN.EPOCHS": epochs})
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    store_path = Path(cfg.TRACKING.STORE)
    rid = "killed-run"
    killed = train_then_sigkill(path, store_path, rid)
    assert killed["status"] == "running" and 2 <= killed["epochs_done"] < epochs, "the kill landed mid-run"
    resume(store_path, rid)
    store = RunStore(store_path)
    run = store.run(rid)
    assert run["status"] == "finished" and run["epochs_done"] == epochs
    assert_every_epoch_once(store, rid, epochs)
    assert store.metrics_wide([rid])["epoch"].tolist() == list(range(epochs))


# ---------------------------------------------------------------------- (d) determinism
def test_same_seed_same_metrics(tmp_path):
    over = {"SCHEDULE.NULL_MASKING.START_PROB": 0.2, "SCHEDULE.NULL_MASKING.END_EPOCH": 2}
    frames = []
    for _ in range(2):
        t = Trainer(tiny(tmp_path, **over), progress=False)
        t.fit()
        wide = t.store.metrics_wide([t.run_id]).drop(columns="run_id")
        frames.append(wide[[c for c in wide.columns if not c.startswith("time/")]])
    pd.testing.assert_frame_equal(frames[0], frames[1])
    # and a different seed does change them (the comparison can fail)
    t = Trainer(tiny(tmp_path, **over, **{"TRAIN.SEED": 1}), progress=False)
    t.fit()
    other = t.store.metrics_wide([t.run_id])
    assert not other["core/train_loss"].equals(frames[0]["core/train_loss"])


# ---------------------------------------------------------------------- (e) schedule and masking
def test_null_inclusion_prob_is_the_mean_over_batches(tmp_path):
    nm = {"START_PROB": 0.1, "END_PROB": 0.9, "START_EPOCH": 0.5, "END_EPOCH": 2.5}
    cfg = tiny(tmp_path, **{f"SCHEDULE.NULL_MASKING.{k}": v for k, v in nm.items()},
               **{"TRAIN.EPOCHS": 4, "TRAIN.BATCH_SIZE": 96})
    t = Trainer(cfg, progress=False)
    t.fit()
    schedule = NullMaskSchedule(True, 0.1, 0.9, 0.5, 2.5)
    n_batches = math.ceil(len(t.train_ds) / 96)
    wide = t.store.metrics_wide([t.run_id]).set_index("epoch")
    for epoch in range(4):
        expected = sum(schedule.prob(epoch + b / n_batches) for b in range(n_batches)) / n_batches
        assert wide.loc[epoch, "schedule/null_inclusion_prob"] == pytest.approx(expected, abs=1e-9), epoch
    assert wide["schedule/null_inclusion_prob"].is_monotonic_increasing
    # kept counts lie between the labelled count and every target
    y = t.train_ds.targets
    for r, rank in enumerate(t.taxonomy.ranks):
        labelled = int((y[:, r] != 0).sum())
        assert ((wide[f"train/kept/{rank}"] >= labelled) & (wide[f"train/kept/{rank}"] <= len(y))).all()
    rank = t.taxonomy.ranks[-1]
    assert wide.loc[3, f"train/kept/{rank}"] > wide.loc[0, f"train/kept/{rank}"], "more nulls come in later"


def test_phase1_keeps_exactly_the_labelled_targets(tmp_path):
    t = Trainer(tiny(tmp_path, **{"TRAIN.PHASE1_MASK_NULL_LOSS": True, "TRAIN.EPOCHS": 2}), progress=False)
    t.fit()
    wide = t.store.metrics_wide([t.run_id]).set_index("epoch")
    y = t.train_ds.targets
    assert (y == 0).any(), "the data has null labels"
    for r, rank in enumerate(t.taxonomy.ranks):
        assert (wide[f"train/kept/{rank}"] == int((y[:, r] != 0).sum())).all(), rank
    assert (wide["schedule/null_inclusion_prob"] == 0).all()


def test_disabled_schedule_keeps_everything(tmp_path):
    t = Trainer(tiny(tmp_path, **{"SCHEDULE.NULL_MASKING.ENABLED": False, "TRAIN.EPOCHS": 1}), progress=False)
    t.fit()
    wide = t.store.metrics_wide([t.run_id])
    for rank in t.taxonomy.ranks:
        assert wide[f"train/kept/{rank}"].iloc[0] == len(t.train_ds)
    assert wide["schedule/null_inclusion_prob"].iloc[0] == 1.0


# ---------------------------------------------------------------------- (f) stop
def test_stop_request_stops_after_one_epoch(tmp_path):
    t = Trainer(tiny(tmp_path, **{"TRAIN.EPOCHS": 5}), progress=False)
    t.store.request_stop(t.run_id)
    assert t.fit() == "stopped"
    run = t.store.run(t.run_id)
    assert run["status"] == "stopped" and run["epochs_done"] == 1
    assert t.store.last_epoch(t.run_id) == 0


# ---------------------------------------------------------------------- (g) failing sink
class Boom(BaseSink):
    name = "boom-sink"

    def on_epoch(self, event):
        raise RuntimeError("kaput in on_epoch")


def test_failing_sink_fails_the_run_with_its_name(tmp_path):
    t = Trainer(tiny(tmp_path), sinks=[Boom()], progress=False)
    with pytest.raises(SinkError) as e:
        t.fit()
    assert "boom-sink" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)
    run = t.store.run(t.run_id)
    assert run["status"] == "failed"
    assert "boom-sink" in run["error"] and "kaput" in run["error"]


# ---------------------------------------------------------------------- (h) heads and backbones
def finite_metrics(store, rid) -> pd.DataFrame:
    wide = store.metrics_wide([rid])
    core = wide[[c for c in wide.columns if c.startswith(("core/", "val/loss/", "train/loss/", "val/acc/"))
                 and not c.startswith("core/test_")]]  # test rows exist at the selected epoch only
    assert core.notna().all().all() and (core.abs() < float("inf")).all().all(), core
    return wide


def test_marginal_head_trains(tmp_path):
    t = Trainer(tiny(tmp_path, **{"MODEL.HEAD": "marginal"}), progress=False)
    assert t.fit() == "finished"
    wide = finite_metrics(t.store, t.run_id)
    assert wide["core/train_loss"].iloc[-1] < wide["core/train_loss"].iloc[0]
    # coarse probabilities are sums over the leaf: each rank's distribution sums to one
    logits, _ = t.predict(t.val_ds)
    for lg in logits:
        assert torch.allclose(torch.softmax(lg, 1).sum(1), torch.ones(len(lg)), atol=1e-5)
        assert torch.allclose(lg.exp().sum(1), torch.ones(len(lg)), atol=1e-4)


def set_dataset(n: int = 600, size: int = 6, all_empty: bool = False, seed: int = 0) -> HierarchicalDataset:
    """Padded sets: each sample is ``size`` noisy copies of a synthetic point, some of them padding."""
    base = make_synthetic(n=n, num_features=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = base.features[:, None, :] + 0.3 * torch.randn(n, size, 8, generator=g)  # (N, S, F)
    lengths = torch.randint(1, size + 1, (n,), generator=g)  # (N,)
    valid = torch.arange(size)[None, :] < lengths[:, None]  # (N, S), True = real element
    if all_empty:
        valid = torch.zeros(n, size, dtype=torch.bool)
    x = torch.where(valid[..., None], x, 50 * torch.randn(n, size, 8, generator=g))  # garbage padding
    return HierarchicalDataset(features=x, targets=base.targets, taxonomy=base.taxonomy,
                               feature_names=base.feature_names, name="sets", valid=valid)


def test_set_attention_trains_and_ignores_padding(tmp_path):
    ds = set_dataset()
    t = Trainer(tiny(tmp_path, **{"MODEL.BACKBONE": "set_attention"}), dataset=ds, progress=False)
    assert t.fit() == "finished"
    wide = finite_metrics(t.store, t.run_id)
    assert wide["core/val_partial_chain_acc"].iloc[-1] > 0
    assert (wide["health/empty_sets"] == 0).all() and (wide["health/collapsed_embeddings"] == 0).all()

    model = t.model.eval()
    x, valid = ds.features, ds.valid
    assert (~valid).any()
    with torch.no_grad():
        before = model(x, valid)
        changed = x.clone()
        changed[~valid] = torch.randn(int((~valid).sum()), 8) * 1000
        after = model(changed, valid)
        for a, b in zip(before, after):
            assert torch.allclose(a, b, atol=1e-5), "padding changed the output"
        # the mask does matter: an inverted mask (where it still has real elements) changes outputs
        inverted = model(x, ~valid)
        rows = (~valid).any(1)
        assert not torch.allclose(before[0][rows], inverted[0][rows])


# ---------------------------------------------------------------------- (i) health
def test_health_flags_collapsed_embeddings(tmp_path):
    ds = set_dataset(all_empty=True)
    t = Trainer(tiny(tmp_path, **{"MODEL.BACKBONE": "set_attention", "TRAIN.EPOCHS": 1}), dataset=ds, progress=False)
    assert t.fit() == "finished"
    wide = t.store.metrics_wide([t.run_id])
    assert wide["health/collapsed_embeddings"].iloc[0] == 1.0
    assert wide["health/empty_sets"].iloc[0] == 1.0
    health = json.loads(t.store.run(t.run_id)["health"])
    assert "collapsed_embeddings" in health and "empty_sets" in health
    assert wide["health/nonfinite_loss"].iloc[0] == 0.0


def test_curves_last_epoch_only_keeps_the_store_small(tmp_path):
    from workbench.config import Config
    from workbench.store import RunStore
    from workbench.trainer import Trainer

    cfg = Config.from_dict({
        "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": 300, "NUM_FEATURES": 4, "BRANCHING": [2, 2], "NULL_RATES": [0, 0.2]}},
        "MODEL": {"HIDDEN": [8]}, "TRAIN": {"EPOCHS": 3, "NUM_THREADS": 1},
        "TRACKING": {"STORE": str(tmp_path / "w.db"), "CURVES": "last_epoch"},
    })
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    store = RunStore(tmp_path / "w.db")
    assert store.curves(trainer.run_id)["epoch"].unique().tolist() == [2]
    best = store.metrics(trainer.run_id, keys=["val/best_tau/level0"])
    assert best["epoch"].tolist() == [0, 1, 2]  # best thresholds are logged every epoch all the same

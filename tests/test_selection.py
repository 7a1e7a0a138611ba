"""Selection on val, best.pt, early stopping, and the test split evaluated once (issue 14 item 2; DESIGN.md 3.5).

The selected epoch is controlled exactly by :func:`scripted`: a trainer that logs one extra val metric whose
value per epoch the test chooses (``TRAIN.SELECT_BY`` may name any val metric the run logs).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench import names as N
from workbench.config import Config, ConfigError
from workbench.data import make_synthetic
from workbench.events import BaseSink, SinkError
from workbench.store import RunStore, metric_split
from workbench.tracking import SELECTED_EPOCH, offline_run_dirs, pull_wandb, read_wandb_offline_run
from workbench.trainer import BEST_KEYS, Trainer, load_checkpoint

SCRIPTED = "val/scripted"  # a "max" metric (N.direction)


def tiny(tmp_path, **overrides) -> Config:
    """A small synthetic run (~0.15 s an epoch) with train / val / test parts."""
    base = {
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 600, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2, 0.4], "DATA.TEST_FRACTION": 0.2,
        "MODEL.HIDDEN": [32], "TRAIN.EPOCHS": 4, "TRAIN.BATCH_SIZE": 64, "TRAIN.LR": 0.01,
        "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu", "TRACKING.STORE": str(tmp_path / "runs" / "w.db"),
    }
    base.update(overrides)
    return Config().with_overrides(base)


def scripted(series, key: str = SCRIPTED):
    """A Trainer class whose evaluations also log ``key`` (``val/...`` on val, ``test/...`` on test) with the
    value ``series[epoch]`` of the epoch being trained (``series[0]`` for the check at construction)."""

    class Scripted(Trainer):
        _epoch = 0

        def run_epoch(self, epoch):
            self._epoch = epoch
            return super().run_epoch(epoch)

        def evaluate(self, ds, split="val"):
            metrics, curves, out = super().evaluate(ds, split)
            metrics[key.replace("val/", f"{split}/", 1)] = float(series[self._epoch])
            return metrics, curves, out

    return Scripted


class Weights(BaseSink):
    """Each epoch's model weights, as the sinks see them (after the epoch, before the next one trains)."""

    name = "weights"

    def __init__(self):
        self.trainer: Trainer | None = None
        self.states: dict[int, dict] = {}
        self.tests = []

    def on_epoch(self, event):
        self.states[event.epoch] = copy.deepcopy(self.trainer.model.state_dict())

    def on_test(self, event):
        self.tests.append(event)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fit(cls, cfg, **kwargs) -> tuple[Trainer, Weights]:
    sink = Weights()
    trainer = cls(cfg, sinks=[sink], progress=False, **kwargs)
    sink.trainer = trainer
    trainer.fit()
    return trainer, sink


def split_rows(store: RunStore, run_id: str, split: str) -> pd.DataFrame:
    m = store.metrics(run_id)
    return m[m["split"] == split]


def best_taus(store: RunStore, run_id: str, epoch: int, ranks) -> dict[str, float]:
    wide = store.metrics_wide([run_id]).set_index("epoch")
    return {rank: float(wide.loc[epoch, N.best_tau(rank)]) for rank in ranks}


# ---------------------------------------------------------------------- best.pt and the test rows
def test_best_pt_holds_the_selected_epochs_weights_and_test_is_written_there(tmp_path):
    # epoch 1 is best; epoch 3 only ties it (strictly better is needed), epoch 2 is NaN (never better)
    cls = scripted([0.2, 0.7, float("nan"), 0.7, 0.5])
    trainer, sink = fit(cls, tiny(tmp_path, **{"TRAIN.EPOCHS": 5, "TRAIN.SELECT_BY": SCRIPTED}))
    store, rid, ranks = trainer.store, trainer.run_id, trainer.taxonomy.ranks

    best = load_checkpoint(trainer.best_path, ("model", "taxonomy"))
    assert trainer.best_path.name == N.BEST_CHECKPOINT_NAME and trainer.best_path.parent == trainer.ckpt_path.parent
    assert set(best) == set(BEST_KEYS)
    assert best["epoch"] == 1 and best["select_by"] == SCRIPTED and best["select_value"] == 0.7
    assert same_state(best["model"], sink.states[1])
    assert not same_state(best["model"], sink.states[4])  # the comparison can fail: the weights moved on
    assert best["tau"] == best_taus(store, rid, 1, ranks)  # the val-chosen tau of the selected epoch
    assert best["input_shape"] == [8] and best["feature_names"] == trainer.train_ds.feature_names
    assert best["data_hash"] == trainer.data_hash and best["run_id"] == rid
    # the resume checkpoint keeps the last epoch's weights and the selection so far
    last = load_checkpoint(trainer.ckpt_path, ("model",))
    assert same_state(last["model"], sink.states[4]) and same_state(trainer.model.state_dict(), sink.states[4])
    assert last["best"] == {"epoch": 1, "value": 0.7, "bad_epochs": 3}

    # test: one TestResult, written at the selected epoch with split test, curves too
    (event,) = sink.tests
    assert event.epoch == 1
    test = split_rows(store, rid, "test")
    assert set(test["epoch"]) == {1}
    assert dict(zip(test["key"], test["value"])) == pytest.approx(dict(event.metrics), nan_ok=True)
    val_keys = set(split_rows(store, rid, "val")["key"])
    mirrored = {k.replace("val", "test", 1) for k in val_keys if not k.startswith("val/best_tau")}
    assert mirrored <= set(test["key"])  # every val metric has its test twin ...
    assert not [k for k in test["key"] if k.startswith("test/best_tau")]  # ... except a tau chosen on test
    curves = store.curves(rid, split="test")
    assert set(curves["epoch"]) == {1} and set(curves["rank"]) == set(ranks)

    # each rank's val tau applied to test: read back off the stored test curves at that tau
    values = dict(zip(test["key"], test["value"]))
    for rank, tau in best["tau"].items():
        assert values[N.rank_key("test", N.TAU, rank)] == tau
        at = curves[(curves["rank"] == rank) & (curves["tau"] - tau).abs().lt(1e-9)].set_index("curve")["value"]
        assert values[N.rank_key("test", N.COVERAGE_AT_TAU, rank)] == pytest.approx(at["coverage"])
        assert values[N.rank_key("test", N.SELECTIVE_ACCURACY_AT_TAU, rank)] == pytest.approx(
            at["selective_accuracy"], nan_ok=True)


@pytest.mark.parametrize("key, series, selected", [
    ("val/scripted_loss", [0.9, 0.4, 0.6, 0.4, 0.5], 1),  # a loss: smaller is better (N.direction)
    (SCRIPTED, [float("nan"), 0.1, 0.3, float("nan"), 0.2], 2),  # NaN never improves, not even the first
])
def test_direction_and_nan_decide_the_selected_epoch(tmp_path, key, series, selected):
    trainer, _ = fit(scripted(series, key), tiny(tmp_path, **{"TRAIN.EPOCHS": 5, "TRAIN.SELECT_BY": key,
                                                               "DATA.TEST_FRACTION": 0}))
    assert load_checkpoint(trainer.best_path, ("epoch",))["epoch"] == selected
    assert trainer.test_ds is None and split_rows(trainer.store, trainer.run_id, "test").empty  # no test split


def test_select_by_must_be_a_val_metric_the_run_logs(tmp_path):
    with pytest.raises(ConfigError, match=r"`TRAIN.SELECT_BY` must be a validation metric key .* got 'core/test_loss'"):
        tiny(tmp_path, **{"TRAIN.SELECT_BY": "core/test_loss"})
    with pytest.raises(ConfigError, match=r"`TRAIN.EARLY_STOP_PATIENCE` must be >= 0, got -1"):
        tiny(tmp_path, **{"TRAIN.EARLY_STOP_PATIENCE": -1})
    cfg = tiny(tmp_path, **{"TRAIN.SELECT_BY": "val/acc/genus"})  # synthetic ranks are level0..level2
    with pytest.raises(ConfigError, match=r"got 'val/acc/genus'; did you mean 'val/acc/level\d'"):
        Trainer(cfg, progress=False)
    assert RunStore(cfg.TRACKING.STORE).runs().empty  # refused before a run row exists
    assert Trainer(tiny(tmp_path, **{"TRAIN.SELECT_BY": "val/acc/level2"}), progress=False) is not None


# ---------------------------------------------------------------------- early stopping
def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path):
    # best at epoch 3; epochs 4, 5, 6 do not improve it: with patience 3 the run ends after epoch 6,
    # and epoch 7's 0.9 is never seen
    series = [0.1, 0.5, 0.3, 0.6, 0.2, 0.4, 0.55, 0.9]
    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 8, "TRAIN.SELECT_BY": SCRIPTED, "TRAIN.EARLY_STOP_PATIENCE": 3,
                            "TRACKING.CURVES": "last_epoch"})
    trainer, sink = fit(scripted(series), cfg)
    store, rid = trainer.store, trainer.run_id
    run = store.run(rid)
    assert run["status"] == "finished" and run["epochs_done"] == 7 and store.last_epoch(rid) == 6
    assert sorted(sink.states) == list(range(7))
    assert "early stop" in trainer.stop_reason and "for 3 epochs" in trainer.stop_reason
    assert "epoch 4" in trainer.stop_reason  # the best, 1-based as in every message
    assert load_checkpoint(trainer.best_path, ("epoch",))["epoch"] == 3
    assert set(split_rows(store, rid, "test")["epoch"]) == {3}
    assert set(store.curves(rid)["epoch"]) == {6}  # CURVES last_epoch: the last epoch the run trained

    # patience 0 (the default) trains every epoch
    trainer, _ = fit(scripted(series), cfg.with_overrides({"TRAIN.EARLY_STOP_PATIENCE": 0}))
    assert trainer.store.run(trainer.run_id)["epochs_done"] == 8 and trainer.stop_reason is None
    assert set(trainer.store.curves(trainer.run_id)["epoch"]) == {7}
    assert load_checkpoint(trainer.best_path, ("epoch",))["epoch"] == 7


# ---------------------------------------------------------------------- resume keeps the best so far
class CrashAt(BaseSink):
    """Fails the run in ``on_epoch`` of one epoch: after its store write and its pending best.pt, before
    its checkpoint (the point a kill is most likely to hit: the epoch is then redone on resume)."""

    name = "crash"

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch(self, event):
        if event.epoch == self.epoch:
            raise RuntimeError(f"crash at epoch {event.epoch}")


class Killed(BaseException):
    """Stands for SIGKILL at one instruction: nothing after it runs (not an Exception: no handler takes it)."""


class StopAt(BaseSink):
    """Asks the run to stop (through the store, as the app does) after one epoch."""

    name = "stop"

    def __init__(self, store: RunStore, epoch: int):
        self.store, self.epoch = store, epoch

    def on_epoch(self, event):
        if event.epoch == self.epoch:
            self.store.request_stop(event.run_id)


def test_resume_after_a_crash_a_kill_or_a_stop_keeps_the_best_and_ends_with_the_same_best_pt(tmp_path, monkeypatch):
    series = [0.1, 0.5, 0.3, 0.6, 0.2, 0.4]  # best at 1, then 3
    cls = scripted(series)
    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 6, "TRAIN.SELECT_BY": SCRIPTED})
    reference, _ = fit(cls, cfg)
    want = load_checkpoint(reference.best_path, ("model",))
    assert want["epoch"] == 3
    want_test = split_rows(reference.store, reference.run_id, "test").set_index("key")["value"]

    def check_final(trainer: Trainer):
        got = load_checkpoint(trainer.best_path, ("model",))
        assert got["epoch"] == 3 and same_state(got["model"], want["model"]) and got["tau"] == want["tau"]
        assert not trainer.pending_best_path.exists()
        test = split_rows(trainer.store, trainer.run_id, "test")
        assert set(test["epoch"]) == {3}  # one epoch of test rows: an earlier stop's were replaced
        pd.testing.assert_series_equal(test.set_index("key")["value"], want_test)

    # (1) a crash in epoch 3, after its best.pt was written (pending) but before its checkpoint
    crashed = cls(cfg, sinks=[CrashAt(3)], progress=False)
    with pytest.raises(SinkError, match="crash at epoch 3"):
        crashed.fit()
    assert crashed.pending_best_path.exists()
    assert load_checkpoint(crashed.best_path, ("epoch",))["epoch"] == 1  # best.pt is the checkpoint's best
    assert load_checkpoint(crashed.ckpt_path, ("best",))["best"] == {"epoch": 1, "value": 0.5, "bad_epochs": 1}
    resumed = cls(cfg, run_id=crashed.run_id, progress=False)
    assert resumed.fit(resume=True) == "finished"
    check_final(resumed)

    # (2) killed between the checkpoint of epoch 3 and best.pt's rename: the checkpoint selects epoch 3,
    # so resume completes the rename instead of dropping the file
    real_replace, epoch_now = os.replace, []

    def killed_at_rename(src, dst):
        if Path(src).name.endswith(".pending") and epoch_now[-1] == 3:
            raise Killed
        return real_replace(src, dst)

    class Epoch(BaseSink):
        name = "epoch"

        def on_epoch(self, event):
            epoch_now.append(event.epoch)

    monkeypatch.setattr(os, "replace", killed_at_rename)
    killed = cls(cfg, sinks=[Epoch()], progress=False)
    with pytest.raises(Killed):
        killed.fit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(killed.ckpt_path, ("epoch",))["epoch"] == 3 and killed.pending_best_path.exists()
    resumed = cls(cfg, run_id=killed.run_id, progress=False)
    assert resumed.fit(resume=True) == "finished"
    check_final(resumed)

    # (3) a stop after epoch 1: the stopped run is tested at its best so far, and resume keeps that best
    store = RunStore(cfg.TRACKING.STORE)
    stopped = cls(cfg, sinks=[StopAt(store, 1)], progress=False)
    assert stopped.fit() == "stopped"
    assert set(split_rows(store, stopped.run_id, "test")["epoch"]) == {1}
    assert load_checkpoint(stopped.ckpt_path, ("best",))["best"] == {"epoch": 1, "value": 0.5, "bad_epochs": 0}
    store.clear_stop(stopped.run_id)
    resumed = cls(cfg, run_id=stopped.run_id, progress=False)
    assert resumed.fit(resume=True) == "finished"
    check_final(resumed)


# ---------------------------------------------------------------------- test never selects
def test_test_labels_never_influence_selection_tau_or_any_val_number(tmp_path):
    ds = make_synthetic(n=600, branching=(3, 3, 3), num_features=8, null_rates=(0.0, 0.2, 0.4), seed=0)
    codes = torch.zeros(len(ds), dtype=torch.long)  # a fixed split: the same rows are test in both runs
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    codes[order[:120]], codes[order[120:240]] = 1, 2
    ds = replace(ds, fixed_split=codes)
    test_idx = torch.nonzero(codes == 2).flatten()
    targets = ds.targets.clone()
    targets[test_idx] = targets[test_idx[torch.randperm(len(test_idx), generator=torch.Generator().manual_seed(1))]]
    permuted = replace(ds, targets=targets)  # same label paths, so the same taxonomy; test rows relabelled
    assert not torch.equal(permuted.targets, ds.targets) and torch.equal(permuted.targets[codes != 2], ds.targets[codes != 2])

    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 5, "TRAIN.LR": 0.05})
    runs = [fit(Trainer, cfg, dataset=d)[0] for d in (ds, permuted)]
    store = runs[0].store
    best = [load_checkpoint(t.best_path, ("model",)) for t in runs]
    assert best[0]["epoch"] == best[1]["epoch"] and best[0]["tau"] == best[1]["tau"]
    assert best[0]["select_value"] == best[1]["select_value"] and same_state(best[0]["model"], best[1]["model"])
    val = [split_rows(store, t.run_id, "val").drop(columns="run_id").reset_index(drop=True) for t in runs]
    pd.testing.assert_frame_equal(val[0], val[1])  # every val number of every epoch, taus included
    curves = [store.curves(t.run_id).reset_index(drop=True) for t in runs]
    pd.testing.assert_frame_equal(curves[0], curves[1])
    test = [split_rows(store, t.run_id, "test").set_index("key")["value"] for t in runs]
    assert test[0]["core/test_partial_chain_acc"] > test[1]["core/test_partial_chain_acc"] + 0.1  # test did change
    for rank in runs[0].taxonomy.ranks:  # the tau applied to test is val's, whatever test's labels
        assert test[0][N.rank_key("test", N.TAU, rank)] == test[1][N.rank_key("test", N.TAU, rank)] == best[0]["tau"][rank]


# ---------------------------------------------------------------------- W&B summary
def test_wandb_offline_summary_has_the_test_metrics_and_the_stop_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 5, "TRAIN.SELECT_BY": SCRIPTED, "TRAIN.EARLY_STOP_PATIENCE": 1,
                            "TRACKING.WANDB.ENABLED": True, "TRACKING.WANDB.MODE": "offline",
                            "TRACKING.WANDB.DIR": str(tmp_path)})
    trainer, _ = fit(scripted([0.3, 0.5, 0.4, 0.9, 0.9]), cfg)  # best at 1; epoch 2 ends it
    (run_dir,) = offline_run_dirs(tmp_path)
    summary = read_wandb_offline_run(run_dir)["summary"]
    test = split_rows(trainer.store, trainer.run_id, "test")
    assert len(test) > 20
    for key, value in zip(test["key"], test["value"]):
        got = summary[key]  # NaN: null in W&B's summary, NULL in the store (read back as NaN)
        assert (math.isnan(value) and got is None) or got == pytest.approx(value), (key, got, value)
    assert summary[SELECTED_EPOCH] == 1 and summary["status"] == "finished"
    assert "early stop" in summary["stop_reason"]
    # and back: the pull has them at the selected epoch, as the store does (NaN is not logged)
    pulled = pull_wandb(tmp_path)
    pulled = pulled[pulled["metric"].map(metric_split) == "test"]
    stored = test.dropna(subset=["value"])
    assert set(pulled["epoch"]) == {1} and set(pulled["metric"]) == set(stored["key"])


# ---------------------------------------------------------------------- a sweep trial
@pytest.mark.ray
def test_a_sweep_trials_test_numbers_reach_the_store(ray_local, tmp_path):
    from workbench.sweep import SweepSettings, SweepSpec, run_sweep

    base = tiny(tmp_path, **{"TRAIN.EPOCHS": 3, "TRAIN.NUM_THREADS": 0}).to_dict()
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp_path / "rr"), verbose=0)
    sweep_id, grid = run_sweep(SweepSpec(base=base, grid={"w": [0.5]}), settings)
    assert len(grid) == 1 and grid[0].error is None
    store = RunStore(settings.store_path)
    rid = store.runs(sweep_id=sweep_id)["id"].item()
    assert store.run(rid)["status"] == "finished" and store.run(rid)["epochs_done"] == 3
    val = store.metrics(rid, keys=[N.VAL_PARTIAL_CHAIN_ACC]).set_index("epoch")["value"]
    selected = int(val.idxmax())  # the first of equal bests: selection needs strictly better
    test = split_rows(store, rid, "test")
    assert set(test["epoch"]) == {selected} and "core/test_partial_chain_acc" in set(test["key"])
    assert set(store.curves(rid, split="test")["epoch"]) == {selected}
    # the trial kept best.pt beside its checkpoint, and its Tune checkpoints carry it
    trial_dir = Path(grid[0].path)
    best = load_checkpoint(trial_dir / "trainer" / N.BEST_CHECKPOINT_NAME, ("model",))
    assert best["epoch"] == selected and best["run_id"] == rid
    assert (Path(grid[0].checkpoint.path) / N.BEST_CHECKPOINT_NAME).is_file()

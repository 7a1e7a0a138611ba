"""Model health checks (workbench/health.py): each fires on the failure it is for, and stays quiet on a healthy run.

The Trainer runs the checks every epoch and stores them as ``health/<check>`` metrics (1 = fired)
and the last epoch's ``{check: message}`` as the run's ``health`` JSON. Every test here plants one
failure in an otherwise healthy tiny run and compares it with the same run without the failure.
"""

from __future__ import annotations

import json

import pytest
import torch

from workbench.config import Config
from workbench.data import HierarchicalDataset, make_synthetic
from workbench.health import CHECKS, HealthMonitor, embeddings_collapsed
from workbench.trainer import Trainer

NUM_FEATURES = 6


def tiny(tmp_path, **overrides) -> Config:
    base = {
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 600, "DATA.SYNTHETIC.NUM_FEATURES": NUM_FEATURES,
        "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2, 0.4], "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 2,
        "TRAIN.BATCH_SIZE": 64, "TRAIN.LR": 0.01, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(tmp_path / "runs" / "w.db"), "TRACKING.WANDB.ENABLED": False,
    }
    return Config().with_overrides({**base, **overrides})


def synthetic(null_rates=(0.0, 0.2, 0.4), n: int = 600) -> HierarchicalDataset:
    return make_synthetic(n=n, num_features=NUM_FEATURES, null_rates=null_rates, seed=0)


def fit(trainer: Trainer) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Train; returns ``{check: stored health/<check> per epoch}`` and the run's health JSON."""
    assert trainer.fit() == "finished"
    wide = trainer.store.metrics_wide([trainer.run_id]).sort_values("epoch")
    flags = {c: wide[f"health/{c}"].tolist() for c in CHECKS}
    return flags, json.loads(trainer.store.run(trainer.run_id)["health"])


def fired(flags: dict[str, list[float]]) -> set[str]:
    return {c for c, values in flags.items() if any(v == 1.0 for v in values)}


# ---------------------------------------------------------------------- healthy
def test_a_healthy_run_fires_nothing(tmp_path):
    flags, health = fit(Trainer(tiny(tmp_path), progress=False))
    assert all(values == [0.0, 0.0] for values in flags.values()), flags
    assert health == {}


# ---------------------------------------------------------------------- padding masks
def padded_sets(invert: bool, full_sets: bool, n: int = 600, size: int = 5) -> HierarchicalDataset:
    """Sets ``(N, S, F)`` of noisy copies of a synthetic point, padded with zeros.

    ``full_sets=False``: 1..S-1 real elements (every set has padding); True: 1..S (some sets have none).
    ``invert``: pass ``valid = ~real`` (True on the padding), the bug the checks are for.
    """
    base = synthetic(n=n)
    g = torch.Generator().manual_seed(0)
    x = base.features[:, None, :] + 0.3 * torch.randn(n, size, NUM_FEATURES, generator=g)  # (N, S, F)
    lengths = torch.randint(1, size + 1 if full_sets else size, (n,), generator=g)  # (N,)
    real = torch.arange(size)[None, :] < lengths[:, None]  # (N, S), True = real element
    x = torch.where(real[..., None], x, torch.zeros(()))  # zero padding
    return HierarchicalDataset(features=x, targets=base.targets, taxonomy=base.taxonomy,
                               feature_names=base.feature_names, name="sets", valid=~real if invert else real)


@pytest.mark.parametrize("full_sets, check, message", [
    # every set has padding: the inverted mask attends to zero padding only, so every set pools to
    # the same embedding
    (False, "collapsed_embeddings",
     "pooled embeddings are identical across inputs (an inverted padding mask? a dead backbone?)"),
    # some sets have no padding: inverted, their mask is all False
    (True, "empty_sets", "{n} samples have a valid mask that is all False (no real set element)"),
], ids=["every-set-padded", "some-sets-full"])
def test_inverted_padding_mask_fires_and_the_right_mask_does_not(tmp_path, full_sets, check, message):
    cfg = tiny(tmp_path, **{"MODEL.BACKBONE": "set_attention"})
    good_flags, good_health = fit(Trainer(cfg, dataset=padded_sets(False, full_sets), progress=False))
    assert not fired(good_flags) & {"collapsed_embeddings", "empty_sets"}, good_flags
    assert good_health == {}

    bad = Trainer(cfg, dataset=padded_sets(True, full_sets), progress=False)
    flags, health = fit(bad)
    assert flags[check] == [1.0, 1.0]
    n_empty = int((~bad.val_ds.valid.any(dim=1)).sum())
    assert health[check] == message.format(n=n_empty)
    if check == "empty_sets":
        assert n_empty > 0
    else:
        assert n_empty == 0 and flags["empty_sets"] == [0.0, 0.0]
    assert flags["nonfinite_loss"] == [0.0, 0.0]  # an all-False row pools to zeros, never NaN


# ---------------------------------------------------------------------- non-finite loss
def test_non_finite_features_are_refused_and_a_non_finite_loss_fails_the_run(tmp_path):
    """Non-finite features never reach training; finite features that overflow inside the network
    make a non-finite loss, which fails the run (it used to train on and report 'finished')."""
    from workbench.data import DataError
    from workbench.trainer import TrainingFailed

    bad_data = synthetic()
    bad_data.features[::25, 0] = float("inf")  # 24 rows
    with pytest.raises(DataError, match=r"column 'x0': 24 value\(s\) are not finite as 32-bit floats"):
        Trainer(tiny(tmp_path), dataset=bad_data, progress=False)

    huge = synthetic()
    huge.features[:] = 3e38  # finite in float32; the first layer's sums overflow to inf, the loss to NaN
    trainer = Trainer(tiny(tmp_path), dataset=huge, progress=False)
    with pytest.raises(TrainingFailed, match=r"non-finite loss at epoch 1 \(batch 1 of "):
        trainer.fit()
    run = trainer.store.run(trainer.run_id)
    assert run["status"] == "failed" and "non-finite loss at epoch 1" in run["error"]

    good_flags, _ = fit(Trainer(tiny(tmp_path), dataset=synthetic(), progress=False))
    assert good_flags["nonfinite_loss"] == [0.0, 0.0] and good_flags["nonfinite_grad"] == [0.0, 0.0]


def test_nonfinite_loss_is_per_epoch():
    """One bad batch flags its epoch only: the signal resets when the epoch is checked."""
    monitor = HealthMonitor(["a"])
    val_out = {"preds": torch.tensor([[1], [2]]), "targets": torch.tensor([[1], [2]]),
               "embeddings": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "valid": None}
    model = torch.nn.Linear(2, 2)
    monitor.record_losses(torch.tensor([float("nan"), 0.5]))
    assert "nonfinite_loss" in monitor.check_epoch({"train/kept/a": 2}, val_out, model)
    assert monitor.flags()["nonfinite_loss"] is True
    monitor.record_losses(torch.tensor([0.5, 0.25]))
    assert monitor.check_epoch({"train/kept/a": 2}, val_out, model) == {}
    assert not any(monitor.flags().values())


# ---------------------------------------------------------------------- masked ranks
@pytest.mark.parametrize("masking", [
    {"TRAIN.PHASE1_MASK_NULL_LOSS": True},  # phase 1: every null label is masked
    {"SCHEDULE.NULL_MASKING.START_PROB": 0.0, "SCHEDULE.NULL_MASKING.END_PROB": 0.0},  # p(t) = 0 throughout
], ids=["phase1", "schedule-p0"])
def test_a_rank_with_every_label_masked_fires_rank_all_masked(tmp_path, masking):
    # level2 is null in every training row (data null at a rank everywhere is refused at load, so the
    # training split is emptied here: rare labels that all fell in val), so with nulls masked nothing
    # at level2 reaches the loss
    trainer = Trainer(tiny(tmp_path, **masking), progress=False)
    trainer.train_ds.targets[:, 2] = 0
    flags, health = fit(trainer)
    assert flags["rank_all_masked"] == [1.0, 1.0]
    assert health == {"rank_all_masked": "every training label was masked at rank(s) ['level2']"}

    # the same masking with level2 partly labelled: its labelled rows count, nothing fires
    good_flags, good_health = fit(Trainer(tiny(tmp_path, **masking), progress=False))
    assert good_flags["rank_all_masked"] == [0.0, 0.0] and good_health == {}


# ---------------------------------------------------------------------- constant predictions
def test_a_dominant_head_bias_fires_constant_predictions(tmp_path):
    # a tiny LR and a head bias that outweighs any input: class 1 everywhere at every rank
    trainer = Trainer(tiny(tmp_path, **{"TRAIN.LR": 1e-8}), progress=False)
    with torch.no_grad():
        for head in trainer.model.head.heads:
            head.bias.zero_()
            head.bias[1] = 1e3
    flags, health = fit(trainer)
    assert flags["constant_predictions"] == [1.0, 1.0]
    assert health == {"constant_predictions":
                      "validation predictions are one class for every input at rank(s) ['level0', 'level1', 'level2']"}
    # the backbone is fine: only the predictions are constant, the embeddings still vary
    assert flags["collapsed_embeddings"] == [0.0, 0.0]

    good_flags, _ = fit(Trainer(tiny(tmp_path, **{"TRAIN.LR": 1e-8}), progress=False))
    assert good_flags["constant_predictions"] == [0.0, 0.0]


def test_a_zeroed_backbone_fires_collapsed_embeddings_and_constant_predictions(tmp_path):
    trainer = Trainer(tiny(tmp_path, **{"TRAIN.LR": 1e-8, "TRAIN.WEIGHT_DECAY": 0.0}), progress=False)
    with torch.no_grad():
        for p in trainer.model.backbone.parameters():
            p.zero_()
    flags, health = fit(trainer)
    assert flags["collapsed_embeddings"] == [1.0, 1.0] and flags["constant_predictions"] == [1.0, 1.0]
    assert set(health) == {"collapsed_embeddings", "constant_predictions"}


def test_constant_predictions_need_varied_targets():
    """One class predicted for one class of targets is right, not a failure."""
    monitor = HealthMonitor(["a"])
    z = torch.randn(4, 3)
    same = {"preds": torch.ones(4, 1, dtype=torch.long), "targets": torch.ones(4, 1, dtype=torch.long),
            "embeddings": z, "valid": None}
    assert monitor.check_epoch({"train/kept/a": 4}, same, torch.nn.Linear(1, 1)) == {}
    varied = {**same, "targets": torch.tensor([[1], [2], [1], [2]])}
    assert "constant_predictions" in monitor.check_epoch({"train/kept/a": 4}, varied, torch.nn.Linear(1, 1))


def test_embeddings_collapsed_scale_invariant():
    z = torch.randn(50, 8)
    assert not embeddings_collapsed(z) and not embeddings_collapsed(z * 1e-6) and not embeddings_collapsed(z * 1e6)
    assert embeddings_collapsed(torch.ones(50, 8) * 3.0) and embeddings_collapsed(torch.zeros(50, 8))
    assert not embeddings_collapsed(torch.zeros(1, 8)), "one sample has no spread to measure"

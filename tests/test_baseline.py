"""One home for a split's metrics (workbench/evaluation.py) and the gradient-boosting baseline (issue 18 item 3).

The Trainer and the baseline are scored by the same functions: here the Trainer's stored numbers are recomputed
with :func:`workbench.evaluation.score` / :func:`~workbench.evaluation.at_val_taus`, and the baseline's with the
metric functions themselves from its classifiers' own ``predict()``, on the very rows of the Trainer's test split.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import metrics as M
from workbench import names as N
from workbench.baseline import fit_gradient_boosting
from workbench.config import Config, ConfigError
from workbench.data import load_dataset
from workbench.evaluation import at_val_taus, score
from workbench.masking import null_keep_mask
from workbench.store import RunStore
from workbench.trainer import BEST_KEYS, Trainer, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OLIVE = ROOT / "configs" / "olive.yaml"
FAST_HGB = {"max_iter": 30}  # enough to learn olive; keeps each fit well under a second


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def olive(tmp_path, **overrides) -> Config:
    base = {"TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu", "TRACKING.STORE": str(tmp_path / "runs" / "w.db")}
    return Config.load(OLIVE, [f"{k}={v}" for k, v in {**base, **overrides}.items()])


def synthetic(tmp_path, **overrides) -> Config:
    base = {
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 600, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.3, 0.5], "DATA.TEST_FRACTION": 0.2,
        "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 128, "TRAIN.LR": 0.01,
        "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu", "TRACKING.STORE": str(tmp_path / "runs" / "w.db"),
    }
    base.update(overrides)
    return Config().with_overrides(base)


def test_trainer_numbers_are_score_of_its_outputs(tmp_path):
    """A trained run's stored val (last epoch) and test numbers are score() of the model's outputs and loss, and
    at_val_taus() with best.pt's val-chosen taus on test; a multi-label rank goes through the same call."""
    cfg = synthetic(tmp_path, **{"DATA.SYNTHETIC.MULTILABEL_RANK": 2, "LOSS.MULTILABEL": True, "TRAIN.EPOCHS": 1})
    t = Trainer(cfg, progress=False)
    assert t.fit() == "finished"
    rows = RunStore(cfg.TRACKING.STORE).metrics(t.run_id)

    def scored(ds, split):
        logits, _ = t.predict(ds)
        full = ds.as_batch()
        loss = t._loss(logits, full, null_keep_mask(full.targets, 1.0, phase1=False, training=False))
        multilabel = {r: full.multilabel[r] for r in t.multilabel_ranks}
        assert multilabel, "the multi-label rank is scored as one"
        return score(logits, full.targets, t.taxonomy, split, multilabel, loss=loss)

    val, _, preds = scored(t.val_ds, "val")  # the model holds the last epoch's weights
    stored = rows[(rows["split"] == "val") & (rows["epoch"] == 0)].set_index("key")["value"]
    assert set(val) <= set(stored.index)
    assert all(same(float(stored[k]), v) for k, v in val.items())
    assert torch.equal(preds, t.evaluate(t.val_ds)[2]["preds"])
    # test: best.pt's weights and its val taus, through the test-time rule
    state = load_checkpoint(t.best_path, BEST_KEYS)
    t.model.load_state_dict(state["model"])
    test_metrics, test_curves, _ = scored(t.test_ds, "test")
    test = at_val_taus(test_metrics, test_curves, state["tau"])
    stored = rows[rows["split"] == "test"].set_index("key")["value"]
    assert set(test) == set(stored.index)
    assert all(same(float(stored[k]), v) for k, v in test.items())
    assert not any("/best_tau" in k for k in test) and f"test/tau/{t.taxonomy.ranks[0]}" in test


def test_baseline_on_olive_is_scored_like_a_run(tmp_path):
    """On the Trainer's own split, with the Trainer's keys (no loss: see workbench/baseline.py), and the numbers
    are the metric functions of the classifiers' own predict() on the test rows."""
    cfg = olive(tmp_path, **{"TRAIN.EPOCHS": 1})
    res = fit_gradient_boosting(cfg, seed=3, progress=False, **FAST_HGB)
    t = Trainer(cfg, progress=False)
    # the very rows of the Trainer's splits (olive's split is fixed by the source: the same rows, same order)
    for ours, theirs in ((res.train, t.train_ds), (res.val, t.val_ds), (res.test, t.test_ds)):
        assert list(ours.raw.index) == list(theirs.raw.index)
        assert torch.equal(ours.features, theirs.features) and torch.equal(ours.targets, theirs.targets)
    ranks = t.taxonomy.ranks
    # recomputed from HGB's predict() with the metric functions
    x = res.test.features.numpy()
    preds = torch.stack([torch.as_tensor(res.models[rank].predict(x), dtype=torch.long) for rank in ranks], dim=1)
    y = res.test.targets
    acc = M.rank_accuracy(preds, y)
    for r, rank in enumerate(ranks):
        assert res.metrics[N.rank_key("test", N.ACC, rank)] == pytest.approx(float(acc[r]), abs=1e-12)
        assert res.models[rank].get_params()["random_state"] == 3
        assert 1 <= res.iterations[rank] <= FAST_HGB["max_iter"]
    assert res.metrics[N.TEST_PARTIAL_CHAIN_ACC] == pytest.approx(float(M.partial_chain_accuracy(preds, y)), abs=1e-12)
    assert res.metrics[N.core_key("test", "chain_acc")] == pytest.approx(float(M.chain_accuracy(preds, y)), abs=1e-12)
    assert res.metrics[N.TEST_PARTIAL_CHAIN_ACC] > 0.8  # olive is easy: a working classifier, not a constant
    # the same keys a run stores: val at its selected epoch, and test (without the loss keys)
    assert t.fit() == "finished"
    stored = RunStore(cfg.TRACKING.STORE).metrics(t.run_id)
    is_loss = lambda k: k == N.core_key(k.split("/")[1].split("_")[0], "loss") or "/loss/" in k  # noqa: E731
    want_val = {k for k in stored[stored["split"] == "val"]["key"] if N.is_val_key(k) and not is_loss(k)}
    want_test = {k for k in stored[stored["split"] == "test"]["key"] if not is_loss(k)}
    got = set(res.metrics)
    assert {k for k in got if N.is_val_key(k)} == want_val
    assert {k for k in got if not N.is_val_key(k)} == want_test
    # test was scored at each rank's val-chosen tau
    for rank in ranks:
        assert res.metrics[f"test/tau/{rank}"] == res.metrics[N.best_tau(rank)] == res.taus[rank]
    assert list(res.test_curves["split"].unique()) == ["test"] and list(res.val_curves["split"].unique()) == ["val"]


def test_nulls_are_never_a_training_class(tmp_path):
    """Synthetic data with 30% / 50% nulls at the finer ranks: every classifier learns real classes only, from the
    rows labelled at its rank; the null output is -inf, so the baseline never predicts null."""
    cfg = synthetic(tmp_path)
    res = fit_gradient_boosting(cfg, progress=False, **FAST_HGB)
    tax = res.train.taxonomy
    for r, rank in enumerate(tax.ranks):
        labelled = res.train.targets[:, r] != 0
        if r > 0:
            assert (~labelled).any(), "the data has nulls at this rank"
        classes = set(res.models[rank].classes_.tolist())
        assert 0 not in classes
        assert classes == set(res.train.targets[labelled, r].tolist())
        # fitted on the labelled rows only: the fit rows plus the early-stopping piece
        assert res.models[rank].n_features_in_ == res.train.features.shape[1]
    out = res.log_probs(res.test)
    assert all(bool(torch.isneginf(o[:, 0]).all()) for o in out)
    preds = score(out, res.test.targets, tax, "test")[2]
    assert bool((preds != 0).all())
    assert res.metrics[f"test/acc_null/{tax.ranks[2]}"] == 0.0  # a null target is never matched


def test_images_sets_and_multilabel_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="`DATA.NAME` must be table data.*'animal_mnist'"):
        fit_gradient_boosting(synthetic(tmp_path, **{"DATA.NAME": "animal_mnist"}), progress=False)
    with pytest.raises(ConfigError, match="'ratdat_sets' makes sets of rows"):
        fit_gradient_boosting(synthetic(tmp_path, **{"DATA.NAME": "ratdat_sets"}), progress=False)
    ml = synthetic(tmp_path, **{"DATA.SYNTHETIC.MULTILABEL_RANK": 1, "LOSS.MULTILABEL": True})
    with pytest.raises(ConfigError, match=r"`LOSS.MULTILABEL` true scores rank\(s\) .* as multi-label"):
        fit_gradient_boosting(ml, progress=False)
    # a dataset given in code is checked too: images (N, C, H, W)
    ds = load_dataset(synthetic(tmp_path).DATA)
    images = type(ds)(torch.zeros(len(ds), 1, 4, 4, dtype=torch.uint8), ds.targets, ds.taxonomy, ["pixels"])
    with pytest.raises(ConfigError, match="got images of shape"):
        fit_gradient_boosting(synthetic(tmp_path), images, progress=False)


def test_cli_baseline_json_and_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "baseline", "--config", str(OLIVE), "--set", "TRAIN.NUM_THREADS=1",
         "--seed", "1", "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["seed"] == 1 and report["split"] == {"train": 344, "val": 114, "test": 114}
    m = report["metrics"]
    assert 0.8 < m[N.TEST_PARTIAL_CHAIN_ACC] <= 1 and 0.8 < m[N.VAL_PARTIAL_CHAIN_ACC] <= 1
    assert {"val/acc/region", "val/acc/area", "test/acc/area", "test/tau/area", "val/severity"} <= set(m)
    # one progress line per rank, on stderr (stdout stays JSON)
    assert [line.split(":")[0] for line in out.stderr.splitlines() if line.startswith("baseline ")] == \
        ["baseline region", "baseline area"]


def test_cli_baseline_refuses_images_in_one_line(capsys):
    from workbench.cli import main

    assert main(["baseline", "--config", str(OLIVE), "--set", "DATA.NAME=animal_mnist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `DATA.NAME` must be table data") and len(err.splitlines()) == 1


def test_baseline_table_shows_val_and_test():
    from workbench.cli import baseline_table

    metrics = {N.VAL_PARTIAL_CHAIN_ACC: 0.5, N.TEST_PARTIAL_CHAIN_ACC: 0.25, "val/acc/a": 0.75,
               "test/acc/a": float("nan"), "test/coverage_at_tau/a": 1.0}
    lines = baseline_table(metrics, ["a"]).splitlines()
    assert lines[0].split() == ["metric", "val", "test"]
    assert next(line for line in lines if line.startswith("partial-chain acc")).split()[-2:] == ["0.5000", "0.2500"]
    assert next(line for line in lines if line.startswith("acc a")).split()[-2:] == ["0.7500", "n/a"]
    assert next(line for line in lines if line.startswith("coverage at tau a")).split()[-2:] == ["n/a", "1.0000"]


def test_missing_scikit_learn_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what `import sklearn` meets when it is not installed
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    with pytest.raises(ImportError, match=r"needs scikit-learn: pip install scikit-learn"):
        fit_gradient_boosting(olive(tmp_path), progress=False)

"""The Sweeps page's parameter importance (AppTest): fANOVA bar and slice plot of a val metric at each
finished trial's selected epoch, the metric choice, and what the page says when there is nothing to rank."""

from __future__ import annotations

import numpy as np
import pytest
from test_app import app, charts, store_path, texts, values  # noqa: F401  (shared AppTest helpers and fixture)

from workbench.config import Config
from workbench.store import RunStore

PEAK = 1  # the epoch (0-based) where every fake trial's val partial-chain accuracy peaks: its selected epoch


def val_acc(w: float, seed: int) -> float:
    """A trial's val partial-chain accuracy at its selected epoch: set by LOSS.W, a trace of seed."""
    return 0.5 + 0.3 * w + 0.001 * seed


def add_trial(store: RunStore, sweep_id: str, overrides: dict, status: str = "finished", epochs: int = 3) -> str:
    """A trial written through the store API: val metrics per epoch peaking at PEAK, test rows there."""
    cfg = Config().with_overrides(overrides).to_dict()
    run_id = store.create_run(cfg, run_id=f"{sweep_id}-{len(store.runs(sweep_id=sweep_id))}", sweep_id=sweep_id,
                              status="running")
    w, seed = overrides.get("LOSS.W", 0.5), overrides.get("TRAIN.SEED", 0)
    for e in range(epochs):
        acc = val_acc(w, seed) - (0 if e == PEAK else 0.1)
        store.write_epoch(run_id, e, {"core/val_partial_chain_acc": acc, "core/val_chain_acc": acc / 2,
                                      "core/val_loss": 2 - w - 0.01 * e, "core/train_loss": 1.0})
    store.write_once(run_id, "test", PEAK, {"core/test_partial_chain_acc": 0.1, "core/test_loss": 9.0})
    store.update_run(run_id, status=status)
    return run_id


def test_importance_of_the_selection_metric_and_a_slice_per_swept_key(store_path):
    store = RunStore(store_path)
    for w in (0.0, 0.5, 1.0):
        for seed in (0, 1):
            add_trial(store, "sw-imp", {"LOSS.W": w, "TRAIN.SEED": seed})
    add_trial(store, "sw-imp", {"LOSS.W": 0.25, "TRAIN.SEED": 0}, status="failed")  # not finished: left out
    at = app("sweeps")
    assert not at.exception, at.exception
    metric = at.selectbox(key="sw_imp_metric")
    assert metric.value == "core/val_partial_chain_acc"  # the trials' selection metric, on val
    assert not [o for o in metric.options if "test" in o]  # test is reported, never analysed
    bar = charts(at)["sw_importance"]["data"][0]
    shares = dict(zip(bar["y"], values(bar["x"])))
    assert set(shares) == {"LOSS.W", "TRAIN.SEED"} and shares["LOSS.W"] > 0.8
    assert sum(shares.values()) == pytest.approx(1.0)
    caption = texts(at)
    assert "val, at each trial's selected epoch" in caption and "6 finished trials" in caption
    assert "seed noise" in caption
    slices = charts(at)["sw_slice"]
    points = slices["data"][0]  # LOSS.W: one point per finished trial, at its selected epoch (not the last)
    got = sorted(zip(values(points["x"]), values(points["y"])))
    np.testing.assert_allclose(got, sorted((w, val_acc(w, s)) for w in (0.0, 0.5, 1.0) for s in (0, 1)))
    assert [a["text"] for a in slices["layout"]["annotations"]] == ["LOSS.W", "TRAIN.SEED"]
    mean = slices["data"][1]
    assert list(values(mean["y"])) == pytest.approx([val_acc(w, 0.5) for w in (0.0, 0.5, 1.0)])

    metric.set_value("core/val_loss").run()  # another val metric: the chart follows
    assert not at.exception, at.exception
    points = charts(at)["sw_slice"]["data"][0]
    got = sorted(zip(values(points["x"]), values(points["y"])))
    np.testing.assert_allclose(got, sorted((w, 2 - w - 0.01 * PEAK) for w in (0.0, 0.5, 1.0) for _ in (0, 1)))
    assert "sw_importance" in charts(at)


def test_too_few_finished_trials_or_nothing_varying_says_why(store_path):
    store = RunStore(store_path)
    add_trial(store, "sw-one", {"LOSS.W": 0.2})
    add_trial(store, "sw-one", {"LOSS.W": 0.8}, status="failed")
    add_trial(store, "sw-same", {"LOSS.W": 0.3})
    add_trial(store, "sw-same", {"LOSS.W": 0.3})
    at = app("sweeps")
    at.selectbox(key="sw_pick").set_value("sw-one").run()
    assert not at.exception, at.exception
    info = " ".join(i.value for i in at.info)
    assert "needs at least 2 finished trials; this sweep has 1 so far" in info
    assert "sw_importance" not in charts(at) and "sw_slice" not in charts(at)
    at.selectbox(key="sw_pick").set_value("sw-same").run()
    assert not at.exception, at.exception
    assert "No config key differs between this sweep's 2 finished trials" in " ".join(i.value for i in at.info)
    assert "sw_importance" not in charts(at) and "sw_slice" not in charts(at)

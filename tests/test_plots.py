"""Figure builders (workbench.plots): each returns a go.Figure whose traces carry the input data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from workbench import plots
from workbench.masking import NullMaskSchedule

RANKS = ["order", "genus"]


@pytest.fixture
def wide() -> pd.DataFrame:
    """A fake run's ``metrics_wide``: 5 epochs (given out of order: builders sort by epoch)."""
    rng = np.random.default_rng(0)
    epochs = np.array([3, 0, 4, 1, 2])
    df = pd.DataFrame({"run_id": "r1", "epoch": epochs})
    for key in ("core/train_loss", "core/val_loss", "core/train_chain_acc", "core/val_chain_acc",
                "core/train_partial_chain_acc", "core/val_partial_chain_acc"):
        df[key] = rng.random(5)
    for rank in RANKS:
        for split in ("train", "val"):
            df[f"{split}/acc/{rank}"] = rng.random(5)
            df[f"{split}/loss/{rank}"] = rng.random(5)
    return df


def by_name(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in fig.data}


def test_schedule_preview_matches_schedule():
    sched = NullMaskSchedule(True, 0.2, 0.9, 2, 6)
    fig = plots.schedule_preview(sched, epochs=10, points_per_epoch=4)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    curve, per_epoch = fig.data
    np.testing.assert_allclose(curve.x, np.linspace(0, 10, 41))
    np.testing.assert_allclose(curve.y, [sched.prob(t) for t in curve.x])
    np.testing.assert_array_equal(per_epoch.x, np.arange(10))
    expected = [np.mean([sched.prob(e + b / 4) for b in range(4)]) for e in range(10)]
    np.testing.assert_allclose(per_epoch.y, expected)
    assert per_epoch.y[0] == pytest.approx(0.2) and per_epoch.y[-1] == pytest.approx(0.9)


def test_schedule_preview_disabled_is_one():
    fig = plots.schedule_preview(NullMaskSchedule(enabled=False), epochs=3)
    assert np.all(np.asarray(fig.data[0].y) == 1.0)


def test_loss_curves(wide):
    fig = plots.loss_curves(wide)
    assert [t.name for t in fig.data] == ["train loss", "val loss"]
    s = wide.sort_values("epoch")
    np.testing.assert_array_equal(fig.data[0].x, s["epoch"])
    np.testing.assert_allclose(fig.data[0].y, s["core/train_loss"])
    np.testing.assert_allclose(fig.data[1].y, s["core/val_loss"])
    with_ranks = plots.loss_curves(wide, RANKS)
    assert len(with_ranks.data) == 4
    np.testing.assert_allclose(by_name(with_ranks)["val loss genus"].y, s["val/loss/genus"])


def test_chain_vs_partial_one_chart_four_traces(wide):
    fig = plots.chain_vs_partial(wide)
    names = by_name(fig)
    assert set(names) == {"train chain", "val chain", "train partial-chain", "val partial-chain"}
    s = wide.sort_values("epoch")
    for name, key in [("train chain", "core/train_chain_acc"), ("val chain", "core/val_chain_acc"),
                      ("train partial-chain", "core/train_partial_chain_acc"),
                      ("val partial-chain", "core/val_partial_chain_acc")]:
        np.testing.assert_array_equal(names[name].x, np.arange(5))
        np.testing.assert_allclose(names[name].y, s[key])
    # train dashed, val solid; chain and partial-chain differ in colour
    assert names["train chain"].line.dash == "dash" and names["val chain"].line.dash == "solid"
    assert names["val chain"].line.color != names["val partial-chain"].line.color


def test_chain_vs_partial_missing_keys_are_skipped():
    df = pd.DataFrame({"epoch": [0, 1], "core/val_chain_acc": [0.1, 0.2]})
    assert [t.name for t in plots.chain_vs_partial(df).data] == ["val chain"]


def test_rank_accuracy(wide):
    fig = plots.rank_accuracy(wide, RANKS)
    assert len(fig.data) == 2 * len(RANKS)
    s = wide.sort_values("epoch")
    names = by_name(fig)
    for rank in RANKS:
        np.testing.assert_allclose(names[f"val {rank}"].y, s[f"val/acc/{rank}"])
        np.testing.assert_allclose(names[f"train {rank}"].y, s[f"train/acc/{rank}"])
        assert names[f"val {rank}"].line.color == names[f"train {rank}"].line.color


def make_curves(epochs=(0, 1)) -> pd.DataFrame:
    tau = np.linspace(0, 1, 11)
    rows = []
    for epoch in epochs:
        for r, rank in enumerate(RANKS):
            for c, curve in enumerate(("coverage", "selective_accuracy", "accuracy", "null_false_positive_rate")):
                rows.append(pd.DataFrame({"epoch": epoch, "rank": rank, "curve": curve, "tau": tau,
                                          "value": (1 - tau) * (c + 1) / 5 + r / 10 + epoch / 100}))
    return pd.concat(rows, ignore_index=True)


def test_threshold_curves_marks_best_tau():
    curves = make_curves(epochs=(3,))
    best = {"order": 0.3, "genus": 0.7}
    fig = plots.threshold_curves(curves, best, ranks=RANKS)
    lines = [t for t in fig.data if t.mode == "lines"]
    marks = [t for t in fig.data if t.mode == "markers+text"]
    assert len(lines) == len(RANKS) * 4 and len(marks) == len(RANKS)
    for mark, rank in zip(marks, RANKS):
        acc = curves[(curves["rank"] == rank) & (curves["curve"] == "accuracy")]
        assert mark.x[0] == pytest.approx(best[rank])
        assert mark.y[0] == pytest.approx(np.interp(best[rank], acc["tau"], acc["value"]))
    # x/y of each curve trace equal the input rows
    first = curves[(curves["rank"] == "order") & (curves["curve"] == "coverage")]
    np.testing.assert_allclose(lines[0].x, first["tau"])
    np.testing.assert_allclose(lines[0].y, first["value"])
    assert len(fig.layout.shapes) == len(RANKS)  # one vertical line per rank at tau*


def test_threshold_curves_uses_last_epoch_of_several():
    curves = make_curves(epochs=(0, 5))
    fig = plots.threshold_curves(curves, {}, ranks=RANKS)
    expected = curves[(curves["epoch"] == 5) & (curves["rank"] == "order") & (curves["curve"] == "coverage")]
    np.testing.assert_allclose(fig.data[0].y, expected["value"])
    assert not [t for t in fig.data if t.mode == "markers+text"]


def long_frame() -> pd.DataFrame:
    """Six runs x 8 epochs of one key, plus another key that must be ignored; runs grouped by ``LOSS.W``."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        for epoch in range(8):
            for key in ("core/val_loss", "core/train_loss"):
                rows.append({"run_id": f"run{i}", "epoch": epoch, "key": key, "value": rng.random(),
                             "LOSS.W": [0.1, 0.5][i % 2]})
    return pd.DataFrame(rows)


def test_overlay_one_trace_per_run_raw():
    df = long_frame()
    fig = plots.overlay(df, "core/val_loss", smoothing=0.0, labels={"run0": "first"})
    assert len(fig.data) == 6
    assert fig.data[0].name == "first"
    run1 = df[(df["run_id"] == "run1") & (df["key"] == "core/val_loss")]
    np.testing.assert_array_equal(fig.data[1].x, run1["epoch"])
    np.testing.assert_allclose(fig.data[1].y, run1["value"])


@pytest.mark.parametrize("smoothing", [0.3, 0.8])
def test_overlay_smoothing_is_pandas_ewm(smoothing):
    df = long_frame()
    fig = plots.overlay(df, "core/val_loss", smoothing=smoothing)
    for i, trace in enumerate(fig.data):
        series = df[(df["run_id"] == f"run{i}") & (df["key"] == "core/val_loss")]["value"]
        np.testing.assert_allclose(trace.y, series.ewm(alpha=1 - smoothing, adjust=False).mean())


def test_overlay_group_mean_and_band_equal_pandas():
    df = long_frame()
    fig = plots.overlay(df, "core/val_loss", smoothing=0.0, group_by="LOSS.W")
    assert len(fig.data) == 2 * 3  # per group: upper, lower (filled), mean
    stats = df[df["key"] == "core/val_loss"].groupby(["LOSS.W", "epoch"])["value"].agg(["mean", "std"])
    for g, w in enumerate((0.1, 0.5)):
        upper, lower, mean = fig.data[3 * g : 3 * g + 3]
        expected = stats.loc[w]
        np.testing.assert_allclose(mean.y, expected["mean"])
        np.testing.assert_allclose(upper.y, expected["mean"] + expected["std"])
        np.testing.assert_allclose(lower.y, expected["mean"] - expected["std"])
        assert lower.fill == "tonexty"
        assert mean.name == f"LOSS.W={w} (n=3)"


def test_overlay_group_with_smoothing_averages_smoothed_series():
    df = long_frame()
    df = df[df["key"] == "core/val_loss"].copy()
    fig = plots.overlay(df, "core/val_loss", smoothing=0.5, group_by="LOSS.W")
    df["s"] = df.groupby("run_id")["value"].transform(lambda s: s.ewm(alpha=0.5, adjust=False).mean())
    expected = df[df["LOSS.W"] == 0.1].groupby("epoch")["s"].mean()
    np.testing.assert_allclose(fig.data[2].y, expected)


def test_smooth_rejects_out_of_range():
    with pytest.raises(ValueError, match="smoothing"):
        plots.smooth(pd.Series([1.0, 2.0]), 1.0)


def test_final_metrics_takes_last_epoch():
    df = long_frame()
    final = plots.final_metrics(df)
    last = df[(df["run_id"] == "run2") & (df["epoch"] == 7)].set_index("key")["value"]
    assert final.loc["run2", "core/val_loss"] == last["core/val_loss"]
    assert final.shape == (6, 2)


def test_parallel_coords_dimensions():
    table = pd.DataFrame({"LOSS.W": [0.1, 0.5, 0.9], "MODEL.HEAD": ["marginal", "independent", "marginal"],
                          "TRAIN.PHASE1_MASK_NULL_LOSS": [True, False, True], "val partial-chain": [0.5, 0.6, 0.7]})
    fig = plots.parallel_coords(table, list(table.columns), color="val partial-chain")
    (pc,) = fig.data
    assert isinstance(pc, go.Parcoords) and len(pc.dimensions) == 4
    np.testing.assert_allclose(pc.dimensions[0].values, table["LOSS.W"])
    head = pc.dimensions[1]
    assert list(head.ticktext) == ["independent", "marginal"]
    np.testing.assert_array_equal(head.values, [1, 0, 1])
    np.testing.assert_allclose(pc.line.color, table["val partial-chain"])


def test_config_scatter_points_and_means():
    table = pd.DataFrame({"LOSS.W": [0.1, 0.1, 0.5, 0.5, 0.9], "MODEL.HEAD": ["a", "b", "a", "b", "a"],
                          "acc": [0.5, 0.7, 0.6, np.nan, 0.9], "name": list("vwxyz")})
    fig = plots.config_scatter(table, "LOSS.W", "acc", hover="name")
    points, mean = fig.data
    np.testing.assert_allclose(points.x, [0.1, 0.1, 0.5, 0.9])  # the NaN run is left out
    np.testing.assert_allclose(points.y, [0.5, 0.7, 0.6, 0.9])
    assert list(points.text) == ["v", "w", "x", "z"]
    expected = table.dropna(subset=["acc"]).groupby("LOSS.W")["acc"].mean()
    np.testing.assert_allclose(mean.x, expected.index)
    np.testing.assert_allclose(mean.y, expected.to_numpy())
    split = plots.config_scatter(table, "LOSS.W", "acc", color="MODEL.HEAD")
    assert [t.name for t in split.data] == ["MODEL.HEAD=a", "MODEL.HEAD=a mean", "MODEL.HEAD=b", "MODEL.HEAD=b mean"]
    np.testing.assert_allclose(split.data[0].y, [0.5, 0.6, 0.9])


class _Tax:
    ranks = ("a", "b")
    vocab = [[None, "A1", "A2"], [None, "B1", "B2", "B3"]]


class _DS:
    """A minimal stand-in for HierarchicalDataset: taxonomy + targets (0 = null)."""

    taxonomy = _Tax()

    def __init__(self, targets):
        import torch

        self.targets = torch.tensor(targets)


def test_taxonomy_frame_counts_paths_and_nulls():
    ds = _DS([[1, 1], [1, 1], [1, 2], [1, 0], [2, 3], [0, 0]])
    nodes = plots.taxonomy_frame(ds).set_index("id")
    assert nodes.loc["0:1", "count"] == 4 and nodes.loc["0:2", "count"] == 1
    assert nodes.loc["0:0", "label"] == "(null)" and nodes.loc["0:0", "count"] == 1
    assert nodes.loc["1:1/1", "count"] == 2 and nodes.loc["1:1/1", "parent"] == "0:1"
    assert nodes.loc["1:1/1", "label"] == "B1"
    # a node's children never sum above it; the gap is samples whose label stops there
    children = nodes[nodes["parent"] == "0:1"]["count"].sum()
    assert children == 3 <= nodes.loc["0:1", "count"]
    fig = plots.taxonomy_sunburst(ds)
    (sb,) = fig.data
    assert isinstance(sb, go.Sunburst) and list(sb.values) == list(plots.taxonomy_frame(ds)["count"])


def test_taxonomy_sunburst_on_synthetic():
    from workbench.data import make_synthetic

    ds = make_synthetic(n=300, branching=(2, 3), null_rates=(0.0, 0.4), seed=0)
    nodes = plots.taxonomy_frame(ds)
    assert nodes[nodes["rank"] == "level0"]["count"].sum() == len(ds)
    assert nodes[nodes["rank"] == "level1"]["count"].sum() == int((ds.targets[:, 1] != 0).sum())


def test_class_counts_bar_sorted_with_null_grey():
    counts = pd.DataFrame({"class": [None, "x", "y", "z"], "count": [5, 1, 9, 3]})
    fig = plots.class_counts(counts, "genus")
    (bar,) = fig.data
    assert list(bar.x) == ["y", "(null)", "z", "x"] and list(bar.y) == [9, 5, 3, 1]
    assert bar.marker.color[1] == plots.NULL_COLOUR and bar.marker.color[0] != plots.NULL_COLOUR
    top = plots.class_counts(counts, "genus", top=2)
    assert len(top.data[0].x) == 2 and "top 2 of 4" in top.layout.title.text

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
    # epoch k (1-based) spans t in [k-1, k); its mean is drawn at the middle, where a linear ramp equals it
    np.testing.assert_array_equal(per_epoch.x, np.arange(10) + 0.5)
    np.testing.assert_array_equal(per_epoch.customdata, np.arange(1, 11))
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
    np.testing.assert_array_equal(fig.data[0].x, s["epoch"] + 1)  # displayed epochs are 1-based
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
        np.testing.assert_array_equal(names[name].x, np.arange(1, 6))
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
    np.testing.assert_array_equal(fig.data[1].x, run1["epoch"] + 1)
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


# ---------------------------------------------------------------------- epochs, colours, run tables
@pytest.mark.parametrize("n", [1, 2, 3, 8, 30, 300])
def test_epoch_axes_are_one_based_with_whole_ticks(n):
    """Stored epochs 0..n-1 are drawn at 1..n; ticks are whole numbers (a 3-epoch run has none at 1.5)."""
    df = pd.DataFrame({"epoch": np.arange(n), "core/val_chain_acc": np.linspace(0, 1, n),
                       "core/val_loss": np.ones(n), "val/acc/order": np.ones(n)})
    for fig in (plots.chain_vs_partial(df), plots.loss_curves(df), plots.rank_accuracy(df, ["order"])):
        np.testing.assert_array_equal(fig.data[0].x, np.arange(1, n + 1))
        axis = fig.layout.xaxis
        assert axis.tickmode == "linear" and axis.tickformat == "d"
        assert axis.dtick == int(axis.dtick) and axis.dtick >= 1 and float(axis.tick0) == 0
        assert max(n - 1, 1) / axis.dtick <= 12  # never a wall of ticks on a long run
    assert plots.epoch_tick_step(8) == 1 and plots.epoch_tick_step(30) == 5 and plots.epoch_tick_step(300) == 50


def test_one_colour_per_rank_in_every_chart(wide):
    colours = plots.rank_colours(RANKS)
    loss = by_name(plots.loss_curves(wide, RANKS))
    acc = by_name(plots.rank_accuracy(wide, RANKS))
    for rank in RANKS:
        assert loss[f"val loss {rank}"].line.color == acc[f"val {rank}"].line.color == colours[rank]
    assert len(set(colours.values())) == len(RANKS)
    # a rank never looks like chain / partial-chain accuracy or the total loss
    assert not set(colours.values()) & {plots.CHAIN_COLOUR, plots.PARTIAL_COLOUR}


def test_best_tau_table_is_the_curve_maximum():
    curves = make_curves(epochs=(0, 2))
    # genus: make accuracy peak at tau = 0.6 (two taus tie: the smaller wins) and put a NaN above it
    acc = (curves["epoch"] == 2) & (curves["rank"] == "genus") & (curves["curve"] == "accuracy")
    curves.loc[acc & np.isclose(curves["tau"], 0.6), "value"] = 5.0
    curves.loc[acc & np.isclose(curves["tau"], 0.8), "value"] = 5.0
    curves.loc[acc & np.isclose(curves["tau"], 0.9), "value"] = np.nan
    table = plots.best_tau_table(curves, RANKS).set_index("rank")
    assert list(table.index) == RANKS and set(table["by"]) == {"accuracy"}
    last = curves[curves["epoch"] == 2]
    for rank in RANKS:
        sub = last[last["rank"] == rank]
        a = sub[sub["curve"] == "accuracy"]
        tau = a.loc[a["value"].idxmax(), "tau"]  # pandas skips NaN; idxmax takes the first (smallest tau)
        assert table.loc[rank, "tau"] == pytest.approx(tau)
        for curve in ("accuracy", "coverage", "selective_accuracy", "null_false_positive_rate"):
            expected = sub[(sub["curve"] == curve) & np.isclose(sub["tau"], tau)]["value"].item()
            assert table.loc[rank, curve] == pytest.approx(expected)
    assert table.loc["genus", "tau"] == pytest.approx(0.6)


def test_best_tau_table_multilabel_rank_uses_micro_f1():
    tau = np.linspace(0, 1, 5)
    curves = pd.concat([pd.DataFrame({"epoch": 0, "rank": "tags", "curve": c, "tau": tau, "value": v})
                        for c, v in (("micro_f1", [0.1, 0.7, 0.3, 0.2, 0.0]), ("exact_match", [0.0, 0.5, 0.6, 0.4, 0.1]))])
    row = plots.best_tau_table(curves).iloc[0]
    assert row["by"] == "micro_f1" and row["tau"] == 0.25 and row["exact_match"] == 0.5


def run_table() -> pd.DataFrame:
    """Six runs grouped by LOSS.W: w=0.2 mixes a phase-1 run and a stopped run; w=0.8 differs only by seed."""
    return pd.DataFrame({
        "id": list("abcdef"), "status": ["finished", "finished", "stopped", "finished", "finished", "finished"],
        "LOSS.W": [0.2, 0.2, 0.2, 0.8, 0.8, 0.8], "TRAIN.SEED": [0, 1, 2, 0, 1, 2],
        "TRAIN.PHASE1_MASK_NULL_LOSS": [True, False, False, False, False, False],
        "MODEL.HIDDEN": [[16], [16], [16], [16], [16], [16]], "TRACKING.STORE": list("xyzxyz"),
        "parent_id": [None, "a", None, None, None, None], "epochs_done": [5, 3, 2, 4, 4, 4],
    })


def test_varying_within_groups_names_the_mixed_keys():
    runs = run_table()
    assert plots.varying_within_groups(runs, "LOSS.W") == ["TRAIN.SEED", "TRAIN.PHASE1_MASK_NULL_LOSS", "status"]
    # split by them and nothing is left mixed but the seed; TRACKING.* never counts
    assert plots.varying_within_groups(runs, ["LOSS.W", "TRAIN.PHASE1_MASK_NULL_LOSS", "status"]) == ["TRAIN.SEED"]
    assert plots.varying_within_groups(runs[runs["LOSS.W"] == 0.8], "LOSS.W") == ["TRAIN.SEED"]
    assert plots.varying_config_keys(runs) == ["LOSS.W", "TRAIN.SEED", "TRAIN.PHASE1_MASK_NULL_LOSS"]


def test_lineage_offsets_follow_parents():
    runs = pd.DataFrame({"id": ["p", "c", "g", "orphan", "x", "y"],
                         "parent_id": [None, "p", "c", "gone", "y", "x"],  # x <-> y: a cycle must end
                         "epochs_done": [5, 3, 2, 4, 1, 1]})
    assert plots.lineage_offsets(runs) == {"p": 0, "c": 5, "g": 8, "orphan": 0, "x": 1, "y": 1}


def test_overlay_groups_by_several_keys_and_continues_phase2():
    df = long_frame()
    df["phase1"] = df["run_id"].isin(["run0", "run1"])
    fig = plots.overlay(df, "core/val_loss", group_by=["LOSS.W", "phase1"])
    means = [t for t in fig.data if t.name.endswith(")")]
    assert [t.name for t in means] == ["LOSS.W=0.1, phase1=False (n=2)", "LOSS.W=0.1, phase1=True (n=1)",
                                       "LOSS.W=0.5, phase1=False (n=2)", "LOSS.W=0.5, phase1=True (n=1)"]
    fig = plots.overlay(df, "core/val_loss", epoch_offsets={"run1": 8})
    np.testing.assert_array_equal(fig.data[1].x, np.arange(9, 17))  # after run0's 8 epochs (1..8)
    np.testing.assert_array_equal(fig.data[0].x, np.arange(1, 9))


def test_metric_labels_never_repeat_the_key():
    assert plots.metric_label("val/acc/species") == "val accuracy: species"
    assert plots.metric_label("val/best_tau/genus") == "val best τ: genus"
    assert plots.metric_label("core/val_loss") == "val loss"
    assert plots.metric_label("val/hdist@1") == "val hdist@1"

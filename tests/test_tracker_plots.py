"""Tracker plots (workbench.plots): group bands (against slow references), the grouped overlay, threshold
curves of several runs per rank, and the sweep analyses' bar and slice plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from workbench import plots


def reference_band(values, band):
    """A slow, obviously-correct band: python loops over the values, scipy's t for the 95% CI."""
    xs = [float(v) for v in values if v == v]
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return mean, mean, mean, 1
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = {"sd": sd, "se": sd / math.sqrt(n), "ci95": student_t.ppf(0.975, n - 1) * sd / math.sqrt(n)}
    if band == "minmax":
        return mean, min(xs), max(xs), n
    return mean, mean - half[band], mean + half[band], n


samples = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(samples, st.sampled_from(plots.BANDS))
def test_band_stats_equal_the_reference_and_order_lo_centre_hi(values, band):
    centre, lo, hi, n = plots.band_stats(np.array(values), band)
    ref = reference_band(values, band)
    assert n == ref[3] == len(values)
    np.testing.assert_allclose([centre, lo, hi], ref[:3], rtol=1e-9, atol=1e-9)
    assert lo <= centre + 1e-9 and centre <= hi + 1e-9
    if band == "minmax":
        assert lo == min(values) and hi == max(values)


def test_band_stats_properties_and_edges():
    x = pd.Series([0.2, 0.5, 0.9, np.nan, 0.4])  # NaN left out: n = 4
    _, sd_lo, sd_hi, n = plots.band_stats(x, "sd")
    c, se_lo, se_hi, _ = plots.band_stats(x, "se")
    assert n == 4 and (se_hi - c) == pytest.approx((sd_hi - c) / math.sqrt(4))
    _, ci_lo, ci_hi, _ = plots.band_stats(x, "ci95")
    assert (ci_hi - c) == pytest.approx(student_t.ppf(0.975, 3) * (se_hi - c))  # 3.18 se: wider than 2 se
    assert plots.band_stats([0.7], "ci95") == (0.7, 0.7, 0.7, 1)  # one run: no spread
    assert plots.band_stats([np.nan], "sd")[3] == 0
    with pytest.raises(ValueError, match="band must be one of sd, se, ci95, minmax, got 'iqr'"):
        plots.band_stats([1.0, 2.0], "iqr")


def grouped_frame() -> pd.DataFrame:
    """Eight runs x 5 epochs: LOSS.W in {0.3, 0.7} x TRAIN.SEED in {0, 1}, with 3, 2, 2 and 1 runs per cell;
    the run with a single member stops after 3 epochs."""
    rng = np.random.default_rng(7)
    cells = [(0.3, 0), (0.3, 0), (0.3, 0), (0.3, 1), (0.3, 1), (0.7, 0), (0.7, 0), (0.7, 1)]
    rows = []
    for i, (w, seed) in enumerate(cells):
        for epoch in range(3 if i == 7 else 5):
            for key in ("core/val_loss", "core/train_loss"):
                rows.append({"run_id": f"r{i}", "epoch": epoch, "key": key, "value": rng.random(),
                             "LOSS.W": w, "TRAIN.SEED": seed})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("band", plots.BANDS)
def test_overlay_band_per_combination_of_keys_equals_band_stats(band):
    df = grouped_frame()
    fig = plots.overlay(df, "core/val_loss", group_by=["LOSS.W", "TRAIN.SEED"], band=band)
    assert len(fig.data) == 4 * 3  # per group: upper, lower (filled to it), mean drawn last (on top)
    names = [t.name for t in fig.data[2::3]]
    assert names == ["LOSS.W=0.3, TRAIN.SEED=0 (n=3)", "LOSS.W=0.3, TRAIN.SEED=1 (n=2)",
                     "LOSS.W=0.7, TRAIN.SEED=0 (n=2)", "LOSS.W=0.7, TRAIN.SEED=1 (n=1)"]
    val = df[df["key"] == "core/val_loss"]
    for g, (w, seed) in enumerate([(0.3, 0), (0.3, 1), (0.7, 0), (0.7, 1)]):
        upper, lower, mean = fig.data[3 * g : 3 * g + 3]
        cell = val[(val["LOSS.W"] == w) & (val["TRAIN.SEED"] == seed)]
        expected = [plots.band_stats(cell.loc[cell["epoch"] == e, "value"], band) for e in sorted(cell["epoch"].unique())]
        np.testing.assert_array_equal(mean.x, np.array(sorted(cell["epoch"].unique())) + 1)
        np.testing.assert_allclose(mean.y, [e[0] for e in expected])
        np.testing.assert_allclose(lower.y, [e[1] for e in expected])
        np.testing.assert_allclose(upper.y, [e[2] for e in expected])
        assert list(mean.customdata) == [e[3] for e in expected]  # the hover's n at each epoch
        assert "n=%{customdata}" in mean.hovertemplate
        assert lower.fill == "tonexty" and upper.fill is None and mean.fill is None
        assert not upper.showlegend and not lower.showlegend and upper.legendgroup == mean.legendgroup
    single = fig.data[-3:]
    np.testing.assert_allclose(single[0].y, single[2].y)  # one run: the band collapses onto the mean
    assert band in fig.layout.title.text or plots.BAND_LABELS[band] in fig.layout.title.text


def test_overlay_keeps_zoom_on_refresh_and_rejects_unknown_band():
    df = grouped_frame()
    first = plots.overlay(df, "core/val_loss", group_by=["LOSS.W"])
    more = pd.concat([df, df.assign(epoch=df["epoch"] + 5)])  # a live refresh: more epochs
    again = plots.overlay(more, "core/val_loss", group_by=["LOSS.W"], band="se")
    assert first.layout.uirevision == again.layout.uirevision == plots.overlay(df, "core/val_loss").layout.uirevision
    assert first.layout.uirevision is not None
    with pytest.raises(ValueError, match="band must be one of"):
        plots.overlay(df, "core/val_loss", group_by="LOSS.W", band="95")


def test_overlay_group_names_are_shown_as_text():
    df = grouped_frame().assign(**{"MODEL.HEAD": "<b>x</b> & y"})
    fig = plots.overlay(df, "core/val_loss", group_by=["MODEL.HEAD"], labels={"r0": "<i>"})
    assert fig.data[2].name == "MODEL.HEAD=&lt;b&gt;x&lt;/b&gt; &amp; y (n=8)"
    fig = plots.overlay(df, "core/val_loss", labels={"r0": "<i>"})
    assert fig.data[0].name == "&lt;i&gt;"


def threshold_frame() -> pd.DataFrame:
    """Three runs' curves at two ranks (run c has no ``order`` rank rows); run a also has an older epoch."""
    rng = np.random.default_rng(3)
    rows = []
    for run, epochs in (("a", (1, 4)), ("b", (2,)), ("c", (0,))):
        for epoch in epochs:
            for rank in ("order", "<genus>"):
                if run == "c" and rank == "order":
                    continue
                for curve in ("coverage", "selective_accuracy"):
                    for tau in np.linspace(1, 0, 6):  # descending: the plot sorts by tau
                        rows.append({"run_id": run, "epoch": epoch, "rank": rank, "curve": curve, "tau": tau,
                                     "value": rng.random()})
    return pd.DataFrame(rows)


def test_threshold_overlay_one_line_per_run_and_rank_from_the_frame():
    curves = threshold_frame()
    labels = {"b": "run <b>", "a": "run a", "c": "run c"}
    fig = plots.threshold_overlay(curves, labels, ranks=["order", "<genus>"])
    assert [(t.xaxis, t.name) for t in fig.data] == [
        ("x", "run &lt;b&gt;"), ("x", "run a"), ("x2", "run &lt;b&gt;"), ("x2", "run a"), ("x2", "run c")]
    for trace, (run, rank) in zip(fig.data, [("b", "order"), ("a", "order"), ("b", "<genus>"), ("a", "<genus>"),
                                             ("c", "<genus>")]):
        sub = curves[(curves["run_id"] == run) & (curves["rank"] == rank) & (curves["curve"] == "selective_accuracy")]
        sub = sub[sub["epoch"] == sub["epoch"].max()].sort_values("tau")  # run a: its latest epoch (4)
        np.testing.assert_allclose(trace.x, sub["tau"])
        np.testing.assert_allclose(trace.y, sub["value"])
    colour = {}
    for trace in fig.data:
        colour.setdefault(trace.name, set()).add(trace.line.color)
    assert all(len(c) == 1 for c in colour.values())  # one colour per run in every subplot
    assert len({next(iter(c)) for c in colour.values()}) == 3
    assert [a.text for a in fig.layout.annotations] == ["<b>order</b>", "<b>&lt;genus&gt;</b>"]
    assert [t.showlegend for t in fig.data] == [True, True, False, False, True]  # c first appears at <genus>
    coverage = plots.threshold_overlay(curves, labels, curve="coverage", ranks=["order", "<genus>"])
    first = curves[(curves["run_id"] == "b") & (curves["rank"] == "order") & (curves["curve"] == "coverage")]
    np.testing.assert_allclose(coverage.data[0].y, first.sort_values("tau")["value"])
    # the same run keeps its colour when another run is added to the overlay after it
    fewer = plots.threshold_overlay(curves[curves["run_id"] != "c"], {"b": "run <b>", "a": "run a"})
    assert [t.line.color for t in fewer.data[:2]] == [t.line.color for t in fig.data[:2]]


def test_importance_bar_and_slice_plot_carry_the_table():
    importance = pd.Series({"LOSS.W": 0.75, "TRAIN.SEED": 0.25, "<b>k</b>": 0.0}, name="core/val_partial_chain_acc")
    bar = plots.importance_bar(importance)
    assert list(bar.data[0].y) == ["&lt;b&gt;k&lt;/b&gt;", "TRAIN.SEED", "LOSS.W"]  # most important on top
    np.testing.assert_allclose(bar.data[0].x, [0.0, 0.25, 0.75])
    assert "val partial-chain acc" in bar.layout.title.text
    table = pd.DataFrame({"LOSS.W": [0.2, 0.2, 0.8, 0.8, 0.5], "MODEL.HIDDEN": [[8], [16], [8], [16], [8]],
                          "acc": [0.5, 0.7, 0.9, 1.0, np.nan]}, index=["a", "b", "c", "d", "e"])
    fig = plots.slice_plot(table, ["LOSS.W", "MODEL.HIDDEN"], "acc")
    points, mean, cat_points, cat_mean = fig.data
    np.testing.assert_allclose(points.x, [0.2, 0.2, 0.8, 0.8])  # e has no objective: left out
    np.testing.assert_allclose(points.y, [0.5, 0.7, 0.9, 1.0])
    assert list(points.text) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(mean.x, [0.2, 0.8])
    np.testing.assert_allclose(mean.y, [0.6, 0.95])
    assert list(cat_points.x) == ["[8]", "[16]", "[8]", "[16]"]
    assert list(cat_mean.x) == ["[16]", "[8]"] and list(cat_mean.y) == pytest.approx([0.85, 0.7])
    assert fig.layout.xaxis2.type == "category"

"""Plotly figure builders shared by the dashboard and the notebooks.

Every builder is a pure function of DataFrames (the store's readers return them) and returns a
``plotly.graph_objects.Figure``; none reads the store or knows about Streamlit. Frames:

- ``metrics_wide``: one row per epoch (``RunStore.metrics_wide([run_id])``), columns ``epoch``
  and metric keys (``core/val_loss``, ``val/acc/<rank>``, ...);
- ``metrics long``: ``run_id, epoch, key, value`` (``RunStore.metrics``), plus any config columns
  to group by;
- ``curves``: ``epoch, rank, curve, tau, value`` (``RunStore.curves``).

Epochs: the store's ``epoch`` column is 0-based (the first epoch trained is ``epoch`` 0, as the
trainer's loop counts). Everything a user sees is 1-based: the charts plot ``epoch + 1``
(:func:`display_epoch`), so a run of 8 epochs is drawn at 1..8, the Train page says "epoch 8 / 8"
when ``epochs_done`` is 8 and its epoch slider runs 1..8. Epoch axes have whole-number ticks only.
The null-masking schedule's ``t`` is training progress in epochs (epoch ``k``, 1-based, spans
``k - 1 <= t < k``), so a ramp that ends at ``END_EPOCH: 10`` ends with the 10th epoch.

Colours: one per meaning, everywhere: chain vs partial-chain, and one colour per rank
(:func:`rank_colours`) in every chart that draws ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench import names as N

# one colour per meaning, everywhere: chain vs partial-chain, train vs val by dash
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC",
           "#EECA3B")
CHAIN_COLOUR, PARTIAL_COLOUR = "#4C78A8", "#F58518"
NULL_COLOUR = "#BAB0AC"
# ranks never take the chain, partial-chain or null colours (the loss chart draws the total in CHAIN_COLOUR)
RANK_PALETTE = tuple(c for c in PALETTE if c not in (CHAIN_COLOUR, PARTIAL_COLOUR, NULL_COLOUR))
EPOCH_OFFSET = 1  # displayed epoch = stored (0-based) epoch + EPOCH_OFFSET
CURVE_LABELS = {
    "accuracy": "accuracy (null-aware)",
    "selective_accuracy": "selective accuracy",
    "coverage": "coverage",
    "null_false_positive_rate": "null false-positive rate",
}
METRIC_LABELS = {
    N.TRAIN_LOSS: "train loss", N.VAL_LOSS: "val loss",
    N.TRAIN_CHAIN_ACC: "train chain acc", N.VAL_CHAIN_ACC: "val chain acc",
    N.TRAIN_PARTIAL_CHAIN_ACC: "train partial-chain acc", N.VAL_PARTIAL_CHAIN_ACC: "val partial-chain acc",
    N.NULL_INCLUSION_PROB: "null inclusion prob", N.LEARNING_RATE: "learning rate", N.EPOCH_SECONDS: "epoch time (s)",
    N.TRAIN_SAMPLES_PER_SEC: "train samples / s",
}
_PER_RANK = {"acc": "accuracy", "loss": "loss", "best_tau": "best τ"}


def metric_label(key: str) -> str:
    """A readable name for a metric key: ``val/acc/species`` -> ``val accuracy: species``; unknown keys as they are."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] in ("train", "val", "test") and parts[1] in _PER_RANK:
        return f"{parts[0]} {_PER_RANK[parts[1]]}: {parts[2]}"
    if len(parts) == 2 and parts[0] in ("train", "val", "test"):
        return f"{parts[0]} {parts[1]}"
    return key


def _layout(fig: go.Figure, title: str, xaxis: str, yaxis: str, height: int = 360) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "y": 0.98, "yanchor": "top", "yref": "container",
               "font": {"size": 15}},
        xaxis_title=xaxis, yaxis_title=yaxis, height=height, template="plotly_white",
        margin={"l": 55, "r": 15, "t": 85, "b": 45},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0, "font": {"size": 11}},
        hovermode="x unified",
    )
    return fig


def rank_colours(ranks: Sequence[str]) -> dict[str, str]:
    """The colour of each rank (by its position, coarse to fine); every chart that draws ranks uses it."""
    return {rank: RANK_PALETTE[i % len(RANK_PALETTE)] for i, rank in enumerate(ranks)}


def display_epoch(epoch):
    """The 1-based epoch a user sees for a stored 0-based ``epoch`` (a number, array or Series)."""
    return epoch + EPOCH_OFFSET


def _epochs(df: pd.DataFrame) -> np.ndarray:
    return display_epoch(df["epoch"].to_numpy() if "epoch" in df else np.arange(len(df)))


def epoch_tick_step(span: float, max_ticks: int = 12) -> int:
    """A whole-number tick step (1, 2, 5, 10, 20, 50, ...) giving at most ``max_ticks`` ticks over ``span``."""
    step = 1
    while span / step > max_ticks:
        for factor in (2, 5, 10):
            if span / (step * factor) <= max_ticks or factor == 10:
                step *= factor
                break
    return step


def _epoch_axis(fig: go.Figure, epochs, **kw) -> go.Figure:
    """Whole-number ticks on an epoch x-axis (a 3-epoch run never gets ticks at 1.5)."""
    epochs = np.asarray(epochs, dtype=float)
    span = float(np.nanmax(epochs) - np.nanmin(epochs)) if epochs.size and np.isfinite(epochs).any() else 1.0
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=epoch_tick_step(max(span, 1.0)), tickformat="d", **kw)
    return fig


def _line(df: pd.DataFrame, key: str, name: str, colour: str, dash: str = "solid", **kw) -> go.Scatter:
    return go.Scatter(x=_epochs(df), y=df[key].to_numpy(dtype=float), name=name, mode="lines+markers",
                      line={"color": colour, "dash": dash, "width": 2}, marker={"size": 5}, **kw)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("epoch") if "epoch" in df and len(df) else df


# ---------------------------------------------------------------------- schedule
def schedule_preview(schedule, epochs: int, points_per_epoch: int = 20) -> go.Figure:
    """Null-label inclusion probability ``p(t)`` over training (a :class:`NullMaskSchedule`).

    Trace 0: ``p`` at training progress ``t`` in epochs (what each batch uses); trace 1: the mean of
    ``p`` over each epoch's batches (what the run logs as ``schedule/null_inclusion_prob``), one marker
    per epoch ``k = 1..epochs`` drawn at the middle of its span, ``t = k - 0.5`` (on a linear ramp the
    mean equals ``p`` there, so the marker sits on the curve); its hover names the epoch.
    """
    epochs = max(int(epochs), 1)
    t = np.linspace(0.0, epochs, epochs * points_per_epoch + 1)
    p = np.array([schedule.prob(float(x)) for x in t])
    per_epoch = [float(np.mean([schedule.prob(e + b / points_per_epoch) for b in range(points_per_epoch)]))
                 for e in range(epochs)]
    fig = go.Figure([
        go.Scatter(x=t, y=p, name="p(t) per batch", mode="lines", line={"color": PARTIAL_COLOUR, "width": 2},
                   fill="tozeroy", fillcolor="rgba(245,133,24,0.12)"),
        go.Scatter(x=np.arange(epochs) + 0.5, y=per_epoch, name="epoch mean (logged)", mode="markers",
                   marker={"color": CHAIN_COLOUR, "size": 6}, customdata=display_epoch(np.arange(epochs)),
                   hovertemplate="epoch %{customdata}: mean p %{y:.3f}<extra></extra>"),
    ])
    _layout(fig, "Null-label inclusion probability", "epochs trained (t)", "P(null label counts in loss)", height=260)
    fig.update_yaxes(range=[-0.03, 1.03])
    return _epoch_axis(fig, [0, epochs], range=[0, epochs])


# ---------------------------------------------------------------------- one run
def loss_curves(metrics_wide: pd.DataFrame, ranks: Sequence[str] = ()) -> go.Figure:
    """Total train and val loss per epoch; with ``ranks``, val loss per rank too (dotted)."""
    df = _sorted(metrics_wide)
    traces = []
    for key, name, dash in ((N.TRAIN_LOSS, "train loss", "dash"), (N.VAL_LOSS, "val loss", "solid")):
        if key in df:
            traces.append(_line(df, key, name, CHAIN_COLOUR, dash))
    colours = rank_colours(ranks)
    for rank in ranks:
        key = N.rank_key("val", N.LOSS, rank)
        if key in df:
            traces.append(_line(df, key, f"val loss {rank}", colours[rank], "dot"))
    fig = _layout(go.Figure(traces), "Loss (weighted hierarchical CE)", "epoch", "loss")
    return _epoch_axis(fig, _epochs(df))


def chain_vs_partial(metrics_wide: pd.DataFrame) -> go.Figure:
    """Standard chain accuracy vs partial-chain accuracy, train (dashed) and val (solid), one chart.

    Chain: every rank right, a null target needs a null prediction. Partial-chain: every
    *labelled* rank right (null ranks not scored), over samples with at least one label.
    """
    df = _sorted(metrics_wide)
    spec = [
        (N.TRAIN_CHAIN_ACC, "train chain", CHAIN_COLOUR, "dash"),
        (N.VAL_CHAIN_ACC, "val chain", CHAIN_COLOUR, "solid"),
        (N.TRAIN_PARTIAL_CHAIN_ACC, "train partial-chain", PARTIAL_COLOUR, "dash"),
        (N.VAL_PARTIAL_CHAIN_ACC, "val partial-chain", PARTIAL_COLOUR, "solid"),
    ]
    traces = [_line(df, key, name, colour, dash) for key, name, colour, dash in spec if key in df]
    fig = _layout(go.Figure(traces), "Chain vs partial-chain accuracy", "epoch", "accuracy")
    fig.update_yaxes(range=[0, 1.02])
    return _epoch_axis(fig, _epochs(df))


def rank_accuracy(metrics_wide: pd.DataFrame, ranks: Sequence[str]) -> go.Figure:
    """Accuracy per rank over labelled samples: val solid, train dashed, one colour per rank (:func:`rank_colours`)."""
    df = _sorted(metrics_wide)
    traces = []
    colours = rank_colours(ranks)
    for rank in ranks:
        colour = colours[rank]
        for split, dash in (("val", "solid"), ("train", "dash")):
            key = f"{split}/acc/{rank}"
            if key in df:
                traces.append(_line(df, key, f"{split} {rank}", colour, dash, legendgroup=rank))
    fig = _layout(go.Figure(traces), "Accuracy per rank (labelled samples)", "epoch", "accuracy")
    fig.update_yaxes(range=[0, 1.02])
    if len(traces) > 4:  # room for a legend that wraps in a narrow column
        fig.update_layout(margin={"t": 40 + 24 * ((len(traces) + 1) // 2)}, height=360 + 12 * len(traces))
    return _epoch_axis(fig, _epochs(df))


def threshold_curves(
    curves: pd.DataFrame, best_tau: Mapping[str, float] | None = None, marked_curve: str = "accuracy",
    ranks: Sequence[str] | None = None, curve_names: Sequence[str] | None = None,
) -> go.Figure:
    """Per-rank threshold curves of one epoch (one panel per rank), the best ``tau`` marked.

    Per rank: one trace per curve (``value`` vs ``tau``); then, for each rank in ``best_tau``, one
    marker trace at ``(tau*, marked_curve(tau*))`` plus a vertical dotted line at ``tau*``.
    ``ranks``: the run's ranks, coarse to fine (``RunStore.run_ranks``); None draws the ranks in the
    frame's own row order (a frame read from the store is sorted by rank *name*: pass ``ranks``).
    """
    best_tau = dict(best_tau or {})
    if "epoch" in curves and curves["epoch"].nunique() > 1:
        curves = curves[curves["epoch"] == curves["epoch"].max()]
    ranks = list(ranks) if ranks is not None else list(dict.fromkeys(curves["rank"]))
    names = list(curve_names) if curve_names is not None else list(dict.fromkeys(curves["curve"]))
    fig = make_subplots(rows=1, cols=max(len(ranks), 1), shared_yaxes=True, horizontal_spacing=0.04)
    for col, rank in enumerate(ranks, start=1):
        sub = curves[curves["rank"] == rank]
        for i, name in enumerate(names):
            c = sub[sub["curve"] == name].sort_values("tau")
            fig.add_trace(go.Scatter(
                x=c["tau"].to_numpy(), y=c["value"].to_numpy(dtype=float), mode="lines",
                name=CURVE_LABELS.get(name, name), legendgroup=name, showlegend=col == 1,
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            ), row=1, col=col)
        if rank in best_tau and best_tau[rank] == best_tau[rank]:
            tau = float(best_tau[rank])
            c = sub[sub["curve"] == marked_curve]
            y = float(np.interp(tau, c["tau"], c["value"].astype(float))) if len(c) else np.nan
            fig.add_trace(go.Scatter(
                x=[tau], y=[y], mode="markers+text", name=f"best τ ({marked_curve})", legendgroup="best",
                showlegend=col == 1, text=[f"τ*={tau:.2f}"], textposition="bottom right", textfont={"size": 11},
                marker={"symbol": "star", "size": 13, "color": "#222", "line": {"width": 1, "color": "white"}},
            ), row=1, col=col)
            fig.add_vline(x=tau, line={"dash": "dot", "color": "#888", "width": 1}, row=1, col=col)
    _layout(fig, "Threshold curves per rank (abstain below τ)", "", "", height=360)
    fig.update_xaxes(range=[0, 1])
    for col, rank in enumerate(ranks, start=1):
        fig.update_xaxes(title_text=f"<b>{rank}</b>: τ (confidence)", row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.05])
    fig.update_layout(hovermode="closest")
    return fig


# ---------------------------------------------------------------------- many runs
def smooth(values: pd.Series, smoothing: float) -> pd.Series:
    """TensorBoard-style exponential smoothing: ``s_t = smoothing * s_{t-1} + (1 - smoothing) * x_t``."""
    if not smoothing:
        return values.astype(float)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return values.astype(float).ewm(alpha=1.0 - smoothing, adjust=False).mean()


BANDS = ("sd", "se", "ci95", "minmax")  # the spread drawn around a group's mean (overlay's ``band``)
BAND_LABELS = {"sd": "mean ± 1 sd", "se": "mean ± 1 standard error", "ci95": "mean with 95% CI (Student t)",
               "minmax": "mean, band min to max"}
CI_LEVEL = 0.95  # the "ci95" band: two-sided, Student's t with n - 1 degrees of freedom
OVERLAY_UIREVISION = "workbench-overlay"  # constant: a live refresh redraws the chart but keeps the user's zoom


def _check_band(band: str) -> None:
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")


def _band_bounds(mean, sd, n, lo, hi, band: str) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of ``band`` from per-cell statistics (arrays): the mean, the sample standard deviation
    (ddof 1), the count, the min and the max. A cell with one value (or a NaN spread) has no spread: lo = hi =
    mean. The one definition of every band; :func:`band_stats` and :func:`overlay` both use it."""
    mean, sd, n = (np.asarray(a, dtype=float) for a in (mean, sd, n))
    if band == "minmax":
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    else:
        if band == "sd":
            half = sd
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                half = sd / np.sqrt(n)
            if band == "ci95":
                try:  # imported here: the other bands (and the app's default) need no scipy
                    from scipy.stats import t
                except ImportError as e:
                    raise ImportError("the ci95 band needs scipy (Student's t quantile): pip install scipy, or "
                                      "install the sweep extra (scikit-learn brings it)") from e

                with np.errstate(invalid="ignore"):
                    half = half * t.ppf(0.5 + CI_LEVEL / 2, np.where(n > 1, n - 1, np.nan))
        lo, hi = mean - half, mean + half
    single = (n <= 1) | ~np.isfinite(lo) | ~np.isfinite(hi)
    return np.where(single, mean, lo), np.where(single, mean, hi)


def band_stats(values, band: str = "sd") -> tuple[float, float, float, int]:
    """``(centre, lo, hi, n)`` of ``values`` (a Series or array; NaNs are left out, ``n`` counts the rest).

    ``centre`` is the mean; the band: ``sd`` mean ± the sample standard deviation (ddof 1), ``se`` mean ±
    sd / sqrt(n), ``ci95`` mean ± t(0.975, n - 1) * se (Student's t, scipy), ``minmax`` from the min to the
    max. One value: ``lo = hi = centre``; none: NaNs and ``n = 0``.
    """
    _check_band(band)
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else np.nan
    lo, hi = _band_bounds(mean, sd, n, x.min(), x.max(), band)
    return mean, float(lo), float(hi), n


def overlay(
    metrics: pd.DataFrame, key: str, smoothing: float = 0.0, group_by: str | Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None, epoch_offsets: Mapping[str, int] | None = None, band: str = "sd",
) -> go.Figure:
    """One metric of several runs on one chart.

    ``metrics``: long frame ``run_id, epoch, key, value`` (other keys are ignored). Each run's series
    is smoothed (:func:`smooth`). Without ``group_by``: one line per run (named by ``labels``). With
    ``group_by`` (a column of ``metrics``, e.g. ``LOSS.W`` joined from the run configs, or several
    columns: one group per combination of their values): per group, the mean over its runs at each
    epoch and a ``band`` (:data:`BANDS`, computed as :func:`band_stats`; no spread where one run
    reports), as three traces: upper, lower (filled to the upper, drawn behind), mean, named
    ``"LOSS.W=0.3, TRAIN.SEED=1 (n=3)"`` (n: the group's runs); the mean's hover gives the runs at
    that epoch. ``epoch_offsets`` (run id -> epochs, from :func:`lineage_offsets`) shifts a run's
    epochs, so a phase-2 run continues its parent's. x is the displayed (1-based) epoch. The layout's
    ``uirevision`` is constant, so a live refresh keeps the user's zoom.
    """
    _check_band(band)
    labels = dict(labels or {})
    df = metrics[metrics["key"] == key] if "key" in metrics else metrics
    df = df.sort_values(["run_id", "epoch"]).copy()
    df["smoothed"] = df.groupby("run_id", sort=False)["value"].transform(lambda s: smooth(s, smoothing))
    offsets = df["run_id"].map(dict(epoch_offsets or {})).fillna(0).astype(int)
    df["x"] = display_epoch(df["epoch"] + offsets)
    fig = go.Figure()
    title = metric_label(key)
    if group_by is None:
        for i, (run_id, run) in enumerate(df.groupby("run_id", sort=False)):
            fig.add_trace(go.Scatter(
                x=run["x"].to_numpy(), y=run["smoothed"].to_numpy(), mode="lines",
                name=plotly_text(labels.get(run_id, run_id)),
                line={"color": PALETTE[i % len(PALETTE)], "width": 2}, hovertemplate="%{y:.4f}",
            ))
    else:
        cols = [group_by] if isinstance(group_by, str) else list(group_by)
        stats = df.groupby([*cols, "x"])["smoothed"].agg(["mean", "std", "count", "min", "max"]).reset_index()
        runs_in = df.groupby(cols)["run_id"].nunique()
        for i, (group, g) in enumerate(stats.groupby(cols if len(cols) > 1 else cols[0], sort=True)):
            colour = PALETTE[i % len(PALETTE)]
            rgb = tuple(int(colour[j : j + 2], 16) for j in (1, 3, 5))
            mean = g["mean"].to_numpy()
            lo, hi = _band_bounds(mean, g["std"], g["count"], g["min"], g["max"], band)
            parts = group if isinstance(group, tuple) else (group,)
            name = plotly_text(", ".join(f"{c}={v}" for c, v in zip(cols, parts)))
            x = g["x"].to_numpy()
            fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line={"width": 0}, showlegend=False,
                                     legendgroup=name, hoverinfo="skip", name=f"{name} · {band} upper"))
            fig.add_trace(go.Scatter(x=x, y=lo, mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=f"rgba({rgb[0]},{rgb[1]},{rgb[2]},0.18)", showlegend=False,
                                     legendgroup=name, hoverinfo="skip", name=f"{name} · {band} lower"))
            n = int(runs_in.loc[group])
            fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", legendgroup=name, name=f"{name} (n={n})",
                                     line={"color": colour, "width": 2.5}, customdata=g["count"].to_numpy(),
                                     hovertemplate="%{y:.4f} (n=%{customdata})"))
        title += f" by {', '.join(cols)} ({BAND_LABELS[band]})"
    if smoothing:
        title += f", smoothing {smoothing:g}"
    fig = _layout(fig, plotly_text(title), "epoch", metric_label(key), height=380)
    fig.update_layout(uirevision=OVERLAY_UIREVISION)
    return _epoch_axis(fig, df["x"]) if len(df) else fig


THRESHOLD_LEGEND_PER_ROW = 2  # runs per legend row under the threshold overlay (labels are long)
LEGEND_ROW_PX = 22  # px of one legend row


def threshold_overlay(
    curves: pd.DataFrame, labels: Mapping[str, str], curve: str = "selective_accuracy",
    ranks: Sequence[str] | None = None,
) -> go.Figure:
    """One threshold curve (``value`` vs ``tau``) of several runs, one subplot per rank.

    ``curves``: ``run_id, epoch, rank, curve, tau, value`` with one epoch per run (the caller picks
    each run's selected or last epoch; a run given several keeps its latest, as :func:`threshold_curves`).
    ``labels``: run id -> name, in the order the runs get their colours (a run missing from it comes
    after, named by its id); a run keeps its colour in every subplot. ``ranks``: the subplots, coarse
    to fine (None: the frame's ranks in their row order). One trace per (rank, run) that has the
    curve, in rank-major order; each run's first trace carries its legend entry. Names are shown as text
    (:func:`plotly_text`).
    """
    labels = dict(labels)
    sub = curves[curves["curve"] == curve]
    if "epoch" in sub and len(sub):
        latest = sub.groupby("run_id")["epoch"].transform("max")
        sub = sub[sub["epoch"] == latest]
    ranks = list(ranks) if ranks is not None else list(dict.fromkeys(curves["rank"]))
    order = [*labels, *(r for r in dict.fromkeys(sub["run_id"]) if r not in labels)]
    colours = {run: PALETTE[i % len(PALETTE)] for i, run in enumerate(order)}
    label = CURVE_LABELS.get(curve, curve)
    fig = make_subplots(rows=1, cols=max(len(ranks), 1), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"<b>{plotly_text(r)}</b>" for r in ranks] or None)
    in_legend: set[str] = set()
    for col, rank in enumerate(ranks, start=1):
        at_rank = sub[sub["rank"] == rank]
        for run in order:
            c = at_rank[at_rank["run_id"] == run].sort_values("tau")
            if c.empty:
                continue
            name = plotly_text(labels.get(run, run))
            fig.add_trace(go.Scatter(
                x=c["tau"].to_numpy(dtype=float), y=c["value"].to_numpy(dtype=float), mode="lines", name=name,
                legendgroup=str(run), showlegend=run not in in_legend, line={"color": colours[run], "width": 2},
                hovertemplate=f"{name}<br>τ %{{x:.2f}}: %{{y:.4f}}<extra>{plotly_text(rank)}</extra>",
            ), row=1, col=col)
            in_legend.add(run)
        fig.update_xaxes(title_text="τ (confidence)", row=1, col=col)
    # the legend (one entry per run, long labels) goes under the panels: above them it wraps onto the rank titles
    legend_rows = -(-len(in_legend) // THRESHOLD_LEGEND_PER_ROW)
    plot_px, below_px = 250, 60  # the panels' height; the x-axis title's band under them, above the legend
    _layout(fig, plotly_text(f"{label} vs threshold τ, per rank"), "", label if ranks else "",
            height=70 + plot_px + below_px + LEGEND_ROW_PX * legend_rows)
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[-0.02, 1.05])
    fig.update_layout(hovermode="closest", uirevision=OVERLAY_UIREVISION,
                      margin={"t": 70, "b": below_px + LEGEND_ROW_PX * legend_rows},
                      legend={"orientation": "h", "yanchor": "top", "y": -(below_px - 8) / plot_px,
                              "xanchor": "left", "x": 0.0})
    return fig


# ---------------------------------------------------------------------- sweep analyses
IMPORTANCE_COLOUR = CHAIN_COLOUR


def importance_bar(importance: pd.Series, title: str | None = None) -> go.Figure:
    """Horizontal bars of :func:`workbench.importance.param_importance`'s Series (key -> share of the
    variance, summing to 1), the most important key on top; keys shown as text (:func:`plotly_text`)."""
    s = importance.sort_values(ascending=True, kind="stable")  # plotly draws the first bar at the bottom
    keys = [plotly_text(k) for k in s.index]
    fig = go.Figure(go.Bar(
        x=s.to_numpy(dtype=float), y=keys, orientation="h", marker={"color": IMPORTANCE_COLOUR},
        text=[f"{v:.0%}" for v in s], textposition="auto", hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    objective = metric_label(str(importance.name)) if importance.name is not None else "the objective"
    _layout(fig, plotly_text(title or f"Parameter importance for {objective} (fANOVA)"), "share of variance", "",
            height=max(200, 70 + 38 * len(keys)))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(hovermode="closest", showlegend=False)
    return fig


def slice_plot(table: pd.DataFrame, params: Sequence[str], objective: str, hover: str | None = None) -> go.Figure:
    """``objective`` against each key of ``params``: one subplot per key, each run a point, the mean of
    ``objective`` per value of the key a line (sorted by value).

    ``table``: one row per run (rows without the objective are left out). Numeric keys get a numeric
    axis; others (text, booleans, lists) a categorical one, values as text in sorted order. ``hover``:
    a column naming each point (default: the index, e.g. the run id). Traces per key: points, then mean.
    """
    df = table[pd.to_numeric(table[objective], errors="coerce").notna()]
    params = list(params)
    fig = make_subplots(rows=1, cols=max(len(params), 1), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[plotly_text(p) for p in params] or None)
    names = (df[hover] if hover else df.index.to_series()).map(plotly_text).to_numpy()
    y = df[objective].to_numpy(dtype=float)
    for col, key in enumerate(params, start=1):
        values = df[key]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        x = values.to_numpy(dtype=float) if numeric else _comparable(values).astype(str).map(plotly_text).to_numpy()
        mean = pd.Series(y).groupby(x).mean()  # sorted by value (numbers, or text)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers", name="runs", legendgroup="runs", showlegend=col == 1, text=names,
            marker={"color": CHAIN_COLOUR, "size": 8, "opacity": 0.7},
            hovertemplate="%{text}<br>%{x}: %{y:.4f}<extra></extra>",
        ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=mean.index.to_numpy(), y=mean.to_numpy(dtype=float), mode="lines+markers", name="mean per value",
            legendgroup="mean", showlegend=col == 1, line={"color": PARTIAL_COLOUR, "width": 2},
            hovertemplate="%{x}: mean %{y:.4f}<extra></extra>",
        ), row=1, col=col)
        if not numeric:
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(mean.index), row=1, col=col)
    label = metric_label(objective)
    _layout(fig, plotly_text(f"{label} against each swept key"), "", plotly_text(label), height=380)
    fig.update_layout(hovermode="closest")
    return fig


# ---------------------------------------------------------------------- run tables
# config sections worth comparing runs on, and keys never worth it (paths, devices, the parent's id)
CONFIG_SECTIONS = ("DATA", "MODEL", "LOSS", "TRAIN", "SCHEDULE", "AUG")
SKIP_PREFIXES = ("TRACKING.", "DATA.PATH", "DATA.ROOT", "TRAIN.INIT_FROM", *N.RESULT_NEUTRAL_KEYS)


def _comparable(values: pd.Series) -> pd.Series:
    """Lists and dicts (``MODEL.HIDDEN``) as text, so they compare and group like scalars."""
    return values.map(lambda v: str(v) if isinstance(v, (list, dict)) else v)


def config_keys(frame: pd.DataFrame) -> list[str]:
    """The flattened config columns (``LOSS.W``, ...) of a run table worth comparing on."""
    return [c for c in frame.columns if "." in str(c) and str(c).split(".")[0] in CONFIG_SECTIONS
            and not str(c).startswith(SKIP_PREFIXES)]


def varying_config_keys(frame: pd.DataFrame) -> list[str]:
    """Config columns (``LOSS.W``, ...) whose value differs between the rows of ``frame``."""
    return [c for c in config_keys(frame) if _comparable(frame[c]).nunique(dropna=False) > 1]


def varying_within_groups(runs: pd.DataFrame, group_by: str | Sequence[str]) -> list[str]:
    """Keys that differ between runs of the SAME group when ``runs`` (one row per run, config flattened)
    is grouped by ``group_by``: other config keys, and ``status`` (a stopped run averaged with finished ones).

    Empty when every group is homogeneous apart from ``group_by`` (the mean over a group is then a
    mean over seeds, say, only if ``TRAIN.SEED`` is the one key listed).
    """
    cols = [group_by] if isinstance(group_by, str) else list(group_by)
    candidates = [c for c in [*config_keys(runs), "status"] if c in runs and c not in cols]
    if runs.empty or not candidates:
        return []
    keyed = runs[cols].apply(_comparable)
    out = []
    for col in candidates:
        values = _comparable(runs[col]).astype(str)  # NaN (a key one run lacks) counts as a value
        if values.groupby([keyed[c] for c in cols], dropna=False).nunique().gt(1).any():
            out.append(col)
    return out


def lineage_offsets(runs: pd.DataFrame) -> dict[str, int]:
    """Run id -> epochs trained by its ancestors (``parent_id`` chain, each ancestor's ``epochs_done``).

    A phase-2 run's epoch ``e`` continues its parent's at ``offset + e``; a run without a parent (or
    whose parent is not in ``runs``) gets 0. ``runs`` needs columns ``id, parent_id, epochs_done``.
    """
    parent = {r: p for r, p in zip(runs["id"], runs["parent_id"]) if isinstance(p, str) and p}
    done = {r: int(d or 0) for r, d in zip(runs["id"], runs["epochs_done"])}
    offsets: dict[str, int] = {}
    for run_id in runs["id"]:
        total, seen, node = 0, {run_id}, run_id
        while node in parent and parent[node] in done and parent[node] not in seen:  # a cycle would loop
            node = parent[node]
            seen.add(node)
            total += done[node]
        offsets[run_id] = total
    return offsets


BEST_TAU_BY = ("accuracy", "micro_f1")  # the trainer picks tau by null-aware accuracy (micro-F1 for a BCE rank)


def best_tau_table(curves: pd.DataFrame, ranks: Sequence[str] | None = None) -> pd.DataFrame:
    """Per rank, the best threshold of one epoch's curves and every curve's value there.

    ``curves``: ``RunStore.curves`` (the last epoch is used when there are several). Per rank the
    curve maximised is the first of :data:`BEST_TAU_BY` it has; NaN never wins and ties go to the
    smallest ``tau`` (as :func:`workbench.metrics.best_thresholds`). Columns: ``rank``, ``by``,
    ``tau``, then one column per curve (``accuracy``, ``coverage``, ``selective_accuracy``, ...).
    ``ranks``: the run's ranks in order (``RunStore.run_ranks``); None: the frame's row order.
    """
    if "epoch" in curves and curves["epoch"].nunique() > 1:
        curves = curves[curves["epoch"] == curves["epoch"].max()]
    ranks = list(ranks) if ranks is not None else list(dict.fromkeys(curves["rank"]))
    names = list(dict.fromkeys(curves["curve"]))
    rows = []
    for rank in ranks:
        sub = curves[curves["rank"] == rank]
        by = next((b for b in BEST_TAU_BY if (sub["curve"] == b).any()), None)
        if by is None:
            continue
        c = sub[sub["curve"] == by].sort_values("tau", kind="stable")
        i = int(np.argmax(np.nan_to_num(c["value"].to_numpy(dtype=float), nan=-np.inf)))
        tau = float(c["tau"].iloc[i])
        at = sub[np.isclose(sub["tau"].to_numpy(dtype=float), tau)].drop_duplicates("curve").set_index("curve")["value"]
        rows.append({"rank": rank, "by": by, "tau": tau, **{n: float(at.get(n, np.nan)) for n in names}})
    return pd.DataFrame(rows, columns=["rank", "by", "tau", *names])


def final_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Last epoch's value of every key per run: index ``run_id``, one column per key
    (:func:`workbench.summaries.metric_values` with ``how="last"``: the one definition of "final")."""
    from workbench.summaries import metric_values

    if metrics.empty:
        return pd.DataFrame()
    return metric_values(metrics, "last")


def parallel_coords(
    table: pd.DataFrame, dimensions: Sequence[str], color: str | None = None, labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """Parallel coordinates of runs (one row each): config columns and final metrics.

    Numeric columns are plotted as they are; other columns (``MODEL.HEAD``, booleans) become
    categorical axes (sorted categories as tick labels). ``color`` colours lines by a numeric column;
    ``labels`` renames axes (default: the column names).
    """
    labels = dict(labels or {})
    dims = []
    for col in dimensions:
        values = table[col]
        label = labels.get(col, col)
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            cats = sorted(values.astype(str).unique())
            codes = values.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float)
            dims.append({"label": label, "values": codes, "tickvals": list(range(len(cats))), "ticktext": cats})
        else:
            dims.append({"label": label, "values": values.to_numpy(dtype=float)})
    line = {}
    if color is not None and color in table:
        line = {"color": table[color].to_numpy(dtype=float), "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": METRIC_LABELS.get(color, color), "side": "right"}}}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line, labelangle=-20, labelside="top",
                                 labelfont={"size": 12}, tickfont={"size": 10}))
    fig.update_layout(height=440, margin={"l": 60, "r": 70, "t": 90, "b": 30}, template="plotly_white")
    return fig


def config_scatter(
    table: pd.DataFrame, x: str, y: str, color: str | None = None, hover: str | None = None,
) -> go.Figure:
    """One point per run: final metric ``y`` against config key ``x``, plus the mean of ``y`` per ``x``.

    ``color`` splits the points (and means) into one trace per value of that column (e.g. seeds
    pooled, coloured by ``MODEL.HEAD``); ``hover`` names each point (e.g. the run name). Traces: per
    group, the points then the mean line (``groupby(x)[y].mean()``, sorted by ``x``).
    """
    df = table.dropna(subset=[y]).copy()
    groups = [(None, df)] if color is None else list(df.groupby(color, sort=True, dropna=False))
    fig = go.Figure()
    for i, (value, g) in enumerate(groups):
        colour = PALETTE[i % len(PALETTE)]
        name = y if value is None else f"{color}={value}"
        fig.add_trace(go.Scatter(
            x=g[x].to_numpy(), y=g[y].to_numpy(dtype=float), mode="markers", name=name, legendgroup=name,
            marker={"color": colour, "size": 9, "opacity": 0.75, "line": {"width": 1, "color": "white"}},
            text=None if hover is None else g[hover].astype(str).to_numpy(),
            hovertemplate=("%{text}<br>" if hover else "") + f"{x}=%{{x}}<br>{y}=%{{y:.4f}}<extra></extra>",
        ))
        mean = g.groupby(x, sort=True)[y].mean()
        fig.add_trace(go.Scatter(
            x=mean.index.to_numpy(), y=mean.to_numpy(dtype=float), mode="lines", name=f"{name} mean",
            legendgroup=name, showlegend=False, line={"color": colour, "width": 2, "dash": "dot"},
            hovertemplate=f"mean {y}=%{{y:.4f}}<extra></extra>",
        ))
    _layout(fig, f"{METRIC_LABELS.get(y, y)} vs {x} (one point per run; dotted: mean)", x, y, height=400)
    fig.update_layout(hovermode="closest")
    return fig


# ---------------------------------------------------------------------- data
def taxonomy_frame(dataset) -> pd.DataFrame:
    """Sunburst nodes of a :class:`HierarchicalDataset`: ``id, parent, label, rank, count``.

    A node is a label path from the coarsest rank down (``level0=c0 / level1=c0.1``); a sample counts
    in every node along its path, which stops at its first null rank. Samples null at the coarsest
    rank form one ``(null)`` root.
    """
    tax = dataset.taxonomy
    y = dataset.targets.numpy()  # (N, R)
    rows = []
    for r, rank in enumerate(tax.ranks):
        # rank 0: every sample (class 0 = the "(null)" root); rank r: samples labelled at ranks 0..r
        sel = np.ones(len(y), bool) if r == 0 else np.all(y[:, : r + 1] != 0, axis=1)
        paths, counts = np.unique(y[sel, : r + 1], axis=0, return_counts=True)
        for path, count in zip(paths, counts):
            ids = "/".join(str(c) for c in path)
            parent = "/".join(str(c) for c in path[:-1])
            name = tax.vocab[r][path[-1]]
            rows.append({"id": f"{r}:{ids}", "parent": f"{r - 1}:{parent}" if r else "",
                         "label": "(null)" if name is None else str(name), "rank": rank, "count": int(count)})
    return pd.DataFrame(rows, columns=["id", "parent", "label", "rank", "count"])


def taxonomy_sunburst(dataset) -> go.Figure:
    """Sunburst of the label tree, sized by samples; a gap under a node = samples null below it."""
    nodes = taxonomy_frame(dataset)
    fig = go.Figure(go.Sunburst(
        ids=nodes["id"], parents=nodes["parent"], labels=nodes["label"], values=nodes["count"],
        branchvalues="total", customdata=nodes["rank"],
        hovertemplate="%{customdata}: <b>%{label}</b><br>%{value} samples<br>%{percentRoot:.1%} of all<extra></extra>",
        insidetextorientation="radial", maxdepth=len(dataset.taxonomy.ranks),
    ))
    fig.update_layout(height=480, margin={"l": 5, "r": 5, "t": 40, "b": 5},
                      title={"text": f"Taxonomy ({' > '.join(dataset.taxonomy.ranks)})", "x": 0.0, "font": {"size": 15}})
    return fig


def class_counts(counts: pd.DataFrame, rank: str, top: int | None = 60) -> go.Figure:
    """Bar chart of ``HierarchicalDataset.class_counts(rank)`` (null bar grey), largest first."""
    df = counts.copy()
    df["label"] = df["class"].map(lambda c: "(null)" if c is None or c != c else str(c))
    df = df.sort_values("count", ascending=False, kind="stable")
    shown = df.head(top) if top else df
    colours = [NULL_COLOUR if lab == "(null)" else CHAIN_COLOUR for lab in shown["label"]]
    fig = go.Figure(go.Bar(x=shown["label"], y=shown["count"], marker_color=colours,
                           hovertemplate="%{x}: %{y} samples<extra></extra>"))
    more = f" (top {top} of {len(df)})" if top and len(df) > top else ""
    _layout(fig, f"Samples per class at {rank}{more}", rank, "samples", height=340)
    fig.update_layout(hovermode="closest", showlegend=False)
    return fig


CLASS_BAR_PX = 22  # height of one class's bar in :func:`class_count_bars`
CLASS_BARS_MIN_HEIGHT = 280  # px: a rank with a few classes still gets a readable plot area
CLASS_BARS_MARGIN_PX = 110  # px: title and axis above and below the bars


def class_count_bars(counts: pd.DataFrame, rank: str, log_x: bool = False, top: int | None = 60) -> go.Figure:
    """Horizontal bars of ``HierarchicalDataset.class_counts(rank)``, largest on top, null bar grey.

    Long class names (ratdat's species binomials) read along the y axis instead of being rotated
    under the plot, and the figure is as tall as its bars need (:data:`CLASS_BAR_PX` per class,
    at least :data:`CLASS_BARS_MIN_HEIGHT`), so the plot area never shrinks to a sliver. ``log_x``
    puts the counts on a log axis, where a class of 10 samples stays visible beside one of 10,000.
    ``top`` keeps the largest classes only (the title says how many were left out).
    """
    df = counts.copy()
    df["label"] = df["class"].map(lambda c: "(null)" if c is None or c != c else str(c))
    df = df.sort_values("count", ascending=False, kind="stable")
    shown = df.head(top) if top else df
    if log_x:  # a bar of 0 has no place on a log axis
        shown = shown[shown["count"] > 0]
    colours = [NULL_COLOUR if lab == "(null)" else CHAIN_COLOUR for lab in shown["label"]]
    fig = go.Figure(go.Bar(
        x=shown["count"], y=shown["label"], orientation="h", marker_color=colours,
        text=[f"{c:,}" for c in shown["count"]], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:,} samples<extra></extra>",
    ))
    more = f" (top {top} of {len(df)})" if top and len(df) > top else ""
    height = max(CLASS_BARS_MIN_HEIGHT, CLASS_BAR_PX * len(shown) + CLASS_BARS_MARGIN_PX)
    _layout(fig, f"Samples per class at {rank}{more}", "samples" + (" (log scale)" if log_x else ""), rank,
            height=height)
    fig.update_layout(hovermode="closest", showlegend=False, margin={"t": 60, "r": 50})
    fig.update_xaxes(type="log" if log_x else "linear", rangemode="tozero" if not log_x else "normal")
    # largest first from the top; every class name shown (no tick thinning)
    fig.update_yaxes(autorange="reversed", automargin=True, type="category", dtick=1)
    return fig


def set_size_histogram(valid) -> go.Figure:
    """Sets per size (real elements per set) for a set dataset's ``valid (N, S)`` mask (True = real element).

    One bar per size from 0 to the padded width ``S``, so a size with no set shows as a gap and sets with
    no real element (size 0, what an inverted mask gives) are visible at once.
    """
    mask = np.asarray(valid, dtype=bool)  # (N, S); a torch tensor converts without a copy
    sizes, width = mask.sum(axis=1), mask.shape[1]  # (N,)
    counts = np.bincount(sizes.astype(np.int64), minlength=width + 1)  # (S + 1,) sets of size 0..S
    fig = go.Figure(go.Bar(x=list(range(len(counts))), y=counts.tolist(), marker_color=CHAIN_COLOUR,
                           hovertemplate="%{y:,} sets of %{x} element(s)<extra></extra>"))
    _layout(fig, f"Set sizes ({len(sizes):,} sets, padded to {width})", "elements per set", "sets")
    fig.update_layout(hovermode="closest", showlegend=False, bargap=0.1)
    fig.update_xaxes(dtick=1 if width <= 30 else None)
    return fig


THUMBS_PER_CLASS = 8  # images per class row in :func:`thumbnail_grid`
THUMB_MAX_CLASSES = 30  # class rows shown at most (the largest classes; the title says how many were left out)
THUMB_GUTTER_PX = 2  # white gap between thumbnails, in source pixels
THUMB_ROW_PX = 64  # displayed height of one class row


def thumbnail_grid(dataset, rank: str, per_class: int = THUMBS_PER_CLASS, max_classes: int = THUMB_MAX_CLASSES,
                   seed: int = 0) -> go.Figure:
    """Up to ``per_class`` images of each class at ``rank`` of an image dataset, one row per class.

    The rows are composed into one RGB picture, drawn as a single ``go.Image`` (one PNG, not one trace
    per thumbnail: a grid of 30 x 8 images renders as fast as one chart); the y axis names each row's
    class, with its sample count. Samples whose label stops above ``rank`` form a ``(null)`` row (the
    partial labels). Which images are shown is fixed by ``seed``. ``dataset.features`` are
    ``uint8 (N, C, H, W)`` with C = 1 (grey) or 3 (RGB).
    """
    import base64
    import io

    import torch
    from PIL import Image

    x = dataset.features
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"thumbnail_grid needs images (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    r = list(dataset.taxonomy.ranks).index(rank)
    y = dataset.targets[:, r].numpy()  # (N,)
    classes, counts = np.unique(y, return_counts=True)
    order = sorted(zip(classes, counts), key=lambda cc: (cc[0] == 0, -cc[1], cc[0]))  # largest first, null last
    shown = order[:max_classes]
    rng = np.random.default_rng(seed)
    _, c, h, w = x.shape
    g = THUMB_GUTTER_PX
    canvas = np.full((len(shown) * (h + g) - g, per_class * (w + g) - g, 3), 255, np.uint8)  # (H', W', 3)
    labels = []
    for row, (cls, count) in enumerate(shown):
        idx = np.flatnonzero(y == cls)
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        tiles = x[torch.from_numpy(pick.astype(np.int64))]  # (k, C, H, W)
        if tiles.dtype.is_floating_point:  # normalised to [0, 1]
            tiles = (tiles.clamp(0, 1) * 255).round()
        tiles = tiles.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (k, H, W, C)
        if c == 1:
            tiles = np.repeat(tiles, 3, axis=3)
        for col, tile in enumerate(tiles):
            canvas[row * (h + g): row * (h + g) + h, col * (w + g): col * (w + g) + w] = tile
        name = dataset.taxonomy.vocab[r][int(cls)]
        labels.append(f"{'(null)' if cls == 0 or name is None else name} ({int(count):,})")
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    source = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    fig = go.Figure(go.Image(source=source, hoverinfo="skip"))
    more = f", the {max_classes} largest of {len(order)} classes" if len(order) > max_classes else ""
    fig.update_layout(
        height=max(THUMB_ROW_PX * len(shown) + 70, 200), margin={"l": 10, "r": 10, "t": 45, "b": 10},
        template="plotly_white", hovermode=False,
        title={"text": f"Up to {per_class} images per class at {rank}{more}", "x": 0.0, "font": {"size": 15}},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(tickmode="array", tickvals=[row * (h + g) + h / 2 for row in range(len(shown))],
                     ticktext=labels, showgrid=False, zeroline=False, ticks="")
    return fig


# ---------------------------------------------------------------------- evaluation of one run (val vs test, confusions)
NULL_LABEL = "(null)"  # how a null class (class 0) is named in the evaluation tables and the confusion matrix
MAX_CONFUSION_CLASSES = 50  # a rank with more real classes gets the top-confusions list only, no heatmap
TOP_CONFUSIONS = 20  # rows of :func:`top_confusions` by default
# whole-split metrics (<split>/<kind>) in the order the test table lists them; others follow by name
_WHOLE_SPLIT_ORDER = (N.HF, N.HP, N.HR, *(N.hdist(k) for k in N.HDIST_K), "consistency", "severity")


def _whole_split_order(key: str) -> tuple:
    kind = key.split("/", 1)[1]
    return (_WHOLE_SPLIT_ORDER.index(kind) if kind in _WHOLE_SPLIT_ORDER else len(_WHOLE_SPLIT_ORDER), key)


def val_key_of(test_key: str) -> str:
    """The val key a test key mirrors: ``core/test_loss`` -> ``core/val_loss``, ``test/acc/genus`` ->
    ``val/acc/genus``; the val-chosen threshold ``test/tau/<rank>`` -> ``val/best_tau/<rank>``."""
    parts = str(test_key).split("/")
    if parts[0] == "core" and len(parts) == 2 and parts[1].startswith("test_"):
        return N.core_key("val", parts[1][len("test_"):])
    if parts[0] != "test":
        raise ValueError(f"{test_key!r} is not a test metric key (expected core/test_... or test/...)")
    if len(parts) == 3 and parts[1] == N.TAU:
        return N.best_tau(parts[2])
    return "/".join(["val", *parts[1:]])


def _split_free_label(val_key: str) -> str:
    """``val/acc/genus`` -> ``accuracy: genus``, ``core/val_chain_acc`` -> ``chain acc``: the metric, not the split."""
    label = metric_label(val_key)
    parts = val_key.split("/")
    if label == val_key and len(parts) == 3:  # a kind metric_label does not name (top5, ece, ...)
        return f"{parts[1]}: {parts[2]}"
    return label[len("val "):] if label.startswith("val ") else label


_AT_TAU_KINDS = (N.TAU, N.COVERAGE_AT_TAU, N.SELECTIVE_ACCURACY_AT_TAU)  # test at the val-chosen τ: tau_on_test


def selected_vs_test(metrics: pd.DataFrame, ranks: Sequence[str], full: bool = False) -> pd.DataFrame:
    """A run's test numbers beside its val numbers at the selected epoch.

    ``metrics``: ``RunStore.metrics`` of one run (``epoch, split, key, value``). Test rows are written
    once, at the selected (0-based) epoch, so the val column is the val rows of that same epoch.
    Rows: the core metrics (partial-chain, chain, loss), then ``hF``/``hdist@1``/... when stored,
    then accuracy per rank (coarse to fine); ``full`` adds every other per-rank test key (top-k, ECE,
    AUROC, null accuracy, ...). The test-at-τ keys are :func:`tau_on_test`'s. Columns: ``metric``
    (readable), ``key`` (the test key), ``epoch`` (displayed, 1-based), ``val``, ``test``; empty (with
    those columns) when the run has no test rows.
    """
    from workbench.summaries import test_epoch

    columns = ["metric", "key", "epoch", "val", "test"]
    test = metrics[metrics["split"] == "test"]
    if test.empty:
        return pd.DataFrame(columns=columns)
    epoch = int(test_epoch(test).iloc[0])  # test rows sit at one epoch: the selected one
    test = test[test["epoch"] == epoch].set_index("key")["value"]
    val = metrics[(metrics["split"] == "val") & (metrics["epoch"] == epoch)].set_index("key")["value"]
    per_rank = [k for k in test.index if len(k.split("/")) == 3 and k.split("/")[0] == "test"]
    core = [N.core_key("test", w) for w in ("partial_chain_acc", "chain_acc", "loss")]
    whole = sorted((k for k in test.index if len(k.split("/")) == 2 and k.startswith("test/")), key=_whole_split_order)
    acc = [N.rank_key("test", N.ACC, r) for r in ranks]
    keys = [k for k in [*core, *[k for k in test.index if k.startswith("core/") and k not in core], *whole, *acc]
            if k in test.index]
    if full:
        rank_order = {r: i for i, r in enumerate(ranks)}
        rest = [k for k in per_rank if k not in keys and k.split("/")[1] not in _AT_TAU_KINDS]
        keys += sorted(rest, key=lambda k: (rank_order.get(k.split("/")[2], len(rank_order)), k))
    rows = [{"metric": _split_free_label(val_key_of(k)), "key": k, "epoch": int(display_epoch(epoch)),
             "val": float(val.get(val_key_of(k), np.nan)), "test": float(test[k])} for k in keys]
    return pd.DataFrame(rows, columns=columns)


def tau_on_test(metrics: pd.DataFrame, ranks: Sequence[str], val_curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per rank, the val-chosen threshold applied to test: ``rank, tau, val coverage, test coverage,
    val selective accuracy, test selective accuracy``.

    ``metrics``: ``RunStore.metrics`` of one run; the test values are its ``test/tau/<rank>``,
    ``test/coverage_at_tau/<rank>`` and ``test/selective_accuracy_at_tau/<rank>``. ``val_curves``:
    ``RunStore.curves`` at the selected epoch (val), for the val values at the same τ (NaN without
    them: a run that kept curves of its last epoch only). Empty when the run stored no test τ.
    """
    from workbench.summaries import test_epoch

    columns = ["rank", "tau", "val coverage", "test coverage", "val selective accuracy", "test selective accuracy"]
    test = metrics[metrics["split"] == "test"]
    if len(test):
        test = test[test["epoch"] == int(test_epoch(test).iloc[0])].set_index("key")["value"]
    else:
        test = pd.Series(dtype=float)
    rows = []
    for rank in ranks:
        tau = test.get(N.rank_key("test", N.TAU, rank))
        if tau is None or tau != tau:
            continue
        at = {}
        if val_curves is not None and len(val_curves):
            sub = val_curves[(val_curves["rank"] == rank) & np.isclose(val_curves["tau"].to_numpy(dtype=float), tau)]
            at = sub.drop_duplicates("curve").set_index("curve")["value"].to_dict()
        rows.append({"rank": rank, "tau": float(tau),
                     "val coverage": float(at.get("coverage", np.nan)),
                     "test coverage": float(test.get(N.rank_key("test", N.COVERAGE_AT_TAU, rank), np.nan)),
                     "val selective accuracy": float(at.get("selective_accuracy", np.nan)),
                     "test selective accuracy": float(test.get(N.rank_key("test", N.SELECTIVE_ACCURACY_AT_TAU, rank),
                                                               np.nan))})
    return pd.DataFrame(rows, columns=columns)


def _class_ids(names: pd.Series, taxonomy, r: int, column: str) -> np.ndarray:
    """Class names of one rank (None/NaN = null) -> class ids; a name outside the taxonomy is a ValueError."""
    index = {name: i for i, name in enumerate(taxonomy.vocab[r]) if i}
    ids = np.zeros(len(names), dtype=np.int64)
    for i, name in enumerate(names.tolist()):
        if name is None or (isinstance(name, float) and name != name):
            continue
        if name not in index:
            raise ValueError(f"predictions column {column!r}, row {i}: {name!r} is not a class of rank "
                             f"{taxonomy.ranks[r]!r} of the run's taxonomy")
        ids[i] = index[name]
    return ids


def _confusion_pairs(frame: pd.DataFrame, rank: str, taxonomy) -> tuple[np.ndarray, np.ndarray, int]:
    """``(true ids, predicted ids, rank index)`` of a predictions frame (``true/<rank>``, ``pred/<rank>``)."""
    r = taxonomy.rank_index(rank)
    for col in (f"true/{rank}", f"pred/{rank}"):
        if col not in frame:
            raise ValueError(f"predictions frame has no column {col!r} "
                             f"(columns: {', '.join(map(str, frame.columns[:12]))})")
    return (_class_ids(frame[f"true/{rank}"], taxonomy, r, f"true/{rank}"),
            _class_ids(frame[f"pred/{rank}"], taxonomy, r, f"pred/{rank}"), r)


def plotly_text(text) -> str:
    """``text`` shown literally in a plotly label: plotly reads ``<b>``, ``<a href=...>`` and ``&...;`` in
    labels as markup; escaped, a class named ``<a href=x>`` shows those characters and links nowhere."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _class_name(taxonomy, r: int, c: int) -> str:
    return NULL_LABEL if c == 0 else str(taxonomy.vocab[r][c])


def top_confusions(frame: pd.DataFrame, rank: str, taxonomy, top: int | None = TOP_CONFUSIONS) -> pd.DataFrame:
    """The most frequent mistakes at ``rank``: ``true, predicted, count, lca_height``, most frequent first.

    ``frame``: :func:`workbench.predict.run_predictions`'s (``true/<rank>``, ``pred/<rank>``: class names,
    None = null). Counted over samples labelled at ``rank`` whose prediction differs (a null prediction
    is a mistake named :data:`NULL_LABEL`), as rank accuracy counts them. ``lca_height``: the height of
    the two classes' lowest common ancestor (:meth:`Taxonomy.lca_height`: 1 = siblings, ``r + 1`` = no
    shared ancestor or a null prediction). Ties: the larger height (the worse mistake) first, then by
    names. ``top``: at most this many rows (None: all).
    """
    import torch

    y, p, r = _confusion_pairs(frame, rank, taxonomy)
    wrong = (y != 0) & (p != y)
    columns = ["true", "predicted", "count", "lca_height"]
    if not wrong.any():
        return pd.DataFrame(columns=columns).astype({"count": int, "lca_height": int})
    pairs, counts = np.unique(np.stack([y[wrong], p[wrong]], axis=1), axis=0, return_counts=True)
    heights = taxonomy.lca_height(r, torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])).numpy()
    out = pd.DataFrame({"true": [_class_name(taxonomy, r, int(c)) for c in pairs[:, 0]],
                        "predicted": [_class_name(taxonomy, r, int(c)) for c in pairs[:, 1]],
                        "count": counts.astype(int), "lca_height": heights.astype(int)})
    out = out.sort_values(["count", "lca_height", "true", "predicted"], ascending=[False, False, True, True],
                          kind="stable").reset_index(drop=True)
    return out.head(top) if top else out


def confusion_matrix(frame: pd.DataFrame, rank: str, taxonomy) -> pd.DataFrame:
    """Counts of (true, predicted) class at ``rank`` over every sample of the frame: a square frame
    over the rank's classes, :data:`NULL_LABEL` first (index: true, columns: predicted)."""
    y, p, r = _confusion_pairs(frame, rank, taxonomy)
    k = taxonomy.num_classes[r]
    counts = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    names = [_class_name(taxonomy, r, c) for c in range(k)]
    return pd.DataFrame(counts, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


def confusion_figure(frame: pd.DataFrame, rank: str, taxonomy) -> go.Figure:
    """Heatmap of :func:`confusion_matrix`: colour = share of the true class's samples (each row sums
    to 1, so a rare class reads as clearly as a common one), the cell's count in the hover and as text.

    For ranks with at most :data:`MAX_CONFUSION_CLASSES` real classes (a ``ValueError`` otherwise:
    show :func:`top_confusions` instead). A row with no sample (a class absent from the split) stays blank.
    Class names are shown as text (:func:`plotly_text`).
    """
    r = taxonomy.rank_index(rank)
    real = taxonomy.num_classes[r] - 1
    if real > MAX_CONFUSION_CLASSES:
        raise ValueError(f"rank {rank!r} has {real} classes; the confusion heatmap draws at most "
                         f"{MAX_CONFUSION_CLASSES} (use top_confusions)")
    m = confusion_matrix(frame, rank, taxonomy)
    counts = m.to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    names = [plotly_text(n) for n in m.index]
    text = [[f"{c:,}" if c else "" for c in row] for row in counts]
    fig = go.Figure(go.Heatmap(
        z=share, x=names, y=names, customdata=counts, text=text, texttemplate="%{text}" if len(names) <= 20 else None,
        colorscale="Blues", zmin=0, zmax=1, xgap=1, ygap=1, colorbar={"title": {"text": "share of<br>true class"}},
        hovertemplate=("true %{y}<br>predicted %{x}<br>%{customdata:,} samples (%{z:.1%} of the true class)"
                       "<extra></extra>"),
    ))
    side = max(360, min(900, 22 * len(names) + 160))
    _layout(fig, f"Confusion matrix at {rank} ({int(counts.sum()):,} samples)", "predicted", "true", height=side)
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_xaxes(type="category", tickangle=-45, automargin=True, dtick=1)
    fig.update_yaxes(type="category", autorange="reversed", automargin=True, dtick=1)
    return fig


PREDICTION_COLUMNS = ("sample", "true_path", "pred_path", "confidence", "correct", "severity")


def predictions_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The predictions frame as the app's table: ``sample, true_path, pred_path, confidence, correct,
    severity`` (and ``source`` when the frame has it), most confident mistakes first.

    Order: wrong predictions by confidence (highest first), then right ones by confidence (highest
    first), then samples whose correctness is unknown (no labelled rank); ties by sample. ``frame``:
    :func:`workbench.predict.run_predictions`'s, with the truth known (``correct`` present).
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"predictions frame has no column(s) {', '.join(missing)}: it needs the truth "
                         f"(a val or test split); columns: {', '.join(map(str, frame.columns[:12]))}")
    out = frame[[*PREDICTION_COLUMNS, *(["source"] if "source" in frame else [])]].copy()
    correct = out["correct"].astype(object).map(lambda v: None if pd.isna(v) else bool(v))  # NA: unknown
    group = correct.map({False: 0, True: 1}).fillna(2).astype(int)
    conf = -(out["confidence"].astype(float).fillna(-np.inf))  # highest first; no confidence: last
    order = (pd.DataFrame({"group": group, "conf": conf, "sample": out["sample"]})
             .sort_values(["group", "conf", "sample"], kind="stable").index)
    out["correct"] = correct
    return out.loc[order].reset_index(drop=True)

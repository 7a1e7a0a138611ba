"""Plotly figure builders shared by the dashboard and the notebooks.

Every builder is a pure function of DataFrames (the store's readers return them) and returns a
``plotly.graph_objects.Figure``; none reads the store or knows about Streamlit. Frames:

- ``metrics_wide``: one row per epoch (``RunStore.metrics_wide([run_id])``), columns ``epoch``
  and metric keys (``core/val_loss``, ``val/acc/<rank>``, ...);
- ``metrics long``: ``run_id, epoch, key, value`` (``RunStore.metrics``), plus any config columns
  to group by;
- ``curves``: ``epoch, rank, curve, tau, value`` (``RunStore.curves``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# one colour per meaning, everywhere: chain vs partial-chain, train vs val by dash
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC",
           "#EECA3B")
CHAIN_COLOUR, PARTIAL_COLOUR = "#4C78A8", "#F58518"
NULL_COLOUR = "#BAB0AC"
CURVE_LABELS = {
    "accuracy": "accuracy (null-aware)",
    "selective_accuracy": "selective accuracy",
    "coverage": "coverage",
    "null_false_positive_rate": "null false-positive rate",
}
METRIC_LABELS = {
    "core/train_loss": "train loss", "core/val_loss": "val loss",
    "core/train_chain_acc": "train chain acc", "core/val_chain_acc": "val chain acc",
    "core/train_partial_chain_acc": "train partial-chain acc", "core/val_partial_chain_acc": "val partial-chain acc",
    "schedule/null_inclusion_prob": "null inclusion prob",
}


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


def _epochs(df: pd.DataFrame) -> np.ndarray:
    return df["epoch"].to_numpy() if "epoch" in df else np.arange(len(df))


def _line(df: pd.DataFrame, key: str, name: str, colour: str, dash: str = "solid", **kw) -> go.Scatter:
    return go.Scatter(x=_epochs(df), y=df[key].to_numpy(dtype=float), name=name, mode="lines+markers",
                      line={"color": colour, "dash": dash, "width": 2}, marker={"size": 5}, **kw)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("epoch") if "epoch" in df and len(df) else df


# ---------------------------------------------------------------------- schedule
def schedule_preview(schedule, epochs: int, points_per_epoch: int = 20) -> go.Figure:
    """Null-label inclusion probability ``p(t)`` over training (a :class:`NullMaskSchedule`).

    Trace 0: ``p`` at fractional epochs (what each batch uses); trace 1: the mean of ``p`` over each
    epoch's batches (what the run logs as ``schedule/null_inclusion_prob``), at epochs ``0..epochs-1``.
    """
    epochs = max(int(epochs), 1)
    t = np.linspace(0.0, epochs, epochs * points_per_epoch + 1)
    p = np.array([schedule.prob(float(x)) for x in t])
    per_epoch = [float(np.mean([schedule.prob(e + b / points_per_epoch) for b in range(points_per_epoch)]))
                 for e in range(epochs)]
    fig = go.Figure([
        go.Scatter(x=t, y=p, name="p(t) per batch", mode="lines", line={"color": PARTIAL_COLOUR, "width": 2},
                   fill="tozeroy", fillcolor="rgba(245,133,24,0.12)"),
        go.Scatter(x=np.arange(epochs), y=per_epoch, name="epoch mean (logged)", mode="markers",
                   marker={"color": CHAIN_COLOUR, "size": 6}),
    ])
    _layout(fig, "Null-label inclusion probability", "epoch", "P(null label counts in loss)", height=260)
    fig.update_yaxes(range=[-0.03, 1.03])
    fig.update_xaxes(range=[0, epochs])
    return fig


# ---------------------------------------------------------------------- one run
def loss_curves(metrics_wide: pd.DataFrame, ranks: Sequence[str] = ()) -> go.Figure:
    """Total train and val loss per epoch; with ``ranks``, val loss per rank too (dotted)."""
    df = _sorted(metrics_wide)
    traces = []
    for key, name, dash in (("core/train_loss", "train loss", "dash"), ("core/val_loss", "val loss", "solid")):
        if key in df:
            traces.append(_line(df, key, name, CHAIN_COLOUR, dash))
    for i, rank in enumerate(ranks):
        key = f"val/loss/{rank}"
        if key in df:
            traces.append(_line(df, key, f"val loss {rank}", PALETTE[(i + 2) % len(PALETTE)], "dot"))
    return _layout(go.Figure(traces), "Loss (weighted hierarchical CE)", "epoch", "loss")


def chain_vs_partial(metrics_wide: pd.DataFrame) -> go.Figure:
    """Standard chain accuracy vs partial-chain accuracy, train (dashed) and val (solid), one chart.

    Chain: every rank right, a null target needs a null prediction. Partial-chain: every
    *labelled* rank right (null ranks not scored), over samples with at least one label.
    """
    df = _sorted(metrics_wide)
    spec = [
        ("core/train_chain_acc", "train chain", CHAIN_COLOUR, "dash"),
        ("core/val_chain_acc", "val chain", CHAIN_COLOUR, "solid"),
        ("core/train_partial_chain_acc", "train partial-chain", PARTIAL_COLOUR, "dash"),
        ("core/val_partial_chain_acc", "val partial-chain", PARTIAL_COLOUR, "solid"),
    ]
    traces = [_line(df, key, name, colour, dash) for key, name, colour, dash in spec if key in df]
    fig = _layout(go.Figure(traces), "Chain vs partial-chain accuracy", "epoch", "accuracy")
    fig.update_yaxes(range=[0, 1.02])
    return fig


def rank_accuracy(metrics_wide: pd.DataFrame, ranks: Sequence[str]) -> go.Figure:
    """Accuracy per rank over labelled samples: val solid, train dashed, one colour per rank."""
    df = _sorted(metrics_wide)
    traces = []
    for i, rank in enumerate(ranks):
        colour = PALETTE[i % len(PALETTE)]
        for split, dash in (("val", "solid"), ("train", "dash")):
            key = f"{split}/acc/{rank}"
            if key in df:
                traces.append(_line(df, key, f"{split} {rank}", colour, dash, legendgroup=rank))
    fig = _layout(go.Figure(traces), "Accuracy per rank (labelled samples)", "epoch", "accuracy")
    fig.update_yaxes(range=[0, 1.02])
    if len(traces) > 4:  # room for a legend that wraps in a narrow column
        fig.update_layout(margin={"t": 40 + 24 * ((len(traces) + 1) // 2)}, height=360 + 12 * len(traces))
    return fig


def threshold_curves(
    curves: pd.DataFrame, best_tau: Mapping[str, float] | None = None, marked_curve: str = "accuracy",
    ranks: Sequence[str] | None = None, curve_names: Sequence[str] | None = None,
) -> go.Figure:
    """Per-rank threshold curves of one epoch (one panel per rank), the best ``tau`` marked.

    Per rank: one trace per curve (``value`` vs ``tau``); then, for each rank in ``best_tau``, one
    marker trace at ``(tau*, marked_curve(tau*))`` plus a vertical dotted line at ``tau*``.
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


def overlay(
    metrics: pd.DataFrame, key: str, smoothing: float = 0.0, group_by: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """One metric of several runs on one chart.

    ``metrics``: long frame ``run_id, epoch, key, value`` (other keys are ignored). Each run's series
    is smoothed (:func:`smooth`). Without ``group_by``: one line per run (named by ``labels``). With
    ``group_by`` (a column of ``metrics``, e.g. ``LOSS.W`` joined from the run configs): per group,
    the mean over its runs at each epoch and a band of +- one standard deviation (pandas ``std``,
    ddof 1; no band for a single run), as three traces: upper, lower (filled), mean.
    """
    labels = dict(labels or {})
    df = metrics[metrics["key"] == key] if "key" in metrics else metrics
    df = df.sort_values(["run_id", "epoch"]).copy()
    df["smoothed"] = df.groupby("run_id", sort=False)["value"].transform(lambda s: smooth(s, smoothing))
    fig = go.Figure()
    title = METRIC_LABELS.get(key, key)
    if group_by is None:
        for i, (run_id, run) in enumerate(df.groupby("run_id", sort=False)):
            fig.add_trace(go.Scatter(
                x=run["epoch"].to_numpy(), y=run["smoothed"].to_numpy(), mode="lines", name=labels.get(run_id, run_id),
                line={"color": PALETTE[i % len(PALETTE)], "width": 2}, hovertemplate="%{y:.4f}",
            ))
    else:
        stats = df.groupby([group_by, "epoch"])["smoothed"].agg(["mean", "std", "count"]).reset_index()
        for i, (group, g) in enumerate(stats.groupby(group_by, sort=True)):
            colour = PALETTE[i % len(PALETTE)]
            rgb = tuple(int(colour[j : j + 2], 16) for j in (1, 3, 5))
            std = g["std"].fillna(0.0).to_numpy()
            mean = g["mean"].to_numpy()
            name = f"{group_by}={group}"
            fig.add_trace(go.Scatter(x=g["epoch"].to_numpy(), y=mean + std, mode="lines", line={"width": 0},
                                     showlegend=False, legendgroup=name, hoverinfo="skip", name=f"{name} +1sd"))
            fig.add_trace(go.Scatter(x=g["epoch"].to_numpy(), y=mean - std, mode="lines", line={"width": 0},
                                     fill="tonexty", fillcolor=f"rgba({rgb[0]},{rgb[1]},{rgb[2]},0.18)",
                                     showlegend=False, legendgroup=name, hoverinfo="skip", name=f"{name} -1sd"))
            n = int(g["count"].max())
            fig.add_trace(go.Scatter(x=g["epoch"].to_numpy(), y=mean, mode="lines", legendgroup=name,
                                     name=f"{name} (n={n})", line={"color": colour, "width": 2.5},
                                     hovertemplate="%{y:.4f}"))
        title += f" by {group_by} (mean ± 1 sd)"
    if smoothing:
        title += f", smoothing {smoothing:g}"
    return _layout(fig, title, "epoch", METRIC_LABELS.get(key, key), height=380)


def final_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Last epoch's value of every key per run: index ``run_id``, one column per key."""
    if metrics.empty:
        return pd.DataFrame()
    last = metrics.sort_values("epoch").groupby(["run_id", "key"])["value"].last()
    return last.unstack("key")


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

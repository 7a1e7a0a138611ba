"""Sweep results: a tidy frame from the store (same shape as ``pull_wandb``), the summary table.

Tidy frame columns: ``run, group, config (flat dict), epoch, metric, value``. The summary has one
row per swept point (e.g. per ``LOSS.W``) with mean and std over seeds of every reported metric,
at each run's *best* epoch (by ``core/val_partial_chain_acc`` by default) and at its *final* epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from workbench.config import flatten
from workbench.names import SELECT_BY_DEFAULT, VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, core_key, val_acc
from workbench.store import RunStore
from workbench.summaries import metric_values, selected_epoch

SUMMARY_METRICS_PREFIX = (val_acc(""), VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC)


def store_tidy(store: RunStore, sweep_id: str) -> pd.DataFrame:
    """The sweep's runs from the store, in ``pull_wandb``'s tidy format."""
    runs = store.runs(sweep_id=sweep_id)
    cols = ["run", "group", "config", "epoch", "metric", "value"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    configs = {r.id: flatten(store.run(r.id)["config"]) for r in runs.itertuples()}
    long = store.metrics(list(runs["id"])).rename(columns={"run_id": "run", "key": "metric"})
    long["group"] = sweep_id
    long["config"] = long["run"].map(configs)
    return long[cols].dropna(subset=["value"]).reset_index(drop=True)


def per_run_table(tidy: pd.DataFrame, group_keys: Sequence[str], select_by: str = SELECT_BY_DEFAULT) -> pd.DataFrame:
    """One row per (run, at) with ``at`` in {best, final}: the group keys and every metric.

    ``best`` is each run's selected epoch (``select_by`` best in its direction), ``final`` its last
    (both from :func:`workbench.summaries.metric_values`, the one definition of a run's value).
    """
    if tidy.empty:
        return pd.DataFrame()
    configs = tidy.drop_duplicates("run").set_index("run")["config"]
    at_epoch = {"best": selected_epoch(tidy, select_by, run="run", key="metric"),
                "final": tidy.groupby("run")["epoch"].max()}
    values = {"best": metric_values(tidy, "selected", select_by, run="run", key="metric"),
              "final": metric_values(tidy, "last", run="run", key="metric")}
    rows = []
    for run in tidy["run"].unique():
        for at in ("best", "final"):
            rec = {"run": run, "at": at, **{k: configs[run].get(k) for k in group_keys}, "epoch": at_epoch[at][run]}
            rec.update(values[at].loc[run].to_dict())
            rows.append(rec)
    return pd.DataFrame(rows)


def summarize(tidy: pd.DataFrame, group_keys: Sequence[str], select_by: str = SELECT_BY_DEFAULT) -> pd.DataFrame:
    """Mean and std over seeds per swept point, at best and final epoch.

    Columns: ``at``, the group keys, ``n`` (runs), and ``<metric> mean`` / ``<metric> std`` for
    per-rank accuracy, chain and partial-chain accuracy.
    """
    per_run = per_run_table(tidy, group_keys, select_by)
    if per_run.empty:
        return per_run
    metrics = [c for c in per_run.columns if isinstance(c, str) and c.startswith(SUMMARY_METRICS_PREFIX)]
    keys = ["at", *group_keys]
    grouped = per_run.groupby(keys, dropna=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m} {stat}" for m, stat in out.columns]
    out.insert(0, "n", grouped.size())
    return out.reset_index().sort_values(keys).reset_index(drop=True)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width text table: ``mean ± std`` per metric."""
    if summary.empty:
        return "(no results)"
    mean_cols = [c for c in summary.columns if c.endswith(" mean")]
    table = summary[[c for c in summary.columns if not c.endswith((" mean", " std"))]].copy()
    for c in mean_cols:
        name = c[: -len(" mean")].replace(core_key("val", ""), "").replace(val_acc(""), "acc ")
        std = summary[name_std(c)].fillna(0.0)
        table[name] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(summary[c], std)]
    return table.to_string(index=False)


def name_std(mean_col: str) -> str:
    return mean_col[: -len(" mean")] + " std"


def accuracy_vs_key_figure(summary: pd.DataFrame, key: str, ranks: Sequence[str]):
    """Accuracy at each rank (plus chain and partial-chain) vs ``key``: best-epoch and final-epoch panels, mean ± std."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("best epoch", "final epoch"), shared_yaxes=True)
    series = [(val_acc(r), r) for r in ranks] + [(VAL_CHAIN_ACC, "chain"), (VAL_PARTIAL_CHAIN_ACC, "partial chain")]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for col, at in enumerate(("best", "final"), start=1):
        part = summary[summary["at"] == at].sort_values(key)
        for i, (metric, label) in enumerate(series):
            if f"{metric} mean" not in part:
                continue
            fig.add_trace(go.Scatter(
                x=part[key], y=part[f"{metric} mean"], error_y={"type": "data", "array": part[f"{metric} std"].fillna(0)},
                mode="lines+markers", name=label, legendgroup=label, showlegend=col == 1,
                line={"color": palette[i % len(palette)], "dash": "dot" if "chain" in label else "solid"},
            ), row=1, col=col)
        fig.update_xaxes(title_text=key, row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy (mean ± std over seeds)", row=1, col=1)
    fig.update_layout(title=f"Accuracy at each rank vs {key}", template="plotly_white", height=450)
    return fig

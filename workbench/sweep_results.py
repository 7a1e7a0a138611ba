"""Sweep results: a tidy frame from the store (same shape as ``pull_wandb``), the summary table.

Tidy frame columns: ``run, group, config (flat dict), epoch, metric, value``. The summary has one
row per swept point (e.g. per ``LOSS.W``) and ``at`` (``best``, ``final``) with mean and std over seeds
of every reported metric:

- ``best``: at each run's *selected* epoch, chosen on val (its ``TRAIN.SELECT_BY``, by default
  ``core/val_partial_chain_acc``): the val numbers used to select and the **test** numbers, which the
  trainer evaluated once with that epoch's weights (DESIGN.md 3.5: select on val, report test);
- ``final``: at each run's last epoch, val numbers only (test exists at the selected epoch only).

When no run has test numbers (no test split, runs from before there was one), the selected-epoch rows
hold val numbers that were also used to select: the tables say so (:data:`NO_TEST_NOTE`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from workbench.config import flatten
from workbench.names import (
    ACC, SELECT_BY_DEFAULT, SELECT_BY_KEY, TEST_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC, VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC,
    core_key, rank_key, val_acc,
)
from workbench.store import RunStore
from workbench.summaries import (
    is_test_key, metric_values, run_selected_epoch, test_epoch, test_mask, values_at_epoch,
)

SUMMARY_METRICS_PREFIX = (val_acc(""), VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC)  # the val numbers summarized
TEST_METRICS_PREFIX = (rank_key("test", ACC, ""), TEST_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC)  # and their test twins
NO_TEST_NOTE = "no test split: val numbers (selection bias)"


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


def per_run_table(tidy: pd.DataFrame, group_keys: Sequence[str], select_by: str | None = None) -> pd.DataFrame:
    """One row per (run, at) with ``at`` in {best, final}: the group keys, ``epoch`` (0-based),
    ``select_by``, ``has_test`` and every metric.

    ``best`` is each run's selected epoch (:func:`workbench.summaries.run_selected_epoch`): the epoch of its
    test rows, i.e. what its trainer selected on val; for a run without test rows, where ``select_by`` (None:
    the run's own ``TRAIN.SELECT_BY``, default ``core/val_partial_chain_acc``) is best in its direction. Test
    is never read at another epoch, so a run with test rows keeps its trainer's choice whatever ``select_by``
    says. ``best`` rows hold val and test keys; ``final`` rows (the last epoch) no test keys.
    """
    if tidy.empty:
        return pd.DataFrame()
    configs = tidy.drop_duplicates("run").set_index("run")["config"]
    by = {run: select_by or (cfg or {}).get(SELECT_BY_KEY) or SELECT_BY_DEFAULT for run, cfg in configs.items()}
    at_epoch = {"best": run_selected_epoch(tidy, by, run="run", key="metric"),
                "final": tidy.groupby("run")["epoch"].max()}
    not_test = tidy[~test_mask(tidy["metric"])]
    values = {"best": values_at_epoch(tidy, at_epoch["best"], run="run", key="metric"),
              "final": metric_values(not_test, "last", run="run", key="metric")}
    tested = set(test_epoch(tidy, run="run", key="metric").index)
    rows = []
    for run in tidy["run"].unique():
        for at in ("best", "final"):
            rec = {"run": run, "at": at, **{k: configs[run].get(k) for k in group_keys}, "epoch": at_epoch[at][run],
                   "select_by": by[run], "has_test": run in tested}
            rec.update(values[at].loc[run].to_dict() if run in values[at].index else {})
            rows.append(rec)
    return pd.DataFrame(rows)


def summarize(tidy: pd.DataFrame, group_keys: Sequence[str], select_by: str | None = None) -> pd.DataFrame:
    """Mean and std over seeds per swept point, at the selected (``at == "best"``) and the final epoch.

    Columns: ``at``, the group keys, ``n`` (runs), ``n_test`` (runs with test numbers), ``select_by`` (the
    val key(s) the runs were selected by), then ``<metric> mean`` / ``<metric> std`` for the ``select_by``
    key, per-rank accuracy, chain and partial-chain accuracy on val, then the same on test (``core/test_...``,
    ``test/acc/<rank>``: at the selected epoch only, NaN in ``final`` rows; absent when no run has test
    numbers). A test mean is over the ``n_test`` runs that have one.
    """
    per_run = per_run_table(tidy, group_keys, select_by)
    if per_run.empty:
        return per_run
    columns = [c for c in per_run.columns if isinstance(c, str)]
    selectors = [c for c in dict.fromkeys(per_run["select_by"]) if c in columns]
    val = [c for c in columns if c.startswith(SUMMARY_METRICS_PREFIX) and c not in selectors]
    test = [c for c in columns if c.startswith(TEST_METRICS_PREFIX)]
    ranks = _ranks(tidy)
    metrics = [*selectors, *_ordered(val, ranks), *_ordered(test, ranks)]
    keys = ["at", *group_keys]
    grouped = per_run.groupby(keys, dropna=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m} {stat}" for m, stat in out.columns]
    out.insert(0, "select_by", grouped["select_by"].agg(lambda s: ", ".join(dict.fromkeys(s))))
    out.insert(0, "n_test", grouped["has_test"].sum().astype(int))
    out.insert(0, "n", grouped.size())
    return out.reset_index().sort_values(keys).reset_index(drop=True)


def _ranks(tidy: pd.DataFrame) -> list[str]:
    """The sweep's ranks, coarse to fine, from its first run's ``DATA.RANKS`` ([] when the config has none)."""
    ranks = (tidy["config"].iloc[0] or {}).get("DATA.RANKS") if len(tidy) else None
    return [str(r) for r in ranks] if isinstance(ranks, (list, tuple)) else []


def _ordered(keys: list[str], ranks: Sequence[str]) -> list[str]:
    """Chain, then partial chain, then the per-rank keys coarse to fine (``ranks``; keys of other ranks after
    them, in the order given)."""
    first = [k for k in keys if k.startswith("core/")]
    per_rank = [k for k in keys if k not in first]
    position = {r: i for i, r in enumerate(ranks)}
    return sorted(first, key=lambda k: "partial" in k) + sorted(
        per_rank, key=lambda k: position.get(k.rsplit("/", 1)[-1], len(position)))


def has_test(summary: pd.DataFrame) -> bool:
    """Whether any run in the summary has test numbers (else its selected-epoch rows are val numbers)."""
    return "n_test" in summary and bool((summary["n_test"] > 0).any())


def metric_label(key: str) -> str:
    """A column label that says the split first: ``core/val_partial_chain_acc`` -> ``val partial chain acc``,
    ``test/acc/genus`` -> ``test acc genus``."""
    parts = str(key).split("/")
    if parts[0] == "core" and len(parts) == 2 and "_" in parts[1]:
        split, what = parts[1].split("_", 1)
        return f"{split} {what.replace('_', ' ')}"
    return " ".join(p.replace("_", " ") for p in parts)


def report_table(summary: pd.DataFrame, at: str = "best") -> pd.DataFrame:
    """The summary's rows at ``at`` for reading: the group keys, ``runs``, then ``mean ± std`` text per metric,
    labelled by split.

    ``best`` (the selected epoch): the val key(s) used to select, then the test numbers (and ``runs with
    test`` when some runs lack them); with no test numbers at all, every val number (see :data:`NO_TEST_NOTE`).
    ``final``: every val number at the last epoch.
    """
    if summary.empty:
        return pd.DataFrame()
    part = summary[summary["at"] == at].reset_index(drop=True)
    means = [c[: -len(" mean")] for c in part.columns if str(c).endswith(" mean")]
    tests = [m for m in means if is_test_key(m)]
    if at == "best" and has_test(summary):
        selectors = list(dict.fromkeys(k for s in part["select_by"] for k in str(s).split(", ")))
        shown = [m for m in means if m in selectors] + tests
    else:
        shown = [m for m in means if not is_test_key(m)]
    fixed = [c for c in part.columns
             if c not in ("at", "n", "n_test", "select_by") and not str(c).endswith((" mean", " std"))]
    table = part[fixed].copy()
    table["runs"] = part["n"].astype(int)
    if at == "best" and tests and (part["n_test"] != part["n"]).any():
        table["runs with test"] = part["n_test"].astype(int)
    for m in shown:
        std = part[f"{m} std"].fillna(0.0)  # one seed: no spread
        table[metric_label(m)] = ["-" if mean != mean else f"{mean:.4f} ± {sd:.4f}"
                                  for mean, sd in zip(part[f"{m} mean"], std)]
    return table


def report_title(summary: pd.DataFrame, at: str = "best") -> str:
    """The heading of :func:`report_table`'s table (with :data:`NO_TEST_NOTE` when there is no test)."""
    if at != "best":
        return "final epoch: val numbers"
    by = ", ".join(dict.fromkeys(summary["select_by"])) if "select_by" in summary and len(summary) \
        else SELECT_BY_DEFAULT
    if has_test(summary):
        return f"selected epoch (chosen on val by {by}); test numbers at that epoch"
    return f"selected epoch (chosen on val by {by}); {NO_TEST_NOTE}"


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as fixed-width text: the selected-epoch table (select on val, report test), then the
    final-epoch one; ``mean ± std`` per metric."""
    if summary.empty:
        return "(no results)"
    blocks = []
    for at in ("best", "final"):
        table = report_table(summary, at)
        if not table.empty:
            blocks.append(f"{report_title(summary, at)}:\n{table.to_string(index=False)}")
    return "\n".join(blocks)


def name_std(mean_col: str) -> str:
    return mean_col[: -len(" mean")] + " std"


def with_store_test_rows(tidy: pd.DataFrame, store: RunStore, sweep_id: str) -> pd.DataFrame:
    """``tidy`` (pulled from W&B) plus the store's test rows of the runs that ``tidy`` has none for.

    W&B keeps the once-evaluated test numbers in the run summary, not the history; ``pull_wandb`` reads them
    back from there, but a W&B run without them (logged before test existed, a summary write that failed)
    would make its sweep look untested. The store always has them: the sweep's driver writes every trial's
    record there. Runs whose pull has test rows are left as pulled."""
    if tidy.empty:
        return tidy
    stored = store_tidy(store, sweep_id)
    stored = stored[test_mask(stored["metric"]) & stored["run"].isin(set(tidy["run"]))]
    have = set(tidy.loc[test_mask(tidy["metric"]), "run"])
    extra = stored[~stored["run"].isin(have)]
    if extra.empty:
        return tidy
    first = tidy.drop_duplicates("run").set_index("run")  # each run's group and config as pulled, like its other rows
    extra = extra.assign(group=extra["run"].map(first["group"]), config=extra["run"].map(first["config"]))
    return pd.concat([tidy, extra[tidy.columns]], ignore_index=True)


def accuracy_vs_key_figure(summary: pd.DataFrame, key: str, ranks: Sequence[str]):
    """Accuracy at each rank (plus chain and partial-chain) vs ``key``, mean ± std over seeds: the selected
    epoch's test numbers (val ones, titled as such, when there is no test split) and the final epoch's val."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    test = has_test(summary)
    left = "selected epoch: test" if test else f"selected epoch: val ({NO_TEST_NOTE.split(': ')[0]}: selection bias)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(left, "final epoch: val"), shared_yaxes=True)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for col, at in enumerate(("best", "final"), start=1):
        split = "test" if test and at == "best" else "val"
        series = [(rank_key(split, ACC, r), r) for r in ranks] + [
            (core_key(split, "chain_acc"), "chain"), (core_key(split, "partial_chain_acc"), "partial chain")]
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
    fig.update_yaxes(title_text="accuracy (mean ± std over seeds)", row=1, col=1)
    fig.update_layout(title=f"Accuracy at each rank vs {key}", template="plotly_white", height=450)
    return fig

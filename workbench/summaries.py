"""The value of a metric for a run: the one function that answers "final", "best" and "selected".

Everything that shows one number per run and metric (the CLI's run table and ``runs --json``, the
Runs and Sweeps pages, the sweep results table) calls :func:`metric_values`, so "the final value of a
run" means the same thing everywhere. Pure pandas; no store, torch or plotting.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from workbench.names import SELECT_BY_DEFAULT, direction

HOWS = ("last", "best", "min", "max", "selected")


def metric_values(
    metrics_long: pd.DataFrame, how: str = "last", select_by: str = SELECT_BY_DEFAULT, keys: Iterable[str] | None = None,
    run: str = "run_id", key: str = "key",
) -> pd.DataFrame:
    """One value per (run, metric key) from a long frame of ``run, epoch, key, value`` rows.

    ``how``:

    - ``"last"``: the value at the latest epoch the run logged that key (NaN stays NaN: a metric that was
      undefined at the end, such as partial-chain accuracy with no labelled sample, is not replaced by an
      earlier value);
    - ``"best"``: the best finite value over epochs in the metric's direction (:func:`workbench.names.direction`:
      max for accuracies, min for losses, severity, hdist, ECE, time);
    - ``"min"`` / ``"max"``: the smallest / largest finite value over epochs;
    - ``"selected"``: every key's value at the run's selected epoch, the epoch where ``select_by`` is best in
      its direction (the first such epoch on ties). A run with no finite ``select_by`` value has no selected
      epoch: its last epoch is used.

    ``run`` and ``key`` name the frame's run and metric columns (``run_id`` / ``key`` in the store's frame,
    ``run`` / ``metric`` in :func:`workbench.tracking.pull_wandb`'s tidy frame). Returns a frame indexed by
    run (index named ``run``'s column), one column per key; empty when the input is.
    """
    if how not in HOWS:
        raise ValueError(f"`how` must be one of {', '.join(HOWS)}, got {how!r}")
    missing = [c for c in (run, "epoch", key, "value") if c not in metrics_long.columns]
    if missing:
        raise ValueError(f"metric_values needs columns {run}, epoch, {key}, value; missing {', '.join(missing)}")
    frame = metrics_long[[run, "epoch", key, "value"]]
    if keys is not None:
        wanted = list(keys)
        frame = frame[frame[key].isin(wanted + ([select_by] if how == "selected" else []))]
    if frame.empty:
        return pd.DataFrame(index=pd.Index([], name=run))
    frame = frame.assign(value=frame["value"].astype(float)).sort_values([run, "epoch"], kind="stable")
    if how == "last":
        out = frame.groupby([run, key], sort=False).tail(1).pivot(index=run, columns=key, values="value")
    elif how == "selected":
        out = _at_selected_epoch(frame, select_by, run, key)
        if keys is not None:
            out = out[[k for k in wanted if k in out.columns]]
    else:
        finite = frame.dropna(subset=["value"])
        grouped = finite.groupby([run, key])["value"]
        if how in ("min", "max"):
            out = getattr(grouped, how)().unstack(key)
        else:
            lo, hi = grouped.min().unstack(key), grouped.max().unstack(key)
            out = hi.copy()
            for column in out.columns:
                if direction(column) == "min":
                    out[column] = lo[column]
        out = out.reindex(frame[run].unique())  # runs whose every value is NaN keep a (NaN) row
    out = out.rename_axis(index=run, columns=None)
    return out


def _at_selected_epoch(frame: pd.DataFrame, select_by: str, run: str, key: str) -> pd.DataFrame:
    """Every key's value at each run's selected epoch (see :func:`metric_values`)."""
    chosen = selected_epoch(frame, select_by, run, key)
    at = frame[frame["epoch"].to_numpy() == frame[run].map(chosen).to_numpy()]
    # (run, epoch, key) is unique in a run's record: pivot, never an aggregate that would hide a duplicate
    return at.pivot(index=run, columns=key, values="value").reindex(frame[run].unique())


def selected_epoch(metrics_long: pd.DataFrame, select_by: str = SELECT_BY_DEFAULT, run: str = "run_id",
                   key: str = "key") -> pd.Series:
    """Each run's selected epoch (where ``select_by`` is best; the last epoch when it never is finite)."""
    frame = metrics_long[[run, "epoch", key, "value"]].assign(value=lambda f: f["value"].astype(float))
    sel = frame[frame[key] == select_by].dropna(subset=["value"])
    ascending = direction(select_by) == "min"
    best = sel.sort_values([run, "value", "epoch"], ascending=[True, ascending, True], kind="stable")
    chosen = frame.groupby(run)["epoch"].max()
    first = best.groupby(run)["epoch"].first()
    chosen.loc[first.index] = first
    return chosen

"""The value of a metric for a run: the one function that answers "final", "best" and "selected".

Everything that shows one number per run and metric (the CLI's run table and ``runs --json``, the
Runs and Sweeps pages, the sweep results table) calls :func:`metric_values`, so "the final value of a
run" means the same thing everywhere; a run's test numbers are read by :func:`test_values` and the
epoch they belong to by :func:`run_selected_epoch`. Pure pandas; no store access, torch or plotting.

Test is evaluated once per run (DESIGN.md 3.5), at the epoch selected on val: its rows (split ``test``)
sit at that one epoch. Nothing here selects on them: "best", "min" and "max" leave test keys out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from workbench.names import SELECT_BY_DEFAULT, SUMMARY_HOWS, direction
from workbench.store import metric_split  # the one home of "which split is this key" (a pure function)

HOWS = SUMMARY_HOWS  # one home: workbench.names
EXTREMES = ("best", "min", "max")  # the hows that pick a value over epochs: never applied to test keys
TEST_SPLIT = "test"


def is_test_key(key: str) -> bool:
    """True for a test metric (``core/test_loss``, ``test/acc/genus``): split ``test`` in the store."""
    return metric_split(str(key)) == TEST_SPLIT


def test_mask(keys: pd.Series) -> pd.Series:
    """:func:`is_test_key` of every key in a column (bool Series, same index); each distinct key is looked at once."""
    return keys.isin([k for k in keys.unique() if is_test_key(k)])


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
    - test keys (:func:`is_test_key`) are left out of ``"best"``, ``"min"`` and ``"max"``: an extreme over
      epochs of a test metric would be a selection on test. Asking for one in ``keys`` is an error; read
      test numbers with :func:`test_values`. ``"last"`` and ``"selected"`` keep them (the value at that
      epoch: test rows exist at the selected epoch only);
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
        if how in EXTREMES and any(is_test_key(k) for k in wanted):
            raise ValueError(f"`how={how!r}` over epochs would select on test (keys "
                             f"{', '.join(k for k in wanted if is_test_key(k))}); test is evaluated once: "
                             "read it with test_values")
        frame = frame[frame[key].isin(wanted + ([select_by] if how == "selected" else []))]
    if how in EXTREMES:
        frame = frame[~test_mask(frame[key])]
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
    return values_at_epoch(frame, selected_epoch(frame, select_by, run, key), run, key)


def values_at_epoch(metrics_long: pd.DataFrame, epochs: pd.Series, run: str = "run_id",
                    key: str = "key") -> pd.DataFrame:
    """Every key's value at one epoch per run (``epochs``: run -> epoch): index run, one column per key;
    a run missing from ``epochs`` has a row of NaN."""
    frame = metrics_long[[run, "epoch", key, "value"]].assign(value=lambda f: f["value"].astype(float))
    at = frame[frame["epoch"].to_numpy() == frame[run].map(epochs).to_numpy()]
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


def test_values(metrics_long: pd.DataFrame, run: str = "run_id", key: str = "key") -> pd.DataFrame:
    """Each run's test numbers: index run (only runs with test rows), one column per test key.

    Test is evaluated once, at the epoch the run selected on val, so a run's test rows share one epoch
    (:func:`test_epoch`); should a run hold test rows at several epochs (a run resumed after its test
    was written, whose selection then moved on), the latest epoch is its current selection's: selection
    keeps the best so far, so it only moves forward. NaN stays NaN. Empty (no rows, no columns) when no
    run has a test row.
    """
    tests = _test_rows(metrics_long, run, key)
    if tests.empty:
        return pd.DataFrame(index=pd.Index([], name=run))
    return values_at_epoch(tests, test_epoch(tests, run, key), run, key).rename_axis(index=run, columns=None)


def test_epoch(metrics_long: pd.DataFrame, run: str = "run_id", key: str = "key") -> pd.Series:
    """Each run's test epoch (0-based, as the store counts): the epoch its trainer selected on val and
    evaluated test at. Only runs with test rows appear."""
    tests = _test_rows(metrics_long, run, key)
    return tests.groupby(run)["epoch"].max().astype(int)


def run_selected_epoch(metrics_long: pd.DataFrame, select_by: str | Mapping[str, str] = SELECT_BY_DEFAULT,
                       run: str = "run_id", key: str = "key") -> pd.Series:
    """Each run's selected epoch (0-based): the epoch of its test rows, which is what its trainer selected
    (by its own ``TRAIN.SELECT_BY``, on val) and kept in ``best.pt``; for a run without test rows (an old
    run, a failed one, no test split, one still training), :func:`selected_epoch` by ``select_by`` (one key,
    or ``{run: key}``, e.g. each run's ``TRAIN.SELECT_BY``; a run not in it: :data:`SELECT_BY_DEFAULT`)."""
    if isinstance(select_by, Mapping):
        runs_of = metrics_long[run].map(lambda r: select_by.get(r) or SELECT_BY_DEFAULT)
        parts = [selected_epoch(metrics_long[runs_of == by], by, run, key) for by in runs_of.unique()]
        chosen = pd.concat(parts) if parts else selected_epoch(metrics_long, SELECT_BY_DEFAULT, run, key)
    else:
        chosen = selected_epoch(metrics_long, select_by, run, key)
    recorded = test_epoch(metrics_long, run, key)
    chosen.loc[recorded.index] = recorded
    return chosen


def _test_rows(metrics_long: pd.DataFrame, run: str, key: str) -> pd.DataFrame:
    frame = metrics_long[[run, "epoch", key, "value"]]
    return frame[test_mask(frame[key])]


# their names start with "test_": a test module that imports them must not have pytest collect them as tests
test_values.__test__ = test_epoch.__test__ = test_mask.__test__ = False

"""The run table, config diffs and lineage: what the Runs page and ``python -m workbench runs`` show.

Pure pandas over store reads; no Streamlit, torch or plotting. :func:`run_table` is the one table of
runs that filters (:mod:`workbench.filters`), the app's run list and the CLI's ``runs`` read, with one
column per run field, flat config key and metric key (each metric summarised one way: ``last``, ``best``,
``min``, ``max`` or ``selected``, :data:`workbench.summaries.HOWS`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import pandas as pd

from workbench.names import RESULT_NEUTRAL_KEYS, SELECT_BY_DEFAULT, SELECT_BY_KEY
from workbench.summaries import HOWS, is_test_key

# The store's run columns the table keeps, in this order; ``config`` (the run's config as JSON text) rides
# along so a caller can show or diff a run's config without reading the store again.
RUN_COLUMNS = ("id", "name", "status", "created", "epochs_done", "parent_id", "sweep_id", "notes", "archived", "tags",
               "config")
ABSENT = "(absent)"  # a config key one run of a diff does not have
TRACKING_PREFIX = "TRACKING."  # where a run's results are written: differs between runs, never changes a result


def run_table(store, how: str = "last", keys: Iterable[str] | None = None,
              include_archived: bool = False) -> pd.DataFrame:
    """One row per run, newest first (a plain 0..n-1 index): the store's run columns (:data:`RUN_COLUMNS`;
    ``tags`` a sorted list, ``archived`` a bool, ``notes`` text or None), one column per flat config key
    (``LOSS.W``; missing in a run: None / NaN), and one column per metric key summarised by ``how``.

    The metric values come from :meth:`RunStore.metric_summary` (the store's per-run summaries, never every
    metric row), so they equal :func:`workbench.summaries.metric_values` of the runs' rows; ``selected`` picks
    each run's epoch by its own ``TRAIN.SELECT_BY``. A test key's column holds the run's test number
    whatever ``how`` is (:func:`workbench.summaries.test_values`: test is evaluated once, at the epoch the
    trainer selected on val; nothing picks over epochs of a test key). ``keys``: only these metric columns
    (None: every key any listed run logged). Archived runs are left out unless ``include_archived``.
    """
    if how not in HOWS:
        raise ValueError(f"`how` must be one of {', '.join(HOWS)}, got {how!r}")
    runs = store.runs(with_config=True)
    hidden = 0 if include_archived or runs.empty else int(runs["archived"].sum())
    if hidden:
        runs = runs[~runs["archived"]]
    if runs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RUN_COLUMNS})
    config_columns = [c for c in runs.columns if "." in str(c)]  # flat config keys: SECTION.KEY
    table = runs[[*RUN_COLUMNS, *config_columns]].reset_index(drop=True)
    ids = list(table["id"])
    by_run = {r: by for r, by in zip(ids, table[SELECT_BY_KEY] if SELECT_BY_KEY in table else [None] * len(ids))
              if isinstance(by, str) and by}
    wanted = None if keys is None else list(dict.fromkeys(keys))
    # every run listed: read the summaries without a 2,000-id IN list (a quarter faster at that size)
    values = _summaries(store, how, wanted, ids if hidden else None, by_run)
    values = values.drop(columns=[c for c in values.columns if c in table.columns])  # never shadow a run column
    return table.join(values, on="id")


def _summaries(store, how: str, keys: list[str] | None, ids: list[str] | None,
               by_run: Mapping[str, str]) -> pd.DataFrame:
    """The metric columns of :func:`run_table`: index run id, one column per key (``ids`` None: every run)."""
    if how == "last":  # one read: a test key's rows sit at one epoch, so its last value is the test value
        return store.metric_summary("last", keys=keys, run_ids=ids)
    if keys is None:
        tests, others = [k for k in _logged_keys(store, ids) if is_test_key(k)], None
    else:
        tests, others = [k for k in keys if is_test_key(k)], [k for k in keys if not is_test_key(k)]
    parts = []
    if others != []:
        values = store.metric_summary(how, keys=others, run_ids=ids, select_by=dict(by_run) or SELECT_BY_DEFAULT)
        parts.append(values[[c for c in values.columns if not is_test_key(c)]])
    if tests:  # the run's test numbers (evaluated once, at the epoch its trainer selected), whatever `how` is
        parts.append(store.metric_summary("last", keys=tests, run_ids=ids))
    if not parts:
        return pd.DataFrame(index=pd.Index([], name="run_id"))
    return parts[0] if len(parts) == 1 else parts[0].join(parts[1], how="outer")


def _logged_keys(store, ids: list[str] | None) -> list[str]:
    """Every metric key the runs logged (from the store's summaries: one row per run and key)."""
    return sorted(store.summaries(ids)["key"].unique())


def diff_configs(configs: Mapping[str, Mapping]) -> pd.DataFrame:
    """The config keys that differ between runs: index ``key`` (flat, ``LOSS.W``), one column per run id.

    A key one run lacks counts as different and shows as :data:`ABSENT`. Cells are text (a string as
    it is; anything else as JSON: ``0.3``, ``true``, ``null``, ``["taxa", "genus"]``), so a column
    mixes no types. Keys in config order (first run first), except that keys which never change a
    result but do differ between runs (:data:`workbench.names.RESULT_NEUTRAL_KEYS`, ``TRACKING.*``)
    come last. Empty (no rows) when the configs are identical or fewer than two are given.
    """
    from workbench.config import flatten

    flat = {run: flatten(dict(config)) for run, config in configs.items()}
    order = list(dict.fromkeys(k for values in flat.values() for k in values))
    differ = [k for k in order if len(flat) > 1 and not _same([values.get(k, ABSENT) for values in flat.values()])]
    neutral = [k for k in differ if k in RESULT_NEUTRAL_KEYS or k.startswith(TRACKING_PREFIX)]
    rows = [k for k in differ if k not in neutral] + neutral
    data = {run: [_cell(values[k]) if k in values else ABSENT for k in rows] for run, values in flat.items()}
    return pd.DataFrame(data, index=pd.Index(rows, name="key"), columns=list(flat), dtype=object)


def _same(values: list) -> bool:
    """Whether every value equals the first (``1 == 1.0``; a bool is never equal to a number; ``ABSENT`` and
    None differ, since a missing key and an explicit null are different configs)."""
    return all(_equal(v, values[0]) for v in values[1:])


def _equal(a, b) -> bool:
    if (type(a) is bool) != (type(b) is bool):
        return False
    return a == b


def _cell(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def lineage(runs: pd.DataFrame, run_id: str) -> dict:
    """A run's phase-1 -> phase-2 links within ``runs`` (a frame with ``id`` and ``parent_id``, e.g. from
    :func:`run_table`): ``parent`` (the parent's id when it is in ``runs``, else None), ``children`` (ids
    of the runs whose parent it is, in ``runs``' order), ``missing_parent`` (the recorded parent id when
    that run is not in ``runs``: deleted, or archived and hidden; else None) and ``sweep_id``."""
    row = runs[runs["id"] == run_id]
    if row.empty:
        raise KeyError(f"run {run_id!r} is not in the table")
    parent = row["parent_id"].iloc[0]
    parent = parent if isinstance(parent, str) and parent else None
    known = set(runs["id"])
    sweep = row["sweep_id"].iloc[0] if "sweep_id" in row else None
    return {
        "parent": parent if parent in known else None,
        "children": [str(c) for c in runs.loc[runs["parent_id"] == run_id, "id"]],
        "missing_parent": parent if parent is not None and parent not in known else None,
        "sweep_id": sweep if isinstance(sweep, str) and sweep else None,
    }

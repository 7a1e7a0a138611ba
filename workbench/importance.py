"""Parameter importance of a sweep: how much of a metric's variance over the runs each swept key explains.

Optuna's fANOVA (:class:`optuna.importance.FanovaImportanceEvaluator`: a random forest fitted to the
runs, its variance decomposed per parameter) over an in-memory study built from a table of finished
runs, one row per run (config keys as columns, the objective as a column), so any run in the store
can be analysed whether or not Optuna chose its parameters. Needs the ``sweep`` extra (Optuna, and
scikit-learn for the forest).

Numeric keys become ``FloatDistribution`` parameters; anything else (text, booleans, lists) and the
keys in ``categorical`` (by default ``TRAIN.SEED``: a seed has no order, and its share is how much
of the metric is seed noise) become ``CategoricalDistribution`` parameters. A key with one value in
every run explains nothing and gets 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from workbench.names import SEED_KEY  # categorical here: its share reads as seed noise

DIRECTIONS = ("maximize", "minimize")
N_TREES = 64  # Optuna's default forest size


def _is_numeric(values: pd.Series) -> bool:
    """A key whose values are all real numbers (booleans are not: they are categories)."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _category(value):
    """A value Optuna accepts as a categorical choice (None, bool, int, float, str): lists and the like as text."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value if isinstance(value, str) else str(value)


def varying_params(table: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The keys of ``params`` that take more than one value over the rows of ``table`` (lists compared as text)."""
    return [p for p in params if table[p].map(_category).astype(str).nunique() > 1]


def param_importance(
    table: pd.DataFrame, params: Sequence[str], objective: str, direction: str = "maximize", seed: int = 0,
    categorical: Iterable[str] = (SEED_KEY,),
) -> pd.Series:
    """fANOVA importance of each key of ``params`` for the column ``objective``: a Series indexed by
    the keys, largest first, summing to 1 (a key with one value gets 0).

    ``table``: one row per finished run; rows whose ``objective`` is NaN (a run that never reported
    it) are left out. ``direction`` (``maximize``/``minimize``, the objective's) is recorded on the
    study; fANOVA's variance shares do not depend on it. ``seed`` fixes the forest, so the same table
    gives the same numbers. Raises ValueError (naming what is missing) when a column is absent, fewer
    than 2 runs have the objective, no key varies, or the objective has one value in every run.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    params = list(dict.fromkeys(params))
    missing = [c for c in [*params, objective] if c not in table]
    if missing:
        raise ValueError(f"the run table has no column(s) {', '.join(missing)} "
                         f"(columns: {', '.join(map(str, table.columns[:12]))})")
    rows = table[pd.to_numeric(table[objective], errors="coerce").notna()]
    if len(rows) < 2:
        raise ValueError(f"parameter importance needs at least 2 runs with {objective!r}, got {len(rows)}")
    y = rows[objective].to_numpy(dtype=float)
    if np.all(y == y[0]):
        raise ValueError(f"{objective!r} is {y[0]:g} in all {len(rows)} runs: no variance to attribute to a key")
    if not params or not varying_params(rows, params):
        raise ValueError(f"no key varies over the {len(rows)} runs with {objective!r} "
                         f"(keys: {', '.join(params) or 'none'}): nothing to rank")
    categorical = set(categorical)
    distributions, columns = {}, {}
    for p in params:
        values = rows[p]
        if _is_numeric(values) and p not in categorical and values.notna().all():
            columns[p] = values.to_numpy(dtype=float)
            distributions[p] = FloatDistribution(float(columns[p].min()), float(columns[p].max()))
        else:
            columns[p] = [_category(v) for v in values]
            distributions[p] = CategoricalDistribution(sorted(dict.fromkeys(columns[p]), key=repr))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # create_study logs a line per study at INFO
    try:
        study = optuna.create_study(direction=direction)
        study.add_trials([create_trial(params={p: columns[p][i] for p in params}, distributions=distributions,
                                       value=float(y[i])) for i in range(len(rows))])
    finally:
        optuna.logging.set_verbosity(verbosity)
    shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(n_trees=N_TREES, seed=seed),
                                   params=params, normalize=True)
    out = pd.Series({p: float(shares.get(p, 0.0)) for p in params}, name=objective, dtype=float)
    return out.sort_values(ascending=False, kind="stable")

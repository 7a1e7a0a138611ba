"""Parameter importance (workbench.importance): Optuna's fANOVA over a table of runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.importance import param_importance
from workbench.names import SEED_KEY


def synthetic(n_seeds: int = 3, noise: float = 0.002) -> pd.DataFrame:
    """A sweep's run table: LOSS.W x END_EPOCH x MODEL.HEAD x seeds; the objective depends on LOSS.W only
    (plus a little noise); TRACKING.X is the same in every run."""
    rng = np.random.default_rng(0)
    rows = []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        for end in (3, 6):
            for head in ("flat", "marginal"):
                for seed in range(n_seeds):
                    rows.append({"LOSS.W": w, "END": end, "MODEL.HEAD": head, SEED_KEY: seed, "TRACKING.X": 1.0,
                                 "acc": 0.5 + 0.4 * (w - 0.5) ** 2 * 4 + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_the_one_key_the_objective_depends_on_gets_most_of_it():
    table = synthetic()
    params = ["LOSS.W", "END", "MODEL.HEAD", SEED_KEY, "TRACKING.X"]
    shares = param_importance(table, params, "acc", "maximize", seed=0)
    assert list(shares.index)[0] == "LOSS.W" and shares["LOSS.W"] > 0.8
    assert shares.sum() == pytest.approx(1.0)
    assert shares["TRACKING.X"] == 0.0  # one value in every run: explains nothing
    assert set(shares.index) == set(params) and shares.name == "acc"
    again = param_importance(table.sample(frac=1, random_state=1), params, "acc", "minimize", seed=0)
    assert again["LOSS.W"] > 0.8  # the direction does not change a variance share; row order neither


def test_a_seed_only_effect_is_attributed_to_the_seed():
    table = synthetic()
    table["acc"] = table[SEED_KEY].map({0: 0.6, 1: 0.7, 2: 0.65}) + np.random.default_rng(1).normal(0, 1e-3, len(table))
    shares = param_importance(table, ["LOSS.W", SEED_KEY], "acc")
    assert shares[SEED_KEY] > 0.8  # seed noise, named as such


def test_text_boolean_and_list_keys_are_categories():
    table = synthetic(n_seeds=2)
    table["MODEL.HIDDEN"] = [[16], [32, 8]] * (len(table) // 2)
    table["PHASE1"] = table["MODEL.HEAD"] == "flat"
    table["acc"] = np.where(table["MODEL.HEAD"] == "flat", 0.9, 0.4) + np.random.default_rng(2).normal(0, 1e-3, len(table))
    shares = param_importance(table, ["MODEL.HIDDEN", "MODEL.HEAD", "LOSS.W"], "acc")
    assert shares["MODEL.HEAD"] > 0.8
    shares = param_importance(table, ["PHASE1", "LOSS.W"], "acc")
    assert shares["PHASE1"] > 0.8


def test_refusals_name_what_is_missing():
    table = synthetic()
    with pytest.raises(ValueError, match=r"at least 2 runs with 'acc', got 1"):
        param_importance(table.head(1), ["LOSS.W"], "acc")
    one_left = table.assign(acc=[0.5] + [np.nan] * (len(table) - 1))  # runs that never reported it do not count
    with pytest.raises(ValueError, match=r"got 1"):
        param_importance(one_left, ["LOSS.W"], "acc")
    with pytest.raises(ValueError, match=r"no key varies over the 60 runs with 'acc' \(keys: TRACKING.X\)"):
        param_importance(table, ["TRACKING.X"], "acc")
    with pytest.raises(ValueError, match=r"'acc' is 0.5 in all 60 runs"):
        param_importance(table.assign(acc=0.5), ["LOSS.W"], "acc")
    with pytest.raises(ValueError, match=r"no column\(s\) LOSS.Z"):
        param_importance(table, ["LOSS.Z"], "acc")
    with pytest.raises(ValueError, match=r"direction must be one of maximize, minimize, got 'max'"):
        param_importance(table, ["LOSS.W"], "acc", "max")

"""The verdict rules of workbench/findings.py against hand-written statistics and as properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from workbench import findings as F


def welch_p_reference(a, b) -> float:
    """Welch's t and Welch-Satterthwaite df by the textbook formulas, the two-sided p by integrating the
    t density numerically (no scipy.stats)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    tail, _ = integrate.quad(lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2), abs(t), math.inf)
    return 2 * tail


def test_compare_p_value_is_welchs():
    a, b = [0.71, 0.74, 0.69, 0.73, 0.72], [0.66, 0.70, 0.61, 0.69, 0.64]
    out = F.compare(a, b)
    assert out["p"] == pytest.approx(welch_p_reference(a, b), rel=1e-6)
    assert out["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert out["verdict"] == "agree" and out["n_treatment"] == 5
    assert F.compare(a, b, higher_is_better=False)["verdict"] == "disagree"
    assert F.compare([0.70, 0.72, 0.69, 0.71, 0.73], [0.71, 0.70, 0.72, 0.69, 0.72])["verdict"] == "inconclusive"


def test_constant_samples():
    assert F.compare([1, 1, 1], [0, 0, 0])["verdict"] == "agree"
    assert F.compare([1, 1, 1], [1, 1, 1])["verdict"] == "inconclusive"


@pytest.mark.parametrize("bad", [[0.5], [0.5, float("nan")], []])
def test_bad_values_are_errors(bad):
    with pytest.raises(ValueError, match="treatment"):
        F.compare(bad, [0.1, 0.2])


samples = st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_compare_is_antisymmetric(a, b):
    ab, ba = F.compare(a, b), F.compare(b, a)
    flip = {"agree": "disagree", "disagree": "agree", "inconclusive": "inconclusive"}
    if ab["diff"] != 0:
        assert ba["verdict"] == flip[ab["verdict"]]
        assert F.compare(a, b, higher_is_better=False)["verdict"] == flip[ab["verdict"]]
    assert ab["verdict"] in F.VERDICTS


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-0.1, 0.1, allow_nan=False), min_size=2, max_size=8), st.floats(0.001, 0.2))
def test_within_interval_contains_the_mean_and_decides_by_it(gaps, margin):
    out = F.within(gaps, margin)
    assert out["ci_low"] <= out["mean"] <= out["ci_high"]
    inside = -margin <= out["ci_low"] and out["ci_high"] <= margin
    assert (out["verdict"] == "agree") == inside


def test_within_known_cases():
    assert F.within([0.001, -0.002, 0.0, 0.003, -0.001], 0.02)["verdict"] == "agree"
    assert F.within([0.10, 0.11, 0.09, 0.10, 0.12], 0.02)["verdict"] == "disagree"
    assert F.within([0.0, 0.05, -0.04, 0.03, -0.02], 0.02)["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="margin"):
        F.within([0.0, 0.1], 0)


def test_spread_and_mean_sd():
    steady, shaky = [0.70, 0.71, 0.70, 0.71, 0.70], [0.5, 0.7, 0.6, 0.8, 0.4]
    out = F.spread(steady, shaky)
    assert out["ratio"] == pytest.approx(np.std(steady, ddof=1) / np.std(shaky, ddof=1))
    assert out["verdict"] == "agree"
    assert F.spread(shaky, steady)["verdict"] == "disagree"
    assert F.mean_sd([0.7, 0.72]) == "0.710 ± 0.014"

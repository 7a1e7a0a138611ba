"""Verdicts for claims re-tested over seeds (the notebooks' findings and the README "Findings" table).

Every number given to these functions is a **test** number of a run whose epoch (and any threshold or
setting) was selected on validation; one value per seed. The rules are deliberately plain:

- :func:`compare`: a claim that a treatment beats a control in one direction. Welch's t-test (unequal
  variances, two-sided) on the per-seed values: "agree" when the difference is in the claimed direction with
  ``p < alpha``, "disagree" when it is in the opposite direction with ``p < alpha``, else "inconclusive".
  Unpaired on purpose: seeds of two configurations share a number, not an initialisation or a batch order
  worth pairing on (the model differs).
- :func:`within`: a claim that a quantity is about zero (a val-to-test gap). "agree" when the 95% t interval
  of its mean lies inside ``[-margin, margin]``, "disagree" when the interval lies wholly outside it,
  else "inconclusive".
- :func:`spread`: a claim that one arm is more stable: the ratio of the seed-to-seed standard deviations and
  Levene's test (median-centred) of equal variances; "agree" when ``sd_a < sd_b`` with ``p < alpha``.

With 5 seeds these tests have little power; "inconclusive" is a finding, not a failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FINDINGS_COLUMNS = ["claim", "data", "our number", "verdict", "notebook"]
VERDICTS = ("agree", "disagree", "inconclusive")
ALPHA = 0.05  # two-sided significance level of every verdict


def _stats():
    try:
        from scipy import stats
    except ImportError as e:  # scipy comes with the app and lab extras
        raise ImportError("workbench.findings needs scipy: pip install 'workbench[lab]' (or pip install scipy)") from e
    return stats


def _values(values: Sequence[float], name: str) -> np.ndarray:
    """Finite values as float64; a NaN (a metric with nothing to count) is an error, not a silent drop."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.ndim != 1 or len(a) < 2:
        raise ValueError(f"{name} needs at least 2 values (one per seed), got {len(a.ravel())}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds a non-finite value: {a.tolist()}")
    return a


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"0.712 ± 0.010"``: mean and sample standard deviation (ddof 1; ``± nan`` for one value)."""
    a = np.asarray(list(values), dtype=np.float64)
    sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
    return f"{float(a.mean()):.{digits}f} ± {sd:.{digits}f}"


def _verdict(direction_holds: bool, p: float, alpha: float) -> str:
    if not p < alpha:  # NaN p (two constant samples) is inconclusive too
        return "inconclusive"
    return "agree" if direction_holds else "disagree"


def compare(treatment: Sequence[float], control: Sequence[float], *, higher_is_better: bool = True,
            alpha: float = ALPHA) -> dict:
    """Does ``treatment`` beat ``control`` (higher, or lower with ``higher_is_better=False``)?

    Returns ``treatment_mean``, ``treatment_sd``, ``control_mean``, ``control_sd``, ``n_treatment``,
    ``n_control``, ``diff`` (treatment - control), ``p`` (Welch, two-sided) and ``verdict``.
    Two samples with zero variance and different means are a certain difference (``p = 0``).
    """
    a, b = _values(treatment, "treatment"), _values(control, "control")
    diff = float(a.mean() - b.mean())
    if a.std() == 0 and b.std() == 0:
        p = 0.0 if diff != 0 else float("nan")  # scipy returns NaN here; the difference is exact
    else:
        p = float(_stats().ttest_ind(a, b, equal_var=False).pvalue)
    holds = diff > 0 if higher_is_better else diff < 0
    return {"treatment_mean": float(a.mean()), "treatment_sd": float(a.std(ddof=1)),
            "control_mean": float(b.mean()), "control_sd": float(b.std(ddof=1)),
            "n_treatment": len(a), "n_control": len(b), "diff": diff, "p": p,
            "verdict": _verdict(holds, p, alpha)}


def within(values: Sequence[float], margin: float, *, confidence: float = 0.95) -> dict:
    """Is the mean of ``values`` (e.g. test - val gaps) within ``±margin`` of zero?

    Returns ``mean``, ``sd``, ``n``, ``ci_low``, ``ci_high`` (the ``confidence`` t interval of the mean) and
    ``verdict``: agree (interval inside the margin), disagree (interval wholly outside), else inconclusive.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    a = _values(values, "values")
    mean, sd, n = float(a.mean()), float(a.std(ddof=1)), len(a)
    half = float(_stats().t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if -margin <= lo and hi <= margin:
        verdict = "agree"
    elif lo > margin or hi < -margin:
        verdict = "disagree"
    else:
        verdict = "inconclusive"
    return {"mean": mean, "sd": sd, "n": n, "ci_low": lo, "ci_high": hi, "verdict": verdict}


def spread(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA) -> dict:
    """Is ``a`` more stable over seeds than ``b``? ``sd_a``, ``sd_b``, ``ratio`` (sd_a / sd_b), ``p`` (Levene,
    median-centred) and ``verdict`` (agree: ``sd_a < sd_b`` with ``p < alpha``)."""
    x, y = _values(a, "a"), _values(b, "b")
    sd_a, sd_b = float(x.std(ddof=1)), float(y.std(ddof=1))
    p = float(_stats().levene(x, y, center="median").pvalue) if (sd_a > 0 or sd_b > 0) else float("nan")
    ratio = sd_a / sd_b if sd_b > 0 else float("inf") if sd_a > 0 else float("nan")
    return {"sd_a": sd_a, "sd_b": sd_b, "ratio": ratio, "p": p, "verdict": _verdict(sd_a < sd_b, p, alpha)}

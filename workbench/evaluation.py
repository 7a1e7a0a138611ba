"""Scoring any model's per-rank outputs on one split: the one home of a split's metrics (DESIGN.md 3.4-3.6).

:meth:`workbench.trainer.Trainer.evaluate` (the network) and :func:`workbench.baseline.fit_gradient_boosting`
(a classical baseline) both call :func:`score` on their outputs, and both apply the test-time rule with
:func:`at_val_taus`, so a network and a baseline are compared with the same functions on the same rows.

Conventions as everywhere: ``R`` ranks coarse to fine, class 0 is null at every rank, a rank's outputs are
``(N, K_r + 1)`` with column 0 the null output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from workbench import metrics as M
from workbench import names as N
from workbench.decoding import argmax_classes, rank_probabilities
from workbench.taxonomy import Taxonomy


def score(
    outputs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    taxonomy: Taxonomy,
    split: str,
    multilabel: Mapping[int, torch.Tensor] | None = None,
    *,
    loss: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[dict[str, float], pd.DataFrame, torch.Tensor]:
    """``(metrics, curves, preds)`` of one split from a model's per-rank outputs.

    Args:
        outputs: ``R`` tensors ``(N, K_r + 1)``: logits or log-probabilities (a softmax turns either into the
            rank's probabilities; ``-inf`` is a class the model gives probability 0), sigmoid logits on the
            multi-label ranks.
        targets: ``LongTensor (N, R)``, 0 = null (nulls always count here).
        taxonomy: the label tree the targets are encoded with.
        split: ``"val"`` or ``"test"``: the keys' prefix.
        multilabel: ``{rank index: multi-hot FloatTensor (N, K_r + 1)}`` of the ranks scored as multi-label
            (BCE); its keys are those ranks. None or empty: every rank is single-label.
        loss: ``(total, per_rank (R,))``: the model's loss on this split, stored as ``core/<split>_loss`` and
            ``<split>/loss/<rank>``; None (a model without this loss): no loss keys.

    Returns:
        metrics: ``{key: float}``: chain, partial-chain and per-rank accuracy, consistency, mistake severity,
            hdist, :func:`workbench.metrics.extended_metrics`, and each rank's best threshold on this split
            (``<split>/best_tau/<rank>`` and the value of the curve it maximises: accuracy, or micro-F1 on a
            multi-label rank).
        curves: the threshold curves (:func:`workbench.metrics.curves_frame`) with a ``split`` column first.
        preds: ``LongTensor (N, R)``: the standard prediction (:func:`workbench.decoding.argmax_classes`).
    """
    multilabel = dict(multilabel or {})
    ml_ranks = set(multilabel)
    ranks = taxonomy.ranks
    preds = argmax_classes(list(outputs), ml_ranks)  # (N, R)
    y = targets
    rank_acc = M.rank_accuracy(preds, y)
    sev = M.mistake_severity(preds, y, taxonomy)
    metrics: dict[str, float] = {}
    if loss is not None:
        metrics[N.core_key(split, "loss")] = float(loss[0])
    metrics.update({
        N.core_key(split, "chain_acc"): float(M.chain_accuracy(preds, y)),
        N.core_key(split, "partial_chain_acc"): float(M.partial_chain_accuracy(preds, y)),
        N.split_key(split, "consistency"): float(M.consistency_rate(preds, taxonomy)),
        N.split_key(split, "severity"): float(sev["severity"]),
        N.split_key(split, "hdist@1"): float(sev["hdist@1"]),
    })
    probs = rank_probabilities(list(outputs), ml_ranks)
    curves = M.threshold_curves(probs, y, multilabel_targets=multilabel)
    # top-k, hdist@5, hP/hR/hF, ECE, AUROC, null accuracy (DESIGN.md 3.6); hdist@1 of the same preds
    metrics.update(M.extended_metrics(probs, y, taxonomy, ranks, split, ml_ranks, preds=preds))
    for r, rank in enumerate(ranks):
        metrics[N.rank_key(split, N.ACC, rank)] = float(rank_acc[r])
        if loss is not None:
            metrics[N.rank_key(split, N.LOSS, rank)] = float(loss[1][r])
        by = "micro_f1" if r in multilabel else "accuracy"
        tau, value = M.best_thresholds({r: curves[r]}, by=by)[r]
        metrics[N.best_tau(rank, split)] = tau
        metrics[N.best_tau_value(by, rank, split)] = value
    frame = M.curves_frame(curves, ranks)
    frame.insert(0, "split", split)
    return metrics, frame, preds


def chosen_taus(val_metrics: Mapping[str, float], ranks: Sequence[str]) -> dict[str, float]:
    """``{rank: tau}``: each rank's threshold chosen on val (``val/best_tau/<rank>`` of :func:`score`'s val
    metrics), the one the test split is scored at."""
    return {rank: float(val_metrics[N.best_tau(rank)]) for rank in ranks}


def at_val_taus(metrics: Mapping[str, float], curves: pd.DataFrame, taus: Mapping[str, float],
                split: str = "test") -> dict[str, float]:
    """The test-time rule (DESIGN.md 3.5): ``metrics`` of ``split`` (from :func:`score`) with the thresholds
    chosen on that split removed (``<split>/best_tau*``: that would be selecting on test) and each rank's
    val-chosen ``taus[rank]`` applied instead: ``<split>/tau/<rank>``, and on single-label ranks
    ``<split>/coverage_at_tau/<rank>`` and ``<split>/selective_accuracy_at_tau/<rank>``, read off ``curves``
    (the same threshold grid as val's). A multi-label rank's curves are F1 and exact match: only its tau."""
    out = {k: v for k, v in metrics.items() if not is_best_tau_key(k)}
    for rank, tau in taus.items():
        tau = float(tau)
        out[N.rank_key(split, N.TAU, rank)] = tau
        at = curve_values_at(curves, rank, tau)
        if "coverage" in at:
            out[N.rank_key(split, N.COVERAGE_AT_TAU, rank)] = at["coverage"]
            out[N.rank_key(split, N.SELECTIVE_ACCURACY_AT_TAU, rank)] = at["selective_accuracy"]
    return out


def is_best_tau_key(key: str) -> bool:
    """``<split>/best_tau/<rank>`` or ``<split>/best_tau_<curve>/<rank>``: a threshold chosen on that split."""
    parts = key.split("/")
    return len(parts) == 3 and (parts[1] == N.BEST_TAU or parts[1].startswith(N.BEST_TAU + "_"))


def curve_values_at(curves: pd.DataFrame, rank: str, tau: float) -> dict[str, float]:
    """``{curve: value}`` of one rank's threshold curves (a :func:`score` frame) at the grid point nearest
    ``tau`` (NaN values for a NaN ``tau``). Val and test curves share one grid, so a val-chosen ``tau`` is a
    grid point here."""
    rows = curves[curves["rank"] == rank]
    if math.isnan(tau) or rows.empty:
        return {c: float("nan") for c in rows["curve"].unique()}
    nearest = rows["tau"].iloc[int((rows["tau"] - tau).abs().to_numpy().argmin())]
    at = rows[rows["tau"] == nearest]
    return dict(zip(at["curve"], at["value"].astype(float)))

"""Per-rank input-gradient attributions: which input features move each rank's prediction.

Pure functions over a :class:`~workbench.models.HierarchicalModel` (or any module mapping
``features (N, F)`` to ``R`` logit tensors ``(N, K_r + 1)``). Gradients of all ``N`` samples come
from one backward pass per rank: in eval mode each sample's output depends only on its own input
row, so the gradient of the *sum* over samples of ``log p(c_i | x_i)`` with respect to ``x`` has,
in row ``i``, exactly the gradient of sample ``i``'s own log-probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn


def input_gradients(
    model: nn.Module, features: torch.Tensor, classes: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``d log p(classes[i, r] | x_i) / d x_i`` for every sample ``i`` and rank ``r``.

    Args:
        model: maps ``(features, valid)`` to ``R`` tensors ``(N, K_r + 1)`` of logits (or
            log-probabilities, as the marginal head returns; ``log_softmax`` leaves those unchanged).
            Run in eval mode (dropout off) and restored to its previous mode afterwards.
        features: ``FloatTensor (N, F)`` (or ``(N, S, F)`` sets with ``valid``); not modified.
        classes: ``LongTensor (N, R)``, the class whose log-probability is differentiated at each
            rank (e.g. the targets, 0 = null); default: the model's own argmax prediction per rank.
        valid: ``BoolTensor (N, S)`` padding mask of set inputs (True = real element), or None.

    Returns:
        ``FloatTensor (R, N, *features.shape[1:])``: one gradient per rank and sample (``R`` backward
        passes over the whole batch, not ``N * R``).
    """
    was_training = model.training
    model.eval()
    try:
        x = features.detach().clone().requires_grad_(True)  # (N, F)
        with torch.enable_grad():
            logits = model(x, valid) if valid is not None else model(x)  # R x (N, K_r + 1)
            if classes is None:
                classes = torch.stack([lg.argmax(dim=1) for lg in logits], dim=1)  # (N, R)
            grads = []
            for r, lg in enumerate(logits):
                logp = torch.log_softmax(lg.float(), dim=1)  # (N, K_r + 1)
                picked = logp.gather(1, classes[:, r : r + 1].to(logp.device)).sum()  # scalar: sum over samples
                (g,) = torch.autograd.grad(picked, x, retain_graph=r < len(logits) - 1)
                grads.append(g)  # (N, F)
        return torch.stack(grads)  # (R, N, F)
    finally:
        model.train(was_training)


def attribution_frame(
    grads: torch.Tensor, features: torch.Tensor, feature_names: Sequence[str], ranks: Sequence[str],
    keep: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Tidy per-rank feature importance from :func:`input_gradients`.

    Args:
        grads: ``(R, N, F)`` gradients.
        features: ``(N, F)`` the inputs they were taken at.
        feature_names: ``F`` names; ranks: ``R`` names.
        keep: ``BoolTensor (N, R)``, True = sample ``i`` counts at rank ``r`` (e.g. ``targets != 0``);
            None = every sample counts.

    Returns:
        One row per (rank, feature): ``mean_abs_grad`` (mean ``|g|`` over kept samples),
        ``mean_abs_grad_x_input`` (mean ``|g * x|``, the first-order effect of moving the feature
        from 0, the standardised mean, to its value) and ``share`` (``mean_abs_grad_x_input``
        normalised to sum to 1 within the rank), plus ``samples`` (kept samples at the rank).
    """
    num_ranks, n, num_features = grads.shape
    if keep is None:
        keep = torch.ones(n, num_ranks, dtype=torch.bool)
    rows = []
    for r in range(num_ranks):
        k = keep[:, r]  # (N,)
        g = grads[r][k].double()  # (M, F)
        gx = (grads[r] * features)[k].double()  # (M, F)
        m = int(k.sum())
        abs_g = g.abs().mean(dim=0) if m else torch.full((num_features,), float("nan"), dtype=torch.float64)
        abs_gx = gx.abs().mean(dim=0) if m else torch.full((num_features,), float("nan"), dtype=torch.float64)
        total = abs_gx.sum()
        share = abs_gx / total if m and total > 0 else torch.full_like(abs_gx, float("nan"))
        for f, name in enumerate(feature_names):
            rows.append({"rank": ranks[r], "feature": name, "mean_abs_grad": float(abs_g[f]),
                         "mean_abs_grad_x_input": float(abs_gx[f]), "share": float(share[f]), "samples": m})
    return pd.DataFrame(rows)

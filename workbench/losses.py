"""Hierarchical loss (DESIGN.md 3.3): per-rank CE/BCE, rank weights from ``w``, class and sample weights.

For rank ``r`` and sample ``i``, ``l[i, r]`` is the cross-entropy of ``logits[r][i]`` against
``Y[i, r]`` (BCE-with-logits for a multi-label rank). The element weight is

    a[i, r] = keep[i, r] * sample_weight[i] * class_weight[r][Y[i, r]]

(missing weights are 1; this is the *only* place weights are applied), and

    L_r = sum_i a[i, r] l[i, r] / sum_i a[i, r]      (0, with zero gradient, when the sum is 0)
    L   = sum_r w_r L_r.

Phase 1 is the same function with a keep mask at ``p = 0`` (see :mod:`workbench.masking`), so the
phase-1 and scheduled losses share the denominator rule by construction.

Marginal head mode needs no special case here: pass ``taxonomy.marginal_log_probs(leaf_logits)``
as ``logits``. Those rows are normalised log-probabilities, and ``log_softmax`` of a normalised
log-probability vector is itself, so the cross-entropy is exactly ``-log(sum of descendant probs)``.

Multi-label ranks: ``multilabel_targets[r]`` is a multi-hot ``FloatTensor (N, K_r + 1)``; column 0 is
unused (null) and ``Y[i, r] != 0`` marks a labelled row. ``l[i, r]`` is the mean BCE over the
real classes ``1..K_r``; a class weight there weighs each class's BCE term (per element), and
``a[i, r]`` then carries only keep and sample weight, so weights are still applied once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


class LossConfigError(ValueError):
    """Invalid rank or class weights; the message names the key and the value."""


def rank_weights_from_w(w: float, num_ranks: int) -> torch.Tensor:
    """Rank weights ``(R,)`` from the hierarchical weight ``w`` in [0, 1].

    Two ranks: ``(w, 1 - w)``. More ranks: the finest gets ``1 - w`` and the coarser ranks share ``w``
    equally. One rank: ``(1,)`` (there is nothing to weigh against).
    """
    if not 0.0 <= w <= 1.0:
        raise LossConfigError(f"LOSS.W must be in [0, 1], got {w}")
    if num_ranks < 1:
        raise LossConfigError(f"num_ranks must be >= 1, got {num_ranks}")
    if num_ranks == 1:
        return torch.ones(1)
    coarse = torch.full((num_ranks - 1,), w / (num_ranks - 1))
    return torch.cat([coarse, torch.tensor([1.0 - w])]).float()


def balanced_class_weights(targets: torch.Tensor, num_classes: Sequence[int]) -> list[torch.Tensor]:
    """``"balanced"`` class weights per rank: ``n / (K * count_c)`` over labelled samples.

    ``targets``: ``LongTensor (N, R)``. Returns ``R`` tensors ``(K_r + 1,)``; the null class and
    classes absent from ``targets`` get weight 1 (they never multiply a labelled element here).
    """
    weights = []
    for r, k_plus_1 in enumerate(num_classes):
        counts = torch.bincount(targets[:, r], minlength=k_plus_1).double()  # (K_r + 1,)
        labelled = counts[1:].sum()
        present = (counts[1:] > 0).sum().clamp_min(1)  # K = classes seen, sklearn's rule
        w = torch.ones(k_plus_1, dtype=torch.float64)
        seen = counts > 0
        seen[0] = False
        w[seen] = labelled / (present * counts[seen])
        weights.append(w.float())
    return weights


def _per_element_loss(
    logits: torch.Tensor, target: torch.Tensor, multi_hot: torch.Tensor | None,
    class_weight: torch.Tensor | None,
) -> torch.Tensor:
    """``l[:, r]`` as ``(N,)``: CE for a single-label rank, mean BCE over real classes otherwise."""
    if multi_hot is None:
        return F.cross_entropy(logits.float(), target, reduction="none")
    bce = F.binary_cross_entropy_with_logits(
        logits[:, 1:].float(), multi_hot[:, 1:].float(), reduction="none"
    )  # (N, K_r)
    if class_weight is not None:
        bce = bce * class_weight[1:].to(bce)
    return bce.mean(dim=1)


def hierarchical_loss(
    logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    keep: torch.Tensor,
    rank_weights: torch.Tensor | Sequence[float],
    class_weights: Sequence[torch.Tensor | None] | None = None,
    sample_weight: torch.Tensor | None = None,
    multilabel_targets: Mapping[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted hierarchical loss.

    Args:
        logits: ``R`` tensors ``(N, K_r + 1)`` (logits, or log-probs in marginal mode).
        targets: ``LongTensor (N, R)``, 0 = null.
        keep: ``BoolTensor (N, R)``, True = the element counts (see ``null_keep_mask``).
        rank_weights: ``(R,)``, e.g. from :func:`rank_weights_from_w`.
        class_weights: per rank ``(K_r + 1,)`` or None (missing = 1).
        sample_weight: ``(N,)`` or None (missing = 1).
        multilabel_targets: ``{rank index: FloatTensor (N, K_r + 1)}`` multi-hot, for BCE ranks.

    Returns:
        ``(total, per_rank)``: a scalar and ``(R,)`` (``per_rank`` is ``L_r`` before rank weights).
    """
    num_ranks = targets.shape[1]
    if len(logits) != num_ranks or keep.shape != targets.shape:
        raise LossConfigError(
            f"expected {num_ranks} logit tensors and keep of shape {tuple(targets.shape)}, "
            f"got {len(logits)} and {tuple(keep.shape)}"
        )
    rank_weights = torch.as_tensor(rank_weights, dtype=torch.float32, device=targets.device)
    if rank_weights.shape != (num_ranks,):
        raise LossConfigError(
            f"LOSS.RANK_WEIGHTS must have {num_ranks} entries, got {rank_weights.tolist()}"
        )
    multilabel_targets = multilabel_targets or {}
    l = torch.stack([  # (N, R): per-element loss at each rank
        _per_element_loss(logits[r], targets[:, r], multilabel_targets.get(r),
                          class_weights[r] if class_weights is not None else None)
        for r in range(num_ranks)
    ], dim=1)
    a = keep.float()  # (N, R): a[i, r] = keep * sample_weight * class_weight, the one place weights apply
    if sample_weight is not None:
        a = a * sample_weight.float()[:, None]
    if class_weights is not None:
        cw = [class_weights[r].to(a)[targets[:, r]] if class_weights[r] is not None and r not in multilabel_targets
              else torch.ones_like(a[:, r]) for r in range(num_ranks)]
        a = a * torch.stack(cw, dim=1)
    # masked elements may carry inf/NaN (e.g. -inf marginal log-probs): select, don't multiply
    weighted = torch.where(a > 0, a * l, torch.zeros_like(l))  # (N, R)
    num, denom = weighted.sum(dim=0), a.sum(dim=0)  # (R,), (R,)
    safe_denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    per_rank_t = torch.where(denom > 0, num / safe_denom, num * 0.0)  # 0 with zero gradient when nothing counts
    return (rank_weights * per_rank_t).sum(), per_rank_t

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

Target rules (a training device; :class:`TargetRule`, applied once, here, per rank): label smoothing
replaces a labelled single-label target by ``q = (1 - eps) * onehot(y) + eps * u`` with ``u`` over the
*other* real classes (uniform, or ``u_c`` proportional to ``exp(-h(y, c))``, ``h`` the LCA height), and a
multi-hot target by ``y * (1 - eps) + eps / 2``; soft labels (Making Better Mistakes) use
``q_c = softmax_c(-beta * h(y, c))`` over the real classes. A null target stays one-hot on null. Then
``l[i, r] = -sum_c q_c log softmax(logits)_c`` (terms with ``q_c = 0`` are 0, also where the log-prob is
``-inf``). Without a rule the path is the plain CE above, bit for bit. Evaluation losses never use a
rule, so runs with different smoothing report losses on one scale.

HXE (Making Better Mistakes) is a rank-weight preset on the marginal head: :func:`hxe_rank_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # type hints only: the loss itself takes plain tensors
    from workbench.config import LossConfig
    from workbench.taxonomy import Taxonomy

SMOOTHING_MODES = ("uniform", "taxonomy")
"""``LOSS.SMOOTHING`` values: how the smoothing mass is spread over the other real classes."""


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


def hxe_rank_weights(alpha: float, num_ranks: int, normalize: bool = True) -> torch.Tensor:
    """Rank weights ``(R,)`` that make the hierarchical loss HXE(alpha) on the marginal head.

    HXE (Bertinetto et al., Making Better Mistakes, 2020) is ``-sum over the path of lambda(C) log p(C | parent(C))``
    with ``lambda(C) = exp(-alpha * depth(C))``, root depth 0, so a class at rank ``r`` (0 = coarsest) has depth
    ``r + 1``. With ``p(C | parent) = p(C) / p(parent)`` and every leaf at the finest rank, the sum telescopes
    into per-rank marginal CEs: ``HXE = sum_r c_r CE_r`` with ``c_{R-1} = exp(-alpha R)`` and
    ``c_r = exp(-alpha (r + 1)) - exp(-alpha (r + 2))`` for ``r < R - 1`` (all >= 0). ``normalize`` (the preset)
    divides by ``sum(c)``, a positive constant that keeps the loss on the scale of ``w``'s weights;
    ``alpha = 0`` gives ``(0, ..., 0, 1)``: plain leaf CE.
    """
    if not (math.isfinite(alpha) and alpha >= 0.0):
        raise LossConfigError(f"LOSS.HXE_ALPHA must be a finite number >= 0, got {alpha}")
    if num_ranks < 1:
        raise LossConfigError(f"num_ranks must be >= 1, got {num_ranks}")
    # c / exp(-alpha) in float64: exp(-alpha r) (1 - exp(-alpha)) and exp(-alpha (R - 1)); no underflow to 0/0
    r = torch.arange(num_ranks, dtype=torch.float64)
    scaled = torch.exp(-alpha * r) * -math.expm1(-alpha)
    scaled[-1] = math.exp(-alpha * (num_ranks - 1))
    c = scaled / scaled.sum() if normalize else scaled * math.exp(-alpha)
    return c.float()


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


def _spread(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per row, ``softmax(scores)`` restricted to ``allowed`` ``(N, K + 1)``; rows with nothing allowed get 0."""
    masked = torch.where(allowed, scores, torch.full_like(scores, -math.inf))
    any_allowed = allowed.any(dim=1, keepdim=True)  # (N, 1)
    safe = torch.where(any_allowed, masked, torch.zeros_like(masked))  # a row of -inf would softmax to NaN
    return torch.where(allowed, torch.softmax(safe, dim=1), torch.zeros_like(scores))


def _real_classes(targets_r: torch.Tensor, num_classes: int, support: torch.Tensor | None) -> torch.Tensor:
    """``BoolTensor (N, K + 1)``: the real classes (never null) a target may give mass to."""
    real = torch.ones(num_classes, dtype=torch.bool, device=targets_r.device)
    real[0] = False
    if support is not None:
        real = real & support.to(targets_r.device)
    return real.expand(targets_r.shape[0], -1)


def soft_targets(
    targets_r: torch.Tensor, num_classes: int, *, eps: float, mode: str = "uniform",
    heights: torch.Tensor | None = None, support: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label-smoothed targets ``(N, K_r + 1)`` for one single-label rank (rows sum to 1).

    ``targets_r``: ``LongTensor (N,)``, 0 = null. A labelled row gets ``(1 - eps) * onehot(y) + eps * u``, ``u`` a
    distribution over the real classes other than ``y`` (never null): ``mode`` ``"uniform"``, or ``"taxonomy"``
    with ``u_c`` proportional to ``exp(-heights[y, c])`` (``heights``: :meth:`Taxonomy.lca_height_matrix` of the
    rank), so a sibling gets ``e`` times a cousin's share. ``support`` ``(K_r + 1,)`` (optional): the classes the
    model can give mass to (:meth:`Taxonomy.has_leaf` for a marginal head); ``u`` stays inside it. A null row,
    and a row with no other class to give mass to (a rank with one real class), stay one-hot.
    """
    if mode not in SMOOTHING_MODES:
        raise LossConfigError(f"LOSS.SMOOTHING must be one of {list(SMOOTHING_MODES)}, got {mode!r}")
    if mode == "taxonomy" and heights is None:
        raise LossConfigError("LOSS.SMOOTHING 'taxonomy' needs the rank's LCA heights (heights=None)")
    onehot = F.one_hot(targets_r, num_classes).float()  # (N, K + 1)
    others = _real_classes(targets_r, num_classes, support) & (onehot == 0)  # (N, K + 1)
    if mode == "uniform":
        scores = torch.zeros_like(onehot)
    else:
        scores = -heights.to(targets_r.device)[targets_r].float()  # (N, K + 1): -h(y, c)
    u = _spread(scores, others)
    smooth = (targets_r != 0) & others.any(dim=1)  # (N,): labelled and something else to give mass to
    return torch.where(smooth[:, None], (1.0 - eps) * onehot + eps * u, onehot)


def soft_label_targets(
    targets_r: torch.Tensor, heights: torch.Tensor, beta: float, support: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft labels (Making Better Mistakes) ``(N, K_r + 1)``: ``q_c = softmax over real classes c of
    (-beta * heights[y, c])`` for a labelled row, one-hot on null for a null row. ``heights``: the rank's
    :meth:`Taxonomy.lca_height_matrix`; ``support`` as in :func:`soft_targets`. ``beta -> inf`` gives one-hot."""
    num_classes = heights.shape[0]
    onehot = F.one_hot(targets_r, num_classes).float()
    allowed = _real_classes(targets_r, num_classes, support) | (onehot > 0)  # y itself always
    q = _spread(-beta * heights.to(targets_r.device)[targets_r].float(), allowed)
    return torch.where((targets_r != 0)[:, None], q, onehot)


def soft_cross_entropy(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(N,)``: ``-sum_c q_c log softmax(logits)_c``; a term with ``q_c = 0`` is 0 even where the log-prob is
    ``-inf`` (a marginal head's class without leaves), in value and gradient."""
    logp = torch.log_softmax(logits.float(), dim=1)
    used = q > 0
    # select before multiplying: 0 * -inf would be NaN, and where() passes no gradient to the unused branch
    return -(q * torch.where(used, logp, torch.zeros_like(logp))).sum(dim=1)


@dataclass(frozen=True, eq=False)  # holds tensors: identity, not element-wise, equality
class TargetRule:
    """How training targets are reshaped before the CE (label smoothing or soft labels); see the module doc.

    ``heights`` and ``support`` are per rank (``(K_r + 1, K_r + 1)`` LCA heights, ``(K_r + 1,)`` allowed
    classes or None). Built by :func:`target_rule`; None there means plain one-hot targets.
    """

    kind: Literal["smoothing", "soft_labels"]
    eps: float = 0.0
    mode: str = "uniform"
    beta: float = 0.0
    heights: tuple[torch.Tensor, ...] = ()
    support: tuple[torch.Tensor | None, ...] = ()

    def single_label(self, r: int, targets_r: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``(N, K_r + 1)`` target distribution at single-label rank ``r``."""
        support = self.support[r] if self.support else None
        if self.kind == "soft_labels":
            return soft_label_targets(targets_r, self.heights[r], self.beta, support)
        heights = self.heights[r] if self.heights else None
        return soft_targets(targets_r, num_classes, eps=self.eps, mode=self.mode, heights=heights, support=support)

    def multi_label(self, multi_hot: torch.Tensor) -> torch.Tensor:
        """A multi-label rank's BCE targets: ``y * (1 - eps) + eps / 2`` when smoothing (either mode), else ``y``."""
        if self.kind != "smoothing":
            return multi_hot
        return multi_hot.float() * (1.0 - self.eps) + self.eps / 2.0

    def to(self, device: torch.device | str) -> TargetRule:
        return TargetRule(self.kind, self.eps, self.mode, self.beta, tuple(h.to(device) for h in self.heights),
                          tuple(None if s is None else s.to(device) for s in self.support))


def target_rule(loss: LossConfig, taxonomy: Taxonomy, marginal_head: bool = False) -> TargetRule | None:
    """The :class:`TargetRule` of ``LOSS.LABEL_SMOOTHING`` / ``SMOOTHING`` / ``SOFT_LABELS_BETA``, or None when
    targets stay one-hot (the plain CE path). ``marginal_head``: keep target mass on classes with a leaf."""
    ranks = range(taxonomy.num_ranks)
    support = tuple(taxonomy.has_leaf(r) for r in ranks) if marginal_head else ()
    if loss.SOFT_LABELS_BETA is not None:
        return TargetRule("soft_labels", beta=float(loss.SOFT_LABELS_BETA), support=support,
                          heights=tuple(taxonomy.lca_height_matrix(r) for r in ranks))
    if loss.LABEL_SMOOTHING > 0:
        heights = tuple(taxonomy.lca_height_matrix(r) for r in ranks) if loss.SMOOTHING == "taxonomy" else ()
        return TargetRule("smoothing", eps=float(loss.LABEL_SMOOTHING), mode=loss.SMOOTHING, heights=heights,
                          support=support)
    return None


def _per_element_loss(
    logits: torch.Tensor, target: torch.Tensor, multi_hot: torch.Tensor | None,
    class_weight: torch.Tensor | None, q: torch.Tensor | None = None,
) -> torch.Tensor:
    """``l[:, r]`` as ``(N,)``: CE for a single-label rank (against ``q`` ``(N, K_r + 1)`` when given), mean BCE
    over real classes otherwise (``multi_hot`` may then be smoothed)."""
    if multi_hot is None:
        if q is not None:
            return soft_cross_entropy(logits, q)
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
    target_rule: TargetRule | None = None,
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
        target_rule: label smoothing or soft labels (:func:`target_rule`), applied here once per rank; None
            (the default, and always in evaluation) = one-hot targets, the plain CE path.

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
    if target_rule is not None:  # reshape each rank's target once; weights below are untouched by it
        multilabel_targets = {r: target_rule.multi_label(t) for r, t in multilabel_targets.items()}
        q = [None if r in multilabel_targets else target_rule.single_label(r, targets[:, r], logits[r].shape[1])
             for r in range(num_ranks)]
    else:
        q = [None] * num_ranks
    l = torch.stack([  # (N, R): per-element loss at each rank
        _per_element_loss(logits[r], targets[:, r], multilabel_targets.get(r),
                          class_weights[r] if class_weights is not None else None, q[r])
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

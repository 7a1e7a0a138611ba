"""Hierarchical metrics as pure tensor functions (DESIGN.md 3.4 and 3.6), plus a count accumulator.

Inputs: predictions and targets ``LongTensor (N, R)``, 0 = null. Every function is a pure function
of its inputs, computed on their device (CPU or CUDA: every tensor made here is made there);
:class:`HierarchicalAccuracy` only sums the *counts* these functions return, so an accumulated value
over batches equals the value on the concatenated batches.

Per-rank accuracy is a one-line masked mean here (it has to share counts with the chain metrics);
tests check it against scikit-learn and torchmetrics, and :func:`calibration_error` delegates to
torchmetrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from workbench import names as N
from workbench.taxonomy import Taxonomy

if TYPE_CHECKING:  # pandas only inside curves_frame: the pure core does not import it
    import pandas as pd

CURVE_NAMES = ("coverage", "selective_accuracy", "accuracy", "null_false_positive_rate")
MULTILABEL_CURVE_NAMES = ("element_accuracy", "exact_match", "micro_f1")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as float64, NaN where ``den == 0``."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.nan)


# ---------------------------------------------------------------------- counts (pure)
def rank_counts(preds: torch.Tensor, targets: torch.Tensor, include_null: bool = False):
    """``(correct (R,), total (R,))`` for rank accuracy; without ``include_null`` only labelled samples."""
    scored = torch.ones_like(targets, dtype=torch.bool) if include_null else targets != 0  # (N, R)
    correct = ((preds == targets) & scored).sum(dim=0)
    return correct, scored.sum(dim=0)


def chain_counts(preds: torch.Tensor, targets: torch.Tensor):
    """``(correct, total)``: samples where every rank matches (a null target needs a null prediction)."""
    return (preds == targets).all(dim=1).sum(), torch.tensor(targets.shape[0], device=targets.device)


def partial_chain_counts(preds: torch.Tensor, targets: torch.Tensor):
    """``(correct, total)`` over samples with >= 1 non-null rank; null ranks are not scored."""
    labelled = targets != 0  # (N, R)
    scored = labelled.any(dim=1)  # (N,)
    ok = ((preds == targets) | ~labelled).all(dim=1) & scored
    return ok.sum(), scored.sum()


# ---------------------------------------------------------------------- metrics (pure)
def rank_accuracy(preds: torch.Tensor, targets: torch.Tensor, include_null: bool = False) -> torch.Tensor:
    """``(R,)`` float64 accuracy per rank over labelled samples (all samples with ``include_null``); NaN if none."""
    return _ratio(*rank_counts(preds, targets, include_null))


def chain_accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scalar: fraction of samples whose every rank matches; NaN for no samples."""
    return _ratio(*chain_counts(preds, targets))


def partial_chain_accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scalar: over samples with a non-null rank, fraction with every non-null rank right; NaN if none."""
    return _ratio(*partial_chain_counts(preds, targets))


def consistency_rate(preds: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """Fraction of samples whose predicted classes at adjacent ranks are parent and child.

    A null prediction at the finer rank makes no claim and is consistent with any parent; a
    non-null prediction needs its parent predicted at the coarser rank (so a real class under a
    null parent is inconsistent).
    """
    ok = torch.ones(preds.shape[0], dtype=torch.bool, device=preds.device)
    for r in range(1, preds.shape[1]):
        parent = taxonomy.parent(r).to(preds.device)[preds[:, r]]  # (N,)
        ok &= (preds[:, r] == 0) | (parent == preds[:, r - 1])
    return _ratio(ok.sum(), torch.tensor(preds.shape[0], device=preds.device))


def finest_labelled_rank(targets: torch.Tensor) -> torch.Tensor:
    """``LongTensor (N,)``: index of the finest non-null rank, -1 for all-null rows."""
    r = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    return torch.where(targets != 0, r, torch.full_like(r, -1)).amax(dim=1)


def sample_heights(preds: torch.Tensor, targets: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """``LongTensor (N,)``: per sample, the LCA height of the predicted and true class at its finest labelled
    rank ``k`` (0 if equal, ``k + 1`` if no shared ancestor; a null prediction shares no ancestor); -1 for a
    sample labelled at no rank."""
    k = finest_labelled_rank(targets)  # (N,)
    heights = torch.full_like(k, -1)
    for rank in range(targets.shape[1]):
        rows = k == rank
        heights[rows] = taxonomy.lca_height(rank, preds[rows, rank], targets[rows, rank])
    return heights


def severity_heights(preds: torch.Tensor, targets: torch.Tensor, taxonomy: Taxonomy):
    """``(heights (M,), wrong (M,))`` of the ``M`` labelled samples (:func:`sample_heights`; wrong: the
    prediction at the finest labelled rank is not the target)."""
    heights = sample_heights(preds, targets, taxonomy)
    labelled = heights >= 0
    k = finest_labelled_rank(targets).clamp_min(0)[:, None]  # (N, 1)
    wrong = preds.gather(1, k).squeeze(1) != targets.gather(1, k).squeeze(1)
    return heights[labelled], wrong[labelled]


def mistake_severity(preds: torch.Tensor, targets: torch.Tensor, taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """``{"severity": mean height over wrong samples, "hdist@1": mean height over labelled samples}``."""
    h, wrong = severity_heights(preds, targets, taxonomy)
    return {
        "severity": _ratio((h * wrong).sum(), wrong.sum()),
        "hdist@1": _ratio(h.sum(), torch.tensor(h.numel(), device=h.device)),
    }


def calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Expected calibration error of one rank over labelled samples (torchmetrics, L1 norm).

    ``probs (N, K_r + 1)``, ``target (N,)``; null targets are ignored.
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    labelled = target != 0
    if not labelled.any():
        return torch.tensor(float("nan"), device=probs.device)
    return multiclass_calibration_error(
        probs[labelled], target[labelled], num_classes=probs.shape[1], n_bins=n_bins
    )


# ---------------------------------------------------------------------- threshold curves
def default_thresholds(num: int = 101) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, num, dtype=torch.float64)


def _counts_reaching(values: torch.Tensor, kind: torch.Tensor, kinds: int, tau: torch.Tensor):
    """``(at (T, kinds), total (kinds,))``: per threshold ``tau[j]`` (any order), how many ``values`` of each
    ``kind`` (``LongTensor`` in ``[0, kinds)``, aligned with ``values``) are ``>= tau[j]``, and how many there are.

    No sort of the values: each falls in the bucket of how many thresholds it reaches (one binary search in
    the T sorted thresholds, compared in float64), and one histogram of bucket x kind gives every threshold's
    counts as a suffix sum: O(N log T), exact integer counts, one read of ``values``. As the comparison has
    it, a NaN value reaches no threshold and nothing reaches a NaN threshold.
    """
    tau_sorted, tau_order = torch.sort(tau)
    t = tau.numel()
    bucket = torch.searchsorted(tau_sorted, values.double().contiguous(), right=True)  # >= tau_sorted[j] <=> > j
    bucket = torch.where(values.isnan(), 0, bucket)
    hist = torch.bincount(bucket * kinds + kind, minlength=(t + 1) * kinds).reshape(t + 1, kinds)
    suffix = hist.flip(0).cumsum(0).flip(0)  # (T + 1, kinds): suffix[m] = values in buckets >= m
    at = torch.empty_like(suffix[1:])
    at[tau_order] = suffix[1:]  # back in the order given
    at[tau.isnan()] = 0  # a NaN threshold sorts last, where every bucket would count
    return at, suffix[0]


def single_label_curves(probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Curves of one rank: ``probs (N, K + 1)`` softmax, ``target (N,)`` -> ``{name: (T,)}``.

    Prediction = argmax over the real classes if its probability >= tau, else null (a NaN confidence, from a
    diverged model, never reaches tau: it abstains, as in :func:`workbench.decoding.abstaining_predictions`).
    Every threshold's counts from one histogram of the confidences (:func:`_counts_reaching`, no sort): one
    read of ``probs``, the memory floor of this function on a GPU.
    """
    if probs.shape[1] > 1:
        conf, cls = probs[:, 1:].max(dim=1)  # (N,), (N,)
        cls = cls + 1
    else:  # a rank without a real class (null in every training label): the model always abstains
        conf = probs.new_full(probs.shape[:1], -math.inf)
        cls = torch.zeros_like(target)
    labelled = target != 0
    kind = torch.where(labelled, torch.where(cls == target, 1, 2), 0)  # 0 null target, 1 correct, 2 wrong
    at, total = _counts_reaching(conf, kind, 3, thresholds.to(probs.device, torch.float64))  # (T, 3), (3,)
    pred_null_target, pred_correct = at[:, 0], at[:, 1]
    pred_labelled = at[:, 1] + at[:, 2]
    n_null, n_labelled = total[0], total[1] + total[2]
    n = torch.tensor(target.shape[0], device=target.device)  # on the inputs' device: CUDA runs crashed here
    return {
        "coverage": _ratio(pred_labelled, n_labelled.expand_as(pred_labelled)),
        "selective_accuracy": _ratio(pred_correct, pred_labelled),
        "accuracy": _ratio(pred_correct + (n_null - pred_null_target), n.expand_as(pred_labelled)),
        "null_false_positive_rate": _ratio(pred_null_target, n_null.expand_as(pred_labelled)),
    }


def multilabel_curves(probs: torch.Tensor, multi_hot: torch.Tensor, thresholds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Curves of a multi-label rank over its real classes: ``probs (N, K + 1)`` sigmoid, ``multi_hot (N, K + 1)``.

    Element ``(i, c)`` is predicted positive iff ``probs >= tau``. Element-wise accuracy, exact match
    (every class of the sample right) and micro-F1 per threshold, from one histogram of the elements and one
    of the samples' bounds (:func:`_counts_reaching`).
    """
    p, y = probs[:, 1:].double(), multi_hot[:, 1:].bool()  # (N, K)
    tau = thresholds.to(p.device, torch.float64)
    at, total = _counts_reaching(p.reshape(-1), y.reshape(-1).long(), 2, tau)  # kind 0 negative, 1 positive
    fp, tp = at[:, 0], at[:, 1]
    fn, tn = total[1] - tp, total[0] - fp
    # a sample is exactly right for max_neg < tau <= min_pos: (min_pos >= tau) minus (max_neg >= tau), over the
    # samples where max_neg < min_pos (those reach tau in that order)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=p.device)
    min_pos = torch.where(y, p, inf).amin(dim=1)
    max_neg = torch.where(~y, p, -inf).amax(dim=1)
    ok = max_neg < min_pos
    bounds = torch.cat([min_pos[ok], max_neg[ok]])
    which = torch.cat([torch.zeros_like(min_pos[ok], dtype=torch.long), torch.ones_like(max_neg[ok], dtype=torch.long)])
    reach, _ = _counts_reaching(bounds, which, 2, tau)
    return {
        "element_accuracy": _ratio(tp + tn, torch.tensor(p.numel(), device=p.device).expand_as(tp)),
        "exact_match": _ratio(reach[:, 0] - reach[:, 1], torch.tensor(p.shape[0], device=p.device).expand_as(tp)),
        "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def threshold_curves(
    probs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    thresholds: torch.Tensor | None = None,
    multilabel_targets: dict[int, torch.Tensor] | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Per-rank threshold curves as a dict of tensors: ``{rank index: {"tau": (T,), curve: (T,)}}``.

    ``probs``: ``R`` tensors ``(N, K_r + 1)`` (softmax, or sigmoid for multi-label ranks listed in
    ``multilabel_targets``). Single-label curves: :data:`CURVE_NAMES`; multi-label:
    :data:`MULTILABEL_CURVE_NAMES`, over the rows labelled at that rank. Use :func:`curves_frame` for a tidy DataFrame.
    """
    tau = default_thresholds() if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
    tau = tau.to(targets.device)
    multilabel_targets = multilabel_targets or {}
    out = {}
    for r, p in enumerate(probs):
        if r in multilabel_targets:
            # rows unlabelled at this rank have no label set to score (all-negative rows would
            # count as exact matches whenever nothing is predicted)
            labelled = targets[:, r] != 0
            curves = multilabel_curves(p[labelled], multilabel_targets[r][labelled], tau)
        else:
            curves = single_label_curves(p, targets[:, r], tau)
        out[r] = {"tau": tau, **curves}
    return out


def best_thresholds(curves: dict[int, dict[str, torch.Tensor]], by: str = "accuracy") -> dict[int, tuple[float, float]]:
    """``{rank: (tau, value)}`` maximising curve ``by`` (NaN never wins; ties go to the smallest tau)."""
    best = {}
    for r, c in curves.items():
        if by not in c:
            raise KeyError(f"curve {by!r} not computed for rank {r}; available: {sorted(c)}")
        values = torch.nan_to_num(c[by], nan=-torch.inf)
        i = int(torch.argmax(values))
        best[r] = (float(c["tau"][i]), float(c[by][i]))
    return best


def curves_frame(curves: dict[int, dict[str, torch.Tensor]], ranks: Sequence[str]) -> pd.DataFrame:
    """Tidy DataFrame ``(rank, curve, tau, value)`` from :func:`threshold_curves`' output."""
    import pandas as pd

    frames = []
    for r, c in curves.items():
        tau = c["tau"].cpu().numpy()
        for name, values in c.items():
            if name != "tau":
                frames.append(pd.DataFrame(
                    {"rank": ranks[r], "curve": name, "tau": tau, "value": values.cpu().numpy()}
                ))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------- accumulator (stateful shell)
class HierarchicalAccuracy:
    """Sums the counts of rank, chain and partial-chain accuracy over batches.

    ``update(preds, targets)`` with ``LongTensor (B, R)``; ``compute()`` returns float64 values.
    Because counts (not batch means) are summed, an all-null batch adds nothing to partial-chain
    accuracy rather than a NaN.
    """

    def __init__(self, num_ranks: int):
        self.num_ranks = num_ranks
        self.reset()

    def reset(self) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.long)  # noqa: E731
        self.rank_correct, self.rank_total = z(self.num_ranks), z(self.num_ranks)
        self.chain_correct, self.chain_total = z(()), z(())
        self.partial_correct, self.partial_total = z(()), z(())

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add the counts of ``preds`` and ``targets`` (on any one device: counted there, only the
        counts come to the CPU, where the sums live)."""
        preds, targets = preds.detach(), targets.detach()
        c, t = rank_counts(preds, targets)
        self.rank_correct += c.cpu()
        self.rank_total += t.cpu()
        c, t = chain_counts(preds, targets)
        self.chain_correct += c.cpu()
        self.chain_total += t.cpu()
        c, t = partial_chain_counts(preds, targets)
        self.partial_correct += c.cpu()
        self.partial_total += t.cpu()

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "rank_acc": _ratio(self.rank_correct, self.rank_total),
            "chain_acc": _ratio(self.chain_correct, self.chain_total),
            "partial_chain_acc": _ratio(self.partial_correct, self.partial_total),
        }


# ---------------------------------------------------------------------- more metrics (DESIGN.md 3.6)
# Same conventions: probs ``(N, K_r + 1)`` per rank (column 0 = null), targets ``(N, R)`` with 0 = null.
# Top-k, hdist@k, hP/hR/hF and null accuracy are pure *count* functions, so sums over batches (or
# processes) give exactly the whole-set value; ECE and AUROC are whole-set (torchmetrics).
def real_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """``LongTensor (N, min(k, K))``: the ``k`` most probable *real* classes (ids ``1..K``), most probable first."""
    k = min(k, probs.shape[1] - 1)
    return probs[:, 1:].topk(k, dim=1).indices + 1


def top_k_counts(probs: torch.Tensor, target: torch.Tensor, k: int):
    """``(correct, total)`` of top-k accuracy at one rank: over samples labelled there (``target != 0``),
    those whose target is among the ``k`` most probable real classes. ``probs (N, K + 1)``, ``target (N,)``."""
    labelled = target != 0  # (N,)
    hit = (real_top_k(probs, k) == target[:, None]).any(dim=1) & labelled  # (N,)
    return hit.sum(), labelled.sum()


def top_k_accuracy(probs: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Scalar float64 top-k accuracy at one rank over labelled samples; NaN if none."""
    return _ratio(*top_k_counts(probs, target, k))


def null_counts(preds: torch.Tensor, targets: torch.Tensor):
    """``(correct (R,), total (R,))`` over null-target samples: how many got a null prediction."""
    null = targets == 0  # (N, R)
    return ((preds == 0) & null).sum(dim=0), null.sum(dim=0)


def null_accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(R,)`` float64 accuracy on null targets per rank (the non-null one is :func:`rank_accuracy`); NaN if none."""
    return _ratio(*null_counts(preds, targets))


def hierarchical_counts(preds: torch.Tensor, targets: torch.Tensor):
    """``(intersection, predicted, true)`` summed over samples: ``|A ∩ B|``, ``|A|``, ``|B|`` with the node
    sets ``A = {(r, P[r]) : P[r] != 0}``, ``B = {(r, Y[r]) : Y[r] != 0}`` of each sample."""
    true = targets != 0  # (N, R)
    return ((preds == targets) & true).sum(), (preds != 0).sum(), true.sum()


def hierarchical_prf(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Micro hierarchical precision, recall and F1 (Kiritchenko et al., as in HiClass): ``{"hP", "hR", "hF"}``.

    ``hF = 2 |A ∩ B| / (|A| + |B|)``, equal to ``2 hP hR / (hP + hR)`` where that is defined and 0 when
    nothing predicted is right; NaN only with no node on either side.
    """
    inter, predicted, true = hierarchical_counts(preds, targets)
    return {N.HP: _ratio(inter, predicted), N.HR: _ratio(inter, true), N.HF: _ratio(2 * inter, predicted + true)}


def hdist_counts(probs: Sequence[torch.Tensor], targets: torch.Tensor, taxonomy: Taxonomy, k: int):
    """Integer counts of hdist@k, per rank ``k0`` where samples have their finest labelled rank:
    ``(height_sum (R,), samples (R,), used_k (R,))``.

    For each such sample, the LCA heights (:meth:`Taxonomy.lca_height`) between its true class at ``k0``
    and each of the ``used_k = min(k, K_k0)`` most probable real classes at ``k0`` are summed. Integers,
    so batch sums are exact; :func:`hdist_from_counts` turns them into the mean over labelled samples.
    """
    finest = finest_labelled_rank(targets)  # (N,)
    height_sum, samples, used_k = [], [], []
    for r, p in enumerate(probs):
        rows = finest == r
        top = real_top_k(p[rows], k)  # (M, k') on the outputs' device (lca_height follows it)
        truth = targets[rows, r]  # (M,)
        kk = top.shape[1]
        h = taxonomy.lca_height(r, top.reshape(-1), truth.repeat_interleave(kk)) if kk else truth.new_zeros(0)
        height_sum.append(h.sum())
        samples.append(torch.tensor(truth.numel(), device=truth.device))
        used_k.append(torch.tensor(kk, device=truth.device))
    return torch.stack(height_sum), torch.stack(samples), torch.stack(used_k)


def hdist_from_counts(height_sum: torch.Tensor, samples: torch.Tensor, used_k: torch.Tensor) -> torch.Tensor:
    """Scalar float64 hdist@k from :func:`hdist_counts`: ``height_sum`` and ``samples`` summed over batches,
    ``used_k`` (a property of each rank, not a count) as any batch gave it; NaN with no labelled sample."""
    per_sample = torch.where(used_k > 0, height_sum.double() / used_k.clamp_min(1).double(), 0.0)  # (R,)
    return _ratio(per_sample.sum(), samples.sum())


def hdist_at_k(probs: Sequence[torch.Tensor], targets: torch.Tensor, taxonomy: Taxonomy, k: int) -> torch.Tensor:
    """hdist@k (DESIGN.md 3.6, Making Better Mistakes): mean over labelled samples of the mean LCA height
    between the true class at the finest labelled rank and the ``k`` most probable real classes there.

    With ``k = 1`` this scores the most probable *real* class; the stored ``<split>/hdist@1`` scores the
    model's prediction (argmax including null, :func:`mistake_severity`), which differs only where the
    prediction at the finest labelled rank is null.
    """
    return hdist_from_counts(*hdist_counts(probs, targets, taxonomy, k))


def auroc(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Macro one-vs-rest AUROC of one rank (torchmetrics) over samples labelled there, averaged over the
    real classes present among them; NaN with fewer than two present. ``probs (N, K + 1)``, ``target (N,)``.

    Only the present classes' columns are scored (class ``c``: score ``probs[:, c]``, positive ``target == c``),
    so an absent class neither costs a sort nor enters the mean.
    """
    from torchmetrics.functional.classification import multiclass_auroc

    labelled = target != 0
    present = torch.unique(target[labelled])  # (C,) sorted class ids
    if present.numel() < 2:
        return torch.tensor(float("nan"), dtype=torch.float64, device=probs.device)
    scores = probs[labelled][:, present].float()  # (M, C)
    if not torch.isfinite(scores).all():  # a diverged model: torchmetrics would still return a number
        return torch.tensor(float("nan"), dtype=torch.float64, device=probs.device)
    local = torch.searchsorted(present, target[labelled])  # (M,) index of each target in `present`
    per_class = multiclass_auroc(scores, local, num_classes=present.numel(), average="none", validate_args=False)
    return per_class.double().mean()


def extended_metrics(
    probs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    taxonomy: Taxonomy,
    ranks: Sequence[str],
    split: str,
    multilabel_ranks: Sequence[int] = (),
    preds: torch.Tensor | None = None,
) -> dict[str, float]:
    """The DESIGN.md 3.6 metrics of one split as ``{key: float}`` (keys from :mod:`workbench.names`).

    ``probs``: ``R`` tensors ``(N, K_r + 1)``, softmax including the null column (sigmoid for the
    ``multilabel_ranks``, which get no top-k, ECE or AUROC); ``targets (N, R)``; ``preds (N, R)``: the
    model's predictions (default: argmax over all outputs, the most probable real class on multi-label
    ranks, as :meth:`Trainer.predict_classes`). Keys: per rank ``top1`` (and ``top5`` where the rank
    has >= 5 real classes), ``ece``, ``auroc``, ``acc_null``; for the split ``hdist@1`` (of ``preds``,
    the same value as :func:`mistake_severity`), ``hdist@5``, ``hP``, ``hR``, ``hF``.
    """
    multilabel = set(multilabel_ranks)
    probs = [p.float() for p in probs]  # bf16 outputs (AMP) through torchmetrics and topk in float32
    if preds is None:
        preds = torch.stack([p[:, 1:].argmax(dim=1) + 1 if r in multilabel else p.argmax(dim=1)
                             for r, p in enumerate(probs)], dim=1)  # (N, R)
    out: dict[str, float] = {}
    acc_null = null_accuracy(preds, targets)
    for r, (rank, p) in enumerate(zip(ranks, probs)):
        if r not in multilabel:
            for k in N.TOP_K:
                if k == 1 or p.shape[1] - 1 >= k:
                    out[N.rank_key(split, N.top_k(k), rank)] = float(top_k_accuracy(p, targets[:, r], k))
            # non-finite outputs (a diverged model) have no calibration; torchmetrics would report 0.0
            finite = bool(torch.isfinite(p).all())
            out[N.rank_key(split, N.ECE, rank)] = float(calibration_error(p, targets[:, r])) if finite else math.nan
            out[N.rank_key(split, N.AUROC, rank)] = float(auroc(p, targets[:, r])) if finite else math.nan
        out[N.rank_key(split, N.ACC_NULL, rank)] = float(acc_null[r])
    for k in N.HDIST_K:
        if k == 1:  # the model's prediction, as the stored hdist@1 has always been (see hdist_at_k)
            value = mistake_severity(preds, targets, taxonomy)["hdist@1"]
        else:
            value = hdist_at_k(probs, targets, taxonomy, k)
        out[N.split_key(split, N.hdist(k))] = float(value)
    out.update({N.split_key(split, name): float(v) for name, v in hierarchical_prf(preds, targets).items()})
    return out

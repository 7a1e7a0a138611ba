"""Turning per-rank outputs into predictions (DESIGN.md 3.7): abstaining and hierarchy-consistent decoding.

Pure tensor functions, on any device. Conventions as everywhere: ``R`` ranks coarse to fine, class 0 is
null at every rank, a rank's outputs are ``(N, K_r + 1)`` with column 0 the null output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.errors import TaxonomyError
from workbench.taxonomy import Taxonomy


def abstaining_predictions(probs: Sequence[torch.Tensor], taus) -> torch.Tensor:
    """``LongTensor (N, R)``: DESIGN.md 3.4's threshold rule per rank at ``taus[r]``.

    ``probs``: ``R`` tensors ``(N, K_r + 1)`` (softmax; column 0 = null); ``taus``: ``R`` thresholds
    (a sequence or a ``(R,)`` tensor). At each rank the prediction is the most probable *real* class
    when its probability is ``>= tau``, else null (abstain) -- the rule behind
    :func:`workbench.metrics.single_label_curves`, compared in float64 as it is there, so the counts of
    these predictions equal that curve's counts at the same ``tau``. A rank without a real class always
    abstains.
    """
    taus = torch.as_tensor(taus, dtype=torch.float64).flatten()
    if taus.numel() != len(probs):
        raise ValueError(f"`taus` must have one threshold per rank ({len(probs)}), got {taus.numel()}")
    cols = []
    for r, p in enumerate(probs):
        if p.shape[1] < 2:
            cols.append(torch.zeros(p.shape[0], dtype=torch.long, device=p.device))
            continue
        conf, cls = p[:, 1:].max(dim=1)  # (N,), (N,): the same call as single_label_curves
        cols.append(torch.where(conf.double() >= float(taus[r]), cls + 1, torch.zeros_like(cls)))
    return torch.stack(cols, dim=1)


def _check_outputs(log_probs: Sequence[torch.Tensor], taxonomy: Taxonomy) -> None:
    if len(log_probs) != taxonomy.num_ranks:
        raise TaxonomyError(
            f"`log_probs` must have one tensor per rank of the taxonomy ({taxonomy.num_ranks}: "
            f"{list(taxonomy.ranks)}), got {len(log_probs)}")
    for r, (lp, k) in enumerate(zip(log_probs, taxonomy.num_classes)):
        if lp.dim() != 2 or lp.shape[1] != k or lp.shape[0] != log_probs[0].shape[0]:
            raise TaxonomyError(
                f"`log_probs[{r}]` ({taxonomy.ranks[r]}) must have shape (N, {k}) with the same N at every "
                f"rank, got {tuple(lp.shape)}")


def consistent_paths(log_probs: Sequence[torch.Tensor], taxonomy: Taxonomy, return_scores: bool = False):
    """The best path of the taxonomy for each sample, exactly (DESIGN.md 3.7).

    ``log_probs``: ``R`` tensors ``(N, K_r + 1)`` of log-probabilities (``log_softmax`` per rank, or a
    marginal head's per-rank log-marginals; column 0 = null). A path is a class at some rank ``s`` with
    its ancestors above and null below it, or null everywhere (``s = -1``); its score is
    ``sum_{r <= s} log p_r(path_r) + sum_{r > s} log p_r(null)``. Returns ``LongTensor (N, R)`` (class
    ids, 0 = null), and with ``return_scores`` also the best score, ``float64 (N,)``.

    Exact max-product over the tree, leaves up, vectorised over ``N``: ``best_r(c) = log p_r(c) +
    max(stop_{r+1}, max over children d of best_{r+1}(d))``, with ``stop_r`` the null score of ranks
    ``r..R-1``; one scatter-max per rank gives each class its best child. Ties go to stopping and then to
    the smallest class id. Computed in float64.
    """
    _check_outputs(log_probs, taxonomy)
    lps = [lp.double() for lp in log_probs]
    n, num_ranks = lps[0].shape[0], len(lps)
    device = lps[0].device
    null = torch.stack([lp[:, 0] for lp in lps], dim=1)  # (N, R)
    # stop[:, r] = sum_{u >= r} log p_u(null): the score of ranks r.. when the path has stopped above r
    stop = torch.cat([null.flip(1).cumsum(1).flip(1), null.new_zeros(n, 1)], dim=1)  # (N, R + 1)
    best = lps[-1].clone()  # (N, K + 1): best subtree score from each class at the current rank
    go_on, child = [None] * num_ranks, [None] * num_ranks  # per rank r < R-1: (N, K_r + 1) each
    for r in range(num_ranks - 1, 0, -1):
        parent = taxonomy.parent(r).to(device)[1:]  # (K_r,) parent of each real class at rank r
        k_up = taxonomy.num_classes[r - 1]
        real = best[:, 1:]  # (N, K_r)
        index = parent.expand(n, -1)  # (N, K_r)
        top = torch.full((n, k_up), -torch.inf, dtype=real.dtype, device=device)
        top = top.scatter_reduce(1, index, real, reduce="amax", include_self=True)  # (N, K_{r-1} + 1)
        # the best child of each parent: the smallest class id reaching its parent's maximum
        ids = torch.arange(1, real.shape[1] + 1, device=device).expand(n, -1)  # (N, K_r)
        big = real.shape[1] + 1
        hit = torch.where(real == top.gather(1, index), ids, torch.full_like(ids, big))
        child[r - 1] = torch.full((n, k_up), big, dtype=torch.long, device=device).scatter_reduce(
            1, index, hit, reduce="amin", include_self=True)
        go_on[r - 1] = top > stop[:, r : r + 1]  # strictly better than stopping at rank r - 1
        best = lps[r - 1] + torch.where(go_on[r - 1], top, stop[:, r : r + 1])
    # the root: every rank null, or the best class at rank 0 and its subtree
    if best.shape[1] > 1:
        first_score, first = best[:, 1:].max(dim=1)  # (N,)
        first = first + 1
        start = first_score > stop[:, 0]
    else:  # no real class at rank 0: only the all-null path exists
        first_score = stop[:, 0]
        first = torch.zeros(n, dtype=torch.long, device=device)
        start = torch.zeros(n, dtype=torch.bool, device=device)
    cur = torch.where(start, first, torch.zeros_like(first))  # (N,)
    score = torch.where(start, first_score, stop[:, 0])
    path = [cur]
    for r in range(num_ranks - 1):
        more = go_on[r].gather(1, cur[:, None]).squeeze(1) & (cur != 0)
        nxt = child[r].gather(1, cur[:, None]).squeeze(1)
        cur = torch.where(more, nxt, torch.zeros_like(nxt))
        path.append(cur)
    paths = torch.stack(path, dim=1)  # (N, R)
    return (paths, score) if return_scores else paths


# ---------------------------------------------------------------------- the standard prediction (DESIGN.md 3.7)
def rank_probabilities(logits: list[torch.Tensor], multilabel_ranks=()) -> list[torch.Tensor]:
    """Per rank ``(N, K_r + 1)``: softmax (a marginal head's log-probabilities softmax to themselves), or
    sigmoid on a multi-label (BCE) rank, as the trainer evaluates."""
    return [torch.sigmoid(lg) if r in multilabel_ranks else torch.softmax(lg, dim=1) for r, lg in enumerate(logits)]


def argmax_classes(logits: list[torch.Tensor], multilabel_ranks=()) -> torch.Tensor:
    """``LongTensor (N, R)``: argmax over all ``K_r + 1`` outputs (null is a class the model predicts),
    except on a BCE rank, whose null output is never trained: its most probable real class (as the trainer)."""
    cols = [lg[:, 1:].argmax(dim=1) + 1 if r in multilabel_ranks else lg.argmax(dim=1) for r, lg in enumerate(logits)]
    return torch.stack(cols, dim=1)

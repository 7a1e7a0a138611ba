"""Hierarchical loss (DESIGN.md 3.3) against a slow float64 hand loop, plus its properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.class_weight import compute_class_weight

from workbench.losses import LossConfigError, balanced_class_weights, hierarchical_loss, rank_weights_from_w
from workbench.masking import null_keep_mask
from workbench.taxonomy import Taxonomy

SETTINGS = settings(max_examples=50, deadline=None)


# ---------------------------------------------------------------------- reference
def ref_ce(row: list[float], y: int) -> float:
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row)) - row[y]


def ref_bce(x: float, t: float) -> float:
    # -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), in the overflow-free form
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def ref_loss(logits, targets, keep, rank_weights, class_weights=None, sample_weight=None, multilabel=None):
    """Python loops over i and r, float64: a = keep * sw * cw[y]; L_r = sum a l / sum a (0 if sum a == 0)."""
    n, num_ranks = targets.shape
    multilabel = multilabel or {}
    per_rank = []
    for r in range(num_ranks):
        num = den = 0.0
        for i in range(n):
            y = int(targets[i, r])
            a = float(keep[i, r]) * (1.0 if sample_weight is None else float(sample_weight[i]))
            row = [float(v) for v in logits[r][i]]
            if r in multilabel:
                hot = [float(v) for v in multilabel[r][i]]
                l = sum(ref_bce(row[c], hot[c]) for c in range(1, len(row))) / (len(row) - 1)
            else:
                if class_weights is not None and class_weights[r] is not None:
                    a *= float(class_weights[r][y])
                l = ref_ce(row, y)
            if a != 0:
                num += a * l
                den += a
        per_rank.append(num / den if den > 0 else 0.0)
    total = sum(float(w) * lr for w, lr in zip(rank_weights, per_rank))
    return total, per_rank


@st.composite
def loss_inputs(draw, weights: bool = True):
    num_ranks = draw(st.integers(1, 4))
    n = draw(st.integers(1, 12))
    sizes = [draw(st.integers(1, 5)) for _ in range(num_ranks)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    y = torch.stack([torch.randint(0, k + 1, (n,), generator=g) for k in sizes], dim=1)
    y = torch.where(torch.rand(n, num_ranks, generator=g) < 0.3, 0, y)  # (N, R) with extra nulls
    logits = [3 * torch.randn(n, k + 1, generator=g) for k in sizes]
    keep = torch.rand(n, num_ranks, generator=g) < draw(st.sampled_from([0.0, 0.5, 0.8, 1.0]))
    rank_weights = torch.rand(num_ranks, generator=g)
    cw = sw = None
    if weights and draw(st.booleans()):
        cw = [0.1 + 3 * torch.rand(k + 1, generator=g) if draw(st.booleans()) else None for k in sizes]
    if weights and draw(st.booleans()):
        sw = 0.1 + 3 * torch.rand(n, generator=g)
        sw = torch.where(torch.rand(n, generator=g) < 0.2, 0.0, sw)  # some zero sample weights
    return logits, y, keep, rank_weights, cw, sw


def check_against_reference(got, expected):
    total, per_rank = got
    exp_total, exp_rank = expected
    assert torch.isfinite(total) and torch.isfinite(per_rank).all()
    torch.testing.assert_close(per_rank.double(), torch.tensor(exp_rank, dtype=torch.float64), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(total.double(), torch.tensor(exp_total, dtype=torch.float64), atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------- vs the hand loop
@SETTINGS
@given(loss_inputs())
def test_hierarchical_loss_matches_hand_loop(inputs):
    logits, y, keep, rank_weights, cw, sw = inputs
    got = hierarchical_loss(logits, y, keep, rank_weights, class_weights=cw, sample_weight=sw)
    check_against_reference(got, ref_loss(logits, y, keep, rank_weights, cw, sw))


@SETTINGS
@given(loss_inputs(weights=False), st.data())
def test_multilabel_rank_matches_bce_hand_loop(inputs, data):
    logits, y, _, rank_weights, _, sw = inputs
    n, num_ranks = y.shape
    r = data.draw(st.integers(0, num_ranks - 1))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    hot = (torch.rand(logits[r].shape, generator=g) < 0.4).float()  # (N, K_r + 1)
    labelled = torch.rand(n, generator=g) < 0.7
    hot = hot * labelled[:, None]
    hot[:, 0] = 0  # column 0 (null) unused
    y = y.clone()
    y[:, r] = labelled.long()  # Y[i, r] != 0 marks a labelled row of the multi-label rank
    keep = null_keep_mask(y, 0.0, phase1=True, training=True)
    got = hierarchical_loss(logits, y, keep, rank_weights, sample_weight=sw, multilabel_targets={r: hot})
    check_against_reference(got, ref_loss(logits, y, keep, rank_weights, None, sw, multilabel={r: hot}))


# ---------------------------------------------------------------------- rank weights
@SETTINGS
@given(st.floats(0.0, 1.0))
def test_rank_weights_from_w(w):
    assert rank_weights_from_w(w, 1).tolist() == [1.0]
    torch.testing.assert_close(rank_weights_from_w(w, 2), torch.tensor([w, 1 - w]))
    torch.testing.assert_close(rank_weights_from_w(w, 3), torch.tensor([w / 2, w / 2, 1 - w]))
    torch.testing.assert_close(rank_weights_from_w(w, 4), torch.tensor([w / 3, w / 3, w / 3, 1 - w]))
    for num_ranks in (1, 2, 3, 4, 7):
        rw = rank_weights_from_w(w, num_ranks)
        assert rw.shape == (num_ranks,) and (rw >= 0).all()
        assert rw.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("w", [-0.1, 1.5, float("nan")])
def test_rank_weights_reject_w_outside_unit_interval(w):
    with pytest.raises(LossConfigError, match=r"LOSS\.W"):
        rank_weights_from_w(w, 3)


@SETTINGS
@given(loss_inputs())
def test_total_is_rank_weighted_sum_and_explicit_vector_is_used(inputs):
    logits, y, keep, rank_weights, cw, sw = inputs
    total, per_rank = hierarchical_loss(logits, y, keep, rank_weights, class_weights=cw, sample_weight=sw)
    torch.testing.assert_close(total, (rank_weights * per_rank).sum())
    w = 0.3
    total_w, per_rank_w = hierarchical_loss(logits, y, keep, rank_weights_from_w(w, y.shape[1]), cw, sw)
    torch.testing.assert_close(per_rank_w, per_rank)
    torch.testing.assert_close(total_w, (rank_weights_from_w(w, y.shape[1]) * per_rank).sum())


# ---------------------------------------------------------------------- masks
@SETTINGS
@given(loss_inputs())
def test_phase1_equals_scheduled_loss_at_p0(inputs):
    logits, y, _, rank_weights, cw, sw = inputs
    keep1 = null_keep_mask(y, 0.7, phase1=True, training=True)
    keep0 = null_keep_mask(y, 0.0, phase1=False, training=True, generator=torch.Generator().manual_seed(0))
    a = hierarchical_loss(logits, y, keep1, rank_weights, cw, sw)
    b = hierarchical_loss(logits, y, keep0, rank_weights, cw, sw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@SETTINGS
@given(loss_inputs())
def test_all_true_keep_is_no_mask(inputs):
    logits, y, _, rank_weights, cw, _ = inputs
    keep = null_keep_mask(y, 0.3, phase1=False, training=False)  # evaluation: all True
    assert keep.all()
    _, per_rank = hierarchical_loss(logits, y, keep, rank_weights)
    plain = torch.stack([F.cross_entropy(x, y[:, r]) for r, x in enumerate(logits)])
    torch.testing.assert_close(per_rank, plain)
    if cw is not None:
        # with all-True keep the contract's class weighting is torch's weighted-mean CE
        _, per_rank = hierarchical_loss(logits, y, keep, rank_weights, class_weights=cw)
        for r, x in enumerate(logits):
            expected = F.cross_entropy(x, y[:, r], weight=cw[r]) if cw[r] is not None else plain[r]
            torch.testing.assert_close(per_rank[r], expected)


@SETTINGS
@given(loss_inputs())
def test_all_false_keep_gives_zero_loss_and_zero_gradient(inputs):
    logits, y, _, rank_weights, cw, sw = inputs
    leaves = [x.clone().requires_grad_(True) for x in logits]
    keep = torch.zeros_like(y, dtype=torch.bool)
    total, per_rank = hierarchical_loss(leaves, y, keep, rank_weights, cw, sw)
    assert total.item() == 0.0 and (per_rank == 0).all()
    total.backward()
    for x in leaves:
        assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad == 0).all()


# ---------------------------------------------------------------------- weights
@SETTINGS
@given(loss_inputs(), st.floats(0.01, 100.0))
def test_scaling_class_weights_of_a_rank_leaves_its_loss_unchanged(inputs, scale):
    logits, y, keep, rank_weights, _, sw = inputs
    g = torch.Generator().manual_seed(1)
    cw = [0.1 + torch.rand(x.shape[1], generator=g) for x in logits]
    _, base = hierarchical_loss(logits, y, keep, rank_weights, cw, sw)
    _, scaled = hierarchical_loss(logits, y, keep, rank_weights, [c * scale for c in cw], sw)
    torch.testing.assert_close(scaled, base, rtol=1e-5, atol=1e-6)


# Hand-worked: one rank, K = 2, two samples.
#   sample 0: logits (0, 2, 0), target 1 -> l0 = log(1 + e^2 + 1) - 2 = log(2 + e^2) - 2
#   sample 1: logits (0, 0, 1), target 2 -> l1 = log(1 + 1 + e) - 1 = log(2 + e) - 1
HAND_LOGITS = [torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])]
HAND_Y = torch.tensor([[1], [2]])
HAND_KEEP = torch.ones(2, 1, dtype=torch.bool)
L0 = math.log(2 + math.e**2) - 2
L1 = math.log(2 + math.e) - 1


@pytest.mark.parametrize(
    "cw, sw, expected",
    [
        (None, None, (L0 + L1) / 2),  # plain mean
        (torch.tensor([1.0, 3.0, 1.0]), None, (3 * L0 + L1) / 4),  # a = (3, 1)
        (None, torch.tensor([2.0, 1.0]), (2 * L0 + L1) / 3),  # a = (2, 1)
        (torch.tensor([1.0, 3.0, 1.0]), torch.tensor([2.0, 1.0]), (6 * L0 + L1) / 7),  # a = (2*3, 1*1)
        (torch.tensor([5.0, 3.0, 1.0]), torch.tensor([0.0, 1.0]), L1),  # a = (0, 1); null weight unused
    ],
)
def test_class_and_sample_weights_applied_once_hand_worked(cw, sw, expected):
    total, per_rank = hierarchical_loss(HAND_LOGITS, HAND_Y, HAND_KEEP, [1.0], [cw], sw)
    assert per_rank[0].item() == pytest.approx(expected, rel=1e-6)
    assert total.item() == pytest.approx(expected, rel=1e-6)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 60), st.integers(1, 4))
def test_balanced_class_weights_match_sklearn(seed, n, num_ranks):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (num_ranks,), generator=g).tolist()
    y = torch.stack([torch.randint(0, k + 1, (n,), generator=g) for k in sizes], dim=1)  # (N, R)
    weights = balanced_class_weights(y, [k + 1 for k in sizes])
    assert len(weights) == num_ranks
    for r, w in enumerate(weights):
        assert w.shape == (sizes[r] + 1,) and torch.isfinite(w).all() and (w > 0).all()
        labelled = y[:, r][y[:, r] != 0].numpy()
        if labelled.size == 0:
            continue
        classes = np.unique(labelled)
        expected = compute_class_weight("balanced", classes=classes, y=labelled)
        np.testing.assert_allclose(w[torch.from_numpy(classes)].numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------------- marginal head mode
# order > family > genus with a family (Ochotonidae) whose genus is never labelled: its marginal
# log-probability is -inf.  Vocabularies (ids):
#   order:  null[0] Lagomorpha[1] Rodentia[2]
#   family: null[0] Leporidae[1] Muridae[2] Ochotonidae[3] Sciuridae[4]
#   genus:  null[0] Lepus[1] Mus[2] Rattus[3] Sciurus[4]
MARGINAL_TABLE = pd.DataFrame(
    {
        "order": ["Rodentia", "Rodentia", "Rodentia", "Lagomorpha", "Lagomorpha"],
        "family": ["Muridae", "Muridae", "Sciuridae", "Leporidae", "Ochotonidae"],
        "genus": ["Mus", "Rattus", "Sciurus", "Lepus", None],
    },
    dtype=object,
)


def marginal_setup(seed: int, n: int):
    tax = Taxonomy.from_frame(MARGINAL_TABLE, ["order", "family", "genus"])
    g = torch.Generator().manual_seed(seed)
    leaf = torch.randint(0, 5, (n,), generator=g)  # (N,) a genus, 0 = null; never Ochotonidae
    y = torch.stack([tax.ancestor_map(2, r)[leaf] for r in range(3)], dim=1)  # (N, R) consistent
    y = torch.where(torch.rand(n, 3, generator=g) < 0.2, 0, y)
    leaf_logits = 3 * torch.randn(n, 5, generator=g)
    return tax, y, leaf_logits


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 20))
def test_marginal_mode_coarse_ce_is_minus_log_summed_child_probs(seed, n):
    tax, y, leaf_logits = marginal_setup(seed, n)
    keep = torch.ones_like(y, dtype=torch.bool)  # nulls count too: their CE is -log p(null genus)
    total, per_rank = hierarchical_loss(tax.marginal_log_probs(leaf_logits), y, keep, [0.2, 0.3, 0.5])
    # naive float64: -log(sum of the softmax probabilities of the descendant genera)
    expected = []
    for r in range(3):
        anc = tax.ancestor_map(2, r).tolist()
        terms = []
        for i, row in enumerate(leaf_logits.double().tolist()):
            m = max(row)
            z = sum(math.exp(v - m) for v in row)
            target = int(y[i, r])
            terms.append(-math.log(sum(math.exp(v - m) / z for d, v in enumerate(row) if anc[d] == target)))
        expected.append(sum(terms) / len(terms))
    torch.testing.assert_close(per_rank.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    assert total.item() == pytest.approx(0.2 * expected[0] + 0.3 * expected[1] + 0.5 * expected[2], rel=1e-5, abs=1e-5)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 20))
def test_no_nan_or_inf_when_a_masked_element_has_minus_inf_log_prob(seed, n):
    tax, y, leaf_logits = marginal_setup(seed, n)
    leaf_logits.requires_grad_(True)
    log_probs = tax.marginal_log_probs(leaf_logits)
    assert torch.isinf(log_probs[1][:, 3]).all()  # Ochotonidae has no genus: -inf
    y = y.clone()
    y[0, 1] = 3  # at least one target with probability 0 ...
    keep = torch.ones_like(y, dtype=torch.bool)
    keep[:, 1] = y[:, 1] != 3  # ... and every such element masked out
    total, per_rank = hierarchical_loss(log_probs, y, keep, [0.2, 0.3, 0.5])
    assert torch.isfinite(total) and torch.isfinite(per_rank).all()
    total.backward()
    assert torch.isfinite(leaf_logits.grad).all()

    # the same with raw logits: -inf at a masked target, all-False keep, weights everywhere
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, 4, generator=g).requires_grad_(True) for _ in range(2)]
    y2 = torch.randint(1, 4, (n, 2), generator=g)
    with torch.no_grad():
        logits[0][0, y2[0, 0]] = -math.inf
    keep2 = torch.ones(n, 2, dtype=torch.bool)
    keep2[0, 0] = False
    for k in (keep2, torch.zeros_like(keep2)):
        for x in logits:
            x.grad = None
        total, per_rank = hierarchical_loss(logits, y2, k, [0.5, 0.5], [torch.ones(4) * 2, None], torch.ones(n))
        assert torch.isfinite(total) and torch.isfinite(per_rank).all()
        total.backward()
        assert all(torch.isfinite(x.grad).all() for x in logits)
        assert (logits[0].grad[0] == 0).all()

"""Metrics (DESIGN.md 3.4) against slow per-sample references, scikit-learn and torchmetrics,
plus hand-worked examples and invariance properties (sample order, batch splitting)."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, hamming_loss
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

from workbench.metrics import (
    CURVE_NAMES,
    MULTILABEL_CURVE_NAMES,
    HierarchicalAccuracy,
    best_thresholds,
    calibration_error,
    chain_accuracy,
    consistency_rate,
    default_thresholds,
    mistake_severity,
    partial_chain_accuracy,
    rank_accuracy,
    threshold_curves,
)
from workbench.taxonomy import Taxonomy

SETTINGS = settings(max_examples=50, deadline=None)
NAN = float("nan")


# ---------------------------------------------------------------------- random trees and data
from strategies import ref_lca_height, tree_taxonomy, trees  # noqa: E402


def random_path(rng: random.Random, sizes, parents, depth: int) -> list[int]:
    """A class at rank ``depth`` with its ancestors, null below (all null for depth -1)."""
    path = [0] * len(sizes)
    if depth >= 0:
        c = rng.randint(1, sizes[depth])
        for u in range(depth, -1, -1):
            path[u] = c
            c = parents[u][c]
    return path


def random_batch(seed: int, n: int, sizes, parents):
    """Targets: partial paths (labelled down to a random depth, some coarse ranks nulled too).
    Predictions: a mix of exact copies, copies with one rank changed, consistent paths, noise."""
    rng = random.Random(seed)
    num_ranks = len(sizes)
    targets, preds = [], []
    for _ in range(n):
        t = random_path(rng, sizes, parents, rng.randint(-1, num_ranks - 1))
        t = [0 if rng.random() < 0.15 else c for c in t]
        mode = rng.randint(0, 3)
        if mode == 0:
            p = list(t)
        elif mode == 1:
            p = list(t)
            r = rng.randrange(num_ranks)
            p[r] = rng.randint(0, sizes[r])
        elif mode == 2:
            p = random_path(rng, sizes, parents, rng.randint(-1, num_ranks - 1))
        else:
            p = [rng.randint(0, k) for k in sizes]
        targets.append(t)
        preds.append(p)
    shape = (n, num_ranks)
    return torch.tensor(preds, dtype=torch.long).reshape(shape), torch.tensor(targets, dtype=torch.long).reshape(shape)


@st.composite
def batches(draw, min_n: int = 1, max_n: int = 40):
    sizes, parents = draw(trees())
    n = draw(st.integers(min_n, max_n))
    preds, targets = random_batch(draw(st.integers(0, 2**31 - 1)), n, sizes, parents)
    return sizes, parents, preds, targets


# ---------------------------------------------------------------------- slow references
def ratio(num, den):
    return num / den if den else NAN


def ref_rank_accuracy(preds, targets, include_null=False):
    p, t = preds.tolist(), targets.tolist()
    out = []
    for r in range(targets.shape[1]):
        num = den = 0
        for i in range(len(t)):
            if include_null or t[i][r] != 0:
                den += 1
                num += p[i][r] == t[i][r]
        out.append(ratio(num, den))
    return out


def ref_chain_accuracy(preds, targets):
    p, t = preds.tolist(), targets.tolist()
    return ratio(sum(all(a == b for a, b in zip(pi, ti)) for pi, ti in zip(p, t)), len(t))


def ref_partial_chain_accuracy(preds, targets):
    num = den = 0
    for pi, ti in zip(preds.tolist(), targets.tolist()):
        if all(c == 0 for c in ti):
            continue  # null at every rank: excluded
        den += 1
        num += all(a == b for a, b in zip(pi, ti) if b != 0)
    return ratio(num, den)


def ref_consistency(preds, parents):
    """Adjacent predicted classes are parent and child; a null finer prediction makes no claim."""
    ok = 0
    for pi in preds.tolist():
        ok += all(pi[r] == 0 or parents[r][pi[r]] == pi[r - 1] for r in range(1, len(pi)))
    return ratio(ok, preds.shape[0])


def ref_severity(preds, targets, parents):
    wrong_h, all_h = [], []
    for pi, ti in zip(preds.tolist(), targets.tolist()):
        labelled = [r for r, c in enumerate(ti) if c != 0]
        if not labelled:
            continue
        k = labelled[-1]  # finest labelled rank
        h = ref_lca_height(parents, k, pi[k], ti[k])
        all_h.append(h)
        if pi[k] != ti[k]:
            wrong_h.append(h)
    return ratio(sum(wrong_h), len(wrong_h)), ratio(sum(all_h), len(all_h))


def naive_single_curves(probs, target, taus):
    """DESIGN 3.4 literally, one threshold at a time."""
    conf, cls = probs[:, 1:].max(dim=1)
    cls = cls + 1
    labelled = target != 0
    out = {name: [] for name in CURVE_NAMES}
    for tau in taus.tolist():
        pred = torch.where(conf.double() >= tau, cls, torch.zeros_like(cls))  # abstain = null
        made = pred != 0
        out["coverage"].append(ratio(int((labelled & made).sum()), int(labelled.sum())))
        out["selective_accuracy"].append(
            ratio(int((labelled & made & (pred == target)).sum()), int((labelled & made).sum()))
        )
        out["accuracy"].append(ratio(int((pred == target).sum()), len(target)))
        out["null_false_positive_rate"].append(ratio(int((~labelled & made).sum()), int((~labelled).sum())))
    return out


def naive_multilabel_curves(probs, hot, taus):
    p, y = probs[:, 1:], hot[:, 1:].bool()
    out = {name: [] for name in MULTILABEL_CURVE_NAMES}
    for tau in taus.tolist():
        pred = p.double() >= tau
        tp = int((pred & y).sum())
        fp = int((pred & ~y).sum())
        fn = int((~pred & y).sum())
        out["element_accuracy"].append(ratio(int((pred == y).sum()), y.numel()))
        out["exact_match"].append(ratio(int((pred == y).all(dim=1).sum()), y.shape[0]))
        out["micro_f1"].append(ratio(2 * tp, 2 * tp + fp + fn))
    return out


def close(got, expected):
    torch.testing.assert_close(
        torch.as_tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
        equal_nan=True, atol=1e-12, rtol=1e-12,
    )


# ---------------------------------------------------------------------- vs references
@SETTINGS
@given(batches(min_n=0))
def test_rank_chain_partial_accuracy_match_references(batch):
    _, _, preds, targets = batch
    close(rank_accuracy(preds, targets), ref_rank_accuracy(preds, targets))
    close(rank_accuracy(preds, targets, include_null=True), ref_rank_accuracy(preds, targets, include_null=True))
    close(chain_accuracy(preds, targets), ref_chain_accuracy(preds, targets))
    close(partial_chain_accuracy(preds, targets), ref_partial_chain_accuracy(preds, targets))


@SETTINGS
@given(batches())
def test_rank_accuracy_matches_sklearn_and_torchmetrics(batch):
    sizes, _, preds, targets = batch
    acc = rank_accuracy(preds, targets)
    for r, k in enumerate(sizes):
        rows = targets[:, r] != 0
        if not rows.any():
            assert math.isnan(acc[r])
            continue
        assert acc[r].item() == pytest.approx(accuracy_score(targets[rows, r].numpy(), preds[rows, r].numpy()))
        tm = multiclass_accuracy(preds[:, r], targets[:, r], num_classes=k + 1, average="micro", ignore_index=0)
        assert acc[r].item() == pytest.approx(tm.item(), abs=1e-6)
    # include_null: plain accuracy over every sample
    acc_all = rank_accuracy(preds, targets, include_null=True)
    for r in range(len(sizes)):
        assert acc_all[r].item() == pytest.approx(accuracy_score(targets[:, r].numpy(), preds[:, r].numpy()))


@SETTINGS
@given(batches())
def test_consistency_and_severity_match_references(batch):
    sizes, parents, preds, targets = batch
    tax = tree_taxonomy(sizes, parents)
    close(consistency_rate(preds, tax), ref_consistency(preds, parents))
    sev = mistake_severity(preds, targets, tax)
    severity, hdist = ref_severity(preds, targets, parents)
    close(sev["severity"], severity)
    close(sev["hdist@1"], hdist)


@SETTINGS
@given(batches(), st.integers(0, 2**31 - 1), st.sampled_from([1.0, 4.0]), st.booleans())
def test_single_label_threshold_curves_match_naive_loop(batch, seed, scale, quantise):
    sizes, _, _, targets = batch
    n = targets.shape[0]
    g = torch.Generator().manual_seed(seed)
    probs = [torch.softmax(scale * torch.randn(n, k + 1, generator=g, dtype=torch.float64), dim=1) for k in sizes]
    if quantise:  # ties between samples and confidences landing exactly on a threshold
        probs = [torch.round(p, decimals=1) for p in probs]
    conf0 = probs[0][:, 1:].max(dim=1).values
    taus = torch.unique(torch.cat([default_thresholds(), conf0[:3]]))  # sorted, incl. exact confidences
    curves = threshold_curves(probs, targets, thresholds=taus)
    assert sorted(curves) == list(range(len(sizes)))
    for r, p in enumerate(probs):
        assert torch.equal(curves[r]["tau"], taus)
        expected = naive_single_curves(p, targets[:, r], taus)
        for name in CURVE_NAMES:
            close(curves[r][name], expected[name])
    default = threshold_curves(probs, targets)
    torch.testing.assert_close(default[0]["tau"], torch.linspace(0, 1, 101, dtype=torch.float64))
    for name in CURVE_NAMES:
        close(default[0][name], naive_single_curves(probs[0], targets[:, 0], default[0]["tau"])[name])


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_multilabel_threshold_curves_match_naive_loop_and_sklearn(n, k, seed, quantise):
    g = torch.Generator().manual_seed(seed)
    probs = torch.sigmoid(2 * torch.randn(n, k + 1, generator=g, dtype=torch.float64))
    if quantise:
        probs = torch.round(probs, decimals=1)
    hot = (torch.rand(n, k + 1, generator=g) < 0.4).float()
    hot[:, 0] = 0
    targets = torch.ones(n, 2, dtype=torch.long)
    single = torch.softmax(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    taus = torch.unique(torch.cat([default_thresholds(), torch.arange(11, dtype=torch.float64) / 10]))
    curves = threshold_curves([single, probs], targets, thresholds=taus, multilabel_targets={1: hot})
    assert set(curves[0]) == {"tau", *CURVE_NAMES}
    assert set(curves[1]) == {"tau", *MULTILABEL_CURVE_NAMES}
    expected = naive_multilabel_curves(probs, hot, taus)
    for name in MULTILABEL_CURVE_NAMES:
        close(curves[1][name], expected[name])
    y = hot[:, 1:].numpy().astype(int)
    for tau in [i / 10 for i in range(11)]:  # sklearn at every 0.1 (exact taus, ties when quantised)
        j = int(torch.nonzero(taus == tau)[0])
        pred = (probs[:, 1:] >= tau).numpy().astype(int)
        assert curves[1]["exact_match"][j].item() == pytest.approx(accuracy_score(y, pred))
        assert curves[1]["element_accuracy"][j].item() == pytest.approx(1 - hamming_loss(y, pred))
        if (y | pred).any():  # micro-F1 is defined
            # sklearn reads a single column as binary, not multi-label: micro-F1 over one label is
            # the binary F1 of the flattened elements
            sk = f1_score(y, pred, average="micro") if k > 1 else f1_score(y.ravel(), pred.ravel())
            assert curves[1]["micro_f1"][j].item() == pytest.approx(sk)


# Hand-worked curves, one rank with K = 2, float64 probabilities:
#   s0: (0.1, 0.7, 0.2) target 1 -> conf 0.7, class 1 (right)
#   s1: (0.5, 0.2, 0.3) target 1 -> conf 0.3, class 2 (wrong)
#   s2: (0.2, 0.6, 0.2) target 0 -> conf 0.6, class 1 (a null target given a class)
# tau=0.0 : all predict; coverage 2/2, selective 1/2, accuracy 1/3 (s0), null-FPR 1/1
# tau=0.5 : s1 abstains; coverage 1/2, selective 1/1, accuracy 1/3 (s0), null-FPR 1/1
# tau=0.65: s1, s2 abstain; coverage 1/2, selective 1, accuracy 2/3 (s0, s2), null-FPR 0
# tau=0.7 : same as 0.65 (0.7 >= 0.7 still predicts)
# tau=0.9 : all abstain; coverage 0, selective NaN, accuracy 1/3 (s2), null-FPR 0
HAND_PROBS = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.6, 0.2]], dtype=torch.float64)
HAND_TARGET = torch.tensor([[1], [1], [0]])
HAND_TAUS = torch.tensor([0.0, 0.5, 0.65, 0.7, 0.9], dtype=torch.float64)


def test_threshold_curves_hand_worked_and_best_thresholds():
    c = threshold_curves([HAND_PROBS], HAND_TARGET, thresholds=HAND_TAUS)[0]
    close(c["coverage"], [1, 0.5, 0.5, 0.5, 0])
    close(c["selective_accuracy"], [0.5, 1, 1, 1, NAN])
    close(c["accuracy"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1 / 3])
    close(c["null_false_positive_rate"], [1, 1, 0, 0, 0])
    curves = {0: c}
    # accuracy peaks at 0.65 and 0.7: ties go to the smaller tau
    assert best_thresholds(curves, by="accuracy") == {0: (0.65, pytest.approx(2 / 3))}
    # selective accuracy is NaN at 0.9: NaN never wins
    tau, value = best_thresholds(curves, by="selective_accuracy")[0]
    assert (tau, value) == (0.5, 1.0)
    with pytest.raises(KeyError, match="micro_f1"):
        best_thresholds(curves, by="micro_f1")


@SETTINGS
@given(st.lists(st.one_of(st.floats(0, 1), st.just(NAN)), min_size=1, max_size=30))
def test_best_thresholds_is_argmax_and_never_nan(values):
    taus = torch.linspace(0, 1, len(values), dtype=torch.float64)
    v = torch.tensor(values, dtype=torch.float64)
    tau, value = best_thresholds({3: {"tau": taus, "accuracy": v}})[3]
    finite = [x for x in values if not math.isnan(x)]
    if finite:
        assert not math.isnan(value) and value == max(finite)
        assert tau == float(taus[values.index(max(finite))])  # first (smallest tau) maximum


# ---------------------------------------------------------------------- hand-worked accuracies
# taxa > genus > species (ratdat style). Vocabularies (ids):
#   taxa:    null[0] Bird[1] Rabbit[2] Rodent[3]
#   genus:   null[0] Amphispiza[1] Chaetodipus[2] Dipodomys[3] Sylvilagus[4]
#   species: null[0] audubonii[1] bilineata[2] merriami[3] ordii[4] penicillatus[5]
def test_partial_chain_hand_worked():
    targets = torch.tensor([[3, 3, 0], [0, 0, 0]])  # (Rodent, Dipodomys, null), all null
    preds = torch.tensor([[3, 3, 3], [1, 1, 2]])  # (Rodent, Dipodomys, merriami), (Bird, ...)
    # sample 0: labelled to genus, species predicted: right for partial chain, wrong for chain
    assert partial_chain_accuracy(preds[:1], targets[:1]).item() == 1.0
    assert chain_accuracy(preds[:1], targets[:1]).item() == 0.0
    # sample 1 is null at every rank: excluded from partial chain (1/1), counted by chain (0/2)
    assert partial_chain_accuracy(preds, targets).item() == 1.0
    assert chain_accuracy(preds, targets).item() == 0.0
    # rank accuracy over labelled samples: 1, 1, NaN (no labelled species)
    close(rank_accuracy(preds, targets), [1.0, 1.0, NAN])
    # include_null: a null target needs a null prediction: (1/2, 1/2, 0/2)
    close(rank_accuracy(preds, targets, include_null=True), [0.5, 0.5, 0.0])
    # (Bird, Amphispiza, bilineata) predicted as audubonii: wrong at species -> 1/2
    targets3 = torch.cat([targets, torch.tensor([[1, 1, 2]])])
    preds3 = torch.cat([preds, torch.tensor([[1, 1, 1]])])
    assert partial_chain_accuracy(preds3, targets3).item() == 0.5


def test_all_null_batch_is_nan_and_does_not_poison_the_accumulator():
    null_targets = torch.zeros(4, 3, dtype=torch.long)
    null_preds = torch.tensor([[1, 1, 2], [0, 0, 0], [3, 3, 3], [0, 0, 0]])
    assert math.isnan(partial_chain_accuracy(null_preds, null_targets).item())
    assert torch.isnan(rank_accuracy(null_preds, null_targets)).all()
    good_targets = torch.tensor([[3, 3, 0], [1, 1, 2]])
    good_preds = torch.tensor([[3, 3, 3], [1, 1, 1]])  # partial chain 1/2
    acc = HierarchicalAccuracy(3)
    acc.update(good_preds, good_targets)
    before = acc.compute()
    acc.update(null_preds, null_targets)
    after = acc.compute()
    assert after["partial_chain_acc"].item() == 0.5
    torch.testing.assert_close(after["rank_acc"], before["rank_acc"], equal_nan=True)
    # chain accuracy does count the all-null samples: 0 + 2 right of 2 + 4
    assert after["chain_acc"].item() == pytest.approx(2 / 6)
    only_null = HierarchicalAccuracy(3)
    only_null.update(null_preds, null_targets)
    assert math.isnan(only_null.compute()["partial_chain_acc"].item())


def test_accumulator_is_not_a_mean_of_batch_means():
    # batch A: 1 sample, right (1/1); batch B: 3 samples, all wrong (0/3)
    # counts: 1/4 = 0.25; a mean of batch means would give (1 + 0) / 2 = 0.5
    a_t = torch.tensor([[1, 1, 2]])
    b_t = torch.tensor([[3, 3, 3], [3, 3, 4], [2, 4, 1]])
    acc = HierarchicalAccuracy(3)
    acc.update(a_t.clone(), a_t)
    acc.update(torch.zeros_like(b_t), b_t)
    out = acc.compute()
    for key in ("partial_chain_acc", "chain_acc"):
        assert out[key].item() == 0.25
    assert out["rank_acc"].tolist() == [0.25, 0.25, 0.25]
    acc.reset()
    assert math.isnan(acc.compute()["chain_acc"].item())


@SETTINGS
@given(batches(), st.lists(st.integers(0, 40), max_size=6))
def test_accumulator_over_random_splits_equals_one_shot(batch, cuts):
    sizes, _, preds, targets = batch
    n = targets.shape[0]
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    acc = HierarchicalAccuracy(len(sizes))
    for lo, hi in zip(bounds, bounds[1:]):
        acc.update(preds[lo:hi], targets[lo:hi])  # empty batches included
    out = acc.compute()
    close(out["rank_acc"], rank_accuracy(preds, targets).tolist())
    close(out["chain_acc"], chain_accuracy(preds, targets).item())
    close(out["partial_chain_acc"], partial_chain_accuracy(preds, targets).item())


@SETTINGS
@given(batches(), st.integers(0, 2**31 - 1))
def test_all_metrics_invariant_to_sample_order(batch, seed):
    sizes, parents, preds, targets = batch
    tax = tree_taxonomy(sizes, parents)
    g = torch.Generator().manual_seed(seed)
    n = targets.shape[0]
    perm = torch.randperm(n, generator=g)
    probs = [torch.softmax(torch.randn(n, k + 1, generator=g, dtype=torch.float64), 1) for k in sizes]

    def everything(p, t, pr):
        out = {
            "rank": rank_accuracy(p, t), "rank_null": rank_accuracy(p, t, include_null=True),
            "chain": chain_accuracy(p, t), "partial": partial_chain_accuracy(p, t),
            "consistency": consistency_rate(p, tax), **mistake_severity(p, t, tax),
        }
        for r, c in threshold_curves(pr, t).items():
            out.update({f"{r}/{name}": v for name, v in c.items()})
        return out

    a = everything(preds, targets, probs)
    b = everything(preds[perm], targets[perm], [x[perm] for x in probs])
    for key in a:
        torch.testing.assert_close(b[key], a[key], equal_nan=True, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------- severity, consistency
# order > family > genus. Vocabularies (ids):
#   order:  null[0] Lagomorpha[1] Rodentia[2]
#   family: null[0] Leporidae[1] Muridae[2] Sciuridae[3]
#   genus:  null[0] Lepus[1] Mus[2] Rattus[3] Sciurus[4]
ORDER_TABLE = pd.DataFrame(
    {
        "order": ["Rodentia", "Rodentia", "Rodentia", "Lagomorpha"],
        "family": ["Muridae", "Muridae", "Sciuridae", "Leporidae"],
        "genus": ["Mus", "Rattus", "Sciurus", "Lepus"],
    }
)


def test_mistake_severity_hand_worked():
    tax = Taxonomy.from_frame(ORDER_TABLE, ["order", "family", "genus"])
    targets = torch.tensor([
        [2, 2, 2],  # Mus predicted Rattus: k = 2, same family -> h = 1 (wrong)
        [2, 2, 2],  # Mus predicted Mus -> h = 0 (right)
        [2, 3, 0],  # Sciuridae (k = 1) predicted Muridae: same order -> h = 1 (wrong)
        [1, 1, 1],  # Lepus predicted Sciurus: no shared ancestor -> h = k + 1 = 3 (wrong)
        [2, 2, 3],  # Rattus predicted null: a null shares no ancestor -> h = 3 (wrong)
        [0, 0, 0],  # all null: not scored
    ])
    preds = torch.tensor([[2, 2, 3], [2, 2, 2], [2, 2, 0], [2, 3, 4], [2, 2, 0], [1, 1, 1]])
    out = mistake_severity(preds, targets, tax)
    assert out["severity"].item() == pytest.approx((1 + 1 + 3 + 3) / 4)  # wrong samples: 2.0
    assert out["hdist@1"].item() == pytest.approx((1 + 0 + 1 + 3 + 3) / 5)  # labelled samples: 1.6


def test_consistency_rate_hand_worked():
    tax = Taxonomy.from_frame(ORDER_TABLE, ["order", "family", "genus"])
    preds = torch.tensor([
        [2, 2, 2],  # Rodentia > Muridae > Mus: consistent
        [2, 1, 1],  # Leporidae is not a child of Rodentia: inconsistent
        [2, 2, 0],  # null genus makes no claim: consistent
        [0, 2, 2],  # Muridae under a null order: inconsistent
    ])
    assert consistency_rate(preds, tax).item() == 0.5


# ---------------------------------------------------------------------- calibration
@SETTINGS
@given(st.integers(2, 60), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_calibration_error_ignores_null_targets(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(n, k + 1, generator=g), dim=1)
    target = torch.randint(0, k + 1, (n,), generator=g)
    labelled = target != 0
    ece = calibration_error(probs, target)
    if not labelled.any():
        assert math.isnan(ece.item())
        return
    assert 0.0 <= ece.item() <= 1.0
    expected = multiclass_calibration_error(probs[labelled], target[labelled], num_classes=k + 1, n_bins=15)
    torch.testing.assert_close(ece, expected)
    # the probabilities of null-target samples do not matter
    other = torch.where(labelled[:, None], probs, torch.softmax(torch.randn(n, k + 1, generator=g), dim=1))
    torch.testing.assert_close(calibration_error(other, target), ece)


def test_multilabel_curves_score_only_rows_labelled_at_that_rank():
    g = torch.Generator().manual_seed(3)
    n, k = 40, 5
    probs = torch.sigmoid(torch.randn(n, k + 1, generator=g, dtype=torch.float64))
    hot = (torch.rand(n, k + 1, generator=g) < 0.4).float()
    hot[:, 0] = 0
    targets = torch.ones(n, 1, dtype=torch.long)
    targets[::3, 0] = 0  # a third of the rows have no label set at this rank
    hot[::3] = 0
    hot[::3, 0] = 1
    both = threshold_curves([probs], targets, multilabel_targets={0: hot})[0]
    labelled = targets[:, 0] != 0
    only = threshold_curves([probs[labelled]], targets[labelled], multilabel_targets={0: hot[labelled]})[0]
    for name in MULTILABEL_CURVE_NAMES:
        close(both[name], only[name])

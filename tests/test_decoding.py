"""Decoding (DESIGN.md 3.7): the consistent decoder against brute force over every path of small random
trees (early stops and the all-null path included), on every device present; the abstaining prediction
against the threshold curves' counts at the same tau."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import tree_taxonomy, trees
from workbench.decoding import abstaining_predictions, consistent_paths
from workbench.errors import TaxonomyError
from workbench.metrics import consistency_rate, default_thresholds, single_label_curves, threshold_curves

SETTINGS = settings(max_examples=40, deadline=None)
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def all_paths(taxonomy) -> list[list[int]]:
    """Every path of the tree: all null, then each class at each rank with its ancestors, null below."""
    num_ranks = taxonomy.num_ranks
    paths = [[0] * num_ranks]
    for r in range(num_ranks):
        for c in range(1, taxonomy.num_classes[r]):
            path = [0] * num_ranks
            for u in range(r, -1, -1):
                path[u] = c
                c = int(taxonomy.parent(u)[c])
            paths.append(path)
    return paths


def brute_force(log_probs, taxonomy):
    """``(paths, scores)``: the best path of each sample by scoring every path (slow, obviously right)."""
    paths = all_paths(taxonomy)
    best_paths, best_scores = [], []
    for i in range(log_probs[0].shape[0]):
        scores = [sum(float(log_probs[r][i, c]) for r, c in enumerate(p)) for p in paths]
        j = max(range(len(paths)), key=lambda j: scores[j])
        best_paths.append(paths[j])
        best_scores.append(scores[j])
    return best_paths, best_scores


@st.composite
def outputs(draw, max_n: int = 12):
    """A random tree and per-rank log-softmax outputs; the null columns get a random per-rank boost so
    that paths stopping early (and the all-null path) win often."""
    sizes, parents = draw(trees(max_ranks=4, max_classes=5))
    taxonomy = tree_taxonomy(sizes, parents)
    n = draw(st.integers(0, max_n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    log_probs = []
    for k in taxonomy.num_classes:
        logits = 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
        logits[:, 0] += draw(st.floats(-2, 3))
        log_probs.append(torch.log_softmax(logits, dim=1))
    return taxonomy, log_probs


# ---------------------------------------------------------------------- consistent decoding
@SETTINGS
@given(outputs())
def test_consistent_decoder_equals_brute_force(case):
    taxonomy, log_probs = case
    paths, scores = consistent_paths(log_probs, taxonomy, return_scores=True)
    want_paths, want_scores = brute_force(log_probs, taxonomy)
    assert paths.dtype == torch.long and paths.shape == (log_probs[0].shape[0], taxonomy.num_ranks)
    assert scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx(want_scores, abs=1e-9)
    assert paths.tolist() == want_paths  # continuous random outputs: the best path is unique
    assert consistent_paths(log_probs, taxonomy).tolist() == want_paths  # without scores: the same paths


@settings(max_examples=25, deadline=None)
@given(trees(max_ranks=4, max_classes=5), st.integers(0, 2**31 - 1))
def test_consistent_decoder_on_marginal_head_outputs(tree, seed):
    """Marginals of a leaf head: a class without a descendant leaf has log-probability -inf."""
    taxonomy = tree_taxonomy(*tree)
    g = torch.Generator().manual_seed(seed)
    leaf = 2 * torch.randn(10, taxonomy.num_classes[-1], generator=g, dtype=torch.float64)
    log_probs = taxonomy.marginal_log_probs(leaf)
    paths, scores = consistent_paths(log_probs, taxonomy, return_scores=True)
    want_paths, want_scores = brute_force(log_probs, taxonomy)
    assert scores.tolist() == pytest.approx(want_scores, abs=1e-9)
    assert all(math.isfinite(s) for s in scores.tolist())
    assert paths.tolist() == want_paths


def test_exact_not_greedy_and_early_stops():
    # rank 0: a=1, b=2; rank 1: a1=1 under a, b1=2, b2=3 under b
    taxonomy = tree_taxonomy([2, 3], [[0, 0, 0], [0, 1, 2, 2]])
    log = lambda rows: torch.log(torch.tensor(rows, dtype=torch.float64))  # noqa: E731
    coarse = log([[0.0, 0.55, 0.45], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    fine = log([[0.0, 0.1, 0.45, 0.45], [0.8, 0.1, 0.05, 0.05], [0.9, 0.05, 0.025, 0.025]])
    paths, scores = consistent_paths([coarse, fine], taxonomy, return_scores=True)
    # sample 0: greedy takes a (0.55) then a1 (0.1): 0.055; exact takes b > b1 or b2: 0.45 * 0.45
    assert paths[0].tolist()[0] == 2 and paths[0].tolist()[1] in (2, 3)
    assert scores[0].item() == pytest.approx(math.log(0.45 * 0.45))
    assert paths[1].tolist() == [1, 0]  # stops at rank 0: a, null below (0.8 * 0.8)
    assert paths[2].tolist() == [0, 0]  # the all-null path (0.8 * 0.9)
    assert scores[2].item() == pytest.approx(math.log(0.8 * 0.9))


@pytest.mark.parametrize("device", DEVICES)
def test_consistent_decoder_on_every_device(device):
    taxonomy = tree_taxonomy([3, 5, 7], [[0] * 4, [0, 1, 1, 2, 3, 3], [0, 1, 2, 2, 4, 5, 5, 5]])
    g = torch.Generator().manual_seed(0)
    log_probs = [torch.log_softmax(2 * torch.randn(500, k, generator=g), dim=1) for k in taxonomy.num_classes]
    log_probs[1][:, 0] += 1.0  # early stops at rank 0 happen too
    want_paths, want_scores = brute_force(log_probs, taxonomy)
    paths, scores = consistent_paths([lp.to(device) for lp in log_probs], taxonomy, return_scores=True)
    assert paths.device.type == device
    assert paths.cpu().tolist() == want_paths
    assert scores.cpu().tolist() == pytest.approx(want_scores, abs=1e-6)
    assert consistency_rate(paths.cpu(), taxonomy).item() == 1.0
    assert len({p[-1] == 0 for p in want_paths}) == 2  # both full paths and early stops were decoded


def test_consistent_decoder_rejects_outputs_of_another_taxonomy():
    taxonomy = tree_taxonomy([2, 3], [[0, 0, 0], [0, 1, 2, 2]])
    with pytest.raises(TaxonomyError, match=r"one tensor per rank of the taxonomy \(2"):
        consistent_paths([torch.zeros(4, 3)], taxonomy)
    with pytest.raises(TaxonomyError, match=r"`log_probs\[1\]` \(rank1\) must have shape \(N, 4\).*got \(4, 5\)"):
        consistent_paths([torch.zeros(4, 3), torch.zeros(4, 5)], taxonomy)


# ---------------------------------------------------------------------- abstaining prediction
def counts_from_predictions(pred, target):
    """The four curve values of one rank at one tau, from explicit predictions (0 = abstain)."""
    labelled, made = target != 0, pred != 0
    ratio = lambda a, b: float(a) / float(b) if b else math.nan  # noqa: E731
    return {
        "coverage": ratio((made & labelled).sum(), labelled.sum()),
        "selective_accuracy": ratio(((pred == target) & made & labelled).sum(), (made & labelled).sum()),
        "accuracy": ratio((pred == target).sum(), target.numel()),
        "null_false_positive_rate": ratio((made & ~labelled).sum(), (~labelled).sum()),
    }


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 60), st.integers(0, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_abstaining_prediction_equals_the_threshold_curve_at_that_tau(n, k, seed, coarse):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, k + 1, generator=g), dim=1)
    if coarse:  # many probabilities exactly on a threshold of the grid: ">=" must agree
        probs = torch.round(probs * 20) / 20
    target = torch.randint(0, k + 1, (n,), generator=g)
    taus = default_thresholds()
    curves = single_label_curves(probs, target, taus)
    for i in range(0, len(taus), 5):
        pred = abstaining_predictions([probs], [float(taus[i])])[:, 0]
        for name, value in counts_from_predictions(pred, target).items():
            curve = curves[name][i].item()
            assert (math.isnan(curve) and math.isnan(value)) or curve == value, (name, float(taus[i]))


def test_abstaining_prediction_per_rank_and_its_errors():
    g = torch.Generator().manual_seed(1)
    probs = [torch.softmax(torch.randn(50, k, generator=g), dim=1) for k in (3, 5, 1)]
    targets = torch.stack([torch.randint(0, k, (50,), generator=g) for k in (3, 5, 1)], dim=1)
    taus = [0.0, 0.4, 0.5]
    pred = abstaining_predictions(probs, torch.tensor(taus))
    assert pred.shape == (50, 3) and pred.dtype == torch.long
    assert (pred[:, 0] != 0).all()  # tau 0: never abstains
    assert (pred[:, 2] == 0).all()  # a rank without a real class always abstains
    curves = threshold_curves(probs, targets, torch.tensor(taus))
    for r in range(3):
        cov = counts_from_predictions(pred[:, r], targets[:, r])["coverage"]
        want = curves[r]["coverage"][r].item()
        assert (math.isnan(cov) and math.isnan(want)) or cov == want
    with pytest.raises(ValueError, match=r"`taus` must have one threshold per rank \(3\), got 2"):
        abstaining_predictions(probs, [0.5, 0.5])

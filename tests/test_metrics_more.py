"""DESIGN.md 3.6 metrics (top-k, hdist@k, hP/hR/hF, null accuracy, ECE, AUROC) against slow loops,
torchmetrics, scikit-learn and HiClass; batch-summed counts against whole-set values; the keys'
names and directions; and the one call inside ``Trainer.evaluate``."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import multiclass_accuracy

from strategies import ref_lca_height, tree_taxonomy, trees
from workbench import names as N
from workbench.config import Config
from workbench.metrics import (
    auroc,
    calibration_error,
    extended_metrics,
    hdist_at_k,
    hdist_counts,
    hdist_from_counts,
    hierarchical_counts,
    hierarchical_prf,
    mistake_severity,
    null_accuracy,
    null_counts,
    top_k_accuracy,
    top_k_counts,
)
from workbench.store import RunStore
from workbench.trainer import Trainer

SETTINGS = settings(max_examples=40, deadline=None)
NAN = float("nan")


def ratio(num, den):
    return num / den if den else NAN


def same(a, b) -> bool:
    """Equal floats, NaN equal to NaN."""
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------- random data on a random tree
def random_case(seed: int, n: int, sizes, parents, ties: bool = False):
    """Targets: partial paths (labelled down to a random depth, a coarse rank sometimes nulled), probs:
    random softmax per rank (``ties``: rounded, so equal probabilities occur), preds: argmax incl. null."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    num_ranks = len(sizes)
    targets = []
    for _ in range(n):
        depth = rng.randint(-1, num_ranks - 1)
        path = [0] * num_ranks
        if depth >= 0:
            c = rng.randint(1, sizes[depth])
            for u in range(depth, -1, -1):
                path[u] = c
                c = parents[u][c]
        targets.append([0 if rng.random() < 0.1 else c for c in path])
    targets = torch.tensor(targets, dtype=torch.long).reshape(n, num_ranks)
    probs = []
    for k in sizes:
        p = torch.softmax(3 * torch.randn(n, k + 1, generator=g), dim=1)
        probs.append(torch.round(p * 4) / 4 if ties else p)
    preds = torch.stack([p.argmax(dim=1) for p in probs], dim=1)
    return probs, targets, preds


@st.composite
def cases(draw, max_n: int = 40, ties: bool = False):
    sizes, parents = draw(trees(max_ranks=4, max_classes=7))
    n = draw(st.integers(0, max_n))
    probs, targets, preds = random_case(draw(st.integers(0, 2**31 - 1)), n, sizes, parents, ties)
    return sizes, parents, probs, targets, preds


# ---------------------------------------------------------------------- slow references
def ref_top_real(p_row: list[float], k: int) -> list[int]:
    """The k most probable real classes of one row (ties: smaller id first, as the test never relies on it)."""
    real = sorted(range(1, len(p_row)), key=lambda c: (-p_row[c], c))
    return real[:k]


def ref_top_k(probs_r, target_r, k):
    num = den = 0
    for p_row, t in zip(probs_r.tolist(), target_r.tolist()):
        if t == 0:
            continue
        den += 1
        num += t in ref_top_real(p_row, k)
    return ratio(num, den)


def ref_hdist(probs, targets, parents, k):
    """Making Better Mistakes' hdist@k: per labelled sample, the mean LCA height between the true class at
    its finest labelled rank and each of the k most probable real classes there; mean over samples."""
    per_sample = []
    for i, t in enumerate(targets.tolist()):
        labelled = [r for r, c in enumerate(t) if c != 0]
        if not labelled:
            continue
        r = labelled[-1]
        top = ref_top_real(probs[r][i].tolist(), k)
        per_sample.append(sum(ref_lca_height(parents, r, c, t[r]) for c in top) / len(top))
    return ratio(sum(per_sample), len(per_sample))


def ref_hprf(preds, targets):
    """Set-based micro hP / hR / hF: nodes are (rank, class) pairs of the non-null ranks."""
    inter = n_pred = n_true = 0
    for p, t in zip(preds.tolist(), targets.tolist()):
        a = {(r, c) for r, c in enumerate(p) if c != 0}
        b = {(r, c) for r, c in enumerate(t) if c != 0}
        inter += len(a & b)
        n_pred += len(a)
        n_true += len(b)
    hp, hr = ratio(inter, n_pred), ratio(inter, n_true)
    hf = NAN if n_pred + n_true == 0 else (0.0 if inter == 0 else 2 * hp * hr / (hp + hr))
    return hp, hr, hf


def ref_null_accuracy(preds, targets):
    out = []
    for r in range(targets.shape[1]):
        rows = [i for i in range(targets.shape[0]) if targets[i, r] == 0]
        out.append(ratio(sum(int(preds[i, r]) == 0 for i in rows), len(rows)))
    return out


def ref_auroc(probs_r, target_r):
    """Macro one-vs-rest over the real classes present among labelled rows, with scikit-learn."""
    rows = target_r != 0
    t, p = target_r[rows].numpy(), probs_r[rows].double().numpy()
    present = sorted(set(t.tolist()))
    if len(present) < 2:
        return NAN
    return float(np.mean([roc_auc_score(t == c, p[:, c]) for c in present]))


# ---------------------------------------------------------------------- names and directions
def test_new_keys_are_built_in_one_place_and_have_the_right_direction():
    assert N.rank_key("val", N.top_k(5), "genus") == "val/top5/genus"
    assert N.split_key("test", N.hdist(5)) == "test/hdist@5"
    assert (N.ECE, N.AUROC, N.ACC_NULL, N.HP, N.HR, N.HF) == ("ece", "auroc", "acc_null", "hP", "hR", "hF")
    expected = {N.ECE: "min", N.AUROC: "max", N.ACC_NULL: "max", N.top_k(1): "max", N.top_k(5): "max",
                N.COVERAGE_AT_TAU: "max", N.SELECTIVE_ACCURACY_AT_TAU: "max"}
    for split in ("val", "test"):
        for rank in ("genus", "ece", "loss", "hdist"):  # a rank's name never sets the direction
            for kind, want in expected.items():
                key = N.rank_key(split, kind, rank)
                assert N.direction(key) == want, key
        for kind, want in {N.hdist(1): "min", N.hdist(5): "min", N.HP: "max", N.HR: "max", N.HF: "max"}.items():
            key = N.split_key(split, kind)
            assert N.direction(key) == want, key


# ---------------------------------------------------------------------- each metric against its reference
@SETTINGS
@given(cases(), st.integers(1, 6))
def test_top_k_matches_a_loop(case, k):
    sizes, _, probs, targets, _ = case
    for r, p in enumerate(probs):
        assert same(top_k_accuracy(p, targets[:, r], k), ref_top_k(p, targets[:, r], k))


@SETTINGS
@given(cases(max_n=60), st.integers(1, 5))
def test_top_k_matches_torchmetrics_on_rows_labelled_at_the_rank(case, k):
    sizes, _, probs, targets, _ = case
    for r, p in enumerate(probs):
        rows = targets[:, r] != 0
        if not rows.any() or k > sizes[r] or sizes[r] < 2:  # torchmetrics needs >= 2 classes
            continue
        # torchmetrics over the real classes only (column c + 1 is class c + 1), labelled rows only
        want = multiclass_accuracy(p[rows][:, 1:], targets[rows, r] - 1, num_classes=sizes[r], top_k=k, average="micro")
        assert top_k_accuracy(p, targets[:, r], k).item() == pytest.approx(want.item(), abs=1e-6)


@SETTINGS
@given(cases(), st.integers(1, 6))
def test_hdist_at_k_matches_a_loop(case, k):
    sizes, parents, probs, targets, _ = case
    assert same(hdist_at_k(probs, targets, tree_taxonomy(sizes, parents), k), ref_hdist(probs, targets, parents, k))


@SETTINGS
@given(cases())
def test_hierarchical_precision_recall_f1_match_a_set_loop(case):
    _, _, _, targets, preds = case
    got = hierarchical_prf(preds, targets)
    for name, want in zip((N.HP, N.HR, N.HF), ref_hprf(preds, targets)):
        assert same(got[name], want), name


@SETTINGS
@given(cases())
def test_null_accuracy_matches_a_loop(case):
    _, _, _, targets, preds = case
    for got, want in zip(null_accuracy(preds, targets).tolist(), ref_null_accuracy(preds, targets)):
        assert same(got, want)


@settings(max_examples=25, deadline=None)
@given(cases(max_n=60), st.booleans())
def test_auroc_is_the_macro_one_vs_rest_over_present_classes(case, ties):
    sizes, parents, _, targets, _ = case
    probs, _, _ = random_case(int(targets.sum()), targets.shape[0], sizes, parents, ties=ties)
    for r, p in enumerate(probs):
        got, want = auroc(p, targets[:, r]), ref_auroc(p, targets[:, r])
        assert (math.isnan(want) and math.isnan(got)) or got.item() == pytest.approx(want, abs=1e-6)


def test_hiclass_agrees_on_hierarchical_precision_recall_f1():
    hm = pytest.importorskip("hiclass.metrics", reason="hiclass not installed (dev extra)")
    sizes, parents = [3, 5, 6], [[0] * 4, [0, 1, 1, 2, 3, 3], [0, 1, 2, 2, 4, 5, 5]]
    probs, targets, preds = random_case(7, 300, sizes, parents)
    preds[::7, 2] = 0  # some predictions stop early

    def labels(rows):  # HiClass: nodes as unique strings, "" for an empty (null) level
        return np.array([[f"{r}:{c}" if c else "" for r, c in enumerate(row)] for row in rows.tolist()])

    labelled = (targets != 0).any(dim=1)  # HiClass needs a non-empty true set per sample
    y_true, y_pred = labels(targets[labelled]), labels(preds[labelled])
    got = hierarchical_prf(preds[labelled], targets[labelled])
    assert got[N.HP].item() == pytest.approx(hm.precision(y_true, y_pred))
    assert got[N.HR].item() == pytest.approx(hm.recall(y_true, y_pred))
    assert got[N.HF].item() == pytest.approx(hm.f1(y_true, y_pred))


def test_hand_worked_example():
    # rank 0: {a=1, b=2}; rank 1: {a1=1, a2=2 under a; b1=3 under b}
    sizes, parents = [2, 3], [[0, 0, 0], [0, 1, 1, 2]]
    tax = tree_taxonomy(sizes, parents)
    targets = torch.tensor([[1, 1], [1, 2], [2, 0], [0, 0]])
    preds = torch.tensor([[1, 1], [1, 1], [2, 3], [0, 0]])
    # nodes: sample 0: {a, a1} vs {a, a1}; 1: {a, a1} vs {a, a2}; 2: {b, b1} vs {b}; 3: {} vs {}
    prf = hierarchical_prf(preds, targets)
    assert prf[N.HP].item() == pytest.approx(4 / 6) and prf[N.HR].item() == pytest.approx(4 / 5)
    assert prf[N.HF].item() == pytest.approx(8 / 11)
    assert null_accuracy(preds, targets).tolist() == [1.0, 0.5]  # rank 1's null targets: sample 2 (b1), 3 (null)
    probs = [torch.tensor([[0.1, 0.6, 0.3]] * 4), torch.tensor([[0.0, 0.5, 0.3, 0.2]] * 4)]
    # finest labelled: sample 0 at rank 1 (a1): top-2 {a1, a2} heights {0, 1}; sample 1 (a2): {1, 0};
    # sample 2 at rank 0 (b): top-2 {a, b} heights {1, 0}; sample 3 unlabelled
    assert hdist_at_k(probs, targets, tax, 2).item() == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert hdist_at_k(probs, targets, tax, 1).item() == pytest.approx((0 + 1 + 1) / 3)
    assert top_k_accuracy(probs[1], targets[:, 1], 1).item() == 0.5
    assert math.isnan(auroc(probs[1], torch.tensor([1, 1, 0, 0])).item())  # one class present


# ---------------------------------------------------------------------- exact under batching
@SETTINGS
@given(cases(max_n=50), st.integers(1, 4), st.integers(1, 5))
def test_counts_summed_over_batches_equal_the_whole_set(case, num_batches, k):
    sizes, parents, probs, targets, preds = case
    tax = tree_taxonomy(sizes, parents)
    chunks = [c for c in torch.arange(targets.shape[0]).tensor_split(num_batches)]

    def summed(fn):
        parts = [fn(idx) for idx in chunks]
        return [sum(p[i] for p in parts) for i in range(len(parts[0]))]

    for r, p in enumerate(probs):
        c, t = summed(lambda idx, p=p, r=r: top_k_counts(p[idx], targets[idx, r], k))
        assert torch.equal(torch.stack([c, t]), torch.stack(top_k_counts(p, targets[:, r], k)))
    assert all(torch.equal(a, b) for a, b in zip(summed(lambda idx: null_counts(preds[idx], targets[idx])),
                                                 null_counts(preds, targets)))
    assert all(torch.equal(a, b) for a, b in zip(summed(lambda idx: hierarchical_counts(preds[idx], targets[idx])),
                                                 hierarchical_counts(preds, targets)))
    parts = [hdist_counts([p[idx] for p in probs], targets[idx], tax, k) for idx in chunks]
    height, samples = sum(p[0] for p in parts), sum(p[1] for p in parts)
    whole = hdist_counts(probs, targets, tax, k)
    assert torch.equal(height, whole[0]) and torch.equal(samples, whole[1])
    assert same(hdist_from_counts(height, samples, whole[2]), hdist_at_k(probs, targets, tax, k))


# ---------------------------------------------------------------------- extended_metrics: keys and values
def test_extended_metrics_keys_and_values():
    sizes, parents = [3, 5, 6], [[0] * 4, [0, 1, 1, 2, 3, 3], [0, 1, 2, 2, 4, 5, 5]]
    tax = tree_taxonomy(sizes, parents)
    probs, targets, preds = random_case(3, 200, sizes, parents)
    ranks = tax.ranks
    out = extended_metrics(probs, targets, tax, ranks, "test", multilabel_ranks=(1,))
    want_keys = {"test/hdist@1", "test/hdist@5", "test/hP", "test/hR", "test/hF"}
    want_keys |= {f"test/acc_null/{r}" for r in ranks}
    for r in (ranks[0], ranks[2]):  # rank 1 is multi-label: no top-k, ECE or AUROC there
        want_keys |= {f"test/top1/{r}", f"test/ece/{r}", f"test/auroc/{r}"}
    want_keys.add(f"test/top5/{ranks[2]}")  # 6 real classes; rank 0 has 3: no top5
    assert set(out) == want_keys
    assert all(isinstance(v, float) for v in out.values())
    # multi-label ranks predict their most probable real class, as Trainer.predict_classes does
    ml_preds = preds.clone()
    ml_preds[:, 1] = probs[1][:, 1:].argmax(dim=1) + 1
    assert out["test/hdist@1"] == pytest.approx(mistake_severity(ml_preds, targets, tax)["hdist@1"].item())
    assert out["test/hdist@5"] == pytest.approx(hdist_at_k(probs, targets, tax, 5).item())
    assert out["test/hF"] == pytest.approx(hierarchical_prf(ml_preds, targets)[N.HF].item())
    assert out[f"test/top5/{ranks[2]}"] == pytest.approx(ref_top_k(probs[2], targets[:, 2], 5))
    assert out[f"test/ece/{ranks[0]}"] == pytest.approx(calibration_error(probs[0], targets[:, 0]).item())
    assert out[f"test/auroc/{ranks[2]}"] == pytest.approx(ref_auroc(probs[2], targets[:, 2]), abs=1e-6)
    assert out[f"test/acc_null/{ranks[1]}"] == 0.0  # a multi-label rank never predicts null
    # explicit preds win over the argmax
    given_preds = torch.zeros_like(preds)
    assert extended_metrics(probs, targets, tax, ranks, "val", preds=given_preds)["val/hP"] != out["test/hP"]


def test_extended_metrics_on_an_empty_split_is_nan_not_an_error():
    sizes, parents = [2, 3], [[0, 0, 0], [0, 1, 1, 2]]
    tax = tree_taxonomy(sizes, parents)
    probs, targets, _ = random_case(0, 0, sizes, parents)
    out = extended_metrics(probs, targets, tax, tax.ranks, "val")
    assert out and all(math.isnan(v) for v in out.values())


def test_non_finite_outputs_have_no_calibration_or_auroc():
    """A diverged model's NaN/inf outputs: torchmetrics would report an ECE of 0.0 and some AUROC."""
    sizes, parents = [3, 6], [[0] * 4, [0, 1, 1, 2, 3, 3, 3]]
    tax = tree_taxonomy(sizes, parents)
    probs, targets, _ = random_case(5, 50, sizes, parents)
    probs[1][3, 2] = float("nan")
    out = extended_metrics(probs, targets, tax, tax.ranks, "val")
    assert math.isnan(out[f"val/ece/{tax.ranks[1]}"]) and math.isnan(out[f"val/auroc/{tax.ranks[1]}"])
    assert math.isfinite(out[f"val/ece/{tax.ranks[0]}"]) and math.isfinite(out[f"val/auroc/{tax.ranks[0]}"])


def test_evaluate_logs_the_new_keys_every_epoch(tmp_path):
    cfg = Config().with_overrides({
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 600, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2, 0.4], "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 2,
        "TRAIN.BATCH_SIZE": 128, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(tmp_path / "runs" / "w.db")})
    t = Trainer(cfg, progress=False)
    assert t.fit() == "finished"
    rows = RunStore(cfg.TRACKING.STORE).metrics(t.run_id)
    val = rows[rows["split"] == "val"]
    ranks = t.taxonomy.ranks
    keys = {"val/hdist@5", "val/hP", "val/hR", "val/hF", *(f"val/{kind}/{r}" for r in ranks
                                                           for kind in ("top1", "ece", "auroc", "acc_null"))}
    per_key = val[val["key"].isin(keys)].groupby("key")["epoch"].nunique()
    assert set(per_key.index) == keys and (per_key == 2).all()
    # evaluate's values are extended_metrics of the model's own outputs and predictions
    metrics, _, raw = t.evaluate(t.val_ds)
    logits, _ = t.predict(t.val_ds)
    again = extended_metrics(t.probabilities(logits), raw["targets"], t.taxonomy, ranks, "val", preds=raw["preds"])
    assert all(same(metrics[k], v) for k, v in again.items())

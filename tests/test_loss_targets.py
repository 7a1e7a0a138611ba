"""Label smoothing, soft labels and the HXE(alpha) rank-weight preset (issue 18), against slow loop references.

The references walk the parent lists (tests/strategies.py) in float64 python loops; the code under test uses
the taxonomy's LCA-height matrix and tensor ops.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ref_ancestor, ref_lca_height, tree_taxonomy, trees

from workbench.config import Config, ConfigError
from workbench.store import RunStore
from workbench.losses import (
    LossConfigError, TargetRule, hierarchical_loss, hxe_rank_weights, soft_label_targets, soft_targets,
    target_rule,
)
from workbench.sweep import SweepSpec, parse_grid_args
from workbench.sweep_cli import build_parser, spec_from_args
from workbench.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SETTINGS = settings(max_examples=20, deadline=None)


# ---------------------------------------------------------------------- slow references
def ref_log_softmax(row: list[float]) -> list[float]:
    finite = [v for v in row if v != -math.inf]
    m = max(finite)
    lse = m + math.log(sum(math.exp(v - m) for v in finite))
    return [v - lse for v in row]


def ref_smoothed(parents, k: int, y: int, eps: float, mode: str, support=None) -> list[float]:
    """q over 0..K_k by loops: one-hot for null, else (1 - eps) onehot + eps u over the other real classes."""
    size = len(parents[k])
    q = [0.0] * size
    q[y] = 1.0
    others = [c for c in range(1, size) if c != y and (support is None or support[c])]
    if y == 0 or not others:
        return q
    score = {c: 1.0 if mode == "uniform" else math.exp(-ref_lca_height(parents, k, y, c)) for c in others}
    z = sum(score.values())
    q[y] = 1.0 - eps
    for c in others:
        q[c] = eps * score[c] / z
    return q


def ref_soft_labels(parents, k: int, y: int, beta: float) -> list[float]:
    size = len(parents[k])
    q = [0.0] * size
    if y == 0:
        q[0] = 1.0
        return q
    score = {c: math.exp(-beta * ref_lca_height(parents, k, y, c)) for c in range(1, size)}
    z = sum(score.values())
    for c, s in score.items():
        q[c] = s / z
    return q


def ref_soft_loss(logits, targets, keep, rank_weights, q_of, class_weights=None, sample_weight=None) -> float:
    """a = keep * sw * cw[y] applied once; l = -sum_c q_c log softmax_c (0 where q_c = 0)."""
    n, num_ranks = targets.shape
    total = 0.0
    for r in range(num_ranks):
        num = den = 0.0
        for i in range(n):
            y = int(targets[i, r])
            a = float(keep[i, r]) * (1.0 if sample_weight is None else float(sample_weight[i]))
            if class_weights is not None:
                a *= float(class_weights[r][y])
            logp = ref_log_softmax([float(v) for v in logits[r][i]])
            q = q_of(r, y)
            l = -sum(qc * lp for qc, lp in zip(q, logp) if qc > 0)
            if a != 0:
                num += a * l
                den += a
        total += float(rank_weights[r]) * (num / den if den > 0 else 0.0)
    return total


@st.composite
def tree_batch(draw):
    """A random tree, targets (nulls included, per rank independent), logits, keep, rank/class/sample weights."""
    sizes, parents = draw(trees(max_ranks=3, max_classes=5))
    tax = tree_taxonomy(sizes, parents)
    n = draw(st.integers(1, 10))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    y = torch.stack([torch.randint(0, k + 1, (n,), generator=g) for k in sizes], dim=1)  # (N, R)
    logits = [3 * torch.randn(n, k + 1, generator=g) for k in sizes]
    keep = torch.rand(n, len(sizes), generator=g) < 0.8
    cw = [0.1 + 3 * torch.rand(k + 1, generator=g) for k in sizes] if draw(st.booleans()) else None
    sw = 0.1 + 3 * torch.rand(n, generator=g) if draw(st.booleans()) else None
    return tax, parents, y, logits, keep, torch.rand(len(sizes), generator=g), cw, sw


# ---------------------------------------------------------------------- the LCA-height matrix
@SETTINGS
@given(trees())
def test_lca_height_matrix_is_lca_height_and_cached(tree):
    sizes, parents = tree
    tax = tree_taxonomy(sizes, parents)
    for k, size in enumerate(sizes):
        h = tax.lca_height_matrix(k)
        assert h.shape == (size + 1, size + 1) and h.dtype == torch.long
        assert tax.lca_height_matrix(tax.ranks[k]) is h  # computed once
        for a in range(size + 1):
            for b in range(size + 1):
                expected = 0 if a == b else (k + 1 if 0 in (a, b) else ref_lca_height(parents, k, a, b))
                assert int(h[a, b]) == expected, (k, a, b)


# ---------------------------------------------------------------------- label smoothing
@SETTINGS
@given(tree_batch(), st.sampled_from([0.05, 0.1, 0.5, 0.9]), st.sampled_from(["uniform", "taxonomy"]))
def test_smoothing_equals_the_slow_reference_with_weights_applied_once(batch, eps, mode):
    tax, parents, y, logits, keep, rw, cw, sw = batch
    rule = TargetRule("smoothing", eps=eps, mode=mode,
                      heights=tuple(tax.lca_height_matrix(r) for r in range(tax.num_ranks)))
    total, _ = hierarchical_loss(logits, y, keep, rw, cw, sw, target_rule=rule)
    expected = ref_soft_loss(logits, y, keep, rw, lambda r, c: ref_smoothed(parents, r, c, eps, mode), cw, sw)
    assert float(total) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    for r in range(tax.num_ranks):  # every row a distribution; null rows and single-class ranks one-hot
        q = rule.single_label(r, y[:, r], tax.num_classes[r])
        assert torch.allclose(q.sum(1), torch.ones(len(y)))
        plain = (y[:, r] == 0) | torch.tensor(tax.num_classes[r] == 2)
        assert torch.equal(q[plain], torch.nn.functional.one_hot(y[plain, r], tax.num_classes[r]).float())


def test_no_rule_is_the_plain_path_bitwise():
    tax = tree_taxonomy([2, 3], [[0, 0, 0], [0, 1, 1, 2]])
    assert target_rule(Config().LOSS, tax) is None  # LABEL_SMOOTHING 0 and no beta: no soft CE at all
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[1, 2], [0, 0], [2, 3]])
    logits = [torch.randn(3, 3, generator=g), torch.randn(3, 4, generator=g)]
    keep = torch.ones(3, 2, dtype=torch.bool)
    a = hierarchical_loss(logits, y, keep, [0.3, 0.7])
    b = hierarchical_loss(logits, y, keep, [0.3, 0.7], target_rule=None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # eps -> 0 agrees with the plain CE (the soft CE path itself, not only the short cut)
    tiny = TargetRule("smoothing", eps=0.0)
    assert torch.allclose(hierarchical_loss(logits, y, keep, [0.3, 0.7], target_rule=tiny)[0], a[0])


def test_taxonomy_smoothing_gives_siblings_e_times_a_cousins_share():
    # rank 1: classes 1, 2 under parent 1 (siblings), 3 under parent 2 (a cousin)
    tax = tree_taxonomy([2, 3], [[0, 0, 0], [0, 1, 1, 2]])
    q = soft_targets(torch.tensor([1, 0]), 4, eps=0.3, mode="taxonomy", heights=tax.lca_height_matrix(1))
    assert q[0, 0] == 0 and q[0, 1] == pytest.approx(0.7)
    assert float(q[0, 2] / q[0, 3]) == pytest.approx(math.e)
    assert float(q[0, 2] + q[0, 3]) == pytest.approx(0.3)
    assert q[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # null stays one-hot on null
    u = soft_targets(torch.tensor([1]), 4, eps=0.3)  # uniform: equal shares of the other real classes
    assert u[0].tolist() == pytest.approx([0.0, 0.7, 0.15, 0.15])
    with pytest.raises(LossConfigError, match="LOSS.SMOOTHING"):
        soft_targets(torch.tensor([1]), 4, eps=0.3, mode="cousins")


def test_multilabel_rank_smoothing_is_y_times_one_minus_eps_plus_half_eps():
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([[1, 1], [2, 2], [1, 0]])
    hot = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.float)
    logits = [torch.randn(3, 3, generator=g), torch.randn(3, 4, generator=g)]
    keep = torch.ones(3, 2, dtype=torch.bool)
    eps = 0.2
    for mode in ("uniform", "taxonomy"):
        tax = tree_taxonomy([2, 3], [[0, 0, 0], [0, 1, 1, 2]])
        rule = target_rule(Config().with_overrides({"LOSS.LABEL_SMOOTHING": eps, "LOSS.SMOOTHING": mode}).LOSS, tax)
        _, per_rank = hierarchical_loss(logits, y, keep, [0.5, 0.5], multilabel_targets={1: hot}, target_rule=rule)
        soft = hot * (1 - eps) + eps / 2
        expected = sum(
            max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))
            for i in range(3) for x, t in zip(logits[1][i, 1:].tolist(), soft[i, 1:].tolist())) / 9
        assert float(per_rank[1]) == pytest.approx(expected, rel=1e-5)


def test_smoothing_on_a_marginal_head_stays_on_classes_with_leaves():
    # rank 0 class 2 has no species: the marginal head gives it log-prob -inf at every sample
    tax = tree_taxonomy([2, 2], [[0, 0, 0], [0, 1, 1]])
    assert tax.has_leaf(0).tolist() == [True, True, False]
    leaf = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([[1, 1], [1, 2], [0, 0], [1, 0]])
    keep = torch.ones(4, 2, dtype=torch.bool)
    cfg = Config().with_overrides({"LOSS.LABEL_SMOOTHING": 0.1, "LOSS.SMOOTHING": "taxonomy", "MODEL.HEAD": "marginal"})
    rule = target_rule(cfg.LOSS, tax, marginal_head=True)
    total, _ = hierarchical_loss(tax.marginal_log_probs(leaf), y, keep, [0.5, 0.5], target_rule=rule)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(leaf.grad).all()
    # the rank-0 target of a labelled row has no other class with a leaf: it stays one-hot
    assert rule.single_label(0, y[:, 0], 3)[0].tolist() == [0.0, 1.0, 0.0]
    # without the support, mass on the leafless class would make the loss infinite: why the rule carries it
    bare = target_rule(cfg.LOSS, tax, marginal_head=False)
    assert not torch.isfinite(hierarchical_loss(tax.marginal_log_probs(leaf.detach()), y, keep, [0.5, 0.5],
                                                target_rule=bare)[0])


# ---------------------------------------------------------------------- soft labels
@SETTINGS
@given(tree_batch(), st.sampled_from([0.0, 0.5, 1.0, 4.0]))
def test_soft_labels_equal_the_slow_reference(batch, beta):
    tax, parents, y, logits, keep, rw, cw, sw = batch
    rule = TargetRule("soft_labels", beta=beta,
                      heights=tuple(tax.lca_height_matrix(r) for r in range(tax.num_ranks)))
    for r in range(tax.num_ranks):
        q = rule.single_label(r, y[:, r], tax.num_classes[r])
        for i in range(len(y)):
            assert q[i].tolist() == pytest.approx(ref_soft_labels(parents, r, int(y[i, r]), beta), abs=1e-6)
    total, _ = hierarchical_loss(logits, y, keep, rw, cw, sw, target_rule=rule)
    expected = ref_soft_loss(logits, y, keep, rw, lambda r, c: ref_soft_labels(parents, r, c, beta), cw, sw)
    assert float(total) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_soft_labels_large_beta_is_one_hot_and_gradients_stay_finite_on_a_marginal_head():
    tax = tree_taxonomy([2, 3], [[0, 0, 0], [0, 1, 1, 1]])  # rank-0 class 2 has no leaf: log-prob -inf
    leaf = (5 * torch.randn(6, 4, generator=torch.Generator().manual_seed(1))).requires_grad_()
    y = torch.tensor([[1, 1], [1, 2], [1, 3], [0, 0], [1, 0], [0, 2]])
    keep = torch.ones(6, 2, dtype=torch.bool)
    logp = tax.marginal_log_probs(leaf)
    assert torch.isinf(logp[0][:, 2]).all()
    plain, _ = hierarchical_loss([lp.detach() for lp in logp], y, keep, [0.5, 0.5])
    sharp = target_rule(Config().with_overrides({"LOSS.SOFT_LABELS_BETA": 1000.0}).LOSS, tax, marginal_head=True)
    assert float(hierarchical_loss([lp.detach() for lp in logp], y, keep, [0.5, 0.5], target_rule=sharp)[0]) == pytest.approx(float(plain))
    rule = target_rule(Config().with_overrides({"LOSS.SOFT_LABELS_BETA": 1.0}).LOSS, tax, marginal_head=True)
    total, _ = hierarchical_loss(logp, y, keep, [0.5, 0.5], target_rule=rule)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(leaf.grad).all()
    q = soft_label_targets(torch.tensor([1]), tax.lca_height_matrix(1), 1.0)
    assert q[0].tolist() == pytest.approx([0, 1 / (1 + 2 / math.e), 1 / (math.e + 2), 1 / (math.e + 2)])


# ---------------------------------------------------------------------- HXE(alpha)
@st.composite
def full_trees(draw):
    """``(sizes, parents)`` with every class above the finest rank having a child: all leaves at the finest rank."""
    num_ranks = draw(st.integers(2, 4))
    sizes = [draw(st.integers(1, 3))]
    parents = [[0] * (sizes[0] + 1)]
    for _ in range(1, num_ranks):
        k = sizes[-1] + draw(st.integers(0, 3))
        assigned = list(range(1, sizes[-1] + 1)) + [draw(st.integers(1, sizes[-1])) for _ in range(k - sizes[-1])]
        parents.append([0] + draw(st.permutations(assigned)))
        sizes.append(k)
    return sizes, parents


def direct_hxe(parents, leaf_logits: torch.Tensor, leaf_targets: torch.Tensor, alpha: float) -> float:
    """Making Better Mistakes' HXE by hand: -sum over the path of exp(-alpha depth(C)) log p(C | parent(C)),
    p of a node = sum of its leaves' softmax probabilities (p(root) = 1), averaged over samples."""
    num_ranks = len(parents)
    leaf_rank = num_ranks - 1
    total = 0.0
    for i in range(leaf_logits.shape[0]):
        row = [float(v) for v in leaf_logits[i]]
        m = max(row)
        z = sum(math.exp(v - m) for v in row)
        probs = [math.exp(v - m) / z for v in row]

        def p(rank: int, c: int) -> float:
            return sum(probs[leaf] for leaf in range(1, len(row)) if ref_ancestor(parents, leaf_rank, leaf, rank) == c)

        leaf = int(leaf_targets[i])
        path = [ref_ancestor(parents, leaf_rank, leaf, r) for r in range(num_ranks)]  # coarse to fine
        p_parent = 1.0
        for r, c in enumerate(path):
            p_c = p(r, c)
            total -= math.exp(-alpha * (r + 1)) * math.log(p_c / p_parent)
            p_parent = p_c
    return total / leaf_logits.shape[0]


@settings(max_examples=30, deadline=None)
@given(full_trees(), st.sampled_from([0.0, 0.1, 0.6, 1.0, 3.0]) | st.floats(0.0, 5.0), st.integers(0, 2**31 - 1))
def test_hxe_preset_equals_a_direct_conditional_probability_implementation(tree, alpha, seed):
    sizes, parents = tree
    tax = tree_taxonomy(sizes, parents)
    g = torch.Generator().manual_seed(seed)
    n = 5
    leaf_logits = 2 * torch.randn(n, sizes[-1] + 1, generator=g, dtype=torch.float64)
    leaves = torch.randint(1, sizes[-1] + 1, (n,), generator=g)
    y = torch.stack([tax.ancestor_map(len(sizes) - 1, r)[leaves] for r in range(len(sizes))], dim=1)  # fully labelled
    keep = torch.ones_like(y, dtype=torch.bool)
    logp = tax.marginal_log_probs(leaf_logits)
    raw = hxe_rank_weights(alpha, len(sizes), normalize=False)
    expected = direct_hxe(parents, leaf_logits, leaves, alpha)
    total, _ = hierarchical_loss(logp, y, keep, raw)
    assert float(total) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    preset, _ = hierarchical_loss(logp, y, keep, hxe_rank_weights(alpha, len(sizes)))
    assert float(preset) == pytest.approx(expected / float(raw.double().sum()), rel=1e-4, abs=1e-5)


def test_hxe_rank_weights_values():
    assert hxe_rank_weights(0.0, 3).tolist() == [0.0, 0.0, 1.0]  # alpha 0: plain leaf CE
    a = 0.6
    raw = [math.exp(-a) - math.exp(-2 * a), math.exp(-2 * a) - math.exp(-3 * a), math.exp(-3 * a)]
    assert hxe_rank_weights(a, 3, normalize=False).tolist() == pytest.approx(raw)
    assert hxe_rank_weights(a, 3).tolist() == pytest.approx([v / sum(raw) for v in raw])
    big = hxe_rank_weights(100.0, 4)  # exp(-400) underflows in float32: the preset must still be finite
    assert torch.isfinite(big).all() and float(big.sum()) == pytest.approx(1.0) and float(big[0]) == pytest.approx(1.0)
    assert hxe_rank_weights(2.0, 1).tolist() == [1.0]
    with pytest.raises(LossConfigError, match=r"LOSS.HXE_ALPHA must be a finite number >= 0, got -1"):
        hxe_rank_weights(-1.0, 3)


# ---------------------------------------------------------------------- config, sweep, trainer
def test_config_refuses_hxe_without_the_marginal_head_and_mixed_target_rules():
    with pytest.raises(ConfigError, match=r"LOSS.HXE_ALPHA`? needs `?MODEL.HEAD`? 'marginal'.*got .*'independent'"):
        Config().with_overrides({"LOSS.HXE_ALPHA": 0.5})
    with pytest.raises(ConfigError, match=r"HXE_ALPHA`? sets the rank weights"):
        Config().with_overrides({"LOSS.HXE_ALPHA": 0.5, "MODEL.HEAD": "marginal", "LOSS.RANK_WEIGHTS": [1, 1]})
    with pytest.raises(ConfigError, match=r"LABEL_SMOOTHING`? and `?(LOSS.)?SOFT_LABELS_BETA`? both reshape the target"):
        Config().with_overrides({"LOSS.LABEL_SMOOTHING": 0.1, "LOSS.SOFT_LABELS_BETA": 2.0})


def test_sweep_aliases_grid_hxe_alpha_and_soft_beta():
    assert parse_grid_args(["hxe_alpha=0,0.6", "soft_beta=1,4"]) == {"hxe_alpha": [0, 0.6], "soft_beta": [1, 4]}
    marginal = Config().with_overrides({"MODEL.HEAD": "marginal"}).to_dict()
    spec = SweepSpec(base=marginal, grid={"hxe_alpha": [0, 0.6]})
    assert spec.resolved_grid()["LOSS.HXE_ALPHA"] == [0, 0.6]
    spec.validate()
    with pytest.raises(ConfigError, match=r"needs `?MODEL.HEAD`? 'marginal'"):
        SweepSpec(base=Config().to_dict(), grid={"hxe_alpha": [0.6]}).validate()
    SweepSpec(base=Config().to_dict(), grid={"LOSS.SOFT_LABELS_BETA": [1, 4]}).validate()
    # the sweep command line: the shortcut in --grid, the head set with --set
    args = build_parser().parse_args(["--config", str(CONFIGS / "ratdat_phase2.yaml"), "--grid", "hxe_alpha=0,0.6",
                                      "--grid", "soft_beta=1,4", "--set", "MODEL.HEAD=marginal"])
    spec = spec_from_args(args)
    spec.validate()
    grid = spec.resolved_grid()
    assert grid["LOSS.HXE_ALPHA"] == [0, 0.6] and grid["LOSS.SOFT_LABELS_BETA"] == [1, 4]


@pytest.mark.parametrize("overrides", [
    {"LOSS.HXE_ALPHA": 0.6, "MODEL.HEAD": "marginal"},
    {"LOSS.SOFT_LABELS_BETA": 2.0, "MODEL.HEAD": "marginal"},
    {"LOSS.LABEL_SMOOTHING": 0.1, "LOSS.SMOOTHING": "taxonomy"},
], ids=["hxe", "soft_labels", "taxonomy_smoothing"])
def test_trainer_trains_with_each_rule_and_evaluates_with_plain_targets(tmp_path, overrides):
    cfg = Config().with_overrides({
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 400, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.2, 0.4], "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 1,
        "TRAIN.BATCH_SIZE": 64, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(tmp_path / "runs" / "w.db"), **overrides,
    })
    t = Trainer(cfg, progress=False)
    if "LOSS.HXE_ALPHA" in overrides:
        assert torch.allclose(t.rank_weights.cpu(), hxe_rank_weights(0.6, t.taxonomy.num_ranks))
        assert t.target_rule is None
    else:
        assert t.target_rule is not None
    assert t.fit() == "finished"
    wide = t.store.metrics_wide([t.run_id])
    for key in ("core/train_loss", "core/val_loss", "core/val_partial_chain_acc"):
        assert wide[key].notna().all() and all(math.isfinite(v) for v in wide[key]), key
    # evaluation losses are the plain CE: the rule applies only when training=True
    full = t.val_ds.as_batch()
    logits, _ = t.predict(t.val_ds)
    keep = torch.ones_like(full.targets, dtype=torch.bool)
    plain = hierarchical_loss(logits, full.targets, keep, t.rank_weights, t.class_weights, full.sample_weight)[0]
    assert torch.equal(t._loss(logits, full, keep)[0], plain)
    if t.target_rule is not None:
        assert not torch.allclose(t._loss(logits, full, keep, training=True)[0], plain)


def test_marginal_head_refuses_rows_labelled_with_a_leafless_class(tmp_path):
    """A coarse class without a finest-rank descendant has marginal probability 0: a row labelled with it would
    make the training loss infinite at the first batch; the Trainer refuses before creating a run, naming it."""
    rows = [{"x_0": i * 0.1, "x_1": (i % 3) * 1.0, "order": "A" if i % 3 else "Birds",
             "species": ("a1" if i % 2 else "a2") if i % 3 else ""} for i in range(60)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    base = {"DATA": {"NAME": "file", "PATH": str(tmp_path / "d.csv"), "RANKS": ["order", "species"],
                     "FEATURE_PREFIX": "x_"},
            "TRAIN": {"EPOCHS": 1, "DEVICE": "cpu"}, "TRACKING": {"STORE": str(tmp_path / "s.db")}}
    with pytest.raises(ConfigError, match=r"rank 'order' with a class that has no descendant .*'Birds'"):
        Trainer(Config.from_dict({**base, "MODEL": {"HEAD": "marginal"}}), progress=False)
    assert not (tmp_path / "s.db").exists() or RunStore(tmp_path / "s.db").runs().empty  # no run was created
    Trainer(Config.from_dict(base), progress=False)  # the independent head fits the same data

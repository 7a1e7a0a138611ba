"""Null-masking schedule and keep masks (DESIGN.md 3.1, 3.2). Keep polarity: True = counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.losses import hierarchical_loss
from workbench.masking import NullMaskSchedule, ScheduleError, null_keep_mask

SETTINGS = settings(max_examples=50, deadline=None)
probs = st.floats(0.0, 1.0)


# ---------------------------------------------------------------------- schedule
def test_schedule_hand_worked():
    s = NullMaskSchedule(enabled=True, start_prob=0.2, end_prob=0.8, start_epoch=2, end_epoch=6)
    assert s.prob(0) == 0.2  # before start
    assert s.prob(2) == 0.2  # at start
    # between: 0.2 + (t - 2) / (6 - 2) * (0.8 - 0.2); t = 4 -> 0.5, t = 3.5 -> 0.425
    assert s.prob(4) == pytest.approx(0.5)
    assert s.prob(3.5) == pytest.approx(0.425)
    assert s.prob(6) == 0.8  # at end
    assert s.prob(50) == 0.8  # after end


@SETTINGS
@given(probs, probs, st.floats(0, 50), st.floats(0, 50), st.floats(0, 120))
def test_schedule_matches_definition(p0, p1, e0, span, t):
    s = NullMaskSchedule(True, p0, p1, e0, e0 + span)
    e1 = e0 + span
    if t <= e0:
        expected = p0
    elif t >= e1:
        expected = p1
    else:
        expected = p0 + (t - e0) / (e1 - e0) * (p1 - p0)
    assert s.prob(t) == pytest.approx(expected, abs=1e-12)
    assert min(p0, p1) - 1e-12 <= s.prob(t) <= max(p0, p1) + 1e-12


@SETTINGS
@given(probs, probs, st.integers(0, 10), st.integers(1, 10), st.integers(1, 50))
def test_fractional_epochs_ramp_within_an_epoch(p0, p1, e0, span, batches):
    # fractional epochs epoch + batch / batches_per_epoch move p(t) every batch, monotonically
    s = NullMaskSchedule(True, p0, p1, e0, e0 + span)
    ts = [e + b / batches for e in range(e0, e0 + span + 1) for b in range(batches)]
    ps = [s.prob(t) for t in ts]
    diffs = [b - a for a, b in zip(ps, ps[1:])]
    if p1 >= p0:
        assert all(d >= -1e-12 for d in diffs)
    else:
        assert all(d <= 1e-12 for d in diffs)
    if p0 != p1 and batches > 1:
        # a point strictly inside the first epoch of the ramp is strictly between the ends
        mid = s.prob(e0 + 1 / batches)
        assert min(p0, p1) < mid < max(p0, p1)


@SETTINGS
@given(probs, probs, st.floats(0, 120))
def test_disabled_schedule_is_one(p0, p1, t):
    assert NullMaskSchedule(False, p0, p1, 0, 10).prob(t) == 1.0


def test_start_epoch_equal_end_epoch_is_a_step():
    s = NullMaskSchedule(True, 0.1, 0.9, 3, 3)
    assert s.prob(2.99) == 0.1
    assert s.prob(3.01) == 0.9
    # at t == start == end both rules of DESIGN 3.1 apply; either value, never a division error
    assert s.prob(3) in (0.1, 0.9)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"start_prob": 1.5}, "START_PROB"),
        ({"start_prob": -0.1}, "START_PROB"),
        ({"end_prob": -0.5}, "END_PROB"),
        ({"end_prob": 1.01}, "END_PROB"),
        ({"start_epoch": 10, "end_epoch": 5}, "START_EPOCH"),
    ],
)
def test_schedule_validation_names_the_key(kwargs, key):
    with pytest.raises(ScheduleError) as excinfo:
        NullMaskSchedule(**{"enabled": True, **kwargs})
    msg = str(excinfo.value)
    assert key in msg, msg
    for value in kwargs.values():
        assert str(value) in msg, msg
    assert isinstance(excinfo.value, ValueError)


# ---------------------------------------------------------------------- keep mask
def random_targets(seed: int, n: int, num_ranks: int, null_frac: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(1, 5, (n, num_ranks), generator=g)
    return torch.where(torch.rand(n, num_ranks, generator=g) < null_frac, 0, y)  # (N, R)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 30), st.integers(1, 4), probs, st.booleans(), st.booleans())
def test_keep_mask_never_drops_labelled(seed, n, num_ranks, p, phase1, training):
    y = random_targets(seed, n, num_ranks)
    keep = null_keep_mask(y, p, phase1=phase1, training=training, generator=torch.Generator().manual_seed(seed))
    assert keep.dtype == torch.bool and keep.shape == y.shape
    assert keep[y != 0].all()
    if not training:  # evaluation: nulls always count
        assert keep.all()
    elif phase1:  # phase 1: exactly the labelled elements, whatever p is
        assert torch.equal(keep, y != 0)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 30), st.integers(1, 4))
def test_keep_mask_extreme_probabilities(seed, n, num_ranks):
    y = random_targets(seed, n, num_ranks)
    g = torch.Generator().manual_seed(seed)
    assert null_keep_mask(y, 1.0, phase1=False, training=True, generator=g).all()
    phase1 = null_keep_mask(y, 0.5, phase1=True, training=True)
    assert torch.equal(null_keep_mask(y, 0.0, phase1=False, training=True, generator=g), phase1)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_keep_rate_of_nulls_is_p(p):
    y = random_targets(0, 100_000, 3, null_frac=0.5)
    keep = null_keep_mask(y, p, phase1=False, training=True, generator=torch.Generator().manual_seed(1))
    nulls = y == 0
    n = int(nulls.sum())
    rate = keep[nulls].double().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 binomial standard deviations
    # independent per element: the rate holds in every rank separately
    for r in range(3):
        n_r = int(nulls[:, r].sum())
        assert abs(keep[:, r][nulls[:, r]].double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n_r)


def test_keep_mask_reproducible_from_seed():
    y = random_targets(3, 5000, 3)

    def mask(seed):
        return null_keep_mask(y, 0.5, phase1=False, training=True, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(mask(7), mask(7))
    assert not torch.equal(mask(7), mask(8))


def test_keep_mask_rejects_probability_outside_unit_interval():
    y = random_targets(0, 10, 2)
    with pytest.raises(ValueError, match="1.5"):
        null_keep_mask(y, 1.5, phase1=False, training=True)


# ---------------------------------------------------------------------- polarity
def test_dropped_elements_do_not_influence_the_loss_and_kept_ones_do():
    """Would fail if the mask were inverted: dropped (False) elements are ignored by the loss."""
    y = random_targets(11, 64, 3, null_frac=0.5)
    keep = null_keep_mask(y, 0.5, phase1=False, training=True, generator=torch.Generator().manual_seed(2))
    dropped, kept_null = ~keep, keep & (y == 0)
    assert dropped.any() and kept_null.any()
    g = torch.Generator().manual_seed(5)
    logits = [torch.randn(64, 5, generator=g) for _ in range(3)]
    weights = torch.tensor([0.2, 0.3, 0.5])
    base, base_rank = hierarchical_loss(logits, y, keep, weights)

    changed_dropped = [torch.where(dropped[:, r, None], 10 * torch.randn(64, 5, generator=g), x)
                       for r, x in enumerate(logits)]
    total, per_rank = hierarchical_loss(changed_dropped, y, keep, weights)
    assert torch.equal(total, base) and torch.equal(per_rank, base_rank)

    for r in range(3):
        if not kept_null[:, r].any():
            continue
        changed_kept = list(logits)
        changed_kept[r] = torch.where(kept_null[:, r, None], logits[r] + 10 * torch.randn(64, 5, generator=g), logits[r])
        _, per_rank = hierarchical_loss(changed_kept, y, keep, weights)
        assert per_rank[r] != base_rank[r]

    # and the gradient flows exactly into the kept elements
    leaves = [x.clone().requires_grad_(True) for x in logits]
    hierarchical_loss(leaves, y, keep, weights)[0].backward()
    for r, x in enumerate(leaves):
        row_grad = x.grad.abs().sum(dim=1)  # (N,)
        assert (row_grad[dropped[:, r]] == 0).all()
        assert (row_grad[keep[:, r]] > 0).all()

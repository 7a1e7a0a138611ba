"""The optimisation recipe (issue 18): LR schedule + warmup, gradient clipping, gradient accumulation.

The schedule function against hand-computed numbers and a slow reference; then real Trainer runs on tiny
synthetic data: the LR the optimizer sees at every step, ``schedule/lr`` per epoch, resume after a failed
run, phase 2's own warmup, the gradient norm at step time under clipping, and accumulation's gradients
against one batch of the same rows.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from test_trainer import tiny  # noqa: E402  (the shared small synthetic run)

from workbench import names as N
from workbench.config import Config
from workbench.events import BaseSink
from workbench.lr_schedule import lr_at, lr_factor
from workbench.masking import null_keep_mask
from workbench.trainer import Trainer


# ---------------------------------------------------------------------- the function
def f(t, schedule="constant", W=0.0, E=10, steps=(), gamma=0.1):
    return lr_factor(t, schedule=schedule, warmup_epochs=W, epochs=E, steps=steps, gamma=gamma)


def reference(t, schedule, W, E, steps, gamma):
    """The contract's formula written another way: warmup by interpolation, cosine as cos^2, milestones by bisect."""
    warm = float(np.interp(t, [0.0, W], [0.0, 1.0])) if W > 0 else 1.0
    if schedule == "cosine" and W < E:
        progress = float(np.clip((t - W) / (E - W), 0.0, 1.0))
        decay = math.cos(math.pi * progress / 2) ** 2  # = 0.5 * (1 + cos(pi * progress))
    elif schedule == "step":
        decay = gamma ** bisect.bisect_right(sorted(steps), t)  # milestones s <= t
    else:
        decay = 1.0
    return warm * decay


@pytest.mark.parametrize("t, W, expected", [
    (0.0, 0.0, 1.0), (3.7, 0.0, 1.0), (100.0, 0.0, 1.0),  # no warmup: constant from the first step
    (0.0, 2.0, 0.0), (0.5, 2.0, 0.25), (1.0, 2.0, 0.5), (2.0, 2.0, 1.0), (7.0, 2.0, 1.0),  # warmup start / end
    (0.125, 0.5, 0.25), (0.5, 0.5, 1.0), (0.75, 0.5, 1.0),  # fractional W
])
def test_constant_with_warmup(t, W, expected):
    assert f(t, "constant", W) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("t, W, E, expected", [
    (0.0, 0.0, 10, 1.0),
    (2.5, 0.0, 10, 0.5 * (1 + math.cos(math.pi / 4))),  # 0.8535533905932737
    (5.0, 0.0, 10, 0.5),  # midpoint
    (10.0, 0.0, 10, 0.0), (12.0, 0.0, 10, 0.0),  # end of training, and past it (clamped)
    (1.0, 2.0, 10, 0.5),  # in the warmup: warm 0.5, decay 1
    (2.0, 2.0, 10, 1.0),  # warmup end = decay start
    (6.0, 2.0, 10, 0.5),  # midpoint of the decay after warmup
    (10.0, 2.0, 10, 0.0),
    (1.5, 5.0, 3, 0.3), (3.0, 5.0, 3, 0.6), (3.0, 3.0, 3, 1.0),  # W >= EPOCHS: warmup only, no decay
    (0.25, 0.5, 4, 0.5), (2.25, 0.5, 4, 0.5),  # fractional W: warm 0.5; midpoint (0.5 + 4) / 2
])
def test_cosine(t, W, E, expected):
    assert f(t, "cosine", W, E) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("t, W, expected", [
    (0.0, 0.0, 1.0), (1.999, 0.0, 1.0),  # before the first milestone
    (2.0, 0.0, 0.1), (2.5, 0.0, 0.1), (4.499, 0.0, 0.1),  # at it, between the milestones
    (4.5, 0.0, 0.01), (9.0, 0.0, 0.01),  # at and after the (fractional) second one
    (0.5, 1.0, 0.5), (1.0, 1.0, 1.0), (2.0, 1.0, 0.1),  # warmup then the milestones
])
def test_step(t, W, expected):
    assert f(t, "step", W, steps=[2.0, 4.5], gamma=0.1) == pytest.approx(expected, rel=1e-12)


def test_step_edge_cases_and_unknown_schedule():
    assert f(3.0, "step", steps=[2.0], gamma=0.0) == 0.0  # gamma 0: off after the milestone
    assert f(0.0, "step", steps=[0.0], gamma=0.5) == 0.5  # a milestone at 0 applies from the first step
    assert f(0.5, "step", W=1.0, steps=[0.25], gamma=0.1) == pytest.approx(0.05)  # warmup times decay
    with pytest.raises(ValueError, match=r"`TRAIN.LR_SCHEDULE` must be one of constant, cosine, step, got 'linear'"):
        f(1.0, "linear")


def test_lr_at_reads_the_train_section():
    cfg = Config().with_overrides({"TRAIN.LR": 0.02, "TRAIN.EPOCHS": 8, "TRAIN.LR_SCHEDULE": "cosine",
                                   "TRAIN.WARMUP_EPOCHS": 2})
    assert lr_at(cfg.TRAIN, 1.0) == pytest.approx(0.01)
    assert lr_at(cfg.TRAIN, 5.0) == pytest.approx(0.01)  # cosine midpoint of [2, 8]
    assert lr_at(cfg.TRAIN, 8.0) == pytest.approx(0.0, abs=1e-18)
    plain = Config().with_overrides({"TRAIN.LR": 0.003})
    assert lr_at(plain.TRAIN, 0.37) == 0.003  # constant, no warmup: exactly TRAIN.LR


schedules = st.sampled_from(["constant", "cosine", "step"])
epochs = st.integers(1, 50)
warmups = st.floats(0.0, 60.0, allow_nan=False)
times = st.floats(0.0, 60.0, allow_nan=False)
milestones = st.lists(st.floats(0.0, 60.0, allow_nan=False), min_size=1, max_size=4, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(schedule=schedules, W=warmups, E=epochs, steps=milestones, gamma=st.floats(0.0, 1.0), t=times)
def test_factor_is_in_unit_interval_and_matches_the_reference(schedule, W, E, steps, gamma, t):
    value = f(t, schedule, W, E, steps, gamma)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(reference(t, schedule, W, E, steps, gamma), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(W=warmups, E=epochs, a=times, b=times)
def test_cosine_never_rises_after_warmup(W, E, a, b):
    lo, hi = sorted((W + a, W + b))
    assert f(hi, "cosine", W, E) <= f(lo, "cosine", W, E) + 1e-12


@settings(max_examples=200, deadline=None)
@given(schedule=st.sampled_from(["constant", "cosine"]), W=st.floats(0.01, 60.0), E=epochs, a=times, b=times)
def test_warmup_never_falls(schedule, W, E, a, b):
    lo, hi = sorted((min(a, W), min(b, W)))
    assert f(lo, schedule, W, E) <= f(hi, schedule, W, E) + 1e-12


# ---------------------------------------------------------------------- real Trainer runs
# `tiny`: the small synthetic run of tests/test_trainer.py (~480 training rows, well under a second per epoch)
class StepLog:
    """Hooked before every ``optimizer.step()`` of a trainer: the LR of each param group, the global L2 norm
    of the gradients the step will use (after any clipping), and optionally the gradients themselves."""

    def __init__(self, trainer: Trainer, keep_grads: bool = False):
        self.lrs: list[float] = []
        self.norms: list[float] = []
        self.grads: list[list[torch.Tensor]] = []
        self.keep_grads = keep_grads
        self.attach(trainer)

    def attach(self, trainer: Trainer) -> None:
        trainer.optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs):
        lrs = {g["lr"] for g in optimizer.param_groups}
        assert len(lrs) == 1, f"param groups disagree on the LR: {lrs}"
        self.lrs.append(lrs.pop())
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        if self.keep_grads:
            self.grads.append([g.detach().clone() for g in grads])


def expected_lrs(cfg: Config, n_batches: int, epochs=None) -> list[float]:
    """The contract: one step per group of ACCUMULATE batches, at t = epoch + (group's last batch + 1) / batches."""
    k = cfg.TRAIN.ACCUMULATE
    ends = [min(s + k, n_batches) for s in range(0, n_batches, k)]
    return [lr_at(cfg.TRAIN, e + end / n_batches) for e in (epochs or range(cfg.TRAIN.EPOCHS)) for end in ends]


def test_trainer_steps_at_the_scheduled_lr_and_stores_it(tmp_path):
    cfg = tiny(tmp_path, **{"TRAIN.LR_SCHEDULE": "cosine", "TRAIN.WARMUP_EPOCHS": 0.5, "TRAIN.ACCUMULATE": 3})
    t = Trainer(cfg, progress=False)
    log = StepLog(t)
    assert t.fit() == "finished"
    n_batches = t.train_ds.num_batches(64)
    assert n_batches % 3 != 0, "the last group is shorter (the test covers it)"
    steps_per_epoch = math.ceil(n_batches / 3)
    assert len(log.lrs) == 3 * steps_per_epoch
    assert log.lrs == expected_lrs(cfg, n_batches)
    assert log.lrs[0] == pytest.approx(0.01 * (3 / n_batches) / 0.5)  # first step: in the warmup, not zero
    assert log.lrs[-1] == pytest.approx(0.0, abs=1e-18)  # cosine reaches 0 at the end of training
    wide = t.store.metrics_wide([t.run_id]).set_index("epoch")
    last_of_epoch = log.lrs[steps_per_epoch - 1 :: steps_per_epoch]
    assert wide[N.LEARNING_RATE].tolist() == last_of_epoch
    assert wide.loc[0, N.LEARNING_RATE] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.5 / 2.5)))


class FailAtEpoch(BaseSink):
    """Fails the run when epoch ``epoch`` is reported: after its training, before its checkpoint (so ``resume``
    redoes it, as after a kill inside that epoch)."""

    name = "fail-at-epoch"

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch(self, event):
        if event.epoch == self.epoch:
            raise RuntimeError("killed for the test")


def test_resume_reproduces_the_lrs_and_weights_of_one_run(tmp_path):
    over = {"TRAIN.LR_SCHEDULE": "step", "TRAIN.LR_STEPS": [0.5, 2.0], "TRAIN.LR_GAMMA": 0.3,
            "TRAIN.WARMUP_EPOCHS": 0.75, "TRAIN.CLIP_GRAD_NORM": 0.5, "TRAIN.ACCUMULATE": 2,
            "SCHEDULE.NULL_MASKING.START_PROB": 0.3, "SCHEDULE.NULL_MASKING.END_EPOCH": 2}
    whole = Trainer(tiny(tmp_path, **over), progress=False)
    whole_log = StepLog(whole)
    assert whole.fit() == "finished"

    cfg = tiny(tmp_path, **over)
    first = Trainer(cfg, sinks=[FailAtEpoch(1)], progress=False)
    first_log = StepLog(first)
    with pytest.raises(Exception, match="killed for the test"):
        first.fit()
    assert first.store.run(first.run_id)["status"] == "failed"
    per_epoch = len(whole_log.lrs) // 3
    assert first_log.lrs == whole_log.lrs[: 2 * per_epoch]  # epoch 1 trained, then lost with the failure
    again = Trainer(cfg, store=first.store, run_id=first.run_id, progress=False)
    again_log = StepLog(again)
    assert again.fit(resume=True) == "finished"
    assert again_log.lrs == whole_log.lrs[per_epoch:], "resume redoes epoch 1 with the same LRs"
    ours, theirs = again.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    resumed = again.store.metrics_wide([again.run_id]).set_index("epoch")[N.LEARNING_RATE]
    assert resumed.tolist() == whole.store.metrics_wide([whole.run_id]).set_index("epoch")[N.LEARNING_RATE].tolist()


def test_phase2_starts_its_own_warmup(tmp_path):
    one = Trainer(tiny(tmp_path, **{"TRAIN.EPOCHS": 1}), progress=False)
    one.fit()
    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 2, "TRAIN.WARMUP_EPOCHS": 1, "TRAIN.INIT_FROM": one.run_id})
    two = Trainer(cfg, progress=False)
    log = StepLog(two)
    two.fit()
    n_batches = two.train_ds.num_batches(64)
    assert log.lrs == expected_lrs(cfg, n_batches)
    assert log.lrs[0] == pytest.approx(0.01 / n_batches)  # t counts phase 2's own epochs from 0


def test_clipping_bounds_the_gradient_norm_at_step_time(tmp_path):
    # features scaled up and a high LR, so the unclipped gradients are large
    over = {"TRAIN.EPOCHS": 1, "TRAIN.LR": 0.1, "DATA.SYNTHETIC.NOISE": 5.0}
    free = Trainer(tiny(tmp_path, **over), progress=False)
    free_log = StepLog(free)
    free.train_epoch(0)
    clip = 0.05
    clipped = Trainer(tiny(tmp_path, **over, **{"TRAIN.CLIP_GRAD_NORM": clip}), progress=False)
    clipped_log = StepLog(clipped)
    clipped.train_epoch(0)
    assert min(free_log.norms) > clip, "the unclipped run's gradients exceed the bound (the test can fail)"
    assert max(clipped_log.norms) <= clip + 1e-6
    assert clipped_log.norms[0] == pytest.approx(clip, rel=1e-4)  # scaled onto the bound, not zeroed
    assert len(clipped_log.norms) == len(free_log.norms)


def reference_epoch(self: Trainer, epoch: int) -> None:
    """The training loop before the recipe (zero_grad, backward, step on every batch), RNG draws and all."""
    self.model.train()
    n_batches = self.train_ds.num_batches(self.cfg.TRAIN.BATCH_SIZE)
    for b, (batch, meta) in enumerate(self._batches(self.train_ds, self.cfg.TRAIN.BATCH_SIZE, shuffle=True)):
        p = self.schedule.prob(epoch + b / n_batches)
        keep = null_keep_mask(batch.targets, p, phase1=False, training=True, generator=self.mask_gen)
        logits, _ = self._forward(batch, meta, training=True)
        total, _ = self._loss(logits, batch, keep, training=True)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()


def test_defaults_are_bitwise_the_plain_loop(tmp_path):
    # dropout and null masking on, so every random draw must also line up
    over = {"TRAIN.EPOCHS": 2, "SCHEDULE.NULL_MASKING.START_PROB": 0.3, "SCHEDULE.NULL_MASKING.END_EPOCH": 2}
    ours = Trainer(tiny(tmp_path, **over), progress=False)
    start = {k: v.clone() for k, v in ours.model.state_dict().items()}
    for epoch in range(2):
        ours.train_epoch(epoch)
    plain = Trainer(tiny(tmp_path, **over), progress=False)
    for epoch in range(2):
        reference_epoch(plain, epoch)
    a, b = ours.model.state_dict(), plain.model.state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a), "training moved the weights"
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_accumulated_gradients_equal_one_batch_of_the_same_rows(tmp_path):
    # equal denominators: no nulls, no weights, no dropout, equal batch sizes (480 training rows, 30 batches of 16)
    common = {"TRAIN.EPOCHS": 1, "MODEL.DROPOUT": 0.0, "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.0, 0.0]}
    B, K = 16, 4
    small = Trainer(tiny(tmp_path, **common, **{"TRAIN.BATCH_SIZE": B, "TRAIN.ACCUMULATE": K}), progress=False)
    n = len(small.train_ds)
    assert n % B == 0 and (n // B) % K != 0, f"{n} rows: equal batches, and a shorter last group"
    small_log = StepLog(small, keep_grads=True)
    small_metrics = small.train_epoch(0)
    big = Trainer(tiny(tmp_path, **common, **{"TRAIN.BATCH_SIZE": K * B}), progress=False)
    big_log = StepLog(big, keep_grads=True)
    big_metrics = big.train_epoch(0)
    # one step per group, the shorter last group included; group j holds exactly the rows of big batch j
    assert len(small_log.grads) == math.ceil((n // B) / K) == len(big_log.grads)
    for step, (g_small, g_big) in enumerate(zip(small_log.grads, big_log.grads)):
        for a, b in zip(g_small, g_big):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), f"step {step}: max diff {float((a - b).abs().max())}"
    # the logged losses are the unscaled batch losses: a group's batches see the same weights, so their
    # size-weighted mean is the big batch's loss (dividing by the group size would log 1/K of it)
    for key in [N.TRAIN_LOSS, *(N.rank_key("train", N.LOSS, r) for r in small.taxonomy.ranks)]:
        assert small_metrics[key] == pytest.approx(big_metrics[key], rel=1e-5), key

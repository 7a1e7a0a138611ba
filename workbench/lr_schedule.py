"""The learning-rate schedule: the LR of each optimizer step as a pure function of the fractional epoch.

The LR at an optimizer step is ``TRAIN.LR * warm(t) * decay(t)``, where ``t`` is the fractional epoch at the
END of that step: ``epoch + (b + 1) / batches_per_epoch`` with ``b`` the index of the step's last batch (with
``TRAIN.ACCUMULATE`` > 1 the last batch of its group), so the very first step already has a non-zero LR.

- ``warm(t) = min(1, t / W)`` for ``W = TRAIN.WARMUP_EPOCHS > 0`` (linear warmup; fractional ``W`` allowed), else 1.
- ``constant``: ``decay = 1``.
- ``cosine``: ``decay = 0.5 * (1 + cos(pi * clamp((t - W) / (EPOCHS - W), 0, 1)))``: 1 until the warmup ends, 0 at
  the end of training (``t = EPOCHS``); with ``W >= EPOCHS`` there is nothing left to decay over: ``decay = 1``.
- ``step``: ``decay = LR_GAMMA ** (number of LR_STEPS s with t >= s)``; a step ending exactly at a milestone
  already has the lower LR.

Nothing here has state: ``resume`` reproduces every LR from ``t`` alone. ``t`` counts this run's epochs, so a
phase-2 run (``TRAIN.INIT_FROM``) starts its own schedule, warmup included, from its epoch 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("constant", "cosine", "step")


def lr_factor(t: float, *, schedule: str, warmup_epochs: float, epochs: int,
              steps: Sequence[float] = (), gamma: float = 0.1) -> float:
    """``warm(t) * decay(t)`` in [0, 1] at the fractional epoch ``t`` (the module docstring defines both).

    Args:
        t: fractional epoch at the end of the optimizer step (>= 0).
        schedule: ``constant``, ``cosine`` or ``step`` (``TRAIN.LR_SCHEDULE``).
        warmup_epochs: ``W`` (``TRAIN.WARMUP_EPOCHS``), 0 = no warmup.
        epochs: the run's ``TRAIN.EPOCHS`` (cosine reaches 0 there).
        steps: ``TRAIN.LR_STEPS``, the milestones of ``step`` (increasing epochs).
        gamma: ``TRAIN.LR_GAMMA``, the factor applied at each milestone of ``step``.
    """
    warm = min(1.0, t / warmup_epochs) if warmup_epochs > 0 else 1.0
    if schedule == "constant":
        decay = 1.0
    elif schedule == "cosine":
        if warmup_epochs >= epochs:
            decay = 1.0
        else:
            progress = min(1.0, max(0.0, (t - warmup_epochs) / (epochs - warmup_epochs)))
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        decay = gamma ** sum(1 for s in steps if t >= s)
    else:
        raise ValueError(f"`TRAIN.LR_SCHEDULE` must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return warm * decay


def lr_at(train_cfg, t: float) -> float:
    """The learning rate of the optimizer step ending at fractional epoch ``t``, for a config's ``TRAIN``
    section: ``TRAIN.LR * lr_factor(t, ...)``."""
    return train_cfg.LR * lr_factor(
        t, schedule=train_cfg.LR_SCHEDULE, warmup_epochs=train_cfg.WARMUP_EPOCHS, epochs=train_cfg.EPOCHS,
        steps=train_cfg.LR_STEPS, gamma=train_cfg.LR_GAMMA)

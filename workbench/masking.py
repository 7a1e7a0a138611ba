"""Null-label masking: the inclusion schedule and keep masks (DESIGN.md 3.1, 3.2).

Polarity: every mask here is a *keep* mask, ``True`` means "this element counts in the loss".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ScheduleError(ValueError):
    """An invalid null-masking schedule setting; the message names the key and the value."""


@dataclass(frozen=True)
class NullMaskSchedule:
    """Probability ``p(t)`` that a null-labelled element is *included* in the training loss.

    ``p = start_prob`` for ``t <= start_epoch``, linear up to ``end_prob`` at ``end_epoch``,
    ``end_prob`` after; ``p = 1`` when disabled. ``t`` may be fractional
    (``epoch + batch / batches_per_epoch``) so the ramp is smooth within an epoch.
    """

    enabled: bool = True
    start_prob: float = 0.0
    end_prob: float = 1.0
    start_epoch: float = 0.0
    end_epoch: float = 100.0

    def __post_init__(self) -> None:
        for key, value in (("START_PROB", self.start_prob), ("END_PROB", self.end_prob)):
            if not 0.0 <= value <= 1.0:
                raise ScheduleError(f"SCHEDULE.NULL_MASKING.{key} must be in [0, 1], got {value}")
        if self.start_epoch < 0:
            raise ScheduleError(
                f"SCHEDULE.NULL_MASKING.START_EPOCH must be >= 0, got {self.start_epoch}"
            )
        if self.start_epoch > self.end_epoch:
            raise ScheduleError(
                "SCHEDULE.NULL_MASKING.START_EPOCH must be <= END_EPOCH, got "
                f"START_EPOCH={self.start_epoch} and END_EPOCH={self.end_epoch}"
            )

    def prob(self, epoch: float) -> float:
        """``p(t)`` at the (possibly fractional) epoch ``t``."""
        if not self.enabled:
            return 1.0
        if epoch <= self.start_epoch:
            return self.start_prob
        if epoch >= self.end_epoch:
            return self.end_prob
        # start_epoch < epoch < end_epoch here, so the span is positive
        frac = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        return self.start_prob + frac * (self.end_prob - self.start_prob)


def null_keep_mask(
    targets: torch.Tensor,
    prob: float,
    *,
    phase1: bool,
    training: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Keep mask ``BoolTensor (N, R)`` for targets ``LongTensor (N, R)`` (0 = null).

    ``True`` = the element counts. Non-null elements are always kept. Null elements are kept
    always in evaluation (``training=False``), never in phase 1 (``phase1=True``, the schedule is not
    consulted), and otherwise each with an independent Bernoulli(``prob``) draw from ``generator``.
    """
    labelled = targets != 0  # (N, R)
    if not training:
        return torch.ones_like(labelled)
    if phase1:
        return labelled
    if not 0.0 <= prob <= 1.0:
        raise ScheduleError(f"null inclusion probability must be in [0, 1], got {prob}")
    if prob >= 1.0:
        return torch.ones_like(labelled)
    if prob <= 0.0:
        return labelled
    # draw where the generator lives (a CPU generator keeps CUDA runs reproducible), then move
    device = generator.device if generator is not None else targets.device
    # non_blocking: a pageable copy is staged at once; a blocking one would wait for the GPU every batch
    draws = torch.rand(targets.shape, generator=generator, device=device).to(targets.device, non_blocking=True)  # (N, R)
    return labelled | (draws < prob)

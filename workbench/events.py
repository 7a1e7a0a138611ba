"""The closed set of trainer events and the sink protocol (DESIGN.md section 7).

A run emits exactly: one :class:`RunStarted`, one :class:`EpochResult` per finished epoch, at most
one :class:`TestResult` (after the last epoch of a run that ends finished or stopped and has a test
split), one :class:`RunFinished`. Sinks receive read-only events; a sink that raises stops the run with an
error that names the sink (a sink that must never stop training, like W&B, catches its own errors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import pandas as pd


@dataclass(frozen=True)
class RunStarted:
    """A run starts (or resumes): everything its record holds besides the epochs.

    ``config``: the resolved config the run trains with (``Config.to_dict()``); ``ranks``: the rank
    names, coarse to fine; ``environment``: the reproducibility record
    (:func:`workbench.environment.environment_record`); ``pid``: the training process (on its own
    host: a sweep trial's may be on another node).
    """

    run_id: str
    config: Mapping
    ranks: tuple[str, ...]
    start_epoch: int  # > 0 when resumed
    parent_id: str | None = None
    environment: Mapping = field(default_factory=dict)
    pid: int | None = None


@dataclass(frozen=True)
class EpochResult:
    """One epoch's metrics (``{"core/val_loss": ..., "val/acc/<rank>": ...}``) and val threshold curves.

    ``curves`` columns: ``split, rank, curve, tau, value``. ``health``: ``{check: message}`` of the
    checks that fired this epoch (empty when healthy).
    """

    run_id: str
    epoch: int
    metrics: Mapping[str, float]
    curves: pd.DataFrame
    health: Mapping[str, str] = field(default_factory=dict)
    checkpoint: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "health", MappingProxyType(dict(self.health)))


@dataclass(frozen=True)
class TestResult:
    """The test split, evaluated once at the end of a run with the weights of the epoch selected on val
    (DESIGN.md 3.5): ``epoch`` is that selected epoch (0-based); ``metrics`` are ``core/test_*`` and
    ``test/...`` keys, including each rank's val-chosen threshold applied to test (``test/tau/<rank>``,
    ``test/coverage_at_tau/<rank>``, ``test/selective_accuracy_at_tau/<rank>``); ``curves`` the test
    threshold curves (columns ``split, rank, curve, tau, value``, split ``test``).
    """

    __test__ = False  # not a pytest test class, whatever its name

    run_id: str
    epoch: int
    metrics: Mapping[str, float]
    curves: pd.DataFrame

    def __post_init__(self):
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))


@dataclass(frozen=True)
class RunFinished:
    """The run ended. ``reason``: why a ``finished`` run ended before ``TRAIN.EPOCHS`` (early stopping),
    in words; None otherwise."""

    run_id: str
    status: str  # finished | failed | stopped
    epochs_done: int
    error: str | None = None
    reason: str | None = None


class Sink(Protocol):
    name: str

    def on_start(self, event: RunStarted) -> None: ...
    def on_epoch(self, event: EpochResult) -> None: ...
    def on_test(self, event: TestResult) -> None: ...
    def on_finish(self, event: RunFinished) -> None: ...


from workbench.errors import SinkError  # noqa: F401 (defined once in errors.py; re-exported here)


def dispatch(sinks: Sequence[Sink], method: str, event) -> None:
    """Deliver ``event`` to every sink's ``method``; re-raise a failure with the sink's name."""
    for sink in sinks:
        try:
            getattr(sink, method)(event)
        except Exception as e:
            raise SinkError(f"sink {getattr(sink, 'name', type(sink).__name__)!r} failed in {method}: {e}") from e


class BaseSink:
    """A sink that ignores every event; subclasses override what they need."""

    name = "base"

    def on_start(self, event: RunStarted) -> None:
        pass

    def on_epoch(self, event: EpochResult) -> None:
        pass

    def on_test(self, event: TestResult) -> None:
        pass

    def on_finish(self, event: RunFinished) -> None:
        pass

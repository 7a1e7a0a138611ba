"""Ray Tune adapter: search space, trainable, driver-side store callback, run/resume a sweep.

One trial = one :class:`~workbench.trainer.Trainer` run without a store. The trial reports every
epoch's whole result (metrics, curves, health) and its start event (resolved config, ranks,
reproducibility record) with ``ray.tune.report`` (with a checkpoint, so ASHA and restarts work) and
logs to W&B itself when enabled (workers don't inherit the driver's environment: mode and folder
are passed explicitly). The *driver* rebuilds the events and records them in the local run store
through :class:`StoreCallback` with the same store sink a single run uses, so a trial's record
equals a single run's and the dashboard shows trials live even when they run on other nodes.
Trials reuse their actor processes, and the driver loads the data once and hands it to every trial
through Ray's object store (:func:`shared_dataset`). ``ray`` is imported lazily.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import Config, ConfigError, _bounded_yaml, _YamlRefused, apply_overrides, flatten, shorten
from workbench.events import BaseSink, EpochResult, RunFinished, RunStarted, TestResult
from workbench.store import RunStore

# sweep-friendly names for the keys researchers sweep most
ALIASES = {
    "w": "LOSS.W",
    "hxe_alpha": "LOSS.HXE_ALPHA",  # HXE(alpha) rank-weight preset (needs MODEL.HEAD marginal)
    "soft_beta": "LOSS.SOFT_LABELS_BETA",  # soft labels exp(-beta * LCA height)
    "start_prob": "SCHEDULE.NULL_MASKING.START_PROB",
    "end_prob": "SCHEDULE.NULL_MASKING.END_PROB",
    "end_epoch": "SCHEDULE.NULL_MASKING.END_EPOCH",
    "phase1": "TRAIN.PHASE1_MASK_NULL_LOSS",
    "seed": "TRAIN.SEED",
}
from workbench.names import (  # noqa: E402,F401 (one home: names.py; re-exported here)
    DEFAULT_STORE, MAX_TRIALS, RESULT_NEUTRAL_KEYS, RESULTS_DIR, SELECT_BY_DEFAULT as SELECTION_METRIC, STATUS_FILE, SWEEP_ACTIVE,
    SEED_KEY, SWEEP_STATUSES, SWEEPS_DIR, wandb_dir_for,
)

# a sweep's life, as recorded in <store dir>/sweeps/<sweep id>/status.json (see write_sweep_status)
# a sweep id names folders (Tune's experiment, the sweep folder) and log files: a safe, bounded alphabet
SWEEP_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
SWEEP_ID_RULE = "letters, digits, '_', '-' and '.', not starting with '.', at most 64 characters"
CONNECT_TIMEOUT_S = 3.0  # how long to wait for a Ray cluster's GCS port before calling it unreachable
DEFAULT_RAY_PORT = 6379


def new_sweep_id() -> str:
    return "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


def validate_sweep_id(sweep_id: str) -> str:
    """``sweep_id`` if it is safe as a folder and file name (``../x`` is not), else a ConfigError."""
    if not isinstance(sweep_id, str) or not SWEEP_ID_PATTERN.fullmatch(sweep_id):
        raise ConfigError(f"sweep id must be {SWEEP_ID_RULE}, got {sweep_id!r}")
    return sweep_id


def child_path(parent: str | os.PathLike, sweep_id: str) -> Path:
    """``<parent>/<sweep id>``, checked to stay inside ``parent`` after resolving links."""
    root = Path(parent).resolve()
    path = (root / validate_sweep_id(sweep_id)).resolve()
    if path.parent != root:  # cannot happen with a valid id; an invariant, not input validation
        raise ConfigError(f"sweep id {sweep_id!r} would leave {root}")
    return path


def trial_run_id(sweep_id: str, trial_id: str) -> str:
    """The run id of a trial in the store and in W&B (the driver and the worker derive it alike)."""
    return f"{sweep_id}-{trial_id}"


@dataclass
class SweepSpec:
    """What to search.

    Attributes:
        base: the base config (dict of the YAML sections).
        grid: dotted key (or alias) -> list of values, crossed as a grid.
        distributions: dotted key -> ``("uniform" | "loguniform", low, high)``, sampled ``num_samples`` times.
        seeds: repeats of every point, as ``TRAIN.SEED`` = 0..seeds-1.
    """

    base: dict
    grid: dict[str, list] = field(default_factory=dict)
    distributions: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    seeds: int = 1
    num_samples: int = 1

    def resolved_grid(self) -> dict[str, list]:
        grid = {ALIASES.get(k, k): list(v) for k, v in self.grid.items()}
        if self.seeds > 1 or SEED_KEY not in grid:
            grid[SEED_KEY] = list(range(self.seeds))
        return grid

    def validate(self) -> None:
        """Every grid value and distribution bound must give a valid config (checked before Ray starts)."""
        base = Config.from_dict(self.base, source="sweep base config")
        if self.seeds < 1:
            raise ConfigError(f"`--seeds` must be >= 1, got {self.seeds}")
        if self.num_samples < 1:
            raise ConfigError(f"`--num-samples` must be >= 1, got {self.num_samples}")
        grid = self.resolved_grid()
        for key, values in grid.items():
            if not values:
                raise ConfigError(f"sweep grid `{key}` has no values")
        # every combination, so keys that constrain each other (START_EPOCH <= END_EPOCH) are checked too
        for combo in itertools.islice(itertools.product(*grid.values()), 100_000):
            base.with_overrides(dict(zip(grid, combo)))
        for key, dist in self.distributions.items():
            kind, lo, hi = dist
            if kind not in ("uniform", "loguniform"):
                raise ConfigError(f"sweep distribution `{key}` must be uniform or loguniform, got {kind!r}")
            if not lo < hi:
                raise ConfigError(f"sweep distribution `{key}` needs low < high, got {lo} and {hi}")
            for v in (lo, hi):
                base.with_overrides({ALIASES.get(key, key): v})

    def num_trials(self) -> int:
        n = 1
        for values in self.resolved_grid().values():
            n *= len(values)
        return n * self.num_samples

    def check_size(self, max_trials: int | None = MAX_TRIALS) -> None:
        """A ConfigError when the sweep has more than ``max_trials`` trials (``None``: no limit).

        Cheap (no config is built), so it runs before :meth:`validate` walks every combination.
        """
        n = self.num_trials()
        if max_trials is not None and n > max_trials:
            sizes = " x ".join(f"{len(v)} {k}" for k, v in self.resolved_grid().items())
            if self.num_samples > 1:
                sizes += f" x {self.num_samples} samples"
            raise ConfigError(f"the sweep has {n} trials ({sizes}), more than the limit of {max_trials}; "
                              f"pass --max-trials {n} (or --yes) to run it")


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """A flat Tune space ``{"LOSS.W": grid_search([...]), ...}``."""
    from ray import tune

    space: dict[str, Any] = {k: tune.grid_search(v) for k, v in spec.resolved_grid().items()}
    samplers = {"uniform": tune.uniform, "loguniform": tune.loguniform}
    for key, (kind, lo, hi) in spec.distributions.items():
        space[ALIASES.get(key, key)] = samplers[kind](lo, hi)
    return space


def trial_config(base: Mapping, params: Mapping, sweep_id: str, wandb_dir: str | None) -> Config:
    """The config of one trial: base + sampled params + sweep tracking (W&B group = sweep id)."""
    overrides = {k: v for k, v in params.items() if "." in k}
    overrides["TRACKING.WANDB.GROUP"] = sweep_id
    if wandb_dir:
        overrides["TRACKING.WANDB.DIR"] = wandb_dir
    return Config.from_dict(apply_overrides(dict(base), overrides), source=f"sweep {sweep_id} trial")


# ---------------------------------------------------------------------- the sweep's status record
def sweep_dir(store_path: str | os.PathLike, sweep_id: str) -> Path:
    """``<store dir>/sweeps/<sweep id>``: the sweep's status record, results table and figure."""
    return child_path(Path(store_path).resolve().parent / SWEEPS_DIR, sweep_id)


def status_path(store_path: str | os.PathLike, sweep_id: str) -> Path:
    return sweep_dir(store_path, sweep_id) / STATUS_FILE


@contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on ``path`` (created) for a read-modify-write by several processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_sweep_status(store_path: str | os.PathLike, sweep_id: str) -> dict | None:
    """The sweep's status record, or None when it has none (a sweep run before records existed)."""
    path = status_path(store_path, sweep_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable sweep status record: {e}") from None


def write_sweep_status(store_path: str | os.PathLike, sweep_id: str, create: bool = True,
                       if_status: Sequence[str] | None = None, **fields) -> dict | None:
    """Merge ``fields`` into the sweep's status record (atomically: a temp file, then ``os.replace``).

    The launcher, the driver and the dashboard all write it, so the read-modify-write holds a file
    lock. With ``create=False`` nothing is written when the sweep has no record yet (returns None):
    a rejected command line leaves no trace. With ``if_status``, nothing is written (returns None)
    unless the recorded status is one of those (so a late "failed" never overwrites "finished").
    ``status`` must be one of :data:`SWEEP_STATUSES`; ``updated`` is set.
    """
    status = fields.get("status")
    if status is not None and status not in SWEEP_STATUSES:
        raise ConfigError(f"sweep status must be one of {', '.join(SWEEP_STATUSES)}, got {status!r}")
    path = status_path(store_path, sweep_id)
    if not create and not path.is_file():
        return None
    with file_lock(path.with_name(STATUS_FILE + ".lock")):
        record = read_sweep_status(store_path, sweep_id)
        if record is None:
            if not create:
                return None
            record = {"id": sweep_id}
        if if_status is not None and record.get("status") not in if_status:
            return None
        record.update(fields, updated=time.time())
        tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)
    return record


def sweep_ids_with_records(store_path: str | os.PathLike) -> list[str]:
    """The ids of the sweeps that have a status record next to the store."""
    root = Path(store_path).resolve().parent / SWEEPS_DIR
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{STATUS_FILE}") if SWEEP_ID_PATTERN.fullmatch(p.parent.name))


def check_reuse(store: RunStore, sweep_id: str, spec: SweepSpec) -> None:
    """A ConfigError when ``sweep_id`` already has trials in ``store`` that this sweep would not run.

    A reused id adds trials to the same sweep (its table and chart mix both), so the stored trials'
    configs must be points of this sweep: swept keys inside the grid (or distribution bounds),
    every other key equal to the base. Tracking keys and result-neutral keys (threads, device, streaming) may differ.
    """
    runs = store.runs(sweep_id=sweep_id)
    if runs.empty:
        return
    base = flatten(_absolute_paths(Config.from_dict(spec.base).to_dict()))
    grid = spec.resolved_grid()
    dists = {ALIASES.get(k, k): v for k, v in spec.distributions.items()}

    def ignored(key: str) -> bool:
        return key.startswith("TRACKING.") or key in RESULT_NEUTRAL_KEYS

    hint = f"use --resume {sweep_id} to continue it, or another --sweep-id"
    where = f"sweep {sweep_id!r} already has {len(runs)} trials in {store.path}"
    for run_id in sorted(runs["id"]):
        old = flatten(store.run(run_id)["config"])
        for key in sorted(set(old) | set(base)):
            if ignored(key):
                continue
            value = old.get(key)
            if key in grid:
                if value not in grid[key]:
                    raise ConfigError(f"{where} with `{key}` = {value!r} (trial {run_id}), which is not in this "
                                      f"sweep's values {grid[key]}; {hint}")
            elif key in dists:
                _, lo, hi = dists[key]
                if not (isinstance(value, (int, float)) and lo <= value <= hi):
                    raise ConfigError(f"{where} with `{key}` = {value!r} (trial {run_id}), outside this sweep's "
                                      f"range [{lo:g}, {hi:g}]; {hint}")
            elif value != base.get(key):
                raise ConfigError(f"{where} with a different config: `{key}` is {value!r} there "
                                  f"(trial {run_id}) and {base.get(key)!r} here; {hint}")


# ---------------------------------------------------------------------- trial side
EVENT_KEY = "workbench_event"  # the key of a Tune result that carries the trial's whole events (JSON text)
# the key of a Tune result that says how a multi-worker run ended (JSON of RunFinished's status, epochs, reason):
# such a run may end "stopped" (a relayed stop request), which the trial's completion alone cannot tell
RUN_END_KEY = "workbench_end"
# the key under which Ray's TuneReportCallback passes the path of a Ray Train checkpoint to Tune
TRAIN_CHECKPOINT_KEY = "checkpoint_path"
TRAINER_DIR = "trainer"  # in Tune's trial folder: the trial trainer's checkpoint and lock


def encode_events(started: RunStarted | None, result: EpochResult | TestResult) -> str:
    """A trial's events for one report, as JSON text (it crosses nodes through Tune's result): an epoch's
    result, or the run's one test result (under the key ``test``).

    Curves travel as a dict of columns; NaN metrics are kept (JSON ``NaN``, read back by ``json``).
    """
    curves = result.curves
    body = {"run_id": result.run_id, "epoch": result.epoch, "metrics": dict(result.metrics),
            "curves": {c: curves[c].tolist() for c in curves.columns}}
    if isinstance(result, TestResult):
        payload: dict = {"test": body}
    else:
        payload = {"epoch": {**body, "health": dict(result.health)}}
    if started is not None:
        payload["started"] = {
            "run_id": started.run_id, "config": dict(started.config), "ranks": list(started.ranks),
            "start_epoch": started.start_epoch, "parent_id": started.parent_id,
            "environment": dict(started.environment), "pid": started.pid,
        }
    return json.dumps(payload)


def decode_events(text: str) -> tuple[RunStarted | None, EpochResult | TestResult]:
    """The inverse of :func:`encode_events`: ``(RunStarted or None, EpochResult or TestResult)``."""
    import pandas as pd

    payload = json.loads(text)
    e = payload["test"] if "test" in payload else payload["epoch"]
    curves = pd.DataFrame(e["curves"], columns=list(e["curves"]) or ["split", "rank", "curve", "tau", "value"])
    if "test" in payload:
        result: EpochResult | TestResult = TestResult(e["run_id"], int(e["epoch"]), e["metrics"], curves)
    else:
        result = EpochResult(e["run_id"], int(e["epoch"]), e["metrics"], curves, e["health"])
    s = payload.get("started")
    started = None if s is None else RunStarted(
        s["run_id"], s["config"], tuple(s["ranks"]), int(s["start_epoch"]), s["parent_id"], s["environment"], s["pid"])
    return started, result


class TuneReportSink(BaseSink):
    """Reports each epoch to Tune: the whole :class:`EpochResult` (metrics, curves, health) and, with
    every report, the run's :class:`RunStarted` (resolved config, ranks, environment), plus a
    checkpoint of the trainer's state after that epoch (and the run's ``best.pt``, so a trial restarted
    on another node keeps its selected weights). The metrics are also top-level keys of the result,
    for Tune's schedulers and searchers. The run's :class:`TestResult` is one more report, after the
    last epoch: its top-level metrics repeat the last epoch's (val) ones, so Tune's schedulers and
    searchers never see a test number; the test metrics travel only inside the encoded event. The
    driver's :class:`StoreCallback` rebuilds the events and feeds them to the store sink.
    """

    name = "ray-tune"

    def __init__(self, state_fn, best_fn=None):
        self.state_fn = state_fn
        self.best_fn = best_fn  # () -> the file of the run's current best weights, or None (Trainer.best_file)
        self.started: RunStarted | None = None
        self._last: dict = {}  # the last epoch's top-level report (repeated by the test report)

    def on_start(self, event: RunStarted) -> None:
        self.started = event

    def _report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """One report to Tune (a multi-worker run's sink reports through Ray Train instead)."""
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def on_epoch(self, event: EpochResult) -> None:
        from workbench.names import BEST_CHECKPOINT_NAME
        from workbench.trainer import CHECKPOINT_NAME, save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp) / CHECKPOINT_NAME, self.state_fn(event.epoch))
            best = self.best_fn() if self.best_fn is not None else None
            if best is not None:
                shutil.copy(best, Path(tmp) / BEST_CHECKPOINT_NAME)
            self._last = {**event.metrics, "epoch": event.epoch, "run_id": event.run_id}
            self._report({**self._last, EVENT_KEY: encode_events(self.started, event)}, tmp)

    def on_test(self, event: TestResult) -> None:
        self._report({**self._last, "run_id": event.run_id, EVENT_KEY: encode_events(None, event)})


def train_trial(params: dict, base: dict, sweep_id: str, wandb_dir: str | None = None, threads: int = 1,
                dataset=None, workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0) -> None:
    """The Tune function trainable: one Trainer run, resumed from Tune's checkpoint after a restart.

    The trial has no store of its own: its trainer keeps its checkpoint in Tune's trial folder and
    reports every event to the driver (:class:`TuneReportSink`), which records it; so a trial on
    another node of a cluster needs no shared disk. ``dataset``: the sweep's data, loaded once by the
    driver (:func:`shared_dataset`) and read from Ray's object store; None = the trial loads ``DATA``.

    With ``workers > 1`` (``sweep --workers-per-trial``) the trial is a data-parallel run on that many Ray
    Train workers (:func:`workbench.cluster_run.fit_on_workers`; ``threads``, ``cpus_per_worker`` and
    ``gpus_per_worker`` are each worker's; each loads ``DATA`` itself): rank 0's reports reach Tune and the
    driver alike, but no Tune checkpoint is kept, so a restarted trial trains again from its first epoch.
    """
    from ray import tune

    from workbench.names import BEST_CHECKPOINT_NAME
    from workbench.store import CHECKPOINT_NAME
    from workbench.trainer import Trainer

    ctx = tune.get_context()
    run_id = trial_run_id(sweep_id, ctx.get_trial_id())
    cfg = trial_config(base, params, sweep_id, wandb_dir).with_overrides({"TRAIN.NUM_THREADS": threads})
    if workers > 1:
        from workbench.cluster_run import fit_on_workers, worker_config

        fit_on_workers(worker_config(cfg.to_dict(), threads, gpus_per_worker), run_id, workers, cpus_per_worker,
                       gpus_per_worker, storage=str(Path(ctx.get_trial_dir()) / TRAINER_DIR))
        return
    target = Path(ctx.get_trial_dir()) / TRAINER_DIR / CHECKPOINT_NAME
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / CHECKPOINT_NAME, target)
            if (Path(d) / BEST_CHECKPOINT_NAME).is_file():
                shutil.copy(Path(d) / BEST_CHECKPOINT_NAME, target.parent / BEST_CHECKPOINT_NAME)
    trainer = Trainer(cfg, run_id=run_id, progress=False, checkpoint_path=target, dataset=dataset)
    trainer.sinks.append(TuneReportSink(trainer.state_dict, trainer.best_file))
    trainer.fit(resume=checkpoint is not None)


# ---------------------------------------------------------------------- driver side
def _store_callback_class():
    from ray import tune

    from workbench.tracking import StoreSink

    class StoreCallback(tune.Callback):
        """Driver-side: records every trial in the local run store through the same
        :class:`~workbench.tracking.StoreSink` a single run uses, from the events the trial reports."""

        def __init__(self, store_path: str, sweep_id: str | None, base: dict, wandb_dir: str | None,
                     run_id: str | None = None, checkpoints: bool = False):
            self.store_path, self.sweep_id, self.base, self.wandb_dir = store_path, sweep_id, base, wandb_dir
            # a one-trial run on a cluster (workbench.cluster_run): its trial records this run id, and the Ray
            # Train checkpoints it reports are copied into the store's run folder (resume, predict, phase 2)
            self.run_id, self.checkpoints = run_id, checkpoints
            self._sink = None
            self._started: dict[str, RunStarted] = {}  # the start event last recorded, per run
            self._ended: set[str] = set()  # runs whose trial reported how they ended (RUN_END_KEY)

        @property
        def store(self) -> RunStore:
            return self.sink.store

        @property
        def sink(self) -> StoreSink:
            if self._sink is None:
                self._sink = StoreSink(RunStore(self.store_path))
            return self._sink

        def __getstate__(self):  # Tune snapshots callbacks with the experiment state: no live objects
            return {**self.__dict__, "_sink": None, "_started": {}, "_ended": set()}

        def _run_id(self, trial) -> str:
            return self.run_id or trial_run_id(self.sweep_id, trial.trial_id)

        def on_trial_start(self, iteration, trials, trial, **info):
            """The row exists from the start (queued, as a launcher creates it) with the config the trial
            will run; the trial's first report replaces it with what it really ran."""
            run_id = self._run_id(trial)
            if self.store.has_run(run_id):  # resumed or restarted: queued again until it reports
                self.store.update_run(run_id, status="queued", error=None)
                return
            try:
                config = trial_config(self.base, trial.config, self.sweep_id, self.wandb_dir).to_dict()
            except ConfigError:
                config = apply_overrides(dict(self.base), {k: v for k, v in trial.config.items() if "." in k})
            self.store.create_run(config, name=run_id, run_id=run_id, sweep_id=self.sweep_id, status="queued")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if RUN_END_KEY in result:
                end = json.loads(result[RUN_END_KEY])
                self.sink.on_finish(RunFinished(end["run_id"], end["status"], int(end["epochs_done"]), None,
                                                end.get("reason")))
                self._ended.add(end["run_id"])
                return
            started, event = decode_events(result[EVENT_KEY])
            if started is not None and self.run_id is not None:
                # a cluster run's process on this machine is its driver (which owns the workers): the pid that
                # the app's liveness check and Stop act on, not a worker's on some node
                started = dataclasses.replace(started, pid=os.getpid())
            if isinstance(event, TestResult):
                self.sink.on_test(event)
                return
            if started is not None and self._started.get(started.run_id) != started:
                self.sink.on_start(started)  # first report of this (re)start of the trial
                self._started[started.run_id] = started
            self.sink.on_epoch(event)
            if self.checkpoints and result.get(TRAIN_CHECKPOINT_KEY):
                copy_train_checkpoint(result[TRAIN_CHECKPOINT_KEY], self.store.checkpoint_path(event.run_id))

        def _epochs_done(self, trial) -> int:
            last = getattr(trial, "last_result", None) or {}
            return int(last["epoch"]) + 1 if "epoch" in last else 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self._run_id(trial) in self._ended:  # its trial said how it ended (say, stopped)
                return
            self.sink.on_finish(RunFinished(self._run_id(trial), "finished", self._epochs_done(trial)))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.sink.on_finish(RunFinished(self._run_id(trial), "failed", self._epochs_done(trial),
                                            _trial_error_text(trial)))

    return StoreCallback


def copy_train_checkpoint(source: str, target: Path) -> bool:
    """Copy the trainer checkpoint (and ``best.pt``) of a Ray Train checkpoint folder ``source`` to ``target``
    (the run's ``checkpoint.pt`` in the store) and beside it, each through a temporary file and a rename.

    Returns False when ``source`` is not on this machine's disk (a cluster without shared storage) or was
    already rotated out by a newer checkpoint (whose copy follows): the store then keeps what it had.
    """
    from workbench.names import BEST_CHECKPOINT_NAME, CHECKPOINT_NAME

    src = Path(source)
    if not (src / CHECKPOINT_NAME).is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    for name, dest in ((CHECKPOINT_NAME, target), (BEST_CHECKPOINT_NAME, target.parent / BEST_CHECKPOINT_NAME)):
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(src / name, tmp)
        except FileNotFoundError:  # no best.pt yet, or the folder was rotated out meanwhile
            continue
        os.replace(tmp, dest)
    return True


def _trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text(errors="replace")[-4000:]
    return str(getattr(trial, "error_msg", None) or "trial failed")


@dataclass
class SweepSettings:
    """How to run: where, with what resources, which scheduler/searcher, where results go."""

    store_path: str = DEFAULT_STORE
    results_dir: str = RESULTS_DIR
    address: str | None = None  # None = local Ray; "auto" or "host:port" = a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0 = as many as resources allow
    asha: bool = False
    optuna: bool = False
    max_failures: int = 0
    wandb: bool = False
    wandb_project: str = "workbench"
    wandb_mode: str = "offline"
    wandb_dir: str | None = None
    verbose: int = 1
    keep_checkpoints: int | None = None  # None = all (trial checkpoints of these models are small)
    # Ray Train workers per trial (data-parallel trials); the trial's CPUs and GPUs are split evenly among them
    workers_per_trial: int = 1

    def trial_resources(self) -> dict[str, float]:
        """What one trial asks Ray for (and what the sweep's status record shows): ``{"cpu": .., "gpu": ..}``."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def validate(self) -> None:
        """Resource settings Tune would accept and then wait on forever; checked before Ray starts.

        On a local Ray the machine's CPUs and GPUs are known here; a cluster's are checked once
        joined (:func:`check_cluster_resources`).
        """
        check_amounts(self.cpus_per_trial, self.gpus_per_trial, "trial")
        if self.workers_per_trial < 1:
            raise ConfigError(f"`--workers-per-trial` must be >= 1, got {self.workers_per_trial}")
        if self.max_concurrent < 0:
            raise ConfigError(f"`--max-concurrent` must be >= 1, got {self.max_concurrent}")
        if self.max_failures < 0:
            raise ConfigError(f"`--max-failures` must be >= 0, got {self.max_failures}")
        if self.address:
            return
        cpus = os.cpu_count() or 1
        if self.cpus_per_trial > cpus:
            raise ConfigError(f"`--cpus-per-trial` {self.cpus_per_trial:g} is more than the {cpus} CPUs of this "
                              "machine (local Ray): no trial could ever start")
        if self.gpus_per_trial > 0:
            import torch

            gpus = torch.cuda.device_count()
            if self.gpus_per_trial > gpus:
                raise ConfigError(f"`--gpus-per-trial` {self.gpus_per_trial:g} needs a GPU, but this machine has "
                                  f"{gpus} (torch.cuda.device_count() = {gpus}): no trial could ever start")


def check_amounts(cpus: float, gpus: float, per: str) -> None:
    """CPUs and GPUs a trial or worker asks Ray for (``--cpus-per-<per>``, ``--gpus-per-<per>``): what Ray would
    accept and then wait on forever (a negative amount, a fractional share of several GPUs) is refused here."""
    if cpus < 0:
        raise ConfigError(f"`--cpus-per-{per}` must be >= 0, got {cpus:g}")
    if gpus < 0:
        raise ConfigError(f"`--gpus-per-{per}` must be >= 0, got {gpus:g}")
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"`--gpus-per-{per}` above 1 must be a whole number, got {gpus:g}")


def check_cluster_resources(settings: SweepSettings) -> None:
    """Once Ray is up: a ConfigError when one trial needs more CPUs or GPUs than the whole cluster has."""
    import ray

    if not ray.is_initialized():  # Tune starts a local instance itself; SweepSettings.validate checked it
        return
    total = ray.cluster_resources()
    where = f"the Ray cluster at {settings.address}" if settings.address else "the local Ray instance"
    for name, flag, need in (("CPU", "--cpus-per-trial", settings.cpus_per_trial),
                             ("GPU", "--gpus-per-trial", settings.gpus_per_trial)):
        have = float(total.get(name, 0.0))
        if need > have:
            raise ConfigError(f"`{flag}` {need:g} is more than the {have:g} {name}s of {where}: "
                              "no trial could ever start")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A LaunchError naming ``address`` when nothing answers on its port within ``timeout`` seconds.

    ``ray.init`` on an address that does not answer hangs for minutes; a plain TCP connect to the
    GCS port (or the Ray client port of a ``ray://`` address) tells at once. ``"auto"`` is left to Ray
    (it reads the local cluster's address file and fails fast when there is none).
    """
    from workbench.launch import LaunchError

    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, str(10001 if address.startswith("ray://") else DEFAULT_RAY_PORT)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise LaunchError(f"Ray cluster address {address!r} must be 'auto' or host:port, e.g. 127.0.0.1:6379") from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except TimeoutError:
        raise LaunchError(f"cannot reach the Ray cluster at {address}: no answer on {host}:{port} within "
                          f"{timeout:g} s; is `ray start --head` running there?") from None
    except OSError as e:
        checked = "" if address == f"{host}:{port}" else f" ({host}:{port})"
        raise LaunchError(f"cannot reach the Ray cluster at {address}{checked}: {e.strerror or e}; "
                          "is `ray start --head` running there?") from None


# Ray resolves "127.0.0.1" to the machine's address unless its cluster mode is off; with it off the
# node's address is loopback and every Ray server (GCS, raylet, workers) listens on 127.0.0.1 only.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def connect_ray(address: str | None, temp_dir: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process (a no-op when already connected).

    A local instance (``address`` None) listens on 127.0.0.1 only; a cluster address is checked
    with :func:`check_reachable` first, so a dead address is an error in seconds, not a hang.
    """
    if address is None:
        os.environ.update(LOOPBACK_ENV)  # read when ray is imported: set it first
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        check_reachable(address)
        if address.split(":")[0] in ("127.0.0.1", "localhost"):
            kwargs["_node_ip_address"] = "127.0.0.1"  # a loopback cluster: keep the driver on loopback too
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, _temp_dir=temp_dir, _node_ip_address="127.0.0.1", **kwargs)


# Tune settings read from the driver's environment (Ray 2.60 has no argument for them). Tune's default CSV,
# JSON and TensorBoard loggers would write every result (each epoch's whole event, curves included) three
# times more in the driver, which shares the CPUs with the trials, and import torch there for TensorBoard
# alone: they are off, and :func:`_compact_json_logger` keeps Tune's result.json without the events (the
# store is the sweep's record; Tune's experiment state and the trial checkpoints are unchanged).
TUNE_DRIVER_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def _compact_json_logger():
    """Tune's JSON logger (each trial's ``result.json``, which the ResultGrid reads back) without the
    :data:`EVENT_KEY` payload: the top-level metrics only, a few hundred bytes per epoch."""
    from ray.tune.logger import JsonLoggerCallback

    class CompactJsonLogger(JsonLoggerCallback):
        def log_trial_result(self, iteration, trial, result):
            super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != EVENT_KEY})

    return CompactJsonLogger()


def shared_dataset(spec: SweepSpec, base: dict):
    """The sweep's dataset, loaded once here (the driver) when every trial trains on the same data; else None.

    ``tune.with_parameters`` puts it in Ray's object store once and every trial (on any node, in a reused
    actor or not) reads it from there instead of loading ``DATA`` again. None, so that each trial loads its
    own, when a ``DATA.*`` key is swept, or when the data streams from image files (not held in memory).
    A data error is raised here, before Ray starts any trial.
    """
    import torch

    from workbench.data import load_dataset

    swept = set(spec.resolved_grid()) | {ALIASES.get(k, k) for k in spec.distributions}
    if any(key.startswith("DATA.") for key in swept):
        return None
    dataset = load_dataset(Config.from_dict(base).DATA)
    return dataset if isinstance(dataset.features, torch.Tensor) else None


def run_sweep(spec: SweepSpec, settings: SweepSettings, sweep_id: str | None = None, resume: bool = False):
    """Run (or resume) a sweep; returns ``(sweep_id, ResultGrid)``. Results land in the store as they come.

    Trials reuse their actors (one Python process, torch import and data per concurrent slot, not per
    trial) and take the data the driver loaded once (:func:`shared_dataset`).
    """
    from ray import tune

    spec.validate()
    settings.validate()
    for key, value in TUNE_DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    sweep_id = validate_sweep_id(sweep_id or new_sweep_id())
    base = _absolute_paths(Config.from_dict(spec.base).to_dict())
    base = apply_overrides(base, {"TRACKING.WANDB.ENABLED": settings.wandb, "TRACKING.WANDB.PROJECT": settings.wandb_project,
                                  "TRACKING.WANDB.MODE": settings.wandb_mode})
    wandb_dir = str(Path(wandb_dir_for(settings.store_path, settings.wandb_dir)).resolve())
    results_dir = str(Path(settings.results_dir).resolve())
    workers = settings.workers_per_trial
    threads = max(1, int(settings.cpus_per_trial / workers))
    dataset = shared_dataset(spec, base)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, sweep_id=sweep_id, wandb_dir=wandb_dir, threads=threads,
                             dataset=dataset, workers=workers, cpus_per_worker=settings.cpus_per_trial / workers,
                             gpus_per_worker=settings.gpus_per_trial / workers),
        settings.trial_resources() if workers == 1 else _workers_trial_resources(),
    )
    callback = _store_callback_class()(str(Path(settings.store_path).resolve()), sweep_id, base, wandb_dir)
    run_config = tune.RunConfig(
        name=sweep_id, storage_path=results_dir, callbacks=[callback, _compact_json_logger()], verbose=settings.verbose,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        # keep every trial checkpoint: with num_to_keep, a driver killed between Tune's experiment
        # snapshot and a checkpoint rotation can point the resumed trial at a deleted checkpoint
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints),
    )
    experiment = child_path(results_dir, sweep_id)
    check_cluster_resources(settings)
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError(f"cannot resume sweep {sweep_id!r}: no Tune experiment state in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space(spec), tune_config=_tune_config(spec, settings, base),
                           run_config=run_config)
    return sweep_id, tuner.fit()


def _trials_that_fit(settings: SweepSettings) -> int:
    """How many trials' CPUs and GPUs the Ray instance holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources() if ray.is_initialized() else {"CPU": float(os.cpu_count() or 1)}
    fits = [float(total.get(name, 0.0)) // need for name, need in (("CPU", settings.cpus_per_trial),
                                                                   ("GPU", settings.gpus_per_trial)) if need > 0]
    return max(1, int(min(fits))) if fits else 1


def _workers_trial_resources() -> dict:
    """What a trial of several Ray Train workers asks Tune for itself: nothing (its workers reserve the trial's
    CPUs and GPUs; :data:`workbench.cluster_run.TRIAL_RESOURCES`)."""
    from workbench.cluster_run import TRIAL_RESOURCES

    return dict(TRIAL_RESOURCES)


def _tune_config(spec: SweepSpec, settings: SweepSettings, base: dict):
    from ray import tune

    # reusing trial actors skips a Python start, torch import and data load per trial
    # trials of several workers ask Tune for nothing themselves: without a limit Tune would start them all at once,
    # each holding a Ray Train controller that waits for workers (Ray's guide: set max_concurrent_trials)
    concurrent = settings.max_concurrent or (_trials_that_fit(settings) if settings.workers_per_trial > 1 else None)
    kwargs: dict[str, Any] = {"num_samples": spec.num_samples, "max_concurrent_trials": concurrent,
                              "reuse_actors": True}
    if settings.asha or settings.optuna:
        kwargs.update(metric=SELECTION_METRIC, mode="max")
    if settings.asha:
        from ray.tune.schedulers import ASHAScheduler

        # max_t one past the epochs: a trial that trains them all then reports its test result; at max_t
        # ASHA stops the trial, which would cut that last report off
        kwargs["scheduler"] = ASHAScheduler(time_attr="training_iteration", max_t=base["TRAIN"]["EPOCHS"] + 1,
                                            grace_period=1)
    if settings.optuna:
        if spec.grid and any(len(v) > 1 for k, v in spec.resolved_grid().items() if k != SEED_KEY):
            raise ConfigError("Optuna search takes distributions (--dist), not grids; drop the grid or --optuna")
        from ray.tune.search.optuna import OptunaSearch

        kwargs["search_alg"] = OptunaSearch()
    return tune.TuneConfig(**kwargs)


def _absolute_paths(config: dict) -> dict:
    """Trials run in their own working folders: make file paths in the config absolute."""
    overrides = {"TRACKING.STORE": str(Path(config["TRACKING"]["STORE"]).resolve())}
    if config["DATA"].get("PATH"):
        overrides["DATA.PATH"] = str(Path(config["DATA"]["PATH"]).resolve())
    if config["TRAIN"].get("INIT_FROM") and Path(config["TRAIN"]["INIT_FROM"]).exists():
        overrides["TRAIN.INIT_FROM"] = str(Path(config["TRAIN"]["INIT_FROM"]).resolve())
    return apply_overrides(config, overrides)


def swept_keys(spec: SweepSpec) -> list[str]:
    """The config keys that vary across trials (seeds excluded): the results table's groups."""
    keys = [k for k, v in spec.resolved_grid().items() if k != SEED_KEY and len(v) > 1]
    return keys + [ALIASES.get(k, k) for k in spec.distributions]


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets and quoted values: ``"[16,8],[32]"`` -> ``["[16,8]", "[32]"]``.

    A quote opens a quoted value only at the start of a value (an apostrophe inside a word does not).
    """
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and depth == 0 and not text[start:i].strip():
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


# one range (lo:hi:step) expands to at most this many values, checked before it is built; the grid as a
# whole is then held to MAX_TRIALS unless confirmed (--max-trials / --yes)
MAX_RANGE_VALUES = 100_000


def parse_values(text: str, key: str = "values") -> list:
    """``"0,0.1,0.5"`` -> ``[0.0, 0.1, 0.5]``; ``"0:1:0.25"`` -> ``[0, 0.25, 0.5, 0.75, 1]``; ``"true,false"`` -> bools.

    Each value is read as YAML (so JSON too); one that is not names ``key`` and the value.
    """
    import yaml

    text = text.strip()
    if text.count(":") == 2 and "," not in text:
        try:
            lo, hi, step = (float(x) for x in text.split(":"))
        except ValueError:
            raise ConfigError(f"range {text!r} must be lo:hi:step with three numbers, e.g. 0:1:0.1") from None
        if step <= 0:
            raise ConfigError(f"range {text!r}: step must be > 0")
        if hi < lo:
            raise ConfigError(f"range {text!r} (lo:hi:step): hi must be >= lo")
        n = int(round((hi - lo) / step)) + 1
        if n > MAX_RANGE_VALUES:  # before building the list: 0:1:1e-9 would be a billion values
            raise ConfigError(f"range {text!r} gives {n:,} values for `{key}`; a range may give at most "
                              f"{MAX_RANGE_VALUES:,} (use a larger step)")
        return [round(lo + i * step, 10) for i in range(n)]
    values = []
    for v in split_values(text):
        try:
            values.append(_bounded_yaml(v))  # the config's bounded loader: no alias bombs in a grid either
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"sweep grid `{key}`: value {v!r} is not valid YAML/JSON ({problem})") from None
        except _YamlRefused as e:
            raise ConfigError(f"sweep grid `{key}`: value {shorten(v)!r} refused: {e}") from None
    return values


def parse_dist_arg(item: str) -> tuple[str, tuple[str, float, float]]:
    """``"LOSS.W=uniform:0.1:0.9"`` -> ``("LOSS.W", ("uniform", 0.1, 0.9))``."""
    key, eq, text = item.partition("=")
    parts = text.split(":")
    if not eq or not key.strip() or len(parts) != 3:
        raise ConfigError(f"--dist {item!r} must look like KEY=uniform:lo:hi (or loguniform)")
    try:
        return key.strip(), (parts[0], float(parts[1]), float(parts[2]))
    except ValueError:
        raise ConfigError(f"--dist {item!r}: lo and hi must be numbers, as in KEY=uniform:lo:hi") from None


def parse_grid_args(items: Sequence[str]) -> dict[str, list]:
    """``["LOSS.W=0,0.5", ...]`` -> ``{"LOSS.W": [0, 0.5]}``."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like KEY=v1,v2")
        key, values = item.split("=", 1)
        grid[key.strip()] = parse_values(values, ALIASES.get(key.strip(), key.strip()))
    return grid

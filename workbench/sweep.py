"""Ray Tune adapter: search space, trainable, driver-side store callback, run/resume a sweep.

One trial = one :class:`~workbench.trainer.Trainer` run. The trial reports every epoch with
``ray.tune.report`` (with a checkpoint, so ASHA and restarts work) and logs to W&B itself when
enabled (workers don't inherit the driver's environment: mode and folder are passed explicitly).
The *driver* writes every reported result into the local run store through :class:`StoreCallback`,
so the dashboard shows trials live even when they run on other nodes. ``ray`` is imported lazily.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import Config, ConfigError, apply_overrides
from workbench.events import BaseSink, EpochResult
from workbench.store import RunStore

# sweep-friendly names for the keys researchers sweep most
ALIASES = {
    "w": "LOSS.W",
    "start_prob": "SCHEDULE.NULL_MASKING.START_PROB",
    "end_prob": "SCHEDULE.NULL_MASKING.END_PROB",
    "end_epoch": "SCHEDULE.NULL_MASKING.END_EPOCH",
    "phase1": "TRAIN.PHASE1_MASK_NULL_LOSS",
    "seed": "TRAIN.SEED",
}
SELECTION_METRIC = "core/val_partial_chain_acc"


def new_sweep_id() -> str:
    return "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


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
        if self.seeds > 1 or "TRAIN.SEED" not in grid:
            grid["TRAIN.SEED"] = list(range(self.seeds))
        return grid

    def validate(self) -> None:
        """Every grid value and distribution bound must give a valid config (checked before Ray starts)."""
        base = Config.from_dict(self.base, source="sweep base config")
        if self.seeds < 1:
            raise ConfigError(f"`--seeds` must be >= 1, got {self.seeds}")
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


# ---------------------------------------------------------------------- trial side
class TuneReportSink(BaseSink):
    """Reports each epoch to Tune with a checkpoint of the trainer's state after that epoch."""

    name = "ray-tune"

    def __init__(self, state_fn):
        self.state_fn = state_fn

    def on_epoch(self, event: EpochResult) -> None:
        from ray import tune

        from workbench.trainer import CHECKPOINT_NAME, save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp) / CHECKPOINT_NAME, self.state_fn(event.epoch))
            metrics = {**event.metrics, "epoch": event.epoch, "run_id": event.run_id}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def train_trial(params: dict, base: dict, sweep_id: str, wandb_dir: str | None = None, threads: int = 1) -> None:
    """The Tune function trainable: one Trainer run, resumed from Tune's checkpoint after a restart."""
    from ray import tune

    from workbench.store import CHECKPOINT_NAME
    from workbench.trainer import Trainer

    ctx = tune.get_context()
    run_id = trial_run_id(sweep_id, ctx.get_trial_id())
    cfg = trial_config(base, params, sweep_id, wandb_dir).with_overrides({"TRAIN.NUM_THREADS": threads})
    # a trial-local store holds the trainer's own bookkeeping; the driver writes the shared store
    store = RunStore(Path(ctx.get_trial_dir()) / "trial.db")
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            target = store.checkpoint_path(run_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / CHECKPOINT_NAME, target)
    trainer = Trainer(cfg, store=store, run_id=run_id, progress=False, sweep_id=sweep_id)
    trainer.sinks.append(TuneReportSink(trainer.state_dict))
    trainer.fit(resume=checkpoint is not None)


# ---------------------------------------------------------------------- driver side
def _store_callback_class():
    from ray import tune

    class StoreCallback(tune.Callback):
        """Driver-side: writes every trial's reported epochs into the local run store."""

        def __init__(self, store_path: str, sweep_id: str, base: dict, wandb_dir: str | None):
            self.store_path, self.sweep_id, self.base, self.wandb_dir = store_path, sweep_id, base, wandb_dir
            self._store = None

        @property
        def store(self) -> RunStore:
            if self._store is None:
                self._store = RunStore(self.store_path)
            return self._store

        def _run_id(self, trial) -> str:
            return trial_run_id(self.sweep_id, trial.trial_id)

        def on_trial_start(self, iteration, trials, trial, **info):
            run_id = self._run_id(trial)
            if self.store.has_run(run_id):
                self.store.update_run(run_id, status="running", error=None)
                return
            try:
                config = trial_config(self.base, trial.config, self.sweep_id, self.wandb_dir).to_dict()
            except ConfigError:
                config = apply_overrides(dict(self.base), {k: v for k, v in trial.config.items() if "." in k})
            self.store.create_run(config, name=run_id, run_id=run_id, sweep_id=self.sweep_id, status="running")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            metrics = {k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))}
            self.store.write_epoch(self._run_id(trial), int(result["epoch"]), metrics)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.store.update_run(self._run_id(trial), status="finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.store.update_run(self._run_id(trial), status="failed", error=_trial_error_text(trial))

    return StoreCallback


def _trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text(errors="replace")[-4000:]
    return str(getattr(trial, "error_msg", None) or "trial failed")


@dataclass
class SweepSettings:
    """How to run: where, with what resources, which scheduler/searcher, where results go."""

    store_path: str = "runs/workbench.db"
    results_dir: str = "ray_results"
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


def connect_ray(address: str | None, temp_dir: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process (a no-op when already connected)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        if address.split(":")[0] in ("127.0.0.1", "localhost"):
            kwargs["_node_ip_address"] = "127.0.0.1"  # a loopback cluster: keep the driver on loopback too
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, _temp_dir=temp_dir, **kwargs)


def run_sweep(spec: SweepSpec, settings: SweepSettings, sweep_id: str | None = None, resume: bool = False):
    """Run (or resume) a sweep; returns ``(sweep_id, ResultGrid)``. Results land in the store as they come."""
    from ray import tune

    spec.validate()
    sweep_id = sweep_id or new_sweep_id()
    base = _absolute_paths(Config.from_dict(spec.base).to_dict())
    base = apply_overrides(base, {"TRACKING.WANDB.ENABLED": settings.wandb, "TRACKING.WANDB.PROJECT": settings.wandb_project,
                                  "TRACKING.WANDB.MODE": settings.wandb_mode})
    wandb_dir = str(Path(settings.wandb_dir or Path(settings.store_path).parent).resolve())
    results_dir = str(Path(settings.results_dir).resolve())
    threads = max(1, int(settings.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, sweep_id=sweep_id, wandb_dir=wandb_dir, threads=threads),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    callback = _store_callback_class()(str(Path(settings.store_path).resolve()), sweep_id, base, wandb_dir)
    run_config = tune.RunConfig(
        name=sweep_id, storage_path=results_dir, callbacks=[callback], verbose=settings.verbose,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        # keep every trial checkpoint: with num_to_keep, a driver killed between Tune's experiment
        # snapshot and a checkpoint rotation can point the resumed trial at a deleted checkpoint
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints),
    )
    experiment = Path(results_dir) / sweep_id
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError(f"cannot resume sweep {sweep_id!r}: no Tune experiment state in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space(spec), tune_config=_tune_config(spec, settings, base),
                           run_config=run_config)
    return sweep_id, tuner.fit()


def _tune_config(spec: SweepSpec, settings: SweepSettings, base: dict):
    from ray import tune

    # reusing trial actors skips a Python start, torch import and data load per trial
    kwargs: dict[str, Any] = {"num_samples": spec.num_samples, "max_concurrent_trials": settings.max_concurrent or None,
                              "reuse_actors": True}
    if settings.asha or settings.optuna:
        kwargs.update(metric=SELECTION_METRIC, mode="max")
    if settings.asha:
        from ray.tune.schedulers import ASHAScheduler

        kwargs["scheduler"] = ASHAScheduler(time_attr="training_iteration", max_t=base["TRAIN"]["EPOCHS"], grace_period=1)
    if settings.optuna:
        if spec.grid and any(len(v) > 1 for k, v in spec.resolved_grid().items() if k != "TRAIN.SEED"):
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
    keys = [k for k, v in spec.resolved_grid().items() if k != "TRAIN.SEED" and len(v) > 1]
    return keys + [ALIASES.get(k, k) for k in spec.distributions]


def parse_values(text: str) -> list:
    """``"0,0.1,0.5"`` -> ``[0.0, 0.1, 0.5]``; ``"0:1:0.25"`` -> ``[0, 0.25, 0.5, 0.75, 1]``; ``"true,false"`` -> bools."""
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
        return [round(lo + i * step, 10) for i in range(n)]
    return [yaml.safe_load(v) for v in text.split(",") if v.strip()]


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
        grid[key.strip()] = parse_values(values)
    return grid

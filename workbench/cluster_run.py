"""One run on a Ray cluster: the same :class:`~workbench.trainer.Trainer` on N Ray Train workers.

``python -m workbench train --config C --address auto|host:port --workers N`` (and the app's Train page)
run here. The run is a one-trial Ray Tune experiment whose trial launches a Ray Train
``TorchTrainer`` (Ray 2.60's documented way to run Train inside Tune: a function trainable that
calls ``TorchTrainer.fit`` with :class:`ray.tune.integration.ray_train.TuneReportCallback`). On every
worker the trainer takes its rank from the process group Ray Train sets up
(:func:`workbench.distributed.init_from_env`); rank 0 reports each epoch's whole result with
``ray.train.report`` (the events as :func:`workbench.sweep.encode_events` text, its checkpoint and
``best.pt`` as a Ray Train checkpoint), Ray forwards rank 0's report to Tune, and the driver's
:class:`workbench.sweep` store callback writes it into the driver's run store through the same store
sink a local run uses (and copies the checkpoint into the run's folder, so ``resume``, ``predict`` and
phase 2 work on this machine). Every rank reports the same number of times: ``ray.train.report`` is a
collective.

Stop: the app (or ``runs``) sets the run's stop flag in the driver's store; the driver relays it to a
small Ray actor that rank 0 reads between epochs, and the trainer ends ``stopped`` after the current
epoch as a local run does. Sweep trials with several workers each (``sweep --workers-per-trial K``)
run the same worker loop from :func:`workbench.sweep.train_trial`.

``ray`` is imported lazily. Checkpoints travel through the Ray Train storage folder, which must be
reachable from the driver (one machine, or a shared file system), as for sweeps.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.config import Config, ConfigError, apply_overrides
from workbench.events import EpochResult, RunFinished
from workbench.names import CHECKPOINT_NAME, RESULTS_DIR, wandb_dir_for
from workbench.sweep import (
    RUN_END_KEY, TUNE_DRIVER_ENV, TuneReportSink, _absolute_paths, _compact_json_logger, _store_callback_class,
    check_amounts, connect_ray,
)

STOP_POLL_S = 0.5  # how often the driver reads the store's stop flag while a cluster run trains
CLUSTER_PREFIX = "cluster-"  # a cluster run's Tune experiment folder: <store dir>/ray_results/cluster-<run id>
# the trial only waits on its workers, which reserve the run's CPUs and GPUs: it reserves none (Tune refuses an
# empty request, so it asks for a token 1 MiB of memory)
TRIAL_RESOURCES = {"cpu": 0, "memory": 1 << 20}


@dataclass(frozen=True)
class ClusterSettings:
    """Where and on how many Ray Train workers one run trains.

    Attributes:
        address: the Ray cluster, ``"auto"`` or ``host:port``.
        workers: Ray Train workers (processes), each a rank of the data-parallel run.
        gpus_per_worker: GPUs each worker reserves (0: CPU workers, gloo; else NCCL).
        cpus_per_worker: CPUs each worker reserves (fractions allowed); also its torch threads (at least 1).
    """

    address: str
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def validate(self) -> None:
        """What Ray would accept and then wait on forever, refused before Ray starts."""
        if not self.address or not str(self.address).strip():
            raise ConfigError("`--address` must be 'auto' or host:port of a Ray cluster, got an empty value")
        if self.workers < 1:
            raise ConfigError(f"`--workers` must be >= 1, got {self.workers}")
        check_amounts(self.cpus_per_worker, self.gpus_per_worker, "worker")

    @property
    def threads(self) -> int:
        """torch threads of one worker: its CPUs, at least 1."""
        return max(1, int(self.cpus_per_worker))


def check_cluster_fits(settings: ClusterSettings) -> None:
    """Once joined: a ConfigError when the workers need more CPUs or GPUs than the whole cluster has."""
    import ray

    total = ray.cluster_resources()
    for name, flag, each in (("CPU", "--cpus-per-worker", settings.cpus_per_worker),
                             ("GPU", "--gpus-per-worker", settings.gpus_per_worker)):
        need, have = each * settings.workers, float(total.get(name, 0.0))
        if need > have:
            raise ConfigError(f"{settings.workers} workers x `{flag}` {each:g} need {need:g} {name}s, but the Ray "
                              f"cluster at {settings.address} has {have:g}: the run could never start")


def worker_config(config: dict, threads: int, gpus_per_worker: float) -> dict:
    """A worker's config: its torch threads, and its device (a CPU worker on a GPU node stays on the CPU)."""
    return apply_overrides(dict(config), {"TRAIN.NUM_THREADS": threads,
                                          "TRAIN.DEVICE": "cuda" if gpus_per_worker > 0 else "cpu"})


# ---------------------------------------------------------------------- worker side
class TrainReportSink(TuneReportSink):
    """Reports each event of a multi-worker run with ``ray.train.report`` on every rank (it is a collective).

    Rank 0's report is :class:`workbench.sweep.TuneReportSink`'s (the metrics as top-level keys for Tune's
    schedulers, the encoded events under ``EVENT_KEY``, the trainer's checkpoint and ``best.pt``), sent as a Ray
    Train report; the other ranks report an empty result. The run's end (status, epochs, reason) is one more
    report under ``RUN_END_KEY`` unless it failed (a failure is the trial's error).
    """

    name = "ray-train"

    def __init__(self, rank: int, state_fn=None, best_fn=None):
        super().__init__(state_fn, best_fn)
        self.rank = rank

    def _report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics if self.rank == 0 else {}, checkpoint=checkpoint)

    def on_epoch(self, event: EpochResult) -> None:
        if self.rank != 0:  # every rank reports (a collective); only rank 0 has a checkpoint to send
            self._report({})
            return
        super().on_epoch(event)

    def on_finish(self, event: RunFinished) -> None:
        if event.status == "failed":  # the exception ends the trial; a report now could wait on dead ranks
            return
        end = {"run_id": event.run_id, "status": event.status, "epochs_done": event.epochs_done,
               "reason": event.reason}
        self._report({**self._last, RUN_END_KEY: json.dumps(end)})


def worker_loop(loop_config: dict) -> None:
    """``train_loop_per_worker``: one rank of the run (Ray Train set up the process group and RANK/WORLD_SIZE).

    ``loop_config``: ``config`` (the worker's config dict), ``run_id``, ``stop_flag`` (the driver's
    :func:`stop_flag_actor` handle, or None: Tune stops sweep trials).
    """
    import ray

    from workbench.distributed import init_from_env
    from workbench.trainer import Trainer

    cfg = Config.from_dict(loop_config["config"], source=f"run {loop_config['run_id']} (Ray Train worker)")
    dist = init_from_env("cuda" if cfg.TRAIN.DEVICE == "cuda" else "cpu")  # reads the group Ray Train made
    rank = dist.rank
    # the trainer's checkpoint and lock live in this worker's own folder; rank 0's travel as Ray Train checkpoints
    folder = Path(tempfile.mkdtemp(prefix=f"workbench-rank{rank}-"))
    try:
        trainer = Trainer(cfg, run_id=loop_config["run_id"], progress=False, checkpoint_path=folder / CHECKPOINT_NAME,
                          dist=dist)
        # on every rank (the trainer gives the other ranks no sinks of their own): ray.train.report is a collective
        trainer.sinks.append(TrainReportSink(rank, trainer.state_dict, trainer.best_file))
        flag = loop_config.get("stop_flag")
        if flag is not None and rank == 0:  # rank 0 reads it; the trainer broadcasts its decision to the others
            trainer.stop_check = lambda: ray.get(flag.is_set.remote())
        trainer.fit()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fit_on_workers(config: dict, run_id: str, workers: int, cpus_per_worker: float, gpus_per_worker: float,
                   storage: str, stop_flag=None) -> None:
    """Inside a Tune trial: train ``run_id`` on ``workers`` Ray Train workers; their reports reach Tune.

    A worker's failure raises here (Ray Train's ``TrainingFailedError``), which fails the trial.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": config, "run_id": run_id, "stop_flag": stop_flag},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        # the driver copies each epoch's checkpoint into the store; a few are kept so that a copy that lags
        # an epoch behind still finds its folder (a missed one is superseded by the next)
        run_config=RunConfig(name=run_id, storage_path=storage, callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=3)),
    )
    trainer.fit()


def cluster_trial(params: dict, config: dict, run_id: str, workers: int, cpus_per_worker: float,
                  gpus_per_worker: float, storage: str, stop_flag) -> None:
    """The one trial of a cluster run (Tune function trainable): launch the Ray Train workers."""
    fit_on_workers(config, run_id, workers, cpus_per_worker, gpus_per_worker, storage, stop_flag)


# ---------------------------------------------------------------------- driver side
def stop_flag_actor():
    """A tiny actor (no CPU) holding one bool: the driver sets it, rank 0 reads it between epochs."""
    import ray

    @ray.remote(num_cpus=0)
    class StopFlag:
        def __init__(self):
            self.value = False

        def set(self) -> None:
            self.value = True

        def is_set(self) -> bool:
            return self.value

    return StopFlag.remote()


def _stop_relay_class():
    from ray import tune

    from workbench.store import RunStore

    class StopRelay(tune.Callback):
        """Driver side: relays the run's stop flag (set in the store by the app or a script) to the workers."""

        def __init__(self, store_path: str, run_id: str, flag):
            self.store_path, self.run_id, self.flag = store_path, run_id, flag
            self._next = 0.0
            self._sent = False

        def on_step_begin(self, iteration, trials, **info):
            if self._sent or time.monotonic() < self._next:
                return
            self._next = time.monotonic() + STOP_POLL_S
            if RunStore(self.store_path).stop_requested(self.run_id):
                self.flag.set.remote()
                self._sent = True

    return StopRelay


def experiment_dir(store_path: str | os.PathLike, run_id: str) -> Path:
    """The Tune (and Ray Train) folder of a cluster run: ``<store dir>/ray_results/cluster-<run id>``."""
    return Path(store_path).resolve().parent / RESULTS_DIR / f"{CLUSTER_PREFIX}{run_id}"


def run_config_dict(cfg: Config, store_path: str | os.PathLike) -> dict:
    """The config the workers get: absolute file paths (workers run in their own folders) and the W&B
    folder spelled out (workers don't inherit the driver's environment)."""
    config = _absolute_paths(cfg.to_dict())
    wandb_dir = str(Path(wandb_dir_for(store_path, cfg.TRACKING.WANDB.DIR)).resolve())
    return apply_overrides(config, {"TRACKING.WANDB.DIR": wandb_dir})


def run_on_cluster(cfg: Config, run_id: str, settings: ClusterSettings, verbose: int = 0) -> str:
    """Train ``run_id`` (its row already in ``cfg.TRACKING.STORE``) on the cluster; returns its final status.

    Joins the cluster (a dead address is a :class:`~workbench.errors.LaunchError` within seconds), checks
    that the workers fit, then runs the one-trial experiment; the store callback records every event.
    """
    from ray import tune

    from workbench.store import RunStore
    settings.validate()
    for key, value in TUNE_DRIVER_ENV.items():  # as a sweep's driver: no copies of every event in Tune's loggers
        os.environ.setdefault(key, value)
    store = RunStore(cfg.TRACKING.STORE)
    store_path = str(store.path.resolve())
    config = worker_config(run_config_dict(cfg, store_path), settings.threads, settings.gpus_per_worker)
    Config.from_dict(config, source=f"run {run_id}")  # the workers' config is still valid (a clear error here)
    connect_ray(settings.address)
    check_cluster_fits(settings)
    folder = experiment_dir(store_path, run_id)
    flag = stop_flag_actor()
    trainable = tune.with_resources(
        tune.with_parameters(cluster_trial, config=config, run_id=run_id, workers=settings.workers,
                             cpus_per_worker=settings.cpus_per_worker, gpus_per_worker=settings.gpus_per_worker,
                             storage=str(folder / "train"), stop_flag=flag),
        TRIAL_RESOURCES,
    )
    callbacks = [_store_callback_class()(store_path, None, config, None, run_id=run_id, checkpoints=True),
                 _stop_relay_class()(store_path, run_id, flag), _compact_json_logger()]
    tuner = tune.Tuner(trainable, param_space={},
                       run_config=tune.RunConfig(name=CLUSTER_PREFIX + run_id, storage_path=str(folder.parent),
                                                 callbacks=callbacks, verbose=verbose))
    tuner.fit()
    if store.checkpoint_path(run_id).is_file():  # copied into the run's folder: Ray Train's copies are spare
        shutil.rmtree(folder / "train", ignore_errors=True)
    return str(store.run(run_id)["status"])


__all__ = ["ClusterSettings", "TrainReportSink", "check_cluster_fits", "fit_on_workers", "run_on_cluster",
           "worker_loop"]

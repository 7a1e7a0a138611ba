"""Trainer: epochs, phases, events -> sinks, checkpoints, resume (DESIGN.md section 1, data flow).

Each epoch: shuffled batches -> logits per rank -> keep mask (null masking at the fractional epoch)
-> hierarchical loss -> step; then validation predictions -> metrics + threshold curves -> selection
(``best.pt`` when ``TRAIN.SELECT_BY`` improves) -> one :class:`EpochResult` to every sink -> an atomic
checkpoint. The store is written before the checkpoint, so a crash between the two makes ``resume``
redo (and replace) that epoch: never a missing or duplicated epoch. After the last epoch (or an early
or requested stop) the test split is evaluated once with ``best.pt``'s weights: one :class:`TestResult`
(DESIGN.md 3.5; nothing selects on test).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import pickle
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import replace
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm  # not tqdm.auto: no ipywidgets warning in notebooks

from workbench import metrics as M
from workbench import names as N
from workbench.config import Config, ConfigError
from workbench.data import (
    DataError, HierarchicalDataset, check_finite_features, dataset_hash, load_dataset, split_dataset,
)
from workbench.evaluation import at_val_taus, chosen_taus, score
from workbench.events import EpochResult, RunFinished, RunStarted, Sink, SinkError, TestResult, dispatch
from workbench.health import HealthMonitor, zero_total_weight
from workbench.losses import (
    balanced_class_weights, hierarchical_loss, hxe_rank_weights, rank_weights_from_w, target_rule,
)
from workbench.lr_schedule import lr_at
from workbench.masking import NullMaskSchedule, null_keep_mask
from workbench.atomic import atomic_path
from workbench.augment import Augment, channel_stats
from workbench.decoding import argmax_classes, rank_probabilities
from workbench.distributed import (
    DistContext, all_gather_objects, all_gather_rows, all_reduce_sum, average_gradients, broadcast_flag,
    broadcast_module, broadcast_object, launcher_holds_lock, local_device, owner_pid, rank_seed, resume_world_error,
    shard, unshard_order,
)
from workbench.streaming import StreamLoader, is_lazy
from workbench.models import HierarchicalModel, backbone_mismatch, build_model, load_pretrained
from workbench.environment import environment_record
from workbench.store import (
    CHECKPOINT_NAME, LOCK_NAME, RUN_ID_RE, RunStore, StoreError, new_run_id, validate_run_id, validate_run_name,
)
from workbench.taxonomy import Taxonomy

log = logging.getLogger(__name__)

# rows per forward when predicting: tables are cheap per row; images are not (a (B, C, H, W) batch's
# activations are ~width x H x W floats each), so evaluation batches them far smaller
EVAL_BATCH_ROWS = 8192
EVAL_BATCH_IMAGES = 512
# An in-memory dataset (table, sets, embeddings, in-memory images) moves to a CUDA device once, at its first use,
# when its tensors take at most this share of the device's free memory (the driver's, plus what torch's allocator
# caches unused): batches are then gathered on the device, no copy per batch. Larger ones, and streamed image sets,
# are copied batch by batch.
RESIDENT_FRACTION = 0.25


class StopRun(Exception):
    """Raised between epochs when a stop was requested through the store."""


from workbench.errors import TrainingFailed  # noqa: F401 (defined once in errors.py; re-exported here)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`TRAIN.DEVICE` is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def checkpoint_dir(store: RunStore, run_id: str) -> Path:
    return store.checkpoint_path(run_id).parent


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically (:func:`workbench.atomic.atomic_path`: a temp file in the same folder, fsync, then
    rename over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # through a file object: torch.save to a path hides a full disk's OSError behind its zip writer's RuntimeError
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


# what a checkpoint must hold: to start phase 2 from it, and (the trainer's own) to resume a run
INIT_KEYS = ("model", "taxonomy")
RESUME_KEYS = ("epoch", "model", "optimizer", "rng", "shuffle_rng", "mask_rng")
# the random states each rank of a data-parallel run has its own of (the shuffle is shared by every rank)
RANK_RNG_KEYS = ("rng", "mask_rng", "aug_rng")
# what best.pt (the weights of the epoch selected on val, DESIGN.md 3.5) holds: enough to predict without the run
BEST_KEYS = ("run_id", "epoch", "model", "config", "taxonomy", "select_by", "select_value", "tau", "data_hash",
             "data_rows", "feature_names", "input_shape", "meta_names")
# best.pt is first written under this name and renamed over best.pt once the resume checkpoint that
# selects it is on disk: a kill between the two never leaves a best.pt the checkpoint does not point at
PENDING_SUFFIX = ".pending"
# what torch.load raises on a file that is not a checkpoint: text (KeyError: a stray pickle opcode),
# empty (EOFError), truncated (RuntimeError from the zip reader), pickled code (UnpicklingError from
# the weights-only unpickler, which refuses it before running anything), a folder or no permission
_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError, RuntimeError,
                OverflowError, OSError)


def load_checkpoint(path: Path, required: Sequence[str] = ()) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded safely (``weights_only``: tensors and
    plain data only, so a pickle that would run code is refused, not run).

    Raises :class:`StoreError` naming the file when it cannot be loaded or is not a dict holding
    the ``required`` keys.
    """
    keys = ", ".join(required or INIT_KEYS)
    what = f"a checkpoint is a file the trainer wrote (torch.save of a dict with keys {keys})"
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise: it loads or is refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise StoreError(f"{path}: not a workbench checkpoint: it holds objects other than tensors and plain "
                         f"data (refused without loading them: that could run code); {what}") from None
    except _LOAD_ERRORS as e:
        if isinstance(e, EOFError):
            reason = "the file is empty or cut short"
        elif isinstance(e, OSError):
            reason = e.strerror or str(e)
        else:  # the unpickler's own words, first line only (torch's can run to a paragraph)
            first = (str(e).splitlines() or [""])[0][:200]
            reason = f"not written by torch.save, or damaged: {type(e).__name__}: {first}"
        raise StoreError(f"{path}: not a readable checkpoint ({reason}); {what}") from None
    if not isinstance(state, dict):
        raise StoreError(f"{path}: not a workbench checkpoint: it holds a {type(state).__name__}; {what}")
    missing = [k for k in required if k not in state]
    if missing:
        raise StoreError(f"{path}: not a workbench checkpoint: no {', '.join(map(repr, missing))} in it "
                         f"(keys: {', '.join(map(str, list(state)[:10])) or 'none'}); {what}")
    if "model" in required and not isinstance(state["model"], dict):
        raise StoreError(f"{path}: not a workbench checkpoint: 'model' holds a {type(state['model']).__name__}, "
                         f"not a state dict of tensors; {what}")
    return state


# The open run-lock files of this process. A forked child (a DataLoader worker decoding images) inherits
# them, and an flock stays held while any copy is open: a worker outliving a killed trainer by its few
# seconds of parent watchdog would make `resume` wait for it. Children close them first (release_inherited_locks).
HELD_LOCK_FDS: set[int] = set()


def release_inherited_locks(*_args) -> None:
    """In a forked child: close the run-lock descriptors inherited from the trainer (the lock stays the
    parent's; only this copy goes). Usable as a DataLoader ``worker_init_fn``."""
    for fd in list(HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    HELD_LOCK_FDS.clear()


@contextmanager
def run_lock(store: RunStore, run_id: str):
    """Hold the run's exclusive lock (``<run folder>/lock``) for the duration: one run, one trainer.

    ``flock`` is released by the kernel when the process dies, however it dies, so a killed run never
    leaves a stale lock. The file records the holder's pid and start time for the refusal message.
    A second trainer of the same run gets a :class:`StoreError` naming the holder's pid.
    """
    with path_lock(store.lock_path(run_id), run_id, where=str(store.path)):
        yield


@contextmanager
def path_lock(path: Path, run_id: str, where: str):
    """:func:`run_lock` on the lock file ``path`` (a store's run folder, or a sweep trial's own folder);
    ``where`` names the store or folder in the refusal message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    HELD_LOCK_FDS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            who = f"pid {holder[0]} (since {' '.join(holder[1:])})" if holder else "another process"
            raise StoreError(f"{where}: run {run_id!r} is being trained by {who}; one run is trained by one "
                             f"process at a time (lock {path})") from None
        try:  # who holds it, for the refusal message; the lock itself is the flock, taken above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
        except OSError as e:  # a full disk: the run itself then fails at its first write, with the store's error
            log.warning("could not record the pid in %s: %s", path, e)
        yield
    finally:
        HELD_LOCK_FDS.discard(fd)
        os.close(fd)  # releases the lock


def resolve_init_from(ref: str, store: RunStore | None) -> Path:
    """``TRAIN.INIT_FROM``: a checkpoint file, a run folder, or a run id in the store (when there is one)."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.is_dir() and (p / CHECKPOINT_NAME).is_file():
        return p / CHECKPOINT_NAME
    if store is None:
        raise ConfigError(f"`TRAIN.INIT_FROM` must be a checkpoint file or a run folder (no run store to look "
                          f"run ids up in), got {ref!r}")
    if store.has_run(ref):
        ckpt = store.checkpoint_path(validate_run_id(ref))
        if ckpt.is_file():
            return ckpt
        raise ConfigError(f"`TRAIN.INIT_FROM` run {ref!r} has no checkpoint at {ckpt}")
    raise ConfigError(
        f"`TRAIN.INIT_FROM` must be a checkpoint file, a run folder or a run id in {store.path}, got {ref!r}"
    )


def _lookup_store(config: Config) -> RunStore | None:
    """A store-less run's (a sweep trial's) way to resolve ``TRAIN.INIT_FROM`` given as a run id: the
    configured store read-only, when it exists on this machine."""
    path = Path(config.TRACKING.STORE)
    return RunStore.open_existing(path) if path.is_file() else None


def taxonomy_difference(theirs: Taxonomy, ours: Taxonomy) -> str:
    """The first difference between a checkpoint's taxonomy and this run's, in words (for errors)."""
    if theirs.ranks != ours.ranks:
        return f"ranks {list(theirs.ranks)} in the checkpoint vs {list(ours.ranks)} here"
    for r, rank in enumerate(ours.ranks):
        a, b = theirs.vocab[r][1:], ours.vocab[r][1:]
        if a != b:
            only = sorted(set(a) - set(b))[:3] or sorted(set(b) - set(a))[:3]
            where = "only in the checkpoint" if set(a) - set(b) else "only here"
            return f"rank {rank!r}: {len(a)} classes in the checkpoint vs {len(b)} here; e.g. {only} {where}"
        if not torch.equal(theirs.parents[r], ours.parents[r]):
            return f"rank {rank!r}: the same classes with different parents"
    return "the null values differ"


class Trainer:
    """Train one run of ``config``; every epoch's result goes to ``sinks`` (the store sink first).

    The trainer never writes a run's record itself: its events do, through the sinks (the
    :class:`~workbench.tracking.StoreSink` of a single run; a sweep trial's report to the driver,
    whose callback feeds the same sink class). Of the store it only creates the ``queued`` row of a
    brand-new run, reads the stop flag between epochs and keeps the run's checkpoint and lock in
    the run's folder.

    Args:
        config: the validated run config.
        sinks: extra sinks (W&B, Ray Tune report, ...); the store sink is added first unless
            ``checkpoint_path`` is given.
        store: the run store (default: ``TRACKING.STORE``).
        run_id: use this run row (created by a launcher) or resume it.
        dataset: a preloaded dataset (default: from ``DATA``).
        progress: show a tqdm bar on the console.
        sweep_id: the sweep a brand-new run row belongs to.
        checkpoint_path: run without a store (a sweep trial, whose record the driver writes): the
            checkpoint (and the run's lock, next to it) live here; no run row, no store sink, no
            stop flag (Tune stops trials). ``store`` must then be None.
        dist: this process's place in a data-parallel run (:func:`workbench.distributed.init_from_env`); None:
            one process. With ``world > 1`` every rank builds the same Trainer; rank 0 alone has sinks and writes
            checkpoints (DESIGN.md 3.9; README "Many processes").
    """

    def __init__(
        self, config: Config, sinks: Sequence[Sink] = (), store: RunStore | None = None,
        run_id: str | None = None, dataset: HierarchicalDataset | None = None, progress: bool = True,
        sweep_id: str | None = None, checkpoint_path: str | os.PathLike | None = None,
        dist: DistContext | None = None,
    ):
        from workbench.tracking import StoreSink, default_sinks

        self.cfg = config
        # this process's place in a data-parallel run (workbench/distributed.py); None: one process, as ever
        self.dist: DistContext = dist or DistContext.single()
        if run_id is not None:
            validate_run_id(run_id)  # it names the run's folder: checked before anything is written
        validate_run_name(config.TRACKING.RUN_NAME, "`TRACKING.RUN_NAME`")
        if checkpoint_path is not None and store is not None:
            raise ValueError("Trainer: give `store` (a recorded run) or `checkpoint_path` (a store-less run), not both")
        self.store: RunStore | None = None if checkpoint_path is not None else (store or RunStore(config.TRACKING.STORE))
        self.progress = progress and self.dist.is_main
        if config.TRAIN.NUM_THREADS:
            torch.set_num_threads(config.TRAIN.NUM_THREADS)
        self.device = pick_device(config.TRAIN.DEVICE)
        if self.dist.distributed:  # each rank its own GPU (cuda:<local_rank>)
            self.device = local_device(self.dist, self.device.type)
        ds = dataset if dataset is not None else load_dataset(config.DATA)
        # loaders refuse these already; a dataset built in code (a notebook) is checked here
        check_finite_features(ds.features, ds.features, ds.feature_names, None, ds.name)
        self.taxonomy: Taxonomy = ds.taxonomy
        # what the class ids mean and what trains: in every checkpoint, so `resume` refuses other data
        self.data_hash, self.data_rows = dataset_hash(ds), len(ds)
        # train / val / test (None: no test split); selection and every tau use val only (DESIGN.md 3.5)
        self.train_ds, self.val_ds, self.test_ds = split_dataset(
            ds, config.DATA.VAL_FRACTION, config.DATA.TEST_FRACTION, config.DATA.SEED)
        self.init_path = (resolve_init_from(config.TRAIN.INIT_FROM, self.store or _lookup_store(config))
                          if config.TRAIN.INIT_FROM else None)
        self.init_state = self._checked_init_state()  # before the run row exists: a bad parent stores nothing
        self._check_config_fits_data()  # likewise: a config that cannot train must not leave a run row
        self._check_splits_fit_world()
        self._build()
        if self.init_state is not None:
            self._load_init()  # an architecture mismatch is an error here, before the run row exists
        self._check_select_by()  # likewise: a metric the run never logs cannot select an epoch
        if self.store is None:
            self.run_id = validate_run_id(broadcast_object(run_id or new_run_id(), self.dist))
            self.ckpt_path = Path(checkpoint_path)
            self.lock_path = self.ckpt_path.parent / LOCK_NAME
            self.sinks: list[Sink] = [*default_sinks(config, None), *sinks]
        else:  # rank 0 creates the row of a new run; every rank gets its id
            self.run_id = broadcast_object(self._ensure_run(run_id, sweep_id) if self.dist.is_main else None, self.dist)
            self.ckpt_path = self.store.checkpoint_path(self.run_id)
            self.lock_path = self.store.lock_path(self.run_id)
            self.sinks = [StoreSink(self.store), *default_sinks(config, self.store), *sinks]
        if not self.dist.is_main:  # rank 0 alone reports: no store, W&B or caller's sink here (DESIGN.md 3.9)
            self.sinks = []
        self.best_path = self.ckpt_path.parent / N.BEST_CHECKPOINT_NAME
        self.pending_best_path = self.best_path.with_name(self.best_path.name + PENDING_SUFFIX)
        self.best = _no_best()
        self._rank_rng: list[dict] | None = None  # data-parallel: every rank's random states after the last epoch
        self.stop_reason: str | None = None  # why a finished run ended before TRAIN.EPOCHS (early stopping)
        # a store-less run's stop request (a cluster run: the driver relays its store's flag), read between epochs
        self.stop_check: Callable[[], bool] | None = None
        # what reproduces the run (versions, git commit, device, seeds, data hash): sent in RunStarted
        # (rank 0's alone in a data-parallel run: only it reports, and the record runs git twice)
        self.environment = environment_record(config, ds, self.device, data_hash=self.data_hash) \
            if self.dist.is_main else {}
        if self.dist.distributed and self.dist.is_main:
            self.environment["world_size"] = self.dist.world

    # ------------------------------------------------------------------ set-up
    def _ensure_run(self, run_id: str | None, sweep_id: str | None) -> str:
        parent = self._parent_run_id()
        if run_id and self.store.has_run(run_id):
            # a launcher's row (`train --nproc` cannot read a checkpoint file's run id before the workers load it)
            if parent is not None and self.store.run(run_id).get("parent_id") is None:
                self.store.update_run(run_id, parent_id=parent)
            return run_id
        return self.store.create_run(
            self.cfg.to_dict(), name=self.cfg.TRACKING.RUN_NAME, run_id=run_id, parent_id=parent,
            sweep_id=sweep_id, status="queued",
        )

    def _parent_run_id(self) -> str | None:
        """The run the ``INIT_FROM`` checkpoint belongs to (phase 2's parent), when known.

        A checkpoint file can come from anywhere: a ``run_id`` in it that is not a valid run id is
        not recorded (it is shown in the app and used to build paths)."""
        parent = None if self.init_state is None else self.init_state.get("run_id")
        return parent if isinstance(parent, str) and RUN_ID_RE.fullmatch(parent) else None

    def _checked_init_state(self) -> dict | None:
        """Phase 2's starting checkpoint, after checking it was trained on the same taxonomy."""
        if self.init_path is None:
            return None
        try:
            state = load_checkpoint(self.init_path, INIT_KEYS)
        except StoreError as e:
            raise ConfigError(f"`TRAIN.INIT_FROM` {e}") from None
        theirs = Taxonomy.from_dict(state["taxonomy"])
        if theirs != self.taxonomy:
            raise ConfigError(
                f"`TRAIN.INIT_FROM` {self.init_path}: its taxonomy differs from this run's data "
                f"({taxonomy_difference(theirs, self.taxonomy)})"
            )
        return state

    def _check_config_fits_data(self) -> None:
        """Config values that are valid alone but not for this data (rank count, feature layout)."""
        weights, r = self.cfg.LOSS.RANK_WEIGHTS, self.taxonomy.num_ranks
        if weights is not None and len(weights) != r:
            raise ConfigError(
                f"`LOSS.RANK_WEIGHTS` must have {r} entries (one per rank: {', '.join(self.taxonomy.ranks)}), "
                f"got {weights}"
            )
        mismatch = backbone_mismatch(self.cfg.MODEL.BACKBONE, tuple(self.train_ds.features.shape), self.train_ds.name)
        if mismatch:
            raise ConfigError(mismatch)
        if self.cfg.MODEL.HEAD == "marginal":
            self._check_marginal_head_can_fit()

    def _check_marginal_head_can_fit(self) -> None:
        """A marginal head gives a class without a finest-rank descendant probability 0: a training row labelled
        with one (animal_mnist's birds, labelled to ``class`` only) has an infinite loss whatever the rank weights
        (0 x inf is NaN). Refused here, with the class named, instead of failing at the first batch."""
        targets = self.train_ds.targets
        for r, rank in enumerate(self.taxonomy.ranks[:-1]):
            leafless = ~self.taxonomy.has_leaf(r)
            leafless[0] = False
            rows = leafless[targets[:, r]]  # (N,)
            if bool(rows.any()):
                classes = sorted({self.taxonomy.vocab[r][int(c)] for c in targets[rows, r].unique()})
                shown = ", ".join(repr(c) for c in classes[:5]) + (" ..." if len(classes) > 5 else "")
                raise ConfigError(
                    f"`MODEL.HEAD` 'marginal' cannot fit this data: {int(rows.sum())} training row(s) are labelled at "
                    f"rank '{rank}' with a class that has no descendant at the finest rank "
                    f"'{self.taxonomy.ranks[-1]}' ({shown}); the marginal head gives such a class probability 0, "
                    f"an infinite loss. Use MODEL.HEAD 'independent', or leave those rows out")

    def _check_splits_fit_world(self) -> None:
        """A data-parallel run needs a row per process in every split, and on every rank as many non-empty
        training batches (each step is a collective): ``TRAIN.BATCH_SIZE`` 1 fails that when the rows do not
        divide evenly."""
        world = self.dist.world
        if world == 1:
            return
        for name, part in (("train", self.train_ds), ("val", self.val_ds), ("test", self.test_ds)):
            if part is not None and 0 < len(part) < world:
                raise ConfigError(f"the {name} split has {len(part)} row(s), fewer than the {world} processes of "
                                  f"this run; train on fewer processes (--nproc) or more data")
        smallest, steps = len(self.train_ds) // world, self._train_steps()
        if smallest < steps:
            raise ConfigError(
                f"`TRAIN.BATCH_SIZE` must be >= 2 to train {len(self.train_ds)} rows on {world} processes (each "
                f"takes {steps} batches per epoch and the smallest share has {smallest} rows), got "
                f"{self.cfg.TRAIN.BATCH_SIZE}")

    def _check_select_by(self) -> None:
        """``TRAIN.SELECT_BY`` (a val key by the config's own check) must be a metric this run logs; the
        default always is. Another one is checked against a real evaluation of the val split with the
        untrained model (no random numbers are drawn), so no rank name or metric kind is guessed."""
        key = self.cfg.TRAIN.SELECT_BY
        if key == N.SELECT_BY_DEFAULT:
            return
        logged = [k for k in self.evaluate(self.val_ds, split="val")[0] if N.is_val_key(k)]
        if key not in logged:
            import difflib

            near = difflib.get_close_matches(key, logged, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(f"`TRAIN.SELECT_BY` must be a val metric this run logs, got {key!r}{hint} "
                              f"(its val metrics: {', '.join(sorted(logged)[:40])}"
                              f"{', ...' if len(logged) > 40 else ''})")

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.TRAIN.SEED)
        m = cfg.MODEL
        self.is_image = self.train_ds.features.dim() == 4
        meta = getattr(self.train_ds, "meta", None)  # (N, M) numeric columns beside the image, or None
        model = build_model(
            m.BACKBONE, m.HIDDEN, m.HEAD, self.train_ds.num_features, self.taxonomy, m.DROPOUT,
            input_shape=tuple(self.train_ds.features.shape[1:]), width=m.WIDTH, depth=m.DEPTH, arch=m.ARCH,
            meta_dim=0 if meta is None else meta.shape[1], pool=m.POOL,
        )
        if model.input is not None and getattr(getattr(cfg, "AUG", None), "NORMALIZE", True):
            model.input.set_stats(*channel_stats(self.train_ds.features))  # once, from the training split only
        if m.PRETRAINED:
            load_pretrained(model, m.PRETRAINED)
        if m.FREEZE_BACKBONE:
            model.backbone.requires_grad_(False)
        # channels-last: the layout cuDNN's convolutions are fastest in (no gain, and no support needed, on the CPU)
        self.channels_last = self.is_image and self.device.type == "cuda"
        self.model: HierarchicalModel = model.to(self.device, memory_format=torch.channels_last) \
            if self.channels_last else model.to(self.device)
        # the heads only when frozen; also what TRAIN.CLIP_GRAD_NORM clips (train_epoch)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # the LR given here is overwritten before every step by the schedule (workbench/lr_schedule.py), a pure
        # function of this run's fractional epoch: phase 2 (INIT_FROM) gets a fresh optimizer and its own schedule
        # on CUDA the fused AdamW (one kernel for every parameter's update, not a few per tensor: a small model is
        # launch-bound); the CPU keeps the reference implementation, bit for bit. On resume the checkpoint's
        # optimizer state (fused or not) is loaded as written.
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WEIGHT_DECAY,
                                           fused=True if self.device.type == "cuda" else None)
        # TRAIN.COMPILE: the forward through torch.compile (inductor); the parameters stay self.model's, so state
        # dicts, checkpoints and INIT_FROM are unchanged. Each new input shape (the last, shorter batch; the
        # evaluation batch) compiles once more.
        forward = self.model.forward_with_embedding
        self.model_forward = torch.compile(forward) if cfg.TRAIN.COMPILE else forward
        self.augment = Augment.from_config(cfg)
        r = self.taxonomy.num_ranks
        if cfg.LOSS.RANK_WEIGHTS is not None:  # length checked in __init__
            self.rank_weights = torch.tensor(cfg.LOSS.RANK_WEIGHTS, dtype=torch.float32)
        elif cfg.LOSS.HXE_ALPHA is not None:  # HXE(alpha) preset; the config allows it only with the marginal head
            self.rank_weights = hxe_rank_weights(cfg.LOSS.HXE_ALPHA, r)
        else:
            self.rank_weights = rank_weights_from_w(cfg.LOSS.W, r)
        self.rank_weights = self.rank_weights.to(self.device)
        # label smoothing / soft labels: a training device only (see _loss); None = one-hot targets
        rule = target_rule(cfg.LOSS, self.taxonomy, marginal_head=m.HEAD == "marginal")
        self.target_rule = None if rule is None else rule.to(self.device)
        self.class_weights = None
        if cfg.LOSS.CLASS_WEIGHTS == "balanced":
            cw = balanced_class_weights(self.train_ds.targets, self.taxonomy.num_classes)
            self.class_weights = [w.to(self.device) for w in cw]
        self.multilabel_ranks = set(self.train_ds.multilabel) if cfg.LOSS.MULTILABEL else set()
        nm = cfg.SCHEDULE.NULL_MASKING
        self.schedule = NullMaskSchedule(nm.ENABLED, nm.START_PROB, nm.END_PROB, nm.START_EPOCH, nm.END_EPOCH)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.TRAIN.SEED + 1)
        # per rank (rank 0: the single-process seed): each rank masks and augments its own rows independently
        self.mask_gen = torch.Generator().manual_seed(rank_seed(cfg.TRAIN.SEED + 2, self.dist))
        self.aug_gen = torch.Generator().manual_seed(rank_seed(cfg.TRAIN.SEED + 3, self.dist))
        if not self.dist.is_main:  # the model was built from the shared seed; dropout draws differ per rank
            torch.manual_seed(rank_seed(cfg.TRAIN.SEED, self.dist))
        self.health = HealthMonitor(self.taxonomy.ranks, standing=zero_total_weight(
            self.train_ds.targets, self.train_ds.sample_weight, self.rank_weights.cpu(), self.taxonomy.ranks))
        amp = cfg.TRAIN.AMP
        self.use_amp = amp == "bf16" or (amp == "auto" and self.device.type == "cuda")

    def state_dict(self, epoch: int) -> dict:
        """Everything a resume needs after ``epoch``: weights, optimizer, RNG states, config, taxonomy.

        A data-parallel run also keeps ``world`` and ``rank_rng``: each rank's own random states (global, null-mask,
        augmentation) in rank order, as :meth:`_gather_rank_rng` collected them after the epoch (so this call is
        local to the rank, a sink may make it), and a resume on as many processes continues exactly; the top-level
        states are rank 0's."""
        state = {
            "run_id": self.run_id, "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "config": self.cfg.to_dict(),
            "taxonomy": self.taxonomy.to_dict(), "rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle_gen.get_state(), "mask_rng": self.mask_gen.get_state(),
            "aug_rng": self.aug_gen.get_state(), "data_hash": self.data_hash, "data_rows": self.data_rows,
            "best": dict(self.best),  # the selection so far, so a resumed run keeps its best epoch
        }
        if self.dist.distributed:
            state["world"] = self.dist.world
            state["rank_rng"] = self._rank_rng
        return state

    def _gather_rank_rng(self) -> None:
        """Every rank's random states, in rank order, for the checkpoint (a collective: every rank calls it once per
        epoch, before the epoch's sinks run, so that :meth:`state_dict` needs no collective)."""
        own = {"rng": torch.get_rng_state(), "mask_rng": self.mask_gen.get_state(), "aug_rng": self.aug_gen.get_state()}
        self._rank_rng = all_gather_objects({k: own[k] for k in RANK_RNG_KEYS}, self.dist)

    def best_state(self, epoch: int, value: float, metrics) -> dict:
        """``best.pt``: the weights of ``epoch`` (selected on val by ``TRAIN.SELECT_BY`` with ``value``), each
        rank's val-chosen threshold ``tau`` from that epoch's ``metrics``, and what applying them needs:
        config, taxonomy, data hash and the input's names and shape."""
        return {
            "run_id": self.run_id, "epoch": epoch, "model": self.model.state_dict(), "config": self.cfg.to_dict(),
            "taxonomy": self.taxonomy.to_dict(), "select_by": self.cfg.TRAIN.SELECT_BY, "select_value": value,
            "tau": chosen_taus(metrics, self.taxonomy.ranks),
            "data_hash": self.data_hash, "data_rows": self.data_rows,
            "feature_names": list(self.train_ds.feature_names), "input_shape": list(self.train_ds.input_shape),
            "meta_names": list(getattr(self.train_ds, "meta_names", None) or []),
        }

    def best_file(self) -> Path | None:
        """The file holding the current best weights: the just-written ``best.pt`` still pending its rename
        (between selecting an epoch and checkpointing it), else ``best.pt``; None before any selection."""
        for path in (self.pending_best_path, self.best_path):
            if path.is_file():
                return path
        return None

    def _load_init(self) -> None:
        """Phase 2: start from another run's weights (taxonomy checked at construction)."""
        theirs, ours = self.init_state["model"], self.model.state_dict()
        differ = sorted(set(theirs) ^ set(ours)) + [k for k in ours if k in theirs and theirs[k].shape != ours[k].shape]
        if differ:
            model, mine = (self.init_state.get("config") or {}).get("MODEL", {}), self.cfg.to_dict()["MODEL"]
            changed = [k for k, v in model.items() if mine.get(k) != v]
            settings = (f": the checkpoint has {', '.join(f'MODEL.{k}={model[k]}' for k in changed)}, this run "
                        f"{', '.join(f'MODEL.{k}={mine.get(k)}' for k in changed)}") if changed else ""
            raise ConfigError(
                f"`TRAIN.INIT_FROM` {self.init_path}: the model architecture differs ({len(differ)} tensor(s), "
                f"e.g. {differ[0]!r}){settings}"
            )
        self.model.load_state_dict(theirs)

    def _check_same_data(self, state: dict) -> None:
        """``resume`` on the data the checkpoint was trained on, or not at all: other data would give the
        stored class ids other meanings (a changed file, a new class) or continue on other rows."""
        where = self.cfg.DATA.PATH if self.cfg.DATA.NAME == "file" else f"DATA.NAME {self.cfg.DATA.NAME!r}"
        theirs = Taxonomy.from_dict(state["taxonomy"]) if "taxonomy" in state else self.taxonomy
        if theirs != self.taxonomy:
            raise DataError(
                f"cannot resume run {self.run_id}: the data ({where}) no longer matches its checkpoint: the taxonomy "
                f"changed ({taxonomy_difference(theirs, self.taxonomy)}), so class ids would mean other classes; "
                f"restore the original data or train a new run"
            )
        old = state.get("data_hash")  # absent in checkpoints written before hashes were recorded
        if old is not None and old != self.data_hash:
            rows = state.get("data_rows")
            size = f"{rows} rows then, {self.data_rows} now" if rows != self.data_rows else f"{rows} rows"
            size += ", same classes"  # the taxonomy was checked above
            raise DataError(
                f"cannot resume run {self.run_id}: the data ({where}) changed since its checkpoint (content hash "
                f"{old[:12]} then, {self.data_hash[:12]} now; {size}); restore the original data or train a new run"
            )

    def _restore(self) -> int:
        """Resume from this run's checkpoint; returns the first epoch still to train."""
        state = self._load_on_main(self.ckpt_path, RESUME_KEYS)
        if state is None:
            return 0
        self._check_same_world(state)
        self._check_same_data(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        own = state["rank_rng"][self.dist.rank] if self.dist.distributed else state  # this rank's random states
        torch.set_rng_state(own["rng"])
        self.shuffle_gen.set_state(state["shuffle_rng"])
        self.mask_gen.set_state(own["mask_rng"])
        if "aug_rng" in own:  # absent in checkpoints written before image augmentation
            self.aug_gen.set_state(own["aug_rng"])
        # absent in checkpoints written before selection: the selection starts afresh from here
        self.best = {**_no_best(), **state["best"]} if isinstance(state.get("best"), dict) else _no_best()
        if self.dist.is_main:
            self._settle_pending_best()
        return int(state["epoch"]) + 1

    def _load_on_main(self, path: Path, required: Sequence[str], must_exist: bool = False) -> dict | None:
        """The checkpoint at ``path`` (None when there is none, unless ``must_exist``: then that is the
        :class:`StoreError`), read by rank 0 and sent to every rank (each rank need not see rank 0's disk); a
        refusal to load it is raised on every rank alike."""
        if not self.dist.distributed:
            return load_checkpoint(path, required) if must_exist or path.is_file() else None
        payload = None
        if self.dist.is_main:
            try:
                payload = load_checkpoint(path, required) if must_exist or path.is_file() else None
            except StoreError as e:
                payload = e
        payload = broadcast_object(payload, self.dist)
        if isinstance(payload, StoreError):
            raise payload
        return payload

    def _check_same_world(self, state: dict) -> None:
        """A checkpoint holds each rank's own random states: it resumes on as many processes as wrote it."""
        theirs = int(state.get("world", 1))
        if theirs != self.dist.world:
            raise resume_world_error(self.run_id, self.ckpt_path, written=theirs, asked=self.dist.world)

    def _settle_pending_best(self) -> None:
        """After a kill: a pending ``best.pt`` of the epoch the checkpoint selected becomes ``best.pt``; one of an
        epoch the checkpoint never recorded (killed before it was written) is dropped, that epoch is redone."""
        pending = self.pending_best_path
        if not pending.is_file():
            return
        epoch = load_checkpoint(pending, ("epoch",))["epoch"]
        if self.best["epoch"] is not None and int(epoch) == self.best["epoch"]:
            os.replace(pending, self.best_path)
        else:
            pending.unlink()

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> str:
        """Train to ``TRAIN.EPOCHS``; returns the final status (finished, stopped or failed).

        A failure is recorded (status ``failed`` with the traceback in the store) and re-raised.
        The run's lock (:func:`run_lock`) is held throughout: a second trainer of the same run gets a
        :class:`StoreError` naming this process before it reads or writes anything of the run.
        """
        if not self.dist.is_main or launcher_holds_lock():  # held by rank 0 (or the workers' launcher) for all ranks
            return self._fit(resume)
        if self.store is not None:
            self.store.check_writable()
        where = str(self.store.path if self.store is not None else self.ckpt_path.parent)
        with path_lock(self.lock_path, self.run_id, where):
            return self._fit(resume)

    def _fit(self, resume: bool) -> str:
        start = self._restore() if resume else 0
        if start == 0:
            if self.init_state is not None:
                self._load_init()
            # a fresh start selects afresh: no best.pt of an earlier attempt under this run id may survive
            self.best = _no_best()
            if self.dist.is_main:
                self.best_path.unlink(missing_ok=True)
                self.pending_best_path.unlink(missing_ok=True)
        broadcast_module(self.model, self.dist)  # every rank starts from rank 0's very weights
        done = start  # epochs trained, this session and before
        status, error = "finished", None
        bar = tqdm(total=self.cfg.TRAIN.EPOCHS, initial=start, desc=f"run {self.run_id}", unit="epoch",
                   disable=not self.progress)
        try:  # from on_start on, any failure is recorded as the run's failure
            dispatch(self.sinks, "on_start", self.started_event(start))
            epochs = self.cfg.TRAIN.EPOCHS
            end = start if start < epochs and self._early_stop() else epochs  # resumed out of patience: none left
            try:
                for epoch in range(start, end):
                    result = self.run_epoch(epoch)
                    improved = self._select(epoch, result.metrics)  # best.pt (pending) before any sink sees it
                    # decided before the sinks see the epoch: an early-stopped run's last epoch is its last
                    last = broadcast_flag(epoch == epochs - 1 or self._early_stop(), self.dist)
                    if self.cfg.TRACKING.CURVES == "last_epoch" and not last:
                        result = replace(result, curves=result.curves.iloc[0:0])  # best taus stay in the metrics
                    if self.dist.distributed:
                        self._gather_rank_rng()
                    dispatch(self.sinks, "on_epoch", result)
                    if self.dist.is_main:
                        save_checkpoint(self.ckpt_path, self.state_dict(epoch))
                        if improved:  # the checkpoint now points at it
                            os.replace(self.pending_best_path, self.best_path)
                    done = epoch + 1
                    bar.update(1)
                    bar.set_postfix(_postfix(result.metrics), refresh=False)
                    if last and done < epochs:  # early stop, before the stop flag: the run then ends finished
                        break
                    if self._stop_requested():
                        raise StopRun
            except StopRun:
                status = "stopped"
            self._test()
        except TrainingFailed as e:  # the message is the whole story: no traceback in the store
            status, error = "failed", str(e)
            raise
        except BaseException as e:
            status, error = "failed", "".join(traceback.format_exception(e))
            raise
        finally:
            bar.close()
            reason = self.stop_reason if status == "finished" else None  # a failure after it is the story
            self._finish(RunFinished(self.run_id, status, done, error, reason))
        return status

    def _stop_requested(self) -> bool:
        """Whether a stop was asked for: the store's flag, or :attr:`stop_check` for a store-less run; read by
        rank 0 and broadcast, so every rank of a data-parallel run stops after the same epoch."""
        asked = False
        if self.dist.is_main:
            if self.stop_check is not None:
                asked = bool(self.stop_check())
            else:
                asked = self.store is not None and self.store.stop_requested(self.run_id)
        return broadcast_flag(asked, self.dist)

    # ------------------------------------------------------------------ selection, early stopping, test
    def _select(self, epoch: int, metrics) -> bool:
        """Update the selection with ``epoch``'s val ``metrics``; True when it improves ``TRAIN.SELECT_BY``
        (strictly, in the metric's direction; NaN never improves), after writing its ``best.pt`` (pending)."""
        key = self.cfg.TRAIN.SELECT_BY
        value = float(metrics[key])  # present: checked at construction (or the default, always logged)
        best = self.best["value"]
        better = not math.isnan(value) and (
            best is None or (value > best if N.direction(key) == "max" else value < best))
        if not better:
            self.best["bad_epochs"] += 1
            return False
        if self.dist.is_main:  # every rank keeps the selection; rank 0 alone writes files
            save_checkpoint(self.pending_best_path, self.best_state(epoch, value, metrics))
        self.best = {"epoch": epoch, "value": value, "bad_epochs": 0}
        return True

    def _early_stop(self) -> bool:
        """True when ``TRAIN.EARLY_STOP_PATIENCE`` epochs in a row did not improve the selection; the reason is
        kept (``stop_reason``, sent with :class:`RunFinished`) and logged, once."""
        patience = self.cfg.TRAIN.EARLY_STOP_PATIENCE
        if not patience or self.best["bad_epochs"] < patience:
            return False
        if self.stop_reason is None:
            key, b = self.cfg.TRAIN.SELECT_BY, self.best["epoch"]
            since = f"its best, {self.best['value']:.4g} at epoch {b + 1}" if b is not None else "no finite value yet"
            n = self.best["bad_epochs"]
            self.stop_reason = (f"early stop: `{key}` did not improve for {n} epoch{'s' if n != 1 else ''} "
                                f"(TRAIN.EARLY_STOP_PATIENCE={patience}; {since})")
            log.warning("run %s: %s", self.run_id, self.stop_reason)
        return True

    def _test(self) -> None:
        """Evaluate the test split once with the selected epoch's weights (``best.pt``) and each rank's val-chosen
        threshold, and send the :class:`TestResult` (DESIGN.md 3.5). Nothing here feeds back into selection.

        The test split gets every metric val gets (the same :meth:`evaluate`), except the thresholds chosen on
        it (``test/best_tau*``: that would be selecting on test); instead each rank's val ``tau`` is applied:
        ``test/tau/<rank>``, ``test/coverage_at_tau/<rank>``, ``test/selective_accuracy_at_tau/<rank>``
        (read off the test curves, computed on the same threshold grid as val's). No health checks run.
        The trainer's model keeps its last epoch's weights afterwards (as in ``checkpoint.pt``).
        """
        if self.test_ds is None:
            return
        if self.best["epoch"] is None:
            log.warning("run %s: the test split is not evaluated: `%s` was never a finite number, so no epoch "
                        "was selected", self.run_id, self.cfg.TRAIN.SELECT_BY)
            return
        state = self._load_on_main(self.best_path, BEST_KEYS, must_exist=True)
        if int(state["epoch"]) != self.best["epoch"]:
            raise StoreError(f"{self.best_path}: holds epoch {int(state['epoch']) + 1}, but the run selected epoch "
                             f"{self.best['epoch'] + 1}; the selected weights are lost: train the run again")
        last = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["model"])
        try:
            metrics, curves, _ = self.evaluate(self.test_ds, split="test")
        finally:
            self.model.load_state_dict(last)
        # the test-time rule, shared with the baseline: each rank's val-chosen tau, never one chosen on test
        metrics = at_val_taus(metrics, curves, {rank: float(state["tau"][rank]) for rank in self.taxonomy.ranks})
        dispatch(self.sinks, "on_test", TestResult(self.run_id, self.best["epoch"], metrics, curves))

    def started_event(self, start_epoch: int) -> RunStarted:
        """The run's :class:`RunStarted`: resolved config, ordered ranks, reproducibility record, pid."""
        return RunStarted(self.run_id, self.cfg.to_dict(), tuple(self.taxonomy.ranks), start_epoch,
                          self._parent_run_id(), environment=self.environment,
                          pid=owner_pid() if self.dist.distributed else os.getpid())

    def _finish(self, event: RunFinished) -> None:
        """Tell the sinks the run ended. When the run already failed (say, the disk is full), a sink
        that cannot record that is logged, so the original error is the one that propagates."""
        try:
            dispatch(self.sinks, "on_finish", event)
        except SinkError as e:
            if event.status != "failed":
                raise
            log.error("could not record the failure of run %s: %s", self.run_id, e)

    def run_epoch(self, epoch: int) -> EpochResult:
        t0 = time.perf_counter()
        train_metrics = self.train_epoch(epoch)
        seconds = time.perf_counter() - t0
        val_metrics, curves, val_out = self.evaluate(self.val_ds, split="val")
        metrics = {**train_metrics, **val_metrics,
                   N.EPOCH_SECONDS: seconds, N.TRAIN_SAMPLES_PER_SEC: len(self.train_ds) / seconds}
        health = self.health.check_epoch(train_metrics, val_out, self.model)
        for key, fired in self.health.flags().items():
            metrics[f"health/{key}"] = float(fired)
        return EpochResult(self.run_id, epoch, metrics, curves, health, str(self.ckpt_path))

    def _batches(self, ds: HierarchicalDataset, batch_size: int, shuffle: bool = False):
        """``(batch on the device, meta (B, M) on the device or None)`` per mini-batch, by tensor indexing
        (the same permutation draw as :meth:`HierarchicalDataset.batches`). Image batches are indexed on
        the CPU as uint8 and, on CUDA, pinned so the copy overlaps compute.

        A streamed image set (:class:`~workbench.streaming.LazyImages`) takes the same road with one change:
        its pixels come from a DataLoader whose ``DATA.NUM_WORKERS`` processes decode the very batches of
        ``order`` in turn (so both roads train alike and ``resume`` stays exact); targets, weights and meta
        are still indexed here.

        An in-memory dataset that fits on a CUDA device (:meth:`_resident`) is indexed there: the permutation,
        drawn on the CPU generator as everywhere (the same rows in every batch on every device, and ``resume``
        exact), is copied to the device once per epoch and each batch is a gather on the device."""
        meta = getattr(ds, "meta", None)
        n = len(ds)
        order = torch.randperm(n, generator=self.shuffle_gen) if shuffle else torch.arange(n)
        resident = self._resident(ds)
        if resident is not None:
            order = order.to(self.device, non_blocking=True)
            for idx in self._chunks(order, batch_size, shuffle):
                yield resident.batch(idx), None if resident.meta is None else resident.meta[idx]
            return
        pin = self.is_image and self.device.type == "cuda"
        chunks = self._chunks(order, batch_size, shuffle)
        pixels = None
        if is_lazy(ds.features):
            if getattr(self, "_stream", None) is None:  # one pool of decoding workers for every split, kept all run
                self._stream = StreamLoader(self.cfg.DATA.NUM_WORKERS, pin_memory=pin)
            pixels = self._stream(ds.features[idx] for idx in chunks)
        for idx in chunks:
            batch = ds.batch(idx)
            if pixels is not None:
                batch.features = next(pixels)  # decoded (and pinned on CUDA) by the loader
            elif pin:
                batch.features = batch.features.pin_memory()
            m = None if meta is None else meta[idx].to(self.device, non_blocking=True)
            yield batch.to(self.device, non_blocking=True), m

    def _chunks(self, order: torch.Tensor, batch_size: int, shuffle: bool) -> tuple[torch.Tensor, ...]:
        """The row indices of each mini-batch of ``order``: consecutive runs of ``batch_size``. A data-parallel
        training epoch (``shuffle``) takes this rank's rows ``order[rank::world]`` (:func:`~workbench.distributed.
        shard`) in :meth:`_train_steps` near-equal batches, as many on every rank: the ranks' shards differ by a
        row at most, and each optimizer step is a collective every rank must join."""
        if not (shuffle and self.dist.distributed):
            return order.split(batch_size)
        return torch.tensor_split(shard(order, self.dist), self._train_steps())

    def _train_steps(self) -> int:
        """Mini-batches per training epoch: over all rows, or over the largest rank's shard (``ceil(n / world)``
        rows) in a data-parallel run, where ``TRAIN.BATCH_SIZE`` is per process."""
        n, b = len(self.train_ds), self.cfg.TRAIN.BATCH_SIZE
        return math.ceil(math.ceil(n / self.dist.world) / b)

    def _resident(self, ds: HierarchicalDataset) -> HierarchicalDataset | None:
        """``ds`` with its tensors (features, targets, weights, valid masks, multi-hots, meta) on the CUDA training
        device, moved at the first call and kept for the trainer's life; None on the CPU (the data is already
        there), for a streamed image set, and for a dataset over :data:`RESIDENT_FRACTION` of the device's free
        memory (copied batch by batch instead)."""
        if self.device.type != "cuda" or is_lazy(ds.features):
            return None
        # id -> (dataset, its copy or None); holding the dataset keeps its id from being reused
        cache = self.__dict__.setdefault("_on_device", {})
        hit = cache.get(id(ds))
        if hit is not None and hit[0] is ds:
            return hit[1]
        tensors = [ds.features, ds.targets, ds.sample_weight, ds.valid, ds.meta, *ds.multilabel.values()]
        size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        # the driver's free memory plus what torch's caching allocator holds unused (a freed split, an earlier trial)
        free = torch.cuda.mem_get_info(self.device)[0] + torch.cuda.memory_reserved(self.device) \
            - torch.cuda.memory_allocated(self.device)
        moved = dataset_on(ds, self.device) if size <= RESIDENT_FRACTION * free else None
        log.info("%s (%d rows, %.1f MB): %s", ds.name, len(ds), size / 2**20,
                 f"resident on {self.device}" if moved is not None else
                 f"copied per batch (over {RESIDENT_FRACTION:.0%} of {free / 2**20:.0f} MB free on {self.device})")
        cache[id(ds)] = (ds, moved)
        return moved

    def _forward(self, batch, meta=None, training: bool = False):
        x = batch.features
        if self.is_image:
            if training and self.augment.active:  # uint8 -> float in [0, 1], cropped and flipped; never in eval
                x = self.augment(x, self.aug_gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if not self.use_amp:  # CPU: skip entering a disabled autocast context on every batch
            return self.model_forward(x, batch.valid, meta)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            logits, z = self.model_forward(x, batch.valid, meta)
        return [lg.float() for lg in logits], z

    def _loss(self, logits, batch, keep, training: bool = False):
        """The hierarchical loss of a batch. ``training``: apply ``LOSS.LABEL_SMOOTHING`` / ``SOFT_LABELS_BETA``
        (a training device). Evaluation (val/test ``loss`` metrics) always uses one-hot targets, so runs with
        different smoothing report their losses on one scale."""
        multilabel = {r: t for r, t in batch.multilabel.items() if r in self.multilabel_ranks}
        return hierarchical_loss(logits, batch.targets, keep, self.rank_weights, self.class_weights,
                                 batch.sample_weight, multilabel, self.target_rule if training else None)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; metrics from the training batches themselves.

        Per batch only device tensors are appended (no host syncs, no per-batch metric ops); the
        sums and the accuracy counts are taken once at the end of the epoch.

        The optimisation recipe (README "Training recipe"; the contract in workbench/lr_schedule.py):
        - ``TRAIN.ACCUMULATE = K``: the epoch's batches form consecutive groups of K (the last group may be
          shorter); each batch's loss is divided by its group's size before ``backward``, so the step uses the
          mean of the group's batch gradients. One optimizer step, and one LR-schedule step, per group.
          K = 1 is the plain loop: zero_grad, backward, step on every batch.
        - Before each step every param group's LR is set to :func:`~workbench.lr_schedule.lr_at` at
          ``t = epoch + (index of the group's last batch + 1) / batches``; a pure function of ``t``, so
          ``resume`` needs no schedule state, and a phase-2 run (``TRAIN.INIT_FROM``) starts its own schedule
          (warmup included) from its own epoch 0. The LR of the epoch's last step is the metric ``schedule/lr``.
        - ``TRAIN.CLIP_GRAD_NORM``: ``torch.nn.utils.clip_grad_norm_`` over the trainable parameters after the
          group's last backward, before the step.
        The logged losses stay each batch's own (unscaled) mean loss.
        """
        self.model.train()
        if self.cfg.MODEL.FREEZE_BACKBONE:  # a frozen backbone's batch-norm statistics stay as loaded, too
            self.model.backbone.eval()
        ranks = self.taxonomy.ranks
        n_batches = self._train_steps()  # this rank's batches (every rank has as many)
        phase1 = self.cfg.TRAIN.PHASE1_MASK_NULL_LOSS
        accumulate, clip = self.cfg.TRAIN.ACCUMULATE, self.cfg.TRAIN.CLIP_GRAD_NORM
        lr = float("nan")  # the LR of the epoch's last step (an epoch has at least one batch)
        losses, sizes, kept, preds, targets, probs = [], [], [], [], [], []
        for b, (batch, meta) in enumerate(self._batches(self.train_ds, self.cfg.TRAIN.BATCH_SIZE, shuffle=True)):
            p = 0.0 if phase1 else self.schedule.prob(epoch + b / n_batches)  # fractional epoch
            keep = null_keep_mask(batch.targets, p, phase1=phase1, training=True, generator=self.mask_gen)  # (B, R)
            logits, z = self._forward(batch, meta, training=True)
            total, per_rank = self._loss(logits, batch, keep, training=True)
            group_start = b - b % accumulate
            group_end = min(group_start + accumulate, n_batches)  # one past the group's last batch
            if b == group_start:
                self.optimizer.zero_grad(set_to_none=True)
            # a group of one (always with ACCUMULATE 1) backpropagates the loss itself: today's loop, bit for bit
            (total if group_end - group_start == 1 else total / (group_end - group_start)).backward()
            if b + 1 == group_end:
                lr = lr_at(self.cfg.TRAIN, epoch + group_end / n_batches)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                average_gradients(self.trainable, self.dist)  # the mean over the ranks (one process: nothing)
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.trainable, clip)
                self.optimizer.step()
            sizes.append(batch.targets.shape[0])
            losses.append(torch.cat([total.detach()[None], per_rank.detach()]))  # (R + 1,): batch means
            kept.append(keep.sum(dim=0))  # (R,)
            preds.append(self.predict_classes(logits))  # (B, R); argmax carries no gradient
            targets.append(batch.targets)
            probs.append(p)
        # (batches, R + 1); the epoch's one host sync. Data-parallel: every rank's batches (rank 0's, then 1's, ...),
        # so each rank checks, records and sums the very same losses
        batch_losses = all_gather_rows(torch.stack(losses), self.dist).cpu()
        self._check_finite_loss(batch_losses, epoch)
        self.health.record_losses(batch_losses[:, 0])
        sizes = torch.tensor(sizes, dtype=torch.long)
        if self.dist.distributed:  # through the device: NCCL gathers CUDA tensors
            sizes = all_gather_rows(sizes.to(self.device), self.dist).cpu()
        # weighted by batch size in float64: a large but finite float32 loss times the size must not overflow
        loss_sums = batch_losses.double() * sizes.double()[:, None]  # (batches, R + 1)
        acc = M.HierarchicalAccuracy(len(ranks))
        acc.update(torch.cat(preds), torch.cat(targets))  # counts over the epoch, not a mean of batch means
        out = _all_reduce_counts(acc, self.device, self.dist).compute()
        n = len(self.train_ds)
        totals, kept_total = loss_sums.sum(dim=0), all_reduce_sum(torch.stack(kept).sum(dim=0), self.dist).cpu()
        metrics = {
            N.TRAIN_LOSS: float(totals[0]) / n,
            N.TRAIN_CHAIN_ACC: float(out["chain_acc"]),
            N.TRAIN_PARTIAL_CHAIN_ACC: float(out["partial_chain_acc"]),
            N.NULL_INCLUSION_PROB: sum(probs) / len(probs),
            N.LEARNING_RATE: lr,
        }
        for r, rank in enumerate(ranks):
            metrics[N.rank_key("train", N.ACC, rank)] = float(out["rank_acc"][r])
            metrics[N.rank_key("train", N.LOSS, rank)] = float(totals[r + 1]) / n
            metrics[N.rank_key("train", N.KEPT, rank)] = float(kept_total[r])
        return metrics

    def _check_finite_loss(self, batch_losses: torch.Tensor, epoch: int) -> None:
        """``batch_losses (batches, R + 1)`` (total, then each rank): the first non-finite batch loss fails the
        run, named by epoch and batch (1-based, as shown everywhere), with each rank's loss. Checked once per
        epoch on the losses already brought to the host, so the loop itself has no extra sync."""
        finite = torch.isfinite(batch_losses).all(dim=1)  # (batches,)
        if bool(finite.all()):
            return
        b = int(torch.nonzero(~finite)[0])
        row = batch_losses[b].tolist()
        ranks = ", ".join(f"{rank} {v:.4g}" for rank, v in zip(self.taxonomy.ranks, row[1:]))
        raise TrainingFailed(
            f"run {self.run_id} failed: non-finite loss at epoch {epoch + 1} (batch {b + 1} of {len(batch_losses)}): "
            f"loss {row[0]:.4g} ({ranks}); the weights after it are not meaningful. Look for huge feature or "
            f"sample-weight values, or lower TRAIN.LR"
        )

    @torch.no_grad()
    def predict(self, ds: HierarchicalDataset, batch_size: int | None = None):
        """``(logits list of R x (N, K_r + 1), embeddings (N, H))`` in eval mode, on the training device (scored
        there: nothing but scalars and the curves need come to the CPU), in batches of ``batch_size`` (default
        ``TRAIN.EVAL_BATCH_SIZE``, else :data:`EVAL_BATCH_IMAGES` for images, :data:`EVAL_BATCH_ROWS` else)."""
        self.model.eval()
        outs, zs = [], []
        default = EVAL_BATCH_IMAGES if ds.is_image else EVAL_BATCH_ROWS
        batch_size = batch_size or self.cfg.TRAIN.EVAL_BATCH_SIZE or default
        for batch, meta in self._batches(ds, batch_size):
            logits, z = self._forward(batch, meta)
            outs.append(logits)
            zs.append(z.float())
        logits = [torch.cat([o[r] for o in outs]) for r in range(self.taxonomy.num_ranks)]
        return logits, torch.cat(zs)

    def _predict_rows(self, ds: HierarchicalDataset):
        """:meth:`predict` on ``ds``; in a data-parallel run each rank predicts its rows ``arange(n)[rank::world]``,
        and every rank gets all of them (one gather), back in row order."""
        if not self.dist.distributed:
            return self.predict(ds)
        shards = self.__dict__.setdefault("_eval_shards", {})  # the split's own rows, kept for the trainer's life
        if id(ds) not in shards:
            shards[id(ds)] = (ds, ds.subset(shard(torch.arange(len(ds)), self.dist)))
        logits, z = self.predict(shards[id(ds)][1])
        widths = [lg.shape[1] for lg in logits] + [z.shape[1]]
        rows = all_gather_rows(torch.cat([*logits, z.to(logits[0].dtype)], dim=1), self.dist)
        rows = rows[unshard_order(len(ds), self.dist).to(rows.device)]
        *logits, z = rows.split(widths, dim=1)
        return list(logits), z

    def predict_classes(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """``LongTensor (N, R)``: the standard prediction (:func:`workbench.decoding.argmax_classes`: argmax
        over all ``K_r + 1`` outputs, null included, except on BCE ranks: their most probable real class)."""
        return argmax_classes(logits, self.multilabel_ranks)

    def probabilities(self, logits: list[torch.Tensor]) -> list[torch.Tensor]:
        """Softmax per rank, sigmoid on BCE ranks (:func:`workbench.decoding.rank_probabilities`)."""
        return rank_probabilities(logits, self.multilabel_ranks)

    def evaluate(self, ds: HierarchicalDataset, split: str = "val"):
        """Metrics, threshold curves and raw outputs on ``ds`` (nulls always count here): the model's outputs and
        loss, scored by :func:`workbench.evaluation.score` on the training device (the outputs stay where
        :meth:`predict` made them; the labels join them there). Data-parallel: every rank scores all of ``ds``'s
        outputs (:meth:`_predict_rows`), so every metric equals a single-process evaluation of the same weights."""
        logits, z = self._predict_rows(ds)
        resident = self._resident(ds)
        full = (ds if resident is None else resident).as_batch()  # every row's targets, weights, multi-hots (no copy)
        if resident is None:  # the CPU (a no-op), or a split not resident: its labels (not its features) moved once
            move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
            full = replace(full, targets=move(full.targets), sample_weight=move(full.sample_weight),
                           valid=move(full.valid), multilabel={r: move(t) for r, t in full.multilabel.items()})
        keep = null_keep_mask(full.targets, 1.0, phase1=False, training=False)
        total, per_rank = self._loss(logits, full, keep)
        multilabel = {r: full.multilabel[r] for r in self.multilabel_ranks}
        # the one home of a split's metrics: the baseline (workbench/baseline.py) is scored by the same call
        metrics, frame, preds = score(logits, full.targets, self.taxonomy, split, multilabel, loss=(total, per_rank))
        return metrics, frame, {"preds": preds, "targets": full.targets, "embeddings": z, "valid": full.valid}


def _all_reduce_counts(acc: M.HierarchicalAccuracy, device: torch.device, dist: DistContext) -> M.HierarchicalAccuracy:
    """``acc`` with its counts summed over the ranks of a data-parallel run (one all-reduce, on ``device``: NCCL
    reduces CUDA tensors), so its accuracies are those of every rank's rows together. One process: ``acc``."""
    if not dist.distributed:
        return acc
    names = ("rank_correct", "rank_total", "chain_correct", "chain_total", "partial_correct", "partial_total")
    parts = [getattr(acc, k).reshape(-1) for k in names]
    total = all_reduce_sum(torch.cat(parts).to(device), dist).cpu()
    for k, piece in zip(names, total.split([p.numel() for p in parts])):
        setattr(acc, k, piece.reshape(getattr(acc, k).shape))
    return acc


def dataset_on(ds: HierarchicalDataset, device: torch.device) -> HierarchicalDataset:
    """``ds`` with the tensors batches are cut from (features, targets, sample weights, valid masks, multi-hots,
    meta) on ``device``; the rest (names, taxonomy, the raw table) shared. :meth:`Trainer._resident`'s copy."""
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return replace(ds, features=move(ds.features), targets=move(ds.targets), sample_weight=move(ds.sample_weight),
                   valid=move(ds.valid), meta=move(ds.meta), multilabel={r: move(t) for r, t in ds.multilabel.items()})


def _no_best() -> dict:
    """The selection before any epoch: no selected epoch, no value, no epochs without improvement."""
    return {"epoch": None, "value": None, "bad_epochs": 0}


def _postfix(metrics) -> dict[str, str]:
    keys = {"loss": N.TRAIN_LOSS, "val_chain": N.VAL_CHAIN_ACC, "val_partial": N.VAL_PARTIAL_CHAIN_ACC}
    return {short: f"{metrics[k]:.3f}" for short, k in keys.items() if k in metrics}

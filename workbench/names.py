"""One home for the names the workbench shares across modules (DESIGN.md section 2, "one home per fact").

Metric keys and how to build them, each metric's direction (is larger better?), run and sweep statuses,
default paths and the layout of the folder beside a run store. Standard library only: the CLI, the app
and the notebooks import it without paying for torch or pandas. Modules that used to define these names
re-export them, so old imports keep working.
"""

from __future__ import annotations

import re
from pathlib import Path

# ---------------------------------------------------------------------- metric keys (linnaeus convention)
SPLITS = ("train", "val", "test")


def core_key(split: str, what: str) -> str:
    """``core/<split>_<what>``: ``core_key("val", "chain_acc") == "core/val_chain_acc"``."""
    return f"core/{split}_{what}"


def rank_key(split: str, kind: str, rank: str) -> str:
    """A per-rank metric, ``<split>/<kind>/<rank>``: ``rank_key("val", "acc", "genus") == "val/acc/genus"``."""
    return f"{split}/{kind}/{rank}"


def split_key(split: str, what: str) -> str:
    """A whole-split metric outside ``core/``: ``split_key("val", "severity") == "val/severity"``."""
    return f"{split}/{what}"


TRAIN_LOSS = core_key("train", "loss")
VAL_LOSS = core_key("val", "loss")
TRAIN_CHAIN_ACC = core_key("train", "chain_acc")
VAL_CHAIN_ACC = core_key("val", "chain_acc")
TRAIN_PARTIAL_CHAIN_ACC = core_key("train", "partial_chain_acc")
VAL_PARTIAL_CHAIN_ACC = core_key("val", "partial_chain_acc")
TEST_CHAIN_ACC = core_key("test", "chain_acc")  # test: evaluated once, at the epoch selected on val (DESIGN.md 3.5)
TEST_PARTIAL_CHAIN_ACC = core_key("test", "partial_chain_acc")
VAL_CONSISTENCY = split_key("val", "consistency")
VAL_SEVERITY = split_key("val", "severity")
VAL_HDIST = split_key("val", "hdist@1")
NULL_INCLUSION_PROB = "schedule/null_inclusion_prob"
LEARNING_RATE = "schedule/lr"  # the LR of each epoch's last optimizer step (workbench/lr_schedule.py)
EPOCH_SECONDS = "time/epoch_seconds"
TRAIN_SAMPLES_PER_SEC = "time/train_samples_per_sec"
HEALTH_PREFIX = "health/"

# per-rank kinds: <split>/<kind>/<rank>
ACC, LOSS, BEST_TAU, KEPT = "acc", "loss", "best_tau", "kept"
# more per-rank kinds (DESIGN.md 3.6): calibration error, one-vs-rest AUROC, accuracy on null targets
ECE, AUROC, ACC_NULL = "ece", "auroc", "acc_null"
# whole-split kinds: <split>/<kind>; hierarchical precision / recall / F1 (micro, Kiritchenko / HiClass)
HP, HR, HF = "hP", "hR", "hF"
TOP_K = (1, 5)  # top-k accuracy per rank; k > 1 only at ranks with at least k real classes
HDIST_K = (1, 5)  # hdist@k (Making Better Mistakes) over the whole split


def top_k(k: int) -> str:
    """The per-rank kind of top-k accuracy: ``top_k(5) == "top5"`` (key ``<split>/top5/<rank>``)."""
    return f"top{k}"


def hdist(k: int) -> str:
    """The whole-split kind of hdist@k: ``hdist(5) == "hdist@5"`` (key ``<split>/hdist@5``)."""
    return f"hdist@{k}"


def val_acc(rank: str) -> str:
    """``val/acc/<rank>``: validation accuracy at one rank."""
    return rank_key("val", ACC, rank)


def best_tau(rank: str, split: str = "val") -> str:
    """``val/best_tau/<rank>``: the rank's best abstention threshold, chosen on val."""
    return rank_key(split, BEST_TAU, rank)


def best_tau_value(by: str, rank: str, split: str = "val") -> str:
    """``val/best_tau_<curve>/<rank>``: the value of the curve ``by`` at the best threshold."""
    return rank_key(split, f"{BEST_TAU}_{by}", rank)


def ranks_of(keys) -> list[str]:
    """The rank names in ``val/acc/<rank>`` keys, in the order given (a fallback for runs stored before
    their rank names were; prefer the run's stored ``ranks``)."""
    prefix = rank_key("val", ACC, "")
    return [str(k)[len(prefix):] for k in keys if str(k).startswith(prefix)]


# The run's selected epoch is where this metric is best (DESIGN.md 3.5: TRAIN.SELECT_BY, selection on val only)
SELECT_BY_DEFAULT = VAL_PARTIAL_CHAIN_ACC
SELECT_BY_KEY = "TRAIN.SELECT_BY"  # the flat config key naming a run's selection metric
SEED_KEY = "TRAIN.SEED"  # the flat config key of the training seed (what seeds of one setting differ in)
# How one number per run and metric is read from its epochs (workbench.summaries.metric_values defines each;
# here so the CLI can offer the choices without importing pandas)
SUMMARY_HOWS = ("last", "best", "min", "max", "selected")
# test at the val-chosen threshold (DESIGN.md 3.5): test/<kind>/<rank>; the threshold itself, then what it gives on test
TAU, COVERAGE_AT_TAU, SELECTIVE_ACCURACY_AT_TAU = "tau", "coverage_at_tau", "selective_accuracy_at_tau"


def is_val_key(key: str) -> bool:
    """A validation metric (``core/val_...`` or ``val/...``): what ``TRAIN.SELECT_BY`` may name."""
    return str(key).startswith((core_key("val", ""), "val/"))

# Direction of each metric: "max" = larger is better. Losses, mistake severity / hdist, calibration
# error, the null false-positive rate and time are "min"; everything else (accuracies, coverage, F1,
# consistency, throughput) "max". Matched on whole words of the metric's name, never of a rank's name.
_MIN_WORDS = frozenset({"loss", "severity", "hdist", "ece", "error", "seconds"})
_MIN_PHRASES = ("null_false_positive_rate",)


def direction(key: str) -> str:
    """``"max"`` when a larger value of metric ``key`` is better, ``"min"`` when a smaller one is.

    For a per-rank key ``<split>/<kind>/<rank>`` only ``<kind>`` counts (a rank may be called anything).
    """
    key = str(key)
    if key.startswith(HEALTH_PREFIX):  # a health check that fired is 1: fewer is better
        return "min"
    parts = key.split("/")
    name = (parts[1] if len(parts) == 3 else key).lower()
    words = set(re.split(r"[^a-z0-9]+", name))
    return "min" if words & _MIN_WORDS or any(p in name for p in _MIN_PHRASES) else "max"


# MODEL.BACKBONE values by input kind (the models module builds them; the app offers them without importing torch)
IMAGE_BACKBONES = ("resnet", "timm", "torchvision")  # resnet: plain torch; timm/torchvision: the [vision] extra

# Config keys that change how fast a run goes or where its files live, never its results: two runs that
# differ only in these are the same experiment (sweep reuse checks, "what varies" in comparisons).
RESULT_NEUTRAL_KEYS = ("TRAIN.NUM_THREADS", "TRAIN.DEVICE", "DATA.STREAM", "DATA.NUM_WORKERS", "DATA.STREAM_ABOVE_MB",
                       "DATA.CACHE_DIR")

# ---------------------------------------------------------------------- statuses
STATUSES = ("queued", "running", "finished", "failed", "stopped")  # a run's status, in the store
ACTIVE = ("queued", "running")  # a run that holds (or will hold) a trainer
RESUMABLE = ("failed", "stopped")  # a run that `resume` may continue
ENDED_OK = ("finished", "stopped")  # CLI exit code 0
SWEEP_STATUSES = ("starting", "running", "finished", "failed", "stopped")  # a sweep's status.json
SWEEP_ACTIVE = ("starting", "running")

# ---------------------------------------------------------------------- default paths
DEFAULT_STORE = "runs/workbench.db"  # the run store, relative to the working folder
STORE_ENV = "WORKBENCH_STORE"  # the dashboard's store when set
WANDB_DEFAULT_DIR = None  # TRACKING.WANDB.DIR unset = the store's folder (see wandb_dir_for)

# ---------------------------------------------------------------------- the folder beside a run store
CHECKPOINTS_DIR = "checkpoints"  # <store dir>/checkpoints/<run id>/{checkpoint.pt, lock}
CHECKPOINT_NAME = "checkpoint.pt"
BEST_CHECKPOINT_NAME = "best.pt"  # beside the checkpoint: the weights of the epoch selected on val (TRAIN.SELECT_BY)
LOCK_NAME = "lock"
CONFIGS_DIR = "configs"  # <store dir>/configs/<run id>.yaml: the config a launcher wrote
LOGS_DIR = "logs"  # <store dir>/logs/<run id>.log: a launched run's stdout + stderr
SWEEPS_DIR = "sweeps"  # <store dir>/sweeps/<sweep id>/{status.json, summary.csv, accuracy_vs_key.html}
STATUS_FILE = "status.json"
MAX_TRIALS = 1000  # a larger sweep grid needs an explicit confirmation (--max-trials N or --yes)
RESULTS_DIR = "ray_results"  # Tune's experiment folders (relative: to the working folder; launchers: the store's)
UI_STATE_FILE = "ui_state.json"


def store_dir(store_path) -> Path:
    """The folder that holds the run store and everything beside it."""
    return Path(store_path).parent


def config_file(store_path, run_id: str) -> Path:
    """``<store dir>/configs/<run id>.yaml``."""
    return store_dir(store_path) / CONFIGS_DIR / f"{run_id}.yaml"


def log_file(store_path, run_id: str) -> Path:
    """``<store dir>/logs/<run id>.log``."""
    return store_dir(store_path) / LOGS_DIR / f"{run_id}.log"


def wandb_dir_for(store_path, configured: str | None = None) -> str:
    """The W&B folder: ``TRACKING.WANDB.DIR`` when set, else the store's folder."""
    return configured or str(store_dir(store_path))


# ---------------------------------------------------------------------- data
SET_SOURCES = ("ratdat_sets",)  # built-in set data (DATA.NAME): grouped by its source; DATA.MAX_SET_SIZE applies


# ---------------------------------------------------------------------- models
SET_POOLS = ("attention", "mean")  # MODEL.POOL of set_attention: learned attention weights, or the plain mean

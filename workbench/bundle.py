"""A trained run as one self-contained file (issue 14 item 5): ``python -m workbench export RUN_ID``.

A bundle is a ``torch.save`` of plain data and tensors only, so it loads with ``torch.load(...,
weights_only=True)`` (nothing in it can run code): the weights of the run's selected epoch (its
``best.pt``; a run without one, written before selection existed, falls back to its last
``checkpoint.pt`` with a note), the taxonomy, the resolved config, each rank's val-chosen ``tau``, what
selected the epoch, the data's content hash, the input layout (feature names, input shape, metadata
columns, image size and channels) and the versions it was trained and exported with.
:func:`workbench.predict.Predictor.from_bundle` predicts from it with no run store.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

from workbench import names as N
from workbench.atomic import atomic_path
from workbench.environment import package_version
from workbench.errors import StoreError

BUNDLE_FORMAT = "workbench-bundle"
BUNDLE_VERSION = 1
BUNDLE_SUFFIX = ".pt"
# what every bundle holds (load_bundle refuses a file without one of them, naming it)
BUNDLE_KEYS = ("format", "format_version", "run_id", "epoch", "model", "taxonomy", "config", "tau",
               "select_by", "select_value", "data_hash", "data_rows", "input", "multilabel_ranks", "weights",
               "versions")
# the input layout a model was trained on (the bundle's "input" dict)
INPUT_KEYS = ("kind", "feature_names", "input_shape", "meta_names", "image_size", "channels")


def input_kind(input_shape) -> str:
    """``"table"`` for ``(F,)``, ``"sets"`` for ``(S, F)``, ``"images"`` for ``(C, H, W)``."""
    return {1: "table", 2: "sets", 3: "images"}[len(input_shape)]


def input_spec(feature_names, input_shape, meta_names) -> dict:
    """The bundle's ``input`` dict: what data a model takes (see :data:`INPUT_KEYS`)."""
    shape = [int(s) for s in input_shape]
    kind = input_kind(shape)
    return {
        "kind": kind, "feature_names": [str(f) for f in feature_names], "input_shape": shape,
        "meta_names": [str(m) for m in (meta_names or [])],
        "image_size": shape[1] if kind == "images" else None, "channels": shape[0] if kind == "images" else None,
    }


def multilabel_ranks(config: dict) -> list[int]:
    """The rank indices trained with BCE (sigmoid outputs): only synthetic data has a multi-label rank,
    and only with ``LOSS.MULTILABEL`` on (as :meth:`workbench.trainer.Trainer._build` decides)."""
    data, loss = config.get("DATA", {}), config.get("LOSS", {})
    rank = (data.get("SYNTHETIC") or {}).get("MULTILABEL_RANK")
    return [int(rank)] if loss.get("MULTILABEL") and data.get("NAME") == "synthetic" and rank is not None else []


def best_checkpoint_path(store, run_id: str) -> Path:
    """``<run folder>/best.pt``: the weights of the run's selected epoch."""
    return store.run_folder(run_id) / N.BEST_CHECKPOINT_NAME


def run_bundle(store, run_id: str, dataset=None) -> dict:
    """The bundle of run ``run_id`` of ``store`` as a dict (what :func:`export_run` writes).

    From ``best.pt`` when the run has one; else (a run trained before selection existed) from its last
    ``checkpoint.pt``, its tau read from the store's ``val/best_tau/<rank>`` at that epoch, its input
    layout from ``dataset`` (loaded from the run's config when not given); ``weights`` says which.
    Raises :class:`StoreError` for an unknown run, a run with no weights yet, or unreadable weights.
    """
    from workbench.trainer import BEST_KEYS, load_checkpoint

    run = store.run(run_id)  # StoreError naming the store for an unknown id
    best = best_checkpoint_path(store, run_id)
    last = store.checkpoint_path(run_id)
    if best.is_file():
        state = load_checkpoint(best, BEST_KEYS)
        weights = f"best.pt: epoch {int(state['epoch']) + 1}, selected by {state['select_by']}"
        spec = input_spec(state["feature_names"], state["input_shape"], state["meta_names"])
        tau = {str(k): float(v) for k, v in state["tau"].items()}
        select_by, select_value = state["select_by"], state["select_value"]
    elif last.is_file():
        state = load_checkpoint(last, ("epoch", "model", "config", "taxonomy"))
        weights = (f"checkpoint.pt: epoch {int(state['epoch']) + 1}, the last one trained (this run has no "
                   f"{N.BEST_CHECKPOINT_NAME}: it was trained before the best epoch was kept)")
        if dataset is None:
            from workbench.config import Config
            from workbench.data import load_dataset

            dataset = load_dataset(Config.from_run(state["config"], source=f"run {run_id}").DATA)
        spec = input_spec(dataset.feature_names, dataset.input_shape, dataset.meta_names)
        tau = _stored_tau(store, run_id, int(state["epoch"]), state["taxonomy"]["ranks"])
        select_by, select_value = None, None
    else:
        status = run["status"]
        why = ("it has not finished an epoch yet" if status in N.ACTIVE
               else f"its status is {status} and it never finished an epoch" if status == "failed"
               else "its weights were deleted")
        raise StoreError(f"{store.path}: run {run_id!r} has no weights to use ({why}; looked for {best} and {last})")
    return {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "run_id": run_id, "epoch": int(state["epoch"]),
        "model": {k: v.detach().cpu().contiguous() for k, v in state["model"].items()},
        "taxonomy": state["taxonomy"], "config": state["config"], "tau": tau,
        "select_by": select_by, "select_value": None if select_value is None else float(select_value),
        "data_hash": state.get("data_hash"), "data_rows": state.get("data_rows"), "input": spec,
        "multilabel_ranks": multilabel_ranks(state["config"]), "weights": weights, "status": run["status"],
        "versions": {
            "workbench": package_version("workbench"), "torch": _torch_version(), "python": platform.python_version(),
            "trained_with": dict(run.get("environment") or {}),
        },
    }


def _torch_version() -> str:
    import torch

    return str(torch.__version__)  # a TorchVersion (a str subclass) would not load with weights_only


def _stored_tau(store, run_id: str, epoch: int, ranks) -> dict[str, float]:
    """Each rank's val-chosen tau at ``epoch`` from the store (for a run without a best.pt)."""
    keys = [N.best_tau(rank) for rank in ranks]
    long = store.metrics([run_id], keys)
    at = dict(zip(long.loc[long["epoch"] == epoch, "key"], long.loc[long["epoch"] == epoch, "value"]))
    missing = [k for k in keys if k not in at or not math.isfinite(at[k])]
    if missing:
        raise StoreError(f"{store.path}: run {run_id!r} has no stored {', '.join(missing)} at epoch {epoch + 1} "
                         f"(the epoch of its checkpoint); its abstention thresholds are unknown")
    return {rank: float(at[key]) for rank, key in zip(ranks, keys)}


def bundle_path(out: str | os.PathLike, run_id: str) -> Path:
    """Where :func:`export_run` writes: ``out`` itself when it names a ``.pt`` file, else ``<out>/<run_id>.pt``
    (``out`` an existing folder, or a new one)."""
    out = Path(out)
    if out.is_dir() or out.suffix != BUNDLE_SUFFIX:
        return out / f"{run_id}{BUNDLE_SUFFIX}"
    return out


def export_run(store, run_id: str, out: str | os.PathLike) -> tuple[Path, dict]:
    """Write run ``run_id``'s bundle to ``out`` (a ``.pt`` file, or a folder: ``<out>/<run_id>.pt``);
    returns ``(path written, bundle)``. Only reads the store (a read-only store exports fine).

    The file is written whole, then renamed into place: an interrupted export leaves no half bundle.
    """
    import torch

    from workbench.store import validate_run_id

    validate_run_id(run_id)
    bundle = run_bundle(store, run_id)
    path = bundle_path(out, run_id)
    if path.exists() and not path.is_file():
        raise StoreError(f"{path}: cannot write the bundle there: it exists and is not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: a full disk stays an OSError
            torch.save(bundle, f)
    except OSError as e:
        raise StoreError(f"{path}: cannot write the bundle ({e.strerror or e})") from None
    return path, bundle


def load_bundle(path: str | os.PathLike) -> dict:
    """A bundle written by :func:`export_run`, loaded with ``weights_only`` and checked: every key of
    :data:`BUNDLE_KEYS` and :data:`INPUT_KEYS` present, the format known. Errors are
    :class:`StoreError`\\ s naming the file (as :func:`workbench.trainer.load_checkpoint`'s)."""
    from workbench.trainer import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: bundle file not found" + (" (it is a folder)" if path.is_dir() else ""))
    hint = f"export one with `python -m workbench export RUN_ID --out {path.parent}`"
    state = load_checkpoint(path)  # unreadable, not a dict, pickled code: StoreError naming the file
    if "format" not in state:
        what = ("a run's checkpoint, not an exported bundle" if "model" in state and "taxonomy" in state
                else f"keys: {', '.join(map(str, list(state)[:10])) or 'none'}")
        raise StoreError(f"{path}: not a workbench bundle: no 'format' in it ({what}); {hint}")
    if state["format"] != BUNDLE_FORMAT:
        raise StoreError(f"{path}: not a workbench bundle (format {state['format']!r}, expected {BUNDLE_FORMAT!r}); "
                         f"{hint}")
    version = state.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= BUNDLE_VERSION:
        raise StoreError(f"{path}: bundle format version {version!r} is not one this workbench reads "
                         f"(1 to {BUNDLE_VERSION}); update the workbench or export the run again")
    missing = [k for k in BUNDLE_KEYS if k not in state]
    if missing:
        raise StoreError(f"{path}: damaged bundle: no {', '.join(map(repr, missing))} in it; {hint}")
    if not isinstance(state["model"], dict):
        raise StoreError(f"{path}: damaged bundle: 'model' holds a {type(state['model']).__name__}, not a state "
                         f"dict of tensors; {hint}")
    if not isinstance(state["input"], dict) or any(k not in state["input"] for k in INPUT_KEYS):
        got = sorted(state["input"]) if isinstance(state["input"], dict) else type(state["input"]).__name__
        raise StoreError(f"{path}: damaged bundle: 'input' must be a dict with keys {', '.join(INPUT_KEYS)}, "
                         f"got {got}; {hint}")
    ranks = state["taxonomy"].get("ranks") if isinstance(state["taxonomy"], dict) else None
    if not isinstance(state["tau"], dict) or ranks is None or sorted(state["tau"]) != sorted(ranks):
        raise StoreError(f"{path}: damaged bundle: 'tau' must give one threshold per rank ({ranks}), "
                         f"got {state['tau']!r}; {hint}")
    return state

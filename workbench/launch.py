"""Launch training runs in their own process and keep the store honest about them.

The dashboard (and anything else that wants a run in the background) calls :func:`launch_run`:
the run row is created in the store first (status ``queued``, config saved), the resolved config is
written to ``<store dir>/configs/<run id>.yaml`` and ``python -m workbench train --run-id <id>`` is
started in a new session with its output in ``<store dir>/logs/<run id>.log``. The trainer picks up
the existing row, so the caller can show the run at once. Nothing here imports streamlit or torch.

A process that dies without reporting (killed, out of memory, a config the CLI rejects) leaves its
row ``queued``/``running``; :func:`reconcile` marks such runs ``failed`` with the tail of their log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from workbench.config import Config
from workbench.store import RunStore, StoreError, new_run_id

DEFAULT_STORE = "runs/workbench.db"
ACTIVE = ("queued", "running")
LOG_TAIL_LINES = 40

# Popen objects of the runs this process started, by pid: polling them reaps finished children,
# so a finished run is never mistaken for a live one because it is a zombie.
_children: dict[int, subprocess.Popen] = {}


class LaunchError(RuntimeError):
    """A run that cannot be launched; the message names the run and the reason."""


def default_store_path() -> Path:
    """The store the dashboard uses: ``$WORKBENCH_STORE`` or ``runs/workbench.db``."""
    return Path(os.environ.get("WORKBENCH_STORE") or DEFAULT_STORE)


def config_path(store: RunStore, run_id: str) -> Path:
    return store.path.parent / "configs" / f"{run_id}.yaml"


def log_path(store: RunStore, run_id: str) -> Path:
    return store.path.parent / "logs" / f"{run_id}.log"


def checkpoint_path(store: RunStore, run_id: str) -> Path:
    """Where the trainer keeps a run's checkpoint (the store owns the layout; no torch import here)."""
    return store.checkpoint_path(run_id)


def launch_run(
    config: Config, store_path: str | os.PathLike | None = None, name: str | None = None,
    parent_id: str | None = None, sweep_id: str | None = None,
) -> str:
    """Start one training run in a new process; returns its run id at once.

    Args:
        config: the run's config; ``TRACKING.STORE`` is replaced by ``store_path`` when given.
        store_path: the run store (default: ``config.TRACKING.STORE``).
        name: the run's display name (default: ``TRACKING.RUN_NAME``, else the run id).
        parent_id: the run this one continues from (phase 2).
    """
    store_path = Path(store_path or config.TRACKING.STORE).resolve()
    overrides: dict = {"TRACKING.STORE": str(store_path)}
    if name:
        overrides["TRACKING.RUN_NAME"] = name
    config = config.with_overrides(overrides)
    store = RunStore(store_path)
    run_id = new_run_id()
    store.create_run(config.to_dict(), name=config.TRACKING.RUN_NAME, run_id=run_id,
                     parent_id=parent_id, sweep_id=sweep_id, status="queued")
    cfg_file, log_file = config_path(store, run_id), log_path(store, run_id)
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config.save(cfg_file)
    cmd = [sys.executable, "-m", "workbench", "train", "--config", str(cfg_file), "--run-id", run_id, "--no-progress"]
    try:
        proc = _spawn(cmd, log_file)
    except OSError as e:
        store.update_run(run_id, status="failed", error=f"could not start the training process: {e}")
        raise LaunchError(f"run {run_id}: could not start the training process: {e}") from e
    store.update_run(run_id, pid=proc.pid)
    return run_id


def _spawn(cmd: list[str], log_file: Path) -> subprocess.Popen:
    """Start ``cmd`` in a new session (a Streamlit rerun can't kill it), output appended to ``log_file``."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    _children[proc.pid] = proc
    return proc


def phase2_config(parent: Mapping, overrides: Mapping | None = None) -> Config:
    """The config of a phase-2 run: the parent's config, ``TRAIN.INIT_FROM`` = the parent's id,
    ``TRAIN.PHASE1_MASK_NULL_LOSS`` off, then ``overrides`` (dotted keys, e.g. the null-masking ramp)."""
    cfg = Config.from_dict(parent["config"], source=f"run {parent['id']}")
    base = {"TRAIN.INIT_FROM": parent["id"], "TRAIN.PHASE1_MASK_NULL_LOSS": False, "TRACKING.RUN_NAME": None}
    return cfg.with_overrides({**base, **dict(overrides or {})})


def launch_phase2(
    parent_run_id: str, store_path: str | os.PathLike | None = None, overrides: Mapping | None = None,
    name: str | None = None,
) -> str:
    """Continue a finished (or stopped) run as phase 2 in a new run whose parent is ``parent_run_id``."""
    store = RunStore(store_path or default_store_path())
    parent = store.run(parent_run_id)
    if parent["status"] in ACTIVE:
        raise LaunchError(f"run {parent_run_id} is still {parent['status']}; phase 2 starts from a finished run")
    if not checkpoint_path(store, parent_run_id).is_file():
        raise LaunchError(f"run {parent_run_id} has no checkpoint at {checkpoint_path(store, parent_run_id)}")
    cfg = phase2_config(parent, overrides)
    return launch_run(cfg, store.path, name=name or f"{parent['name']}-phase2", parent_id=parent_run_id)


def stop_run(run_id: str, store_path: str | os.PathLike | None = None, force: bool = False) -> None:
    """Ask a run to stop after its current epoch (the trainer checks between epochs).

    ``force`` also sends SIGTERM to the run's process group and, if the process is gone, records the
    run as ``stopped`` (for a run stuck before its first epoch).
    """
    store = RunStore(store_path or default_store_path())
    store.request_stop(run_id)
    if not force:
        return
    run = store.run(run_id)
    pid = run.get("pid")
    if pid and run_alive(pid, run_id):
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
        _wait_dead(pid, run_id, timeout=10.0)
    if store.run(run_id)["status"] in ACTIVE and not (pid and run_alive(pid, run_id)):
        store.update_run(run_id, status="stopped", error="stopped by the user (process terminated)")


def _wait_dead(pid: int, run_id: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run_alive(pid, run_id):
            return True
        time.sleep(0.1)
    return False


def run_alive(pid: int | None, run_id: str | None = None) -> bool:
    """Whether process ``pid`` still runs (a zombie does not count).

    With ``run_id``, on Linux, the process must also be the one training that run (its command line
    names the run id), so a recycled pid is not mistaken for the run.
    """
    if not pid:
        return False
    pid = int(pid)
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:  # reaps it
            _children.pop(pid, None)
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return False
            if run_id is not None and run_id.encode() not in (proc / "cmdline").read_bytes():
                return False
        except (OSError, IndexError):
            return False
    return True


def log_tail(store: RunStore, run_id: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a launched run's log ('' when there is none)."""
    path = log_path(store, run_id)
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def reconcile(store: RunStore, run_ids: list[str] | None = None) -> list[str]:
    """Mark launched runs whose process died without reporting as ``failed`` (error = log tail).

    Only runs started by :func:`launch_run` (they have a log under ``<store dir>/logs``) are checked:
    a sweep trial's pid may belong to another host. ``run_ids`` limits the check to those runs.
    Returns the ids marked failed.
    """
    if run_ids is not None:
        rows = [store.run(r) for r in run_ids]
    else:
        runs = store.runs()
        rows = [] if runs.empty else runs[runs["status"].isin(ACTIVE)].to_dict("records")
    marked = []
    for row in rows:
        if row["status"] not in ACTIVE:
            continue
        pid = row["pid"]
        pid = None if pid is None or pd.isna(pid) else int(pid)
        if pid is None or not log_path(store, row["id"]).is_file() or run_alive(pid, row["id"]):
            continue
        current = store.run(row["id"])  # it may have finished between the two reads
        if current["status"] not in ACTIVE:
            continue
        tail = log_tail(store, row["id"])
        error = f"the training process (pid {pid}) exited without reporting a result"
        if tail:
            error += f"; last lines of {log_path(store, row['id'])}:\n{tail}"
        try:
            store.update_run(row["id"], status="failed", error=error)
        except StoreError:
            continue
        marked.append(row["id"])
    return marked


__all__ = [
    "LaunchError", "checkpoint_path", "config_path", "default_store_path", "launch_phase2",
    "launch_run", "log_path", "log_tail", "phase2_config", "reconcile", "run_alive", "stop_run",
]


def launch_sweep(
    config: Config, grid: Mapping[str, list], seeds: int = 1, store_path: str | os.PathLike | None = None,
    max_concurrent: int = 2, address: str | None = None, wandb: bool = False,
) -> str:
    """Start ``sweeps/run.py`` over ``grid`` (dotted key -> values) in a new process; returns the sweep id.

    The space is validated here first, so a bad value is an error at once, not a failed process.
    The driver's output goes to ``<store dir>/logs/<sweep id>.log`` and its pid to ``.pid`` beside it.
    """
    import json

    from workbench.sweep import SweepSpec, new_sweep_id

    store_path = Path(store_path or config.TRACKING.STORE).resolve()
    config = config.with_overrides({"TRACKING.STORE": str(store_path)})
    SweepSpec(base=config.to_dict(), grid=dict(grid), seeds=seeds).validate()
    store = RunStore(store_path)
    sweep_id = new_sweep_id()
    cfg_file, log_file = config_path(store, sweep_id), log_path(store, sweep_id)
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config.save(cfg_file)
    script = Path(__file__).resolve().parent.parent / "sweeps" / "run.py"
    cmd = [sys.executable, str(script), "--config", str(cfg_file), "--sweep-id", sweep_id, "--seeds", str(seeds),
           "--store", str(store_path), "--results-dir", str(store_path.parent / "ray_results"),
           "--out", str(store_path.parent / "sweeps" / sweep_id), "--max-concurrent", str(max_concurrent)]
    for key, values in grid.items():
        cmd += ["--grid", f"{key}=" + ",".join(json.dumps(v) for v in values)]
    if address:
        cmd += ["--address", address]
    if wandb:
        cmd += ["--wandb-project", config.TRACKING.WANDB.PROJECT, "--wandb-mode", "offline"]
    try:
        proc = _spawn(cmd, log_file)
    except OSError as e:
        raise LaunchError(f"sweep {sweep_id}: could not start the sweep process: {e}") from e
    log_file.with_suffix(".pid").write_text(str(proc.pid))
    return sweep_id

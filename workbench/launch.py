"""Launch training runs in their own process and keep the store honest about them.

The dashboard (and anything else that wants a run in the background) calls :func:`launch_run`:
the run row is created in the store first (status ``queued``, config saved), the resolved config is
written to ``<store dir>/configs/<run id>.yaml`` and ``python -m workbench train --run-id <id>`` is
started in a new session with its output in ``<store dir>/logs/<run id>.log``. The trainer picks up
the existing row, so the caller can show the run at once. Nothing here imports streamlit or torch.

A process that dies without reporting (killed, out of memory, a config the CLI rejects) leaves its
row ``queued``/``running``; :func:`reconcile` marks such runs ``failed`` with the tail of their log.

Sweeps (:func:`launch_sweep`) run ``sweeps/run.py`` the same way, one at a time per store unless asked;
their status lives in ``<store dir>/sweeps/<id>/status.json`` (:func:`workbench.sweep.write_sweep_status`),
which :func:`reconcile_sweeps`, :func:`stop_sweep` and :func:`list_sweeps` keep honest. Every process
started here is reaped by a waiter thread the moment it exits, so none lingers as a zombie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from workbench.config import Config
from workbench.store import RUN_NAME_MAX, RunStore, StoreError, new_run_id, validate_run_id, validate_run_name

from workbench.names import (  # noqa: F401 (one home: names.py; re-exported here)
    ACTIVE, DEFAULT_STORE, RESUMABLE, STORE_ENV, config_file, log_file, wandb_dir_for,
)
LOG_TAIL_LINES = 40

# Popen objects of the runs and sweeps this process started and that may still run, by pid. A
# daemon thread per child waits on it (reaps it the moment it exits: no zombie is left until the
# dashboard stops) and then drops it from here; polling one never blocks.
_children: dict[int, subprocess.Popen] = {}


from workbench.errors import LaunchError  # noqa: F401 (defined once in errors.py; re-exported here)


def default_store_path() -> Path:
    """The store the dashboard uses: ``$WORKBENCH_STORE`` or ``runs/workbench.db``."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def config_path(store: RunStore, run_id: str) -> Path:
    return config_file(store.path, run_id)


def log_path(store: RunStore, run_id: str) -> Path:
    return log_file(store.path, run_id)


def checkpoint_path(store: RunStore, run_id: str) -> Path:
    """Where the trainer keeps a run's checkpoint (the store owns the layout; no torch import here)."""
    return store.checkpoint_path(run_id)


def launch_run(
    config: Config, store_path: str | os.PathLike | None = None, name: str | None = None,
    parent_id: str | None = None, sweep_id: str | None = None, cluster=None, nproc: int = 1,
) -> str:
    """Start one training run in a new process; returns its run id at once.

    Args:
        config: the run's config; ``TRACKING.STORE`` is replaced by ``store_path`` when given.
        store_path: the run store (default: ``config.TRACKING.STORE``).
        name: the run's display name (default: ``TRACKING.RUN_NAME``, else the run id).
        parent_id: the run this one continues from (phase 2).
        cluster: a :class:`workbench.cluster_run.ClusterSettings` to train on a Ray cluster's workers (the
            process started here is the run's driver: it records the run here, relays Stop and owns the
            workers); a cluster that does not answer is a :class:`LaunchError` before any row is made.
        nproc: data-parallel processes on this machine (``train --nproc``; the process started here launches
            and owns them); 1 = one process, as before. Not with ``cluster``.
    """
    if nproc < 1 or (nproc > 1 and cluster is not None):
        raise LaunchError(f"nproc must be >= 1, and 1 on a Ray cluster (ask for workers there), got {nproc}")
    validate_run_name(name)  # checked before the store is touched
    if parent_id is not None:
        validate_run_id(parent_id)
    if cluster is not None:
        from workbench.sweep import check_reachable

        cluster.validate()
        check_reachable(cluster.address)
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
    if cluster is not None:
        cmd += cluster_args(cluster)
    elif nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return _start_run_process(store, run_id, cmd, log_file, "training")


def cluster_args(cluster) -> list[str]:
    """``train``'s flags for a run on a Ray cluster (:class:`workbench.cluster_run.ClusterSettings`)."""
    return ["--address", cluster.address, "--workers", str(cluster.workers),
            "--cpus-per-worker", f"{cluster.cpus_per_worker:g}", "--gpus-per-worker", f"{cluster.gpus_per_worker:g}"]


def _start_run_process(store: RunStore, run_id: str, cmd: list[str], log_file: Path, what: str) -> str:
    """Spawn ``cmd`` for the queued run ``run_id`` and record its pid; a process that cannot start
    marks the run failed (a queued row with no process would wait forever)."""
    try:
        proc = _spawn(cmd, log_file)
    except OSError as e:
        store.update_run(run_id, status="failed", error=f"could not start the {what} process: {e}")
        raise LaunchError(f"run {run_id}: could not start the {what} process: {e}") from e
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
    threading.Thread(target=_reap, args=(proc,), name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a started process to exit (which reaps it), then forget it."""
    proc.wait()
    _children.pop(proc.pid, None)


def phase2_config(parent: Mapping, overrides: Mapping | None = None) -> Config:
    """The config of a phase-2 run: the parent's config, ``TRAIN.INIT_FROM`` = the parent's id,
    ``TRAIN.PHASE1_MASK_NULL_LOSS`` off, then ``overrides`` (dotted keys, e.g. the null-masking ramp)."""
    cfg = Config.from_run(parent["config"], source=f"run {parent['id']}")
    base = {"TRAIN.INIT_FROM": parent["id"], "TRAIN.PHASE1_MASK_NULL_LOSS": False, "TRACKING.RUN_NAME": None}
    return cfg.with_overrides({**base, **dict(overrides or {})})


def launch_phase2(
    parent_run_id: str, store_path: str | os.PathLike | None = None, overrides: Mapping | None = None,
    name: str | None = None,
) -> str:
    """Continue a finished (or stopped) run as phase 2 in a new run whose parent is ``parent_run_id``."""
    validate_run_id(parent_run_id)
    store = RunStore(store_path or default_store_path())
    parent = store.run(parent_run_id)
    if parent["status"] in ACTIVE:
        raise LaunchError(f"run {parent_run_id} is still {parent['status']}; phase 2 starts from a finished run")
    if not checkpoint_path(store, parent_run_id).is_file():
        raise LaunchError(f"run {parent_run_id} has no checkpoint at {checkpoint_path(store, parent_run_id)}")
    cfg = phase2_config(parent, overrides)
    suffix = "-phase2"  # the parent's name is cut so that the default name stays within the length bound
    default = f"{str(parent['name'] or parent_run_id)[:RUN_NAME_MAX - len(suffix)]}{suffix}"
    return launch_run(cfg, store.path, name=name or default, parent_id=parent_run_id)




def launch_resume(run_id: str, store_path: str | os.PathLike | None = None) -> str:
    """Continue a failed or stopped run from its last checkpoint, in a new process; returns ``run_id``.

    Starts ``python -m workbench resume RUN_ID --store STORE --no-progress`` like :func:`launch_run`
    (own session, output appended to the run's log). The trainer restarts after the checkpoint's
    epoch and re-reports any epoch the store already has (replacing it), so the run ends with each
    epoch stored once. A run whose process died without reporting is first marked failed
    (:func:`reconcile`); a run that is queued or running, or already finished, is refused.
    """
    store = RunStore(store_path or default_store_path())
    reconcile(store, [run_id])
    run = store.run(run_id)
    if run["status"] not in RESUMABLE:
        why = {"finished": "it finished all its epochs (continue it as phase 2 instead)"}.get(
            run["status"], f"it is still {run['status']} (pid {run.get('pid')}); stop it first")
        raise LaunchError(f"run {run_id} cannot be resumed: {why}; resume continues a failed or stopped run")
    log_file = log_path(store, run_id)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # queued before the process exists (no pid: reconcile leaves it alone), and without the old stop
    # request, which would stop the resumed run after one epoch
    store.clear_stop(run_id)
    store.update_run(run_id, status="queued", pid=None, error=None)
    cmd = [sys.executable, "-m", "workbench", "resume", run_id, "--store", str(store.path.resolve()), "--no-progress"]
    return _start_run_process(store, run_id, cmd, log_file, "resume")


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
    "launch_resume", "launch_run", "log_path", "log_tail", "phase2_config", "reconcile", "run_alive", "stop_run",
    # sweeps
    "active_sweeps", "launch_sweep", "list_sweeps", "process_start_time", "reconcile_sweeps", "stop_sweep",
    "sweep_alive", "sweep_command",
]


def launch_sweep(
    config: Config, grid: Mapping[str, list], seeds: int = 1, store_path: str | os.PathLike | None = None,
    max_concurrent: int = 2, address: str | None = None, wandb: bool = False, allow_concurrent: bool = False,
    cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
) -> str:
    """Start ``python -m workbench sweep`` over ``grid`` (dotted key -> values) in a new process; returns the
    sweep id. With ``wandb``, trials log to the config's ``TRACKING.WANDB.PROJECT`` in its ``MODE`` and ``DIR``.
    Each trial asks Ray for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (checked here against this
    machine when the sweep runs on a local Ray, as the driver's :class:`~workbench.sweep.SweepSettings` does).

    The space is validated here first, so a bad value is an error at once, not a failed process.
    While another sweep of the same store is starting or running this raises :class:`LaunchError`
    naming it (two local Ray instances on one machine starve each other), unless ``allow_concurrent``.
    The sweep's status record (``<store dir>/sweeps/<id>/status.json``) is written ``starting``
    before the process starts; the driver then records ``running`` and how it ended. Its output
    goes to ``<store dir>/logs/<sweep id>.log``.
    """
    from workbench.sweep import SweepSettings, SweepSpec, file_lock, new_sweep_id, sweep_dir, write_sweep_status

    store_path = Path(store_path or config.TRACKING.STORE).resolve()
    config = config.with_overrides({"TRACKING.STORE": str(store_path)})
    spec = SweepSpec(base=config.to_dict(), grid=dict(grid), seeds=seeds)
    spec.check_size()
    spec.validate()
    if max_concurrent < 1:
        raise LaunchError(f"concurrent trials must be >= 1, got {max_concurrent}")
    SweepSettings(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial).validate()
    store = RunStore(store_path)
    # check and claim under one lock, so two clicks (or two browser tabs) cannot both start a sweep
    with file_lock(_sweeps_root(store) / SWEEP_LAUNCH_LOCK):
        active = [] if allow_concurrent else active_sweeps(store)
        if active:
            other = active[0]
            raise LaunchError(
                f"sweep {other['id']} is still {other['status']} (pid {other.get('pid') or '?'}, started "
                f"{_clock(other.get('started'))}); stop it or wait for it to end before starting another, "
                "or allow a concurrent sweep")
        sweep_id = new_sweep_id()
        cfg_file, log_file, out_dir = config_path(store, sweep_id), log_path(store, sweep_id), sweep_dir(store_path, sweep_id)
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        config.save(cfg_file)
        cmd = sweep_command(config, grid, sweep_id, cfg_file, store_path, out_dir, seeds=seeds,
                            max_concurrent=max_concurrent, address=address, wandb=wandb,
                            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
        write_sweep_status(store_path, sweep_id, status="starting", started=time.time(), grid=spec.resolved_grid(),
                           n_trials=spec.num_trials(), address=address, log=str(log_file), pid=None)
        try:
            proc = _spawn(cmd, log_file)
        except OSError as e:
            write_sweep_status(store_path, sweep_id, status="failed", finished=time.time(),
                               reason=f"could not start the sweep process: {e}")
            raise LaunchError(f"sweep {sweep_id}: could not start the sweep process: {e}") from e
        write_sweep_status(store_path, sweep_id, pid=proc.pid, pid_start=process_start_time(proc.pid))
    return sweep_id


# ---------------------------------------------------------------------- sweep lifecycle
def sweep_command(
    config: Config, grid: Mapping[str, list], sweep_id: str, config_file: Path, store_path: Path, out_dir: Path,
    seeds: int = 1, max_concurrent: int = 2, address: str | None = None, wandb: bool = False,
    cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
) -> list[str]:
    """The driver's command line: ``python -m workbench sweep`` (the installed package, no path built from a
    file location) over ``grid``, with the W&B project, mode and folder of ``config`` when ``wandb`` is on
    (a config whose ``TRACKING.WANDB.MODE`` is ``disabled`` logs nothing to W&B)."""
    import json

    from workbench.sweep import RESULTS_DIR

    cmd = [sys.executable, "-m", "workbench", "sweep", "--config", str(config_file), "--sweep-id", sweep_id,
           "--seeds", str(seeds), "--store", str(store_path), "--results-dir", str(Path(store_path).parent / RESULTS_DIR),
           "--out", str(out_dir), "--max-concurrent", str(max_concurrent),
           "--cpus-per-trial", f"{cpus_per_trial:g}", "--gpus-per-trial", f"{gpus_per_trial:g}"]
    for key, values in grid.items():
        cmd += ["--grid", f"{key}=" + ",".join(json.dumps(v) for v in values)]
    if address:
        cmd += ["--address", address]
    w = config.TRACKING.WANDB
    if wandb and w.MODE != "disabled":
        cmd += ["--wandb-project", w.PROJECT, "--wandb-mode", w.MODE, "--wandb-dir", wandb_dir_for(store_path, w.DIR)]
    return cmd


SWEEP_LAUNCH_LOCK = ".launch.lock"  # in <store dir>/sweeps: launchers check and claim one at a time
SWEEP_START_GRACE_S = 60.0  # a "starting" record with no pid after this long: the launcher died
SWEEP_STOP_TIMEOUT_S = 15.0


def _sweeps_root(store: RunStore) -> Path:
    from workbench.sweep import SWEEPS_DIR

    return store.path.resolve().parent / SWEEPS_DIR


def _clock(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if t else "?"


def process_start_time(pid: int | None) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``), None if unknown.

    Recorded with a sweep driver's pid, so a recycled pid is never taken for the driver.
    """
    if not pid:
        return None
    try:
        return int(Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def sweep_alive(record: Mapping) -> bool:
    """Whether the driver process of a sweep's status record still runs (the same process: pid and start time)."""
    pid = record.get("pid")
    if not pid or not run_alive(int(pid)):
        return False
    start = record.get("pid_start")
    return start is None or process_start_time(pid) == start


def last_error_line(text: str) -> str | None:
    """The last line of ``text`` that reads as an error (``error: ...`` or ``SomeError: ...``), else None."""
    import re

    pattern = re.compile(r"^(error: .+|[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")
    for line in reversed(text.splitlines()):
        if pattern.match(line.strip()):
            return line.strip()
    return None


def _end_trials(store: RunStore, sweep_id: str, status: str, error: str) -> None:
    """Close the sweep's trial rows still queued/running: only its (now gone) driver wrote them."""
    runs = store.runs(sweep_id=sweep_id)
    for run_id in runs.loc[runs["status"].isin(ACTIVE), "id"] if not runs.empty else []:
        store.update_run(run_id, status=status, error=error)


def reconcile_sweeps(store: RunStore) -> list[str]:
    """Mark sweeps whose driver died without recording an end as ``failed`` (reason: the log's last
    error line); their trials still marked running become failed too. Returns the ids marked."""
    from workbench.sweep import SWEEP_ACTIVE, read_sweep_status, sweep_ids_with_records, write_sweep_status

    marked = []
    for sweep_id in sweep_ids_with_records(store.path):
        record = read_sweep_status(store.path, sweep_id)
        if not record or record.get("status") not in SWEEP_ACTIVE:
            continue
        pid = record.get("pid")
        if pid is None:
            if time.time() - float(record.get("started") or 0) < SWEEP_START_GRACE_S:
                continue
            why = "the sweep process was never started"
        elif sweep_alive(record):
            continue
        else:
            why = f"the sweep driver (pid {pid}) exited without recording a result"
        tail = log_tail(store, sweep_id)
        reason = last_error_line(tail) or why
        if write_sweep_status(store.path, sweep_id, if_status=SWEEP_ACTIVE, status="failed", reason=reason,
                              finished=time.time()) is None:
            continue  # it ended meanwhile
        _end_trials(store, sweep_id, "failed", f"{why}; see {log_path(store, sweep_id)}")
        marked.append(sweep_id)
    return marked


def active_sweeps(store: RunStore) -> list[dict]:
    """Status records of the sweeps of ``store`` that are starting or running (after :func:`reconcile_sweeps`)."""
    from workbench.sweep import SWEEP_ACTIVE, read_sweep_status, sweep_ids_with_records

    reconcile_sweeps(store)
    records = [read_sweep_status(store.path, s) for s in sweep_ids_with_records(store.path)]
    return [r for r in records if r and r.get("status") in SWEEP_ACTIVE]


def stop_sweep(sweep_id: str, store_path: str | os.PathLike | None = None,
               timeout: float = SWEEP_STOP_TIMEOUT_S) -> dict:
    """Terminate a sweep's driver with its process group (its local Ray instance and trials) and
    record the sweep ``stopped``; its unfinished trials become ``stopped``. Returns the record."""
    from workbench.sweep import SWEEP_ACTIVE, read_sweep_status, write_sweep_status

    store = RunStore(store_path or default_store_path())
    record = read_sweep_status(store.path, sweep_id)
    if record is None:
        raise LaunchError(f"sweep {sweep_id} has no status record in {_sweeps_root(store)}; "
                          "stop its driver (sweeps/run.py) where it was started")
    if record.get("status") not in SWEEP_ACTIVE:
        raise LaunchError(f"sweep {sweep_id} is not running: its status is {record.get('status')}")
    # recorded first: a driver that dies of the signal may still record its own end (Ray turns
    # SIGTERM into SystemExit), and a record that is no longer active is never overwritten
    write_sweep_status(store.path, sweep_id, if_status=SWEEP_ACTIVE, status="stopped",
                       reason="stopped by the user", finished=time.time())
    pid = record.get("pid")
    if pid and sweep_alive(record):
        _terminate_group(int(pid), record, timeout)
    _end_trials(store, sweep_id, "stopped", f"sweep {sweep_id} was stopped by the user")
    return read_sweep_status(store.path, sweep_id)


def _terminate_group(pid: int, record: Mapping, timeout: float) -> None:
    """SIGTERM the driver's process group (just the driver if it shares ours), SIGKILL after ``timeout``."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    mine = group == os.getpgid(0)

    def send(sig):
        try:
            os.kill(pid, sig) if mine else os.killpg(group, sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sweep_alive(record):
        time.sleep(0.1)
    if sweep_alive(record):
        send(signal.SIGKILL)
        _wait_dead(pid, None, timeout=5.0)


def list_sweeps(store: RunStore, reconcile_first: bool = True) -> pd.DataFrame:
    """Every sweep of ``store``, newest first: those with a status record (failed ones with no trial
    included) and those only known from their trials' ``sweep_id`` (status derived from the trials).

    Columns: ``id, status, reason, started, finished, trials, trials_finished, trials_failed,
    n_trials`` (planned), ``pid``, ``address``.
    """
    from workbench.sweep import read_sweep_status, sweep_ids_with_records

    if reconcile_first:
        reconcile_sweeps(store)
    runs = store.runs()
    by_sweep = {} if runs.empty else {k: g for k, g in runs[runs["sweep_id"].notna()].groupby("sweep_id")}
    rows = []
    for sweep_id in sorted(set(sweep_ids_with_records(store.path)) | set(by_sweep)):
        trials = by_sweep.get(sweep_id)
        counts = {"trials": 0, "trials_finished": 0, "trials_failed": 0}
        if trials is not None:
            counts = {"trials": len(trials), "trials_finished": int((trials["status"] == "finished").sum()),
                      "trials_failed": int((trials["status"] == "failed").sum())}
        record = read_sweep_status(store.path, sweep_id)
        if record is None:  # a sweep from before status records: what its trials say
            statuses = set(trials["status"])
            status = ("running" if statuses & set(ACTIVE) else
                      "failed" if statuses == {"failed"} else "finished")
            record = {"status": status, "started": float(trials["created"].min()), "reason": None}
        rows.append({"id": sweep_id, "status": record.get("status"), "reason": record.get("reason"),
                     "started": record.get("started"), "finished": record.get("finished"), **counts,
                     "n_trials": record.get("n_trials"), "pid": record.get("pid"), "address": record.get("address")})
    columns = ["id", "status", "reason", "started", "finished", "trials", "trials_finished", "trials_failed",
               "n_trials", "pid", "address"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("started", ascending=False, na_position="last").reset_index(drop=True)

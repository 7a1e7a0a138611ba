"""Shared fixtures. Ray is started once per test session (it takes ~10-25 s on 2 cores)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")

# Tests never touch the user's default store (runs/workbench.db): the app, the launchers and the sweep
# driver fall back to $WORKBENCH_STORE, so it points into a temp folder for the whole session, and
# pytest_sessionfinish fails the session if the default store was created or changed anyway.
from workbench.names import DEFAULT_STORE as _DEFAULT_STORE, STORE_ENV  # noqa: E402 (stdlib only: no heavy import)

DEFAULT_STORE = REPO / _DEFAULT_STORE
os.environ[STORE_ENV] = str(Path(tempfile.mkdtemp(prefix="wbstore-")) / "workbench.db")


def _stat(path: Path):
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None


_DEFAULT_STORE_BEFORE = _stat(DEFAULT_STORE)


def pytest_sessionfinish(session, exitstatus):
    if _stat(DEFAULT_STORE) != _DEFAULT_STORE_BEFORE:
        print(f"\nerror: a test created or changed the default store {DEFAULT_STORE}; tests must use their own")
        session.exitstatus = 1


def available_devices() -> list[str]:
    """The devices core tests run on: "cpu" always, "cuda" where a CUDA device is present (the GPU machine)."""
    import torch  # here, not at import: a session that never asks for devices does not pay torch's import

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    """A test taking a ``device`` argument runs once per :func:`available_devices` entry (ids ``cpu``, ``cuda``),
    unless it parametrizes ``device`` itself."""
    if "device" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "device" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return
    metafunc.parametrize("device", available_devices())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance in this process for the whole session (short temp dir: socket paths are limited)."""
    import ray

    temp = tempfile.mkdtemp(prefix="wbray-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real `ray start --head` cluster on 127.0.0.1, started and stopped (by its own process group) here.

    Yields the address. Drivers join with RAY_AUTH_MODE=token (Ray 2.60 turns token auth on).
    """
    port = free_port()
    temp = tempfile.mkdtemp(prefix="wbrc-", dir="/tmp")
    log = open(Path(temp) / "head.log", "w")
    cmd = [str(Path(PYTHON).parent / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--temp-dir", temp, "--include-dashboard=false", "--disable-usage-stats", "--block"]
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while "Ray runtime started" not in (Path(temp) / "head.log").read_text():
        if head.poll() is not None or time.time() > deadline:
            os.killpg(head.pid, signal.SIGKILL) if head.poll() is None else None
            pytest.fail("ray start --head did not come up:\n" + (Path(temp) / "head.log").read_text()[-3000:])
        time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)  # only the processes this fixture started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    log.close()
    shutil.rmtree(temp, ignore_errors=True)

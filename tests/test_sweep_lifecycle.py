"""A sweep's life as the dashboard sees it, with real processes: one sweep at a time, failed sweeps
listed with their reason, Stop, a killed driver, smoke mode's own store, and no zombie children.

Sweeps are launched with ``workbench.launch.launch_sweep`` (a real ``sweeps/run.py`` process in its
own session). Cheap cases point the sweep at a Ray address where nothing listens: its driver fails
in seconds without starting Ray. The smoke test runs the real CLI on its own local Ray.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_app import app, store_path, tiny_config  # noqa: F401  (shared AppTest helpers and fixture)

from conftest import PYTHON, REPO
from workbench.launch import (
    LaunchError, active_sweeps, launch_run, launch_sweep, list_sweeps, log_path, stop_sweep,
)
from workbench.store import RunStore
from workbench.sweep import read_sweep_status

TIMEOUT = 120  # seconds for a driver to get somewhere on a loaded 2-core machine


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: [state, ppid, pgrp, session, ...]; None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_pids(session: int) -> list[int]:
    """Live (non-zombie) processes of a session: a launched driver and everything it started."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and int(stat[3]) == session and stat[0] != "Z":
                out.append(int(entry.name))
    return out


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd) if fd.is_symlink() else ""
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                hex_ip, hex_port = parts[1].split(":")
                raw = bytes.fromhex(hex_ip)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
                family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def wait_until(check, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def sweep_row(store_path: Path, sweep_id: str) -> dict:
    rows = list_sweeps(RunStore(store_path))
    return rows[rows["id"] == sweep_id].iloc[0].to_dict()


@pytest.fixture
def sweeps_store(store_path):
    """The AppTest store; every sweep still active at the end is stopped (its process group ended)."""
    yield store_path
    for record in active_sweeps(RunStore(store_path)):
        stop_sweep(record["id"], store_path)


# ---------------------------------------------------------------------- one at a time, failed, listed
def test_a_second_sweep_is_refused_and_a_failed_sweep_stays_listed_with_its_reason(sweeps_store):
    cfg = tiny_config(sweeps_store)
    dead = f"127.0.0.1:{closed_port()}"
    first = launch_sweep(cfg, {"LOSS.W": [0.5]}, store_path=sweeps_store, address=dead)
    with pytest.raises(LaunchError, match=rf"^sweep {first} is still starting \(pid \d+, started .*\); stop it or wait"):
        launch_sweep(cfg, {"LOSS.W": [0.2]}, store_path=sweeps_store)
    assert list_sweeps(RunStore(sweeps_store))["id"].tolist() == [first]  # the refused one left nothing

    # its driver cannot reach the cluster: it records "failed" with the reason, before any trial
    wait_until(lambda: sweep_row(sweeps_store, first)["status"] == "failed", TIMEOUT, "the sweep to fail")
    row = sweep_row(sweeps_store, first)
    reason = f"cannot reach the Ray cluster at {dead}: Connection refused; is `ray start --head` running there?"
    assert row["reason"] == reason and row["trials"] == 0
    assert f"error: {reason}" in log_path(RunStore(sweeps_store), first).read_text()

    # the page lists it (0 trials) with its reason and its log
    from app_pages._shared import md_escape

    at = app("sweeps")
    listing = at.dataframe[0].value
    assert listing.loc[first, "status"] == "failed" and listing.loc[first, "reason"] == reason
    assert md_escape(reason) in [e.value for e in at.error]
    assert any(f"error: {reason}" in c.value for c in at.code)
    assert not [b for b in at.button if b.key == "sw_stop"]  # nothing to stop

    # with the first one over, a new sweep may start
    second = launch_sweep(cfg, {"LOSS.W": [0.2]}, store_path=sweeps_store, address=dead)
    assert read_sweep_status(sweeps_store, second)["status"] in ("starting", "running", "failed")


def test_a_killed_driver_is_marked_failed_and_so_are_its_running_trials(sweeps_store):
    cfg = tiny_config(sweeps_store)
    sweep_id = launch_sweep(cfg, {"LOSS.W": [0.5]}, store_path=sweeps_store, address=f"127.0.0.1:{closed_port()}")
    store = RunStore(sweeps_store)
    store.create_run(cfg.to_dict(), run_id=f"{sweep_id}-t0", sweep_id=sweep_id, status="running")  # as its callback would
    pid = read_sweep_status(sweeps_store, sweep_id)["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: proc_stat(pid) is None, 30, "the killed driver to be reaped")
    row = sweep_row(sweeps_store, sweep_id)
    assert row["status"] == "failed"
    assert row["reason"] == f"the sweep driver (pid {pid}) exited without recording a result"
    trial = store.run(f"{sweep_id}-t0")
    assert trial["status"] == "failed" and f"the sweep driver (pid {pid})" in trial["error"]


@pytest.mark.ray
def test_stop_sweep_button_ends_the_driver_its_ray_instance_and_records_stopped(sweeps_store):
    cfg = tiny_config(sweeps_store, **{"TRAIN.EPOCHS": 50})
    sweep_id = launch_sweep(cfg, {"LOSS.W": [0.5]}, store_path=sweeps_store, max_concurrent=1)
    pid = read_sweep_status(sweeps_store, sweep_id)["pid"]

    def ray_starting():  # stop it as soon as its Ray instance has processes of its own
        names = [Path(f"/proc/{p}/comm").read_text().strip() for p in session_pids(pid) if Path(f"/proc/{p}").exists()]
        return read_sweep_status(sweeps_store, sweep_id)["status"] == "running" and "gcs_server" in names

    wait_until(ray_starting, TIMEOUT, "the sweep's local Ray instance", step=0.2)
    at = app("sweeps")
    assert at.dataframe[0].value.loc[sweep_id, "status"] == "running"
    stop = [b for b in at.button if b.key == "sw_stop"]
    assert stop, "an active sweep has a Stop button"
    stop[0].click().run()
    assert not at.exception, at.exception

    record = read_sweep_status(sweeps_store, sweep_id)
    assert record["status"] == "stopped" and record["reason"] == "stopped by the user"
    wait_until(lambda: not session_pids(pid), 20, "every process of the sweep's session to end")
    assert set(RunStore(sweeps_store).runs(sweep_id=sweep_id)["status"]) <= {"stopped", "finished"}
    at.run()
    assert at.dataframe[0].value.loc[sweep_id, "status"] == "stopped"


# ---------------------------------------------------------------------- zombies
def test_no_zombie_is_left_when_a_launched_run_ends(store_path, tmp_path):
    """The dashboard process is the parent of every run it starts: one that ends must be reaped at
    once, not stay a zombie until the dashboard stops. Nothing is called here but the launcher."""
    cfg = tiny_config(store_path, **{"DATA.NAME": "file", "DATA.PATH": str(tmp_path / "missing.csv"),
                                     "DATA.RANKS": ["family", "genus"]})
    run_id = launch_run(cfg, store_path)
    pid = int(RunStore(store_path).run(run_id)["pid"])
    assert int(proc_stat(pid)[1]) == os.getpid()  # our child

    def ended():
        stat = proc_stat(pid)
        return stat is None or stat[0] == "Z"

    wait_until(ended, TIMEOUT, "the run's process to exit (its data file is missing)")
    time.sleep(1.0)
    stat = proc_stat(pid)
    assert stat is None or int(stat[1]) != os.getpid(), f"pid {pid} is still our child, state {stat[0]} (a zombie)"


# ---------------------------------------------------------------------- smoke mode
@pytest.mark.ray
def test_smoke_test_uses_a_temporary_store_and_a_loopback_ray(tmp_path):
    """`sweeps/run.py --smoke-test` without --store: the config's store (runs/ under the working folder)
    stays untouched, trials go to a temporary store it names, and its Ray listens on 127.0.0.1 only."""
    out = tmp_path / "driver.log"
    cmd = [PYTHON, str(REPO / "sweeps" / "run.py"), "--config", str(REPO / "configs" / "synthetic.yaml"),
           "--smoke-test", "--w", "0.5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ENABLE")}
    with open(out, "wb") as log:
        driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    temp_root = None
    try:
        def smoke_store():
            found = re.search(r"smoke test: run store (\S+),", out.read_text())
            return found and Path(found.group(1))

        store_path = wait_until(smoke_store, TIMEOUT, "the smoke test to name its store")
        temp_root = store_path.parent.parent
        assert tmp_path not in store_path.parents

        def ray_listening():
            pids = session_pids(driver.pid)
            names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if Path(f"/proc/{p}").exists()}
            return "raylet" in names and "gcs_server" in names and listening_addresses(pids)

        addresses = wait_until(ray_listening, TIMEOUT, "the smoke test's Ray instance", step=0.5)
        assert addresses and all(is_loopback(a) for a, _ in addresses), addresses
        assert driver.wait(timeout=300) == 0, out.read_text()[-3000:]
        text = out.read_text()
        runs = RunStore(store_path).runs()
        assert len(runs) == 1 and runs["status"].tolist() == ["finished"]
        assert read_sweep_status(store_path, runs["sweep_id"][0])["status"] == "finished"
        assert not (tmp_path / "runs").exists() and not (tmp_path / "ray_results").exists()
        if "PNG skipped" in text:  # kaleido not installed: say so, with a reason
            assert "(PNG skipped: install kaleido to export PNG" in text
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if temp_root is not None and temp_root.name.startswith("workbench-smoke-"):
            shutil.rmtree(temp_root, ignore_errors=True)

"""Bad sweep input, part 2: ids, resources, cluster addresses, sizes, output paths and grid values.

Like ``test_bad_input.py`` (whose store snapshot, seeded store and ``sweeps/run.py`` helpers this
module reuses): every case goes through ``sweeps/run.py``'s ``main``, fails before Ray starts
(``no_ray`` turns a start into a test failure) with one ``error: ...`` line and exit code 2, and
leaves the store exactly as it was, with no sweep status record written.
"""

from __future__ import annotations

import socket
import time

import pytest
from test_bad_input import (  # noqa: F401  (fixtures are used by name)
    assert_error_line, db, no_ray, seeded_dir, snapshot, store_unchanged, sweep, sweep_cli,
)

from workbench.config import Config
from workbench.store import RunStore
from workbench.sweep import CONNECT_TIMEOUT_S, MAX_TRIALS, SweepSpec, sweep_dir

LONG_ID = "s" * 65


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = closed_port()
# a "billion laughs" grid value: 9^6 values from a few hundred characters of YAML flow style
GRID_BOMB = "{" + ", ".join([f"a0: &a0 [{', '.join(['1'] * 9)}]"] + [
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]) + "}"
# (id, argv given the tmp folder, expected error message given the paths)
CASES = [
    ("sweep-id-parent-dir", lambda t: ["--sweep-id", "../x"],
     "--sweep-id: sweep id must be letters, digits, '_', '-' and '.', not starting with '.', at most 64 characters, "
     "got '../x'"),
    ("sweep-id-with-slash", lambda t: ["--sweep-id", "a/b"],
     "--sweep-id: sweep id must be letters, digits, '_', '-' and '.', not starting with '.', at most 64 characters, "
     "got 'a/b'"),
    ("sweep-id-leading-dot", lambda t: ["--sweep-id", ".hidden"],
     "--sweep-id: sweep id must be letters, digits, '_', '-' and '.', not starting with '.', at most 64 characters, "
     "got '.hidden'"),
    ("sweep-id-too-long", lambda t: ["--sweep-id", LONG_ID],
     "--sweep-id: sweep id must be letters, digits, '_', '-' and '.', not starting with '.', at most 64 characters, "
     f"got '{LONG_ID}'"),
    ("resume-id-outside", lambda t: ["--resume", "../../etc"],
     "--resume: sweep id must be letters, digits, '_', '-' and '.', not starting with '.', at most 64 characters, "
     "got '../../etc'"),
    ("num-samples-zero", lambda t: ["--num-samples", "0"], "`--num-samples` must be >= 1, got 0"),
    ("num-samples-negative", lambda t: ["--num-samples", "-3"], "`--num-samples` must be >= 1, got -3"),
    ("cpus-per-trial-negative", lambda t: ["--cpus-per-trial", "-1"], "`--cpus-per-trial` must be >= 0, got -1"),
    ("gpus-per-trial-negative", lambda t: ["--gpus-per-trial", "-0.5"], "`--gpus-per-trial` must be >= 0, got -0.5"),
    ("max-concurrent-zero", lambda t: ["--max-concurrent", "0"], "`--max-concurrent` must be >= 1, got 0"),
    ("max-concurrent-negative", lambda t: ["--max-concurrent", "-2"], "`--max-concurrent` must be >= 1, got -2"),
    ("grid-too-large", lambda t: ["--w", "0:1:0.001"],
     f"the sweep has 1001 trials (1001 LOSS.W x 1 TRAIN.SEED), more than the limit of {MAX_TRIALS}; "
     "pass --max-trials 1001 (or --yes) to run it"),
    ("grid-over-max-trials", lambda t: ["--w", "0:1:0.1", "--seeds", "2", "--max-trials", "10"],
     "the sweep has 22 trials (11 LOSS.W x 2 TRAIN.SEED), more than the limit of 10; "
     "pass --max-trials 22 (or --yes) to run it"),
    ("out-is-a-file", lambda t: ["--out", str(t / "good.yaml")],
     "--out {tmp}/good.yaml: {tmp}/good.yaml is a file; --out must be a folder (for summary.csv and accuracy_vs_key.html)"),
    ("out-under-a-file", lambda t: ["--out", str(t / "good.yaml" / "sub")],
     "--out {tmp}/good.yaml/sub: {tmp}/good.yaml is a file; --out must be a folder (for summary.csv and "
     "accuracy_vs_key.html)"),
    ("grid-value-not-yaml", lambda t: ["--grid", "LOSS.W=0.1,[0.2"],
     "sweep grid `LOSS.W`: value '[0.2' is not valid YAML/JSON (expected ',' or ']', but got '<stream end>')"),
    ("alias-value-not-yaml", lambda t: ["--w", "0.1,{a"],
     "sweep grid `LOSS.W`: value '{{a' is not valid YAML/JSON (expected ',' or '}}', but got '<stream end>')"),
    ("range-of-a-billion", lambda t: ["--w", "0:1:1e-9"],  # refused before the list is built (no memory blow-up)
     "range '0:1:1e-9' gives 1,000,000,001 values for `LOSS.W`; a range may give at most 100,000 (use a larger step)"),
    ("grid-value-alias-bomb", lambda t: ["--grid", "LOSS.W=" + GRID_BOMB],
     ("sweep grid `LOSS.W`: value " + repr(GRID_BOMB[:80] + f"... ({len(GRID_BOMB)} characters)") + " refused: line 1: "
      "aliases expand this block to more than 100,000 values (an alias bomb?); a config has about 60"
      ).replace("{", "{{").replace("}", "}}")),  # (expected messages go through str.format)
    ("address-refused", lambda t: ["--address", f"127.0.0.1:{PORT}"],
     f"cannot reach the Ray cluster at 127.0.0.1:{PORT}: Connection refused; is `ray start --head` running there?"),
    ("address-not-host-port", lambda t: ["--address", "127.0.0.1:abc"],
     "Ray cluster address '127.0.0.1:abc' must be 'auto' or host:port, e.g. 127.0.0.1:6379"),
]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_sweep_argument(sweep_cli, no_ray, tmp_path, db, capsys, argv, expected):
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, *argv(tmp_path))
    assert not no_ray
    assert_error_line(rc, err, expected.format(tmp=tmp_path))
    assert "sweep:" not in out and not (tmp_path / "ray").exists()
    assert not (db.parent / "sweeps").exists(), "a refused command line leaves no sweep record"


def test_a_gpu_request_beyond_the_machine_is_refused_with_the_numbers(sweep_cli, no_ray, tmp_path, db, capsys):
    """Tune would wait forever for a GPU this machine does not have."""
    import torch

    gpus = torch.cuda.device_count()
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, "--gpus-per-trial", str(gpus + 1))
    assert_error_line(rc, err, f"`--gpus-per-trial` {gpus + 1} needs a GPU, but this machine has {gpus} "
                               f"(torch.cuda.device_count() = {gpus}): no trial could ever start")


def test_more_cpus_per_trial_than_the_machine_is_refused(sweep_cli, no_ray, tmp_path, db, capsys):
    import os

    cpus = os.cpu_count()
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, "--cpus-per-trial", str(cpus + 1))
    assert_error_line(rc, err, f"`--cpus-per-trial` {cpus + 1} is more than the {cpus} CPUs of this machine "
                               "(local Ray): no trial could ever start")


def test_an_unanswering_cluster_is_an_error_in_seconds_not_a_hang(sweep_cli, no_ray, tmp_path, db, capsys):
    """192.0.2.0/24 (TEST-NET-1) is reserved: a connect there is dropped or refused, never answered."""
    t0 = time.monotonic()
    with store_unchanged(db):
        rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, "--address", "192.0.2.123:6379")
    assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 10
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: cannot reach the Ray cluster at 192.0.2.123:6379: "), err
    assert err.rstrip().endswith("is `ray start --head` running there?")


def _trial_rows(db, sweep_id: str, ws: list[float]) -> None:
    """Trials of an earlier sweep ``sweep_id`` over ``w`` in the store, as its driver records them."""
    store = RunStore(db)
    for i, w in enumerate(ws):
        cfg = Config.from_dict(snapshot_config(db)).with_overrides({"LOSS.W": w, "TRAIN.SEED": 0}).to_dict()
        store.create_run(cfg, run_id=f"{sweep_id}-t{i}", sweep_id=sweep_id, status="finished")


def snapshot_config(db) -> dict:
    """The config the ``sweep`` helper's good.yaml holds (the seeded run's)."""
    return RunStore(db).run("seed-run")["config"]


def test_a_reused_sweep_id_with_another_grid_is_refused(sweep_cli, no_ray, tmp_path, db, capsys):
    _trial_rows(db, "old-sweep", [0.2, 0.8])
    before = snapshot(db)
    rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, "--sweep-id", "old-sweep", "--w", "0.2,0.5")
    assert snapshot(db) == before and not no_ray
    assert_error_line(rc, err, f"sweep 'old-sweep' already has 2 trials in {db} with `LOSS.W` = 0.8 (trial "
                               "old-sweep-t1), which is not in this sweep's values [0.2, 0.5]; use --resume old-sweep "
                               "to continue it, or another --sweep-id")
    # another base config (epochs) is refused too, naming the key and both values
    rc, out, err = sweep(sweep_cli, capsys, tmp_path, db, "--sweep-id", "old-sweep", "--w", "0.2,0.8",
                         "--set", "TRAIN.EPOCHS=7")
    assert snapshot(db) == before
    assert_error_line(rc, err, f"sweep 'old-sweep' already has 2 trials in {db} with a different config: "
                               "`TRAIN.EPOCHS` is 1 there (trial old-sweep-t0) and 7 here; use --resume old-sweep to "
                               "continue it, or another --sweep-id")


def test_a_reused_sweep_id_with_the_same_grid_gets_as_far_as_ray(sweep_cli, no_ray, tmp_path, db, capsys):
    """The same grid and base are accepted (the check is not a blanket refusal): Ray is reached."""
    _trial_rows(db, "old-sweep", [0.2, 0.8])
    with pytest.raises(AssertionError, match="Ray was started"):
        sweep(sweep_cli, capsys, tmp_path, db, "--sweep-id", "old-sweep", "--w", "0.2,0.8")
    assert no_ray


def test_size_limit_and_paths_in_the_library():
    spec = SweepSpec(base=Config().to_dict(), grid={"w": [i / 1000 for i in range(1001)]})
    spec.check_size(None)  # --yes: no limit
    spec.check_size(1001)
    with pytest.raises(Exception, match="more than the limit of 1000"):
        spec.check_size()
    with pytest.raises(Exception, match="got '..'"):
        sweep_dir("/tmp/runs/w.db", "..")
    assert sweep_dir("/tmp/runs/w.db", "sweep-1") == sweep_dir("/tmp/runs/w.db", "sweep-1").resolve()

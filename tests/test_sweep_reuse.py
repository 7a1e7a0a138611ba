"""Sweeps that fill the machine: the data is loaded once per sweep (by the driver) and reaches every trial
through Ray's object store, trials reuse their actor processes, and a trial's numbers still equal a single
run's; the Sweeps form's CPUs and GPUs per trial reach the driver's SweepSettings.

Real Ray (the session's shared local instance), real files, real processes; nothing is mocked. The load
count is observed in this process (the driver) and the data file is moved away after that one load, so a
trial that read it again would fail.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_app import app, store_path, tiny_config  # noqa: F401  (shared AppTest helpers and fixture)

from workbench import data as data_module
from workbench.config import Config
from workbench.data import DataError
from workbench.launch import active_sweeps, stop_sweep
from workbench.store import RunStore
from workbench.sweep import SweepSettings, SweepSpec, read_sweep_status, run_sweep, shared_dataset
from workbench.trainer import Trainer

TIMEOUT = 120  # seconds for a launched driver to get somewhere on a loaded 2-core machine


def write_table(path: Path, n: int = 400) -> Path:
    """A two-rank CSV (family > genus) with two informative features."""
    rng = np.random.default_rng(3)
    fam = rng.integers(0, 2, n)
    gen = fam * 2 + rng.integers(0, 2, n)
    pd.DataFrame({"family": [f"f{f}" for f in fam], "genus": [f"g{g}" for g in gen],
                  "x1": gen + rng.normal(0, 0.4, n), "x2": fam + rng.normal(0, 0.4, n)}).to_csv(path, index=False)
    return path


def file_base(tmp_path: Path, table: Path) -> dict:
    return Config.from_dict({
        "DATA": {"NAME": "file", "PATH": str(table), "RANKS": ["family", "genus"]},
        "MODEL": {"HIDDEN": [8], "DROPOUT": 0.0},
        "TRAIN": {"EPOCHS": 2, "BATCH_SIZE": 64, "LR": 0.01},
        "TRACKING": {"STORE": str(tmp_path / "runs" / "w.db")},
    }).to_dict()


def comparable(store: RunStore, run_id: str) -> pd.Series:
    """Every stored metric of a run by (epoch, key), wall-clock timings left out."""
    m = store.metrics(run_id)
    m = m[~m["key"].str.startswith("time/")]
    return m.set_index(["epoch", "key"])["value"].sort_index()


# ---------------------------------------------------------------------- no Ray needed
def test_shared_dataset_only_when_no_data_key_is_swept_and_errors_before_ray(tmp_path):
    table = write_table(tmp_path / "t.csv")
    base = file_base(tmp_path, table)
    shared = shared_dataset(SweepSpec(base=base, grid={"w": [0.2, 0.8]}, seeds=2), base)
    loaded = data_module.load_dataset(Config.from_dict(base).DATA)
    assert shared is not None and data_module.dataset_hash(shared) == data_module.dataset_hash(loaded)
    for spec in (SweepSpec(base=base, grid={"DATA.SEED": [0, 1]}),
                 SweepSpec(base=base, distributions={"DATA.VAL_FRACTION": ("uniform", 0.1, 0.3)})):
        assert shared_dataset(spec, base) is None, "a swept DATA key: each trial loads its own data"
    missing = file_base(tmp_path, tmp_path / "gone.csv")
    with pytest.raises(DataError, match="gone.csv"):
        shared_dataset(SweepSpec(base=missing, grid={"w": [0.5]}), missing)


# ---------------------------------------------------------------------- real Ray
@pytest.mark.ray
def test_data_loaded_once_actors_reused_and_each_trial_equals_a_single_run(ray_local, tmp_path, monkeypatch):
    table = write_table(tmp_path / "table.csv")
    base = file_base(tmp_path, table)
    loads: list[str] = []
    real_load = data_module.load_dataset

    def load_then_move_away(data_cfg):
        """The driver's one load; the file then leaves, so any later read (a trial's) would fail."""
        loads.append(data_cfg.PATH)
        dataset = real_load(data_cfg)
        table.rename(table.with_suffix(".away"))
        return dataset

    monkeypatch.setattr(data_module, "load_dataset", load_then_move_away)
    ws = [0.2, 0.4, 0.6, 0.8]
    spec = SweepSpec(base=base, grid={"w": ws})
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp_path / "rr"),
                             max_concurrent=2, verbose=0)
    sweep_id, grid = run_sweep(spec, settings)
    monkeypatch.undo()
    assert [r.error for r in grid] == [None] * len(ws), "no trial read the (moved) file"
    assert loads == [str(table)], "the sweep's data was loaded once, by the driver"

    store = RunStore(settings.store_path)
    trials = store.runs(sweep_id=sweep_id).set_index("id")
    assert len(trials) == len(ws) and set(trials["status"]) == {"finished"}
    pids = set(trials["pid"])
    assert 1 <= len(pids) <= 2 and len(pids) < len(ws), f"{len(ws)} trials ran in processes {sorted(pids)}"

    # each trial (a later one in a reused process included) stores exactly what a fresh single run stores
    import torch

    table.with_suffix(".away").rename(table)
    threads = torch.get_num_threads()
    single_store = RunStore(tmp_path / "single" / "w.db")
    try:
        for run_id in trials.index:
            # the trials asked for no GPU (Ray hides the GPUs from them): the single run stays on the CPU too
            cfg = Config.from_dict(store.run(run_id)["config"]).with_overrides(
                {"TRACKING.STORE": str(single_store.path), "TRACKING.WANDB.ENABLED": False, "TRAIN.DEVICE": "cpu"})
            single = Trainer(cfg, store=single_store, run_id=f"single-{run_id}", progress=False)
            single.fit()
            ours, theirs = comparable(store, run_id), comparable(single_store, single.run_id)
            assert ours.index.equals(theirs.index), f"trial {run_id} stored other metric keys than a single run"
            np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=0, atol=1e-12,
                                       err_msg=f"trial {run_id} (pid {trials.loc[run_id, 'pid']})")
    finally:
        torch.set_num_threads(threads)  # the single runs set the trials' one thread in this process


# ---------------------------------------------------------------------- the form's resources
@pytest.fixture
def sweeps_store(store_path):  # noqa: F811 (store_path is test_app's fixture)
    """The AppTest store; every sweep still active at the end is stopped (its process group ended)."""
    yield store_path
    for record in active_sweeps(RunStore(store_path)):
        stop_sweep(record["id"], store_path)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_from_form(cpus: float, gpus: float, address: str = ""):
    at = app("sweeps", data_cfg={"NAME": "synthetic", "SYNTHETIC": {"N": 300, "BRANCHING": [2, 2],
                                                                    "NULL_RATES": [0, 0.2], "NUM_FEATURES": 4}})
    at.text_input(key="sw_w").set_value("0.5")
    at.number_input(key="sw_seeds").set_value(1)
    at.number_input(key="sw_epochs").set_value(1)
    at.number_input(key="sw_cpus").set_value(cpus)
    at.number_input(key="sw_gpus").set_value(gpus)
    at.text_input(key="sw_address").set_value(address)
    [start] = [b for b in at.button if b.label == "Start sweep"]
    start.click().run()
    assert not at.exception, at.exception
    return at


def test_form_cpus_and_gpus_per_trial_reach_the_drivers_sweep_settings(sweeps_store):
    # an address where nothing listens: the driver builds its SweepSettings, records what each trial asks
    # for, then fails on the address in seconds without starting Ray
    at = start_from_form(2.0, 0.5, f"127.0.0.1:{closed_port()}")
    sweep_id = at.session_state["sweep_id"]
    deadline = time.monotonic() + TIMEOUT
    while (read_sweep_status(sweeps_store, sweep_id) or {}).get("status") not in ("failed", "finished"):
        assert time.monotonic() < deadline, f"sweep {sweep_id} never ended: {read_sweep_status(sweeps_store, sweep_id)}"
        time.sleep(0.2)
    record = read_sweep_status(sweeps_store, sweep_id)
    assert record["status"] == "failed" and "cannot reach the Ray cluster" in record["reason"]
    assert record["trial_resources"] == {"cpu": 2.0, "gpu": 0.5}


def test_form_refuses_gpus_this_machine_lacks_on_a_local_ray(sweeps_store):
    import torch

    have = torch.cuda.device_count()
    at = start_from_form(1.0, float(have + 1))
    assert "sweep_id" not in at.session_state, "no sweep may start"
    assert any(f"{have + 1} needs a GPU, but this machine has {have}" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not list(sweeps_store.parent.glob("sweeps/*/status.json")), "a refused sweep leaves no record"

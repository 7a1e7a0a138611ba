"""Sweeps with a real local Ray instance (one per session), W&B offline, and the results table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.config import Config, ConfigError
from workbench.store import RunStore
from workbench.sweep import SweepSettings, SweepSpec, parse_grid_args, parse_values, run_sweep, swept_keys
from workbench.sweep_results import format_summary, store_tidy, summarize
from workbench.tracking import pull_wandb

TINY = {
    "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": 600, "BRANCHING": [2, 3], "NULL_RATES": [0.0, 0.2], "NUM_FEATURES": 8}},
    "MODEL": {"HIDDEN": [16], "DROPOUT": 0.0},
    "TRAIN": {"EPOCHS": 3, "BATCH_SIZE": 128, "LR": 0.01},
    "SCHEDULE": {"NULL_MASKING": {"END_EPOCH": 2}},
}


def tiny_base(tmp_path) -> dict:
    cfg = Config.from_dict(TINY).with_overrides({"TRACKING.STORE": str(tmp_path / "runs" / "w.db")})
    return cfg.to_dict()


# ---------------------------------------------------------------------- no Ray needed
def test_parse_values_lists_ranges_and_bools():
    assert parse_values("0,0.5,1") == [0, 0.5, 1]
    assert parse_values("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("true,false") == [True, False]
    assert parse_values("[16, 8],[32]") == [[16, 8], [32]]  # commas inside a list value do not split it
    assert parse_values("'a,b',it's") == ["a,b", "it's"]
    assert parse_grid_args(["LOSS.W=0.1,0.2"]) == {"LOSS.W": [0.1, 0.2]}
    with pytest.raises(ConfigError, match="KEY=v1,v2"):
        parse_grid_args(["LOSS.W"])


def test_spec_counts_trials_and_rejects_bad_values_before_ray(tmp_path):
    spec = SweepSpec(base=tiny_base(tmp_path), grid={"w": [0.1, 0.5, 0.9], "end_epoch": [2, 5]}, seeds=3)
    assert spec.num_trials() == 18
    assert set(spec.resolved_grid()) == {"LOSS.W", "SCHEDULE.NULL_MASKING.END_EPOCH", "TRAIN.SEED"}
    assert swept_keys(spec) == ["LOSS.W", "SCHEDULE.NULL_MASKING.END_EPOCH"]
    with pytest.raises(ConfigError, match=r"`LOSS.W` must be in \[0, 1\], got 1.5"):
        SweepSpec(base=tiny_base(tmp_path), grid={"w": [0.5, 1.5]}).validate()
    with pytest.raises(ConfigError, match="START_EPOCH` must be <= END_EPOCH"):
        SweepSpec(base=tiny_base(tmp_path), grid={"SCHEDULE.NULL_MASKING.START_EPOCH": [5], "end_epoch": [2]}).validate()
    with pytest.raises(ConfigError, match="low < high"):
        SweepSpec(base=tiny_base(tmp_path), distributions={"w": ("uniform", 0.8, 0.2)}).validate()


def _tidy(rows):
    return pd.DataFrame(rows, columns=["run", "group", "config", "epoch", "metric", "value"])


def test_summary_best_and_final_against_pandas():
    rng = np.random.default_rng(0)
    rows = []
    for run in range(6):
        w = [0.2, 0.8][run % 2]
        for epoch in range(4):
            for metric in ("core/val_partial_chain_acc", "core/val_chain_acc", "val/acc/a"):
                rows.append((f"r{run}", "g", {"LOSS.W": w}, epoch, metric, float(rng.random())))
    tidy = _tidy(rows)
    summary = summarize(tidy, ["LOSS.W"])
    wide = tidy.pivot_table(index=["run", "epoch"], columns="metric", values="value").reset_index()
    wide["w"] = wide["run"].map(lambda r: [0.2, 0.8][int(r[1:]) % 2])
    final = wide.sort_values("epoch").groupby("run").last()
    best = wide.loc[wide.groupby("run")["core/val_partial_chain_acc"].idxmax()].set_index("run")
    for at, frame in (("final", final), ("best", best)):
        expected = frame.groupby("w")["val/acc/a"].agg(["mean", "std"])
        got = summary[summary["at"] == at].set_index("LOSS.W")
        np.testing.assert_allclose(got["val/acc/a mean"], expected["mean"])
        np.testing.assert_allclose(got["val/acc/a std"], expected["std"])
        assert (got["n"] == 3).all()
    assert "±" in format_summary(summary)


# ---------------------------------------------------------------------- real Ray
@pytest.mark.ray
def test_smoke_sweep_over_w_results_and_wandb_round_trip(ray_local, tmp_path):
    base = tiny_base(tmp_path)
    spec = SweepSpec(base=base, grid={"w": [0.2, 0.8]}, seeds=2)
    settings = SweepSettings(
        store_path=base["TRACKING"]["STORE"], results_dir=str(tmp_path / "ray_results"), wandb=True,
        wandb_mode="offline", wandb_project="hier-test", wandb_dir=str(tmp_path / "wb"), verbose=0,
    )
    sweep_id, grid = run_sweep(spec, settings)
    assert len(grid) == 4 and not [r for r in grid if r.error is not None]

    store = RunStore(settings.store_path)
    runs = store.runs(sweep_id=sweep_id)
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    per_epoch = store.metrics(list(runs["id"]), keys=["core/val_chain_acc"])
    assert per_epoch.groupby("run_id")["epoch"].apply(list).map(sorted).tolist() == [[0, 1, 2]] * 4

    # the W&B offline files hold the same config and full per-epoch history as the store
    pulled = pull_wandb(offline_root=tmp_path / "wb", group=sweep_id)
    assert set(pulled["run"]) == set(runs["id"])
    from_store = store_tidy(store, sweep_id).set_index(["run", "epoch", "metric"])["value"]
    from_wandb = pulled.set_index(["run", "epoch", "metric"])["value"]
    common = from_store.index.intersection(from_wandb.index)
    assert len(common) == len(from_store)  # every stored value was logged to W&B
    np.testing.assert_allclose(from_wandb.loc[common].to_numpy(), from_store.loc[common].to_numpy())
    for run_id, frame in pulled.groupby("run"):
        cfg = frame["config"].iloc[0]
        assert cfg["LOSS.W"] == store.run(run_id)["config"]["LOSS"]["W"]
        assert cfg["TRACKING.WANDB.GROUP"] == sweep_id

    # the results table (built from the pull) equals a hand computation from the store
    summary = summarize(pulled, ["LOSS.W"])
    final = store.metrics_wide(list(runs["id"])).sort_values("epoch").groupby("run_id").last()
    final["w"] = [store.run(r)["config"]["LOSS"]["W"] for r in final.index]
    for w, frame in final.groupby("w"):
        row = summary[(summary["at"] == "final") & (summary["LOSS.W"] == w)].iloc[0]
        assert math.isclose(row["core/val_chain_acc mean"], frame["core/val_chain_acc"].mean(), rel_tol=1e-9)
        assert math.isclose(row["core/val_chain_acc std"], frame["core/val_chain_acc"].std(), rel_tol=1e-9)


@pytest.mark.ray
def test_failing_trial_is_reported_and_others_finish(ray_local, tmp_path):
    good = tmp_path / "good.csv"
    rng = np.random.default_rng(1)
    n = 300
    fam = rng.integers(0, 2, n)
    gen = fam * 2 + rng.integers(0, 2, n)
    pd.DataFrame({"family": [f"f{f}" for f in fam], "genus": [f"g{g}" for g in gen],
                  "x1": gen + rng.normal(0, 0.3, n), "x2": fam + rng.normal(0, 0.3, n)}).to_csv(good, index=False)
    base = Config.from_dict(tiny_base(tmp_path)).with_overrides(
        {"DATA.NAME": "file", "DATA.PATH": str(good), "DATA.RANKS": ["family", "genus"], "TRAIN.EPOCHS": 2}).to_dict()
    missing = str(tmp_path / "missing.csv")
    spec = SweepSpec(base=base, grid={"DATA.PATH": [str(good), missing], "w": [0.3]})
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp_path / "rr"), verbose=0)
    sweep_id, grid = run_sweep(spec, settings)
    errors = [r for r in grid if r.error is not None]
    assert len(grid) == 2 and len(errors) == 1
    store = RunStore(settings.store_path)
    runs = store.runs(sweep_id=sweep_id).set_index("id")
    assert sorted(runs["status"]) == ["failed", "finished"]
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert "missing.csv" in failed["error"] and "file not found" in failed["error"]
    ok_id = runs.index[runs["status"] == "finished"][0]
    assert store.last_epoch(ok_id) == 1


@pytest.mark.ray
def test_killed_trial_is_retried_from_its_checkpoint(ray_local, tmp_path):
    """SIGKILL a trial's worker process mid-run: with --max-failures 1 Tune restarts it from its last
    checkpoint, and the store ends with every epoch exactly once."""
    import os
    import signal
    import sqlite3
    import threading
    import time

    base = Config.from_dict(tiny_base(tmp_path)).with_overrides(
        {"TRAIN.EPOCHS": 6, "DATA.SYNTHETIC.N": 3000}).to_dict()
    spec = SweepSpec(base=base, grid={"w": [0.5]})
    results = tmp_path / "rr"
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(results), max_failures=1, verbose=0)
    killed: list[int] = []

    def kill_after_two_epochs():
        """Watch the driver's store (the trial has none): the trial reported its pid with its first epoch."""
        deadline = time.time() + 180
        db = Path(settings.store_path)
        while time.time() < deadline and not killed:
            if db.is_file():
                try:
                    con = sqlite3.connect(db, timeout=1)
                    row = con.execute("SELECT pid, epochs_done FROM runs").fetchone()
                    con.close()
                except sqlite3.Error:
                    row = None
                if row and row[0] and row[1] >= 2:
                    os.kill(int(row[0]), signal.SIGKILL)
                    killed.append(int(row[0]))
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_two_epochs, daemon=True)
    killer.start()
    sweep_id, grid = run_sweep(spec, settings)
    killer.join(timeout=5)
    assert killed, "the trial was never killed"
    assert len(grid) == 1 and grid[0].error is None
    store = RunStore(settings.store_path)
    run_id = store.runs(sweep_id=sweep_id)["id"].iloc[0]
    assert store.run(run_id)["status"] == "finished"
    assert store.metrics(run_id, keys=["core/val_chain_acc"])["epoch"].tolist() == list(range(6))

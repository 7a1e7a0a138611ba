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
    assert main(["runs", "--store", str(tmp_path / "empty.db")]) == 0
    assert "no runs" in capsys.readouterr().out


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
    res = cli("resume", "no-such-run", "--store", tmp_path / "runs" / "w.db")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "no-such-run" in res.stderr

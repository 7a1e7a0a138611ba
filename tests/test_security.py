"""Security defaults: loopback binding, safe loading of checkpoints and YAML, no secrets written down."""

from __future__ import annotations

import os
import pickle
import tomllib
from pathlib import Path

import pytest
import torch

from workbench.config import Config, ConfigError
from workbench.trainer import Trainer, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_streamlit_binds_loopback_and_limits_uploads():
    conf = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"
    assert 0 < conf["server"]["maxUploadSize"] <= 200
    assert "--server.address 127.0.0.1" in (REPO / "Makefile").read_text()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 1


def test_yaml_with_python_tags_is_rejected(tmp_path):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("LOSS: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(cfg)


def test_wandb_api_key_is_never_written(tmp_path, monkeypatch):
    secret = "wbsecret" + "9" * 32
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = Config.from_dict({
        "DATA": {"NAME": "synthetic", "SYNTHETIC": {"N": 300, "NUM_FEATURES": 4, "BRANCHING": [2, 2], "NULL_RATES": [0, 0.2]}},
        "MODEL": {"HIDDEN": [8]}, "TRAIN": {"EPOCHS": 1, "NUM_THREADS": 1},
        "TRACKING": {"STORE": str(tmp_path / "runs" / "w.db"), "WANDB": {"ENABLED": True, "DIR": str(tmp_path / "wb")}},
    })
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and any(p.name == "w.db" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), f"the API key was written to {path}"

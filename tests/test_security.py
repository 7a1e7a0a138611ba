"""Security defaults: loopback binding, safe loading of checkpoints and YAML, no secrets written down, and
user text (run names, errors) shown in the app as text, never as Markdown."""

from __future__ import annotations

import pickle
import re
import tomllib
from pathlib import Path

import pytest
import torch

from workbench.config import Config, ConfigError
from workbench.store import StoreError
from workbench.trainer import Trainer, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_streamlit_binds_loopback_and_limits_uploads():
    conf = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"
    assert 0 < conf["server"]["maxUploadSize"] <= 200
    # `make run` takes its server settings from that file: it must not bind another address
    addresses = re.findall(r"--server\.address[ =](\S+)", (REPO / "Makefile").read_text())
    assert set(addresses) <= {"127.0.0.1"}, addresses


class Exploit:
    """A pickle that, if unpickled by a plain ``pickle.load``, creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _unsafe_torch_load(f):
    return torch.load(f, weights_only=False)


@pytest.mark.parametrize("save, unsafe_load", [(pickle.dump, pickle.load), (torch.save, _unsafe_torch_load)],
                         ids=["pickle", "torch-save"])
def test_checkpoint_loading_refuses_pickled_code(tmp_path, save, unsafe_load):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        save({"model": Exploit(marker)}, f)
    with pytest.raises(StoreError) as e:
        load_checkpoint(path)
    assert not marker.exists(), "the pickled code ran"
    assert str(e.value) == (
        f"{path}: not a workbench checkpoint: it holds objects other than tensors and plain data (refused without "
        "loading them: that could run code); a checkpoint is a file the trainer wrote (torch.save of a dict with "
        "keys model, taxonomy)")
    with open(path, "rb") as f:  # control: the file really is an exploit
        unsafe_load(f)
    assert marker.exists()
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt", ("model", "epoch"))["epoch"] == 1


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


# ---------------------------------------------------------------------- user text in the app is text
EVIL_NAME = "![x](http://example.invalid/p.png) [link](http://example.invalid) <img src=x> :red[red] $x$"


def _rendered(text: str) -> str:
    """Markdown as HTML, as a CommonMark renderer makes it (Streamlit's renders the same constructs)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").render(text)


def _markdown_bodies(at) -> list[str]:
    """The source of every element Streamlit renders as Markdown, on the page and in the sidebar."""
    kinds = ("markdown", "caption", "success", "info", "warning", "error", "title", "header", "subheader")
    return [str(el.value) for kind in kinds for el in at.get(kind)]


def test_run_names_and_errors_render_as_text_in_the_app(tmp_path, monkeypatch):
    """A run named with Markdown (an image a viewer's browser would fetch, a link) shows those characters:
    no <img> and no <a> in any Markdown element of the Train and Runs pages."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from workbench.store import RunStore

    db = tmp_path / "runs" / "workbench.db"
    monkeypatch.setenv("WORKBENCH_STORE", str(db))
    store = RunStore(db)
    cfg = Config().with_overrides({"DATA.SYNTHETIC.N": 300, "TRACKING.STORE": str(db)}).to_dict()
    rid = store.create_run(cfg, name=EVIL_NAME, run_id="evil-run", status="failed")
    store.update_run(rid, error="ValueError: ![y](http://example.invalid/q.png)")
    metrics = {"core/val_chain_acc": 0.5, "core/val_partial_chain_acc": 0.6, "core/val_loss": 1.0,
               "core/train_loss": 1.1, "val/acc/level0": 0.7}
    store.write_epoch(rid, 0, metrics, health={"bad": "![z](http://example.invalid/r.png)"})

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.run()
    pages = {}
    for page in ("train", "runs"):
        at.switch_page(f"app_pages/{page}.py")
        at.session_state["tr_watch"] = rid
        at.run()
        assert not at.exception, at.exception
        pages[page] = _markdown_bodies(at)
    bodies = [b for page in pages.values() for b in page]
    assert any(EVIL_NAME.split(" ")[0] in _rendered(b) for b in pages["train"]), "the name is shown, as text"
    for body in bodies:
        html = _rendered(body)
        assert "<img" not in html and "<a " not in html, f"{body!r} renders as {html!r}"
        assert ":red[" not in body.replace("\\:red\\[", ""), body

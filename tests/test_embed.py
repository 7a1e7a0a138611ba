"""Frozen embeddings (issue 15 item 3): ``python -m workbench embed`` over a real PNG tree made here, with the
weights of a real 1-epoch run; the file then trains through ``python -m workbench train``; an interrupted embed
goes on from its finished parts; bad inputs are one-line errors; the Data page's Embed expander (AppTest)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_models_images import write_tree

from workbench import cli
from workbench.bundle import run_bundle
from workbench.config import Config
from workbench.data import DataError, load_dataset, split_dataset
from workbench.embed import (
    EMBED_PREFIX, FINGERPRINT_FILE, embed_dataset, parts_folder, part_name, read_info, run_embedding,
)
from workbench.models import save_backbone
from workbench.predict import Predictor
from workbench.store import RunStore
from workbench.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RANKS = ["half", "quad"]
PER_CLASS = 12  # 4 classes x 12 = 48 real 16x16 PNGs


def image_config(root: Path, tmp: Path, **overrides) -> Config:
    base = {"DATA.NAME": "images", "DATA.PATH": str(root), "DATA.RANKS": RANKS, "DATA.IMAGE_SIZE": 16,
            "DATA.CACHE_DIR": str(tmp / "cache"), "MODEL.BACKBONE": "resnet", "MODEL.WIDTH": 4,
            "TRAIN.EPOCHS": 1, "TRAIN.BATCH_SIZE": 16, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
            "TRACKING.STORE": str(tmp / "runs" / "w.db"), "TRACKING.CURVES": "last_epoch"}
    return Config().with_overrides({**base, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PNG tree and a finished 1-epoch resnet run on it: ``(root, tmp, config, run id, trainer)``."""
    tmp = tmp_path_factory.mktemp("embed")
    root = tmp / "tree"
    write_tree(root, per_class=PER_CLASS)
    cfg = image_config(root, tmp)
    trainer = Trainer(cfg, progress=False)
    assert trainer.fit() == "finished"
    return root, tmp, cfg, trainer.run_id, trainer


def embed_config(trained, **overrides) -> Config:
    root, tmp, cfg, run_id, _ = trained
    return cfg.with_overrides({"TRAIN.INIT_FROM": run_id, **overrides})


def embeddings(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith(EMBED_PREFIX)]].to_numpy()


# ---------------------------------------------------------------------- embed -> train
def test_embed_then_train_round_trip(trained, tmp_path, capsys):
    root, tmp, cfg, run_id, trainer = trained
    config_path = tmp_path / "embed.yaml"
    cfg.save(config_path)
    out = tmp_path / "feats.parquet"
    rc = cli.main(["embed", "--config", str(config_path), "--out", str(out), "--set", f"TRAIN.INIT_FROM={run_id}",
                   "--batch-size", "16", "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert f"embedded {4 * PER_CLASS} images into 16 dimensions with run {run_id}" in printed.out
    assert "DATA.FEATURE_PREFIX: emb_" in printed.out and "DATA.SPLIT_COLUMN: split" in printed.out
    assert not parts_folder(out).exists()  # the parts are gone once the file is whole

    frame = pd.read_parquet(out)
    d = 16  # the resnet's 4 * MODEL.WIDTH
    assert list(frame.columns) == [f"emb_{j}" for j in range(d)] + RANKS + ["split", "source"]  # no group column
    assert (frame.dtypes.iloc[:d] == np.float32).all()
    info = read_info(out)
    assert info["rows"] == len(frame) == 4 * PER_CLASS and info["dim"] == d and info["ranks"] == RANKS

    # the embeddings are the run's model.embed (its selected weights) of the same images, row by row
    ds = load_dataset(cfg.DATA)
    assert list(frame["source"]) == ds.image_paths
    model = Predictor.from_bundle(run_bundle(RunStore(cfg.TRACKING.STORE), run_id)).model
    with torch.no_grad():
        want = model.embed(ds.features).numpy()  # (N, D)
    np.testing.assert_allclose(embeddings(frame), want, rtol=1e-5, atol=1e-5)
    assert list(frame["quad"]) == [Path(p).parts[1] for p in ds.image_paths]
    # the split is the one training on the images uses
    train, val, test = split_dataset(ds, cfg.DATA.VAL_FRACTION, cfg.DATA.TEST_FRACTION, cfg.DATA.SEED)
    for name, part in (("train", train), ("val", val), ("test", test)):
        assert sorted(frame.loc[frame["split"] == name, "source"]) == sorted(part.image_paths), name

    # MODEL.PRETRAINED with the same backbone's weights gives the same numbers (same training-split statistics)
    weights = tmp_path / "backbone.pt"
    save_backbone(trainer.model, weights)
    same = embed_dataset(cfg.with_overrides({"MODEL.PRETRAINED": str(weights)}), tmp_path / "pre.parquet",
                         progress=False)
    np.testing.assert_allclose(embeddings(pd.read_parquet(same)), embeddings(frame), rtol=1e-5, atol=1e-5)

    # the file trains through the CLI as a table, on the same split
    store = tmp_path / "runs" / "table.db"
    res = subprocess.run(
        [sys.executable, "-m", "workbench", "train", "--config", str(config_path), "--no-progress",
         "--set", "DATA.NAME=file", "--set", f"DATA.PATH={out}", "--set", "DATA.FEATURE_PREFIX=emb_",
         "--set", "DATA.SPLIT_COLUMN=split", "--set", "DATA.IMAGE_SIZE=null", "--set", "MODEL.BACKBONE=mlp",
         "--set", "MODEL.HIDDEN=[8]", "--set", "TRAIN.EPOCHS=2", "--set", f"TRACKING.STORE={store}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "status finished" in res.stdout and "test partial-chain acc" in res.stdout
    run = RunStore(store).runs().iloc[0]
    assert run["epochs_done"] == 2 and run["ranks"] == RANKS


# ---------------------------------------------------------------------- resuming
class Interrupted(Exception):
    """Raised from the progress callback: the run stops mid-part, as a kill would stop it."""


def test_interrupted_embed_goes_on_without_recomputing_finished_parts(trained, tmp_path):
    cfg = embed_config(trained)
    chunk, batch = 8, 4  # 48 images: 6 parts of 2 batches
    out = tmp_path / "feats.parquet"
    parts = parts_folder(out)

    def stop_in_part_4(done, total):
        if done > 3 * chunk:  # the first batch of the 4th part: 3 parts are on disk, the 4th is not
            raise Interrupted

    with pytest.raises(Interrupted):
        embed_dataset(cfg, out, progress=False, chunk=chunk, batch_size=batch, on_progress=stop_in_part_4)
    finished = [parts / part_name(k) for k in range(3)]
    assert sorted(p.name for p in parts.glob("part-*")) == [p.name for p in finished]
    assert (parts / FINGERPRINT_FILE).is_file() and not out.exists()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    (parts / f".{part_name(3)}.999999.tmp").write_bytes(b"half a part from a killed run")

    seen, during = [], {}

    def watch(done, total):
        seen.append(done)
        if not during:  # the finished parts as they are while the rerun works
            during.update({p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished})

    report = run_embedding(cfg, out, progress=False, chunk=chunk, batch_size=batch, on_progress=watch)
    assert report.reused_parts == 3 and report.parts == 6
    assert seen[0] == 3 * chunk and min(seen) == 3 * chunk and seen[-1] == 6 * chunk  # never from row 0 again
    assert during == before  # same files (inode) never rewritten (mtime)
    assert not parts.exists()

    whole = embed_dataset(cfg, tmp_path / "whole.parquet", progress=False, chunk=chunk, batch_size=batch)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(whole))
    assert out.read_bytes() == whole.read_bytes()


def test_parts_of_another_embedding_are_refused(trained, tmp_path):
    cfg = embed_config(trained)
    out = tmp_path / "feats.parquet"

    def stop(done, total):
        if done > 16:  # in the 3rd part: 2 are on disk
            raise Interrupted

    with pytest.raises(Interrupted):
        embed_dataset(cfg, out, progress=False, chunk=8, batch_size=8, on_progress=stop)
    other = cfg.with_overrides({"DATA.SEED": 7})  # another split: other rows in each part
    with pytest.raises(DataError, match=r"holds the parts of another embedding .* use another --out, or delete"):
        embed_dataset(other, out, progress=False, chunk=8, batch_size=8)
    with pytest.raises(DataError, match="another embedding"):
        embed_dataset(cfg, out, progress=False, chunk=16, batch_size=8)  # other chunking
    assert sorted(p.name for p in parts_folder(out).glob("part-*")) == [part_name(0), part_name(1)]  # untouched


# ---------------------------------------------------------------------- groups (multi-view sets)
def test_manifest_group_column_is_carried_and_never_split(trained, tmp_path):
    root, tmp, cfg, run_id, _ = trained
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    manifest = pd.DataFrame({
        "path": images, "half": [Path(p).parts[0] for p in images], "quad": [Path(p).parts[1] for p in images],
        "obs": [f"{Path(p).parts[1]}-{int(Path(p).stem) // 3}" for p in images],  # 3 views per observation
    })
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    ecfg = embed_config(trained, **{"DATA.PATH": str(tmp_path / "manifest.csv"), "DATA.ROOT": str(root),
                                    "DATA.GROUP_BY": "obs"})
    out = embed_dataset(ecfg, tmp_path / "sets.parquet", progress=False)
    frame = pd.read_parquet(out)
    assert list(frame.columns[-4:]) == ["quad", "group", "split", "source"]
    assert list(frame["group"]) == list(manifest["obs"]) and list(frame["source"]) == images
    assert (frame.groupby("group")["split"].nunique() == 1).all()  # a group is never split
    assert set(frame["split"]) == {"train", "val", "test"}
    # and the file loads as sets: one sample per observation
    sets = load_dataset(Config().with_overrides({
        "DATA.NAME": "file", "DATA.PATH": str(out), "DATA.RANKS": RANKS, "DATA.FEATURE_PREFIX": EMBED_PREFIX,
        "DATA.SPLIT_COLUMN": "split", "DATA.GROUP_BY": "group"}).DATA)
    assert len(sets) == manifest["obs"].nunique() and sets.valid.shape[1] == 3


# ---------------------------------------------------------------------- bad input
def _cli_error(tmp_path, capsys, cfg: Config, out, *sets: str) -> str:
    config_path = tmp_path / "cfg.yaml"
    cfg.save(config_path)
    args = ["embed", "--config", str(config_path), "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err  # one line, no traceback
    return lines[0]


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    root, tmp, cfg, run_id, trainer = trained
    out = tmp_path / "feats.parquet"
    table = tmp_path / "table.csv"
    pd.DataFrame({"half": ["a", "b"] * 10, "quad": ["a1", "b1"] * 10, "x": np.arange(20.0)}).to_csv(table, index=False)
    as_table = cfg.with_overrides({"DATA.NAME": "file", "DATA.PATH": str(table), "DATA.IMAGE_SIZE": None,
                                   "TRAIN.INIT_FROM": run_id})
    assert "this data is a table" in _cli_error(tmp_path, capsys, as_table, out)
    missing = _cli_error(tmp_path, capsys, cfg, out, "TRAIN.INIT_FROM=no-such-run")
    assert "`TRAIN.INIT_FROM` must be a run id in" in missing and "got 'no-such-run'" in missing
    gone = _cli_error(tmp_path, capsys, cfg, out, f"TRAIN.INIT_FROM={tmp_path / 'gone.pt'}")
    assert "no such run, file or folder" in gone
    bare = tmp_path / "bare.pt"
    save_backbone(trainer.model, bare)  # backbone weights alone: MODEL.PRETRAINED's kind of file
    assert "goes in MODEL.PRETRAINED" in _cli_error(tmp_path, capsys, cfg, out, f"TRAIN.INIT_FROM={bare}")
    assert "embed needs trained weights" in _cli_error(tmp_path, capsys, cfg, out)
    assert "--out is a folder" in _cli_error(tmp_path, capsys, cfg, tmp_path, f"TRAIN.INIT_FROM={run_id}")
    assert "must end in .parquet" in _cli_error(tmp_path, capsys, cfg, tmp_path / "f.csv", f"TRAIN.INIT_FROM={run_id}")
    bigger = _cli_error(tmp_path, capsys, cfg, out, f"TRAIN.INIT_FROM={run_id}", "DATA.IMAGE_SIZE=24")
    assert "trained on 16x16; set DATA.IMAGE_SIZE: 16" in bigger
    assert not out.exists() and not parts_folder(out).exists()
    # a bad config answers before torch is imported, as `train` does
    from test_cli import probe

    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAIN:\n  INIT_FROM: ''\n")
    assert probe("embed", "--config", bad, "--out", out)[0] == {"rc": 2, "heavy": []}


# ---------------------------------------------------------------------- timm / torchvision (where they import)
@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_vision_backbone_embeds_from_local_weights(library, trained, tmp_path):
    try:
        importlib.import_module(library)
    except Exception as e:  # noqa: BLE001 (torchvision raises RuntimeError with the CPU torch: the skip says why)
        pytest.skip(f"{library} cannot be imported here ({type(e).__name__}); tested where it imports")
    root, tmp, cfg, run_id, _ = trained
    vcfg = cfg.with_overrides({"MODEL.BACKBONE": library, "MODEL.ARCH": "resnet18", "DATA.IMAGE_SIZE": 32})
    t = Trainer(vcfg.with_overrides({"TRACKING.STORE": str(tmp_path / "v.db")}), progress=False)
    weights = tmp_path / "vision.pt"
    save_backbone(t.model, weights)
    out = embed_dataset(vcfg.with_overrides({"MODEL.PRETRAINED": str(weights)}), tmp_path / "v.parquet", progress=False)
    t.model.eval()
    with torch.no_grad():
        want = t.model.embed(load_dataset(vcfg.DATA).features).numpy()
    np.testing.assert_allclose(embeddings(pd.read_parquet(out)), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- the Data page
def test_data_page_embed_expander_writes_the_file(trained, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    root, tmp, cfg, run_id, _ = trained
    monkeypatch.setenv("WORKBENCH_STORE", cfg.TRACKING.STORE)  # the store holding the trained image run
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp / "cache"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["d_source"] = "Image folder"
    at.session_state["d_img_from"] = "A folder on the server"
    at.run()
    at.text_input(key="d_img_path").set_value(str(root)).run()
    at.text_input(key="d_img_ranks").set_value(", ".join(RANKS)).run()
    at.number_input(key="d_img_size").set_value(16).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(e.label == "Embed these images with a trained backbone" for e in at.expander)
    assert at.selectbox(key="d_emb_run").value == run_id  # the store's image run is offered first
    out = tmp_path / "from page.parquet"
    at.text_input(key="d_emb_out").set_value(str(out)).run()
    at.button(key="d_emb_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert out.is_file() and not parts_folder(out).exists()
    assert [c.value for c in at.code if c.value == str(out)]  # the path, to copy
    assert [p.value for p in at.get("progress")][-1] == 100  # the bar reached every image
    frame = pd.read_parquet(out)
    assert len(frame) == 4 * PER_CLASS and read_info(out)["weights"].startswith(f"run {run_id}")
    # a run that is not there: the library's error, shown as text
    at.selectbox(key="d_emb_run").set_value("Another checkpoint or bundle file...").run()
    at.text_input(key="d_emb_ref").set_value(str(tmp_path / "nope [x](y).pt")).run()
    at.button(key="d_emb_go").click().run()
    assert not at.exception
    assert at.error and "no such run, file or folder" in at.error[0].value and "\\[x\\]" in at.error[0].value

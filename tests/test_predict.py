"""Predict and export (issue 14 items 4 and 5): ``python -m workbench predict`` / ``export``.

Real runs trained here (a tiny table run from a CSV file, a tiny image run from a PNG folder tree) in a
temporary store; predictions are checked against what the trainer stored (val and test accuracies at the
selected epoch), against the tau rule and the taxonomy, and across processes (export, then predict in a
fresh process with no store). Bad inputs go through ``workbench.cli.main`` as a user would: exit code 2,
one ``error: ...`` line, and the store (every row and every checkpoint file) unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_bad_input import snapshot
from test_models_images import write_tree
from workbench import names as N
from workbench.bundle import BUNDLE_KEYS, export_run, load_bundle, run_bundle
from workbench.cli import main as cli_main
from workbench.config import Config
from workbench.predict import (
    ABSTAIN, CONSISTENT, PRED, TOP, TOP_PROB, TRUE, accuracy_summary, column, predict_from, run_predictions,
)
from workbench.errors import StoreError
from workbench.store import RunStore
from workbench.taxonomy import Taxonomy
from workbench.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
RANKS = ["family", "genus"]
FEATURES = ["x0", "x1", "x2", "x3"]
RUN, IMAGE_RUN = "table-run", "image-run"


def write_table(path: Path, n: int = 360, seed: int = 0) -> Path:
    """Two families of two genera each, one Gaussian blob per genus in 4 features; a sixth of the genera null."""
    rng = np.random.default_rng(seed)
    paths = [("Felidae", "Felis"), ("Felidae", "Panthera"), ("Canidae", "Canis"), ("Canidae", "Vulpes")]
    which = rng.integers(0, len(paths), n)
    centres = rng.normal(0, 2.0, (len(paths), len(FEATURES)))
    x = centres[which] + rng.normal(0, 1.0, (n, len(FEATURES)))
    df = pd.DataFrame(x, columns=FEATURES)
    df["family"] = [paths[i][0] for i in which]
    df["genus"] = [paths[i][1] if rng.random() > 1 / 6 else "" for i in which]
    df.to_csv(path, index=False)
    return path


def _config(store: Path, **overrides) -> Config:
    return Config().with_overrides({
        "MODEL.HIDDEN": [16], "TRAIN.EPOCHS": 3, "TRAIN.BATCH_SIZE": 64, "TRAIN.NUM_THREADS": 1,
        "TRAIN.DEVICE": "cpu", "TRACKING.WANDB.ENABLED": False, "TRACKING.STORE": str(store), **overrides,
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A store folder with a 3-epoch table run (``RUN``, on ``data.csv`` beside the store) and a 1-epoch
    image run (``IMAGE_RUN``, a small ResNet on a tree of 16 px PNGs), trained once per module."""
    folder = tmp_path_factory.mktemp("predict")
    table = write_table(folder / "data.csv")
    db = folder / "runs" / "w.db"
    cfg = _config(db, **{"DATA.NAME": "file", "DATA.PATH": str(table), "DATA.RANKS": RANKS})
    assert Trainer(cfg, run_id=RUN, progress=False).fit() == "finished"
    write_tree(folder / "tree", per_class=8, size=16)
    cfg = _config(db, **{"DATA.NAME": "images", "DATA.PATH": str(folder / "tree"), "DATA.RANKS": ["half", "quad"],
                         "DATA.IMAGE_SIZE": 16, "DATA.CACHE_DIR": str(folder / "cache"), "MODEL.BACKBONE": "resnet",
                         "MODEL.WIDTH": 4, "MODEL.DEPTH": 1, "TRAIN.EPOCHS": 1, "DATA.VAL_FRACTION": 0.25,
                         "DATA.TEST_FRACTION": 0.25})
    assert Trainer(cfg, run_id=IMAGE_RUN, progress=False).fit() == "finished"
    return folder


@pytest.fixture
def db(tmp_path, trained) -> Path:
    """This test's own copy of the trained store (the data files stay where the runs' configs name them)."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    return tmp_path / "runs" / "w.db"


def _stored(db: Path, run_id: str, split: str, epoch: int) -> dict[str, float]:
    m = RunStore.open_existing(db).metrics([run_id])
    m = m[(m["epoch"] == epoch) & (m["split"] == split)]
    return dict(zip(m["key"], m["value"]))


# ---------------------------------------------------------------------- predictions = what the trainer stored
def test_split_predictions_reproduce_the_stored_val_and_test_accuracies(db):
    store = RunStore.open_existing(db)
    for split in ("val", "test"):
        frame = run_predictions(store, RUN, split)
        epoch = frame.attrs["epoch"]
        assert "best.pt" in frame.attrs["weights"]
        stored = _stored(db, RUN, split, epoch)
        for rank in RANKS:  # counts over the same samples: equal up to float32 rounding of the stored ratio
            true, pred = frame[column(TRUE, rank)], frame[column(PRED, rank)]
            labelled = true.notna()
            acc = (pred[labelled] == true[labelled]).mean()
            assert acc == pytest.approx(stored[N.rank_key(split, N.ACC, rank)], abs=1e-6), (split, rank)
            assert accuracy_summary(frame, RANKS)[rank] == acc
        # chain accuracy: every rank right, a null target needing a null prediction
        same = [frame[column(PRED, r)].fillna("-").eq(frame[column(TRUE, r)].fillna("-")) for r in RANKS]
        assert np.mean(np.logical_and(*same)) == pytest.approx(stored[N.core_key(split, "chain_acc")], abs=1e-6)
        assert frame["correct"].dropna().mean() == pytest.approx(stored[N.core_key(split, "partial_chain_acc")],
                                                                 abs=1e-6)
    # the val split is the one selection used: the selected epoch is where SELECT_BY is best
    best = store.metrics([RUN], [N.SELECT_BY_DEFAULT])
    assert epoch == int(best.loc[best["value"].idxmax(), "epoch"])


def test_frame_columns_abstain_at_tau_and_consistent_paths(db, trained):
    frame = predict_from(RUN, db, data=trained / "data.csv", top_k=2, consistent=True, progress=False)
    tau, taxonomy = frame.attrs["tau"], Taxonomy.from_dict(run_bundle(RunStore.open_existing(db), RUN)["taxonomy"])
    assert len(frame) == 360 and frame["sample"].tolist() == list(range(360))
    assert frame["source"].iloc[0] == "data.csv row 2"
    for rank in RANKS:
        top, top_prob, abstain = frame[column(TOP, rank)], frame[column(TOP_PROB, rank)], frame[column(ABSTAIN, rank)]
        assert all(len(t) == 2 and p[0] >= p[1] for t, p in zip(top, top_prob))
        # 3.4's rule: the most probable real class when its probability reaches the run's tau, else null
        expected = [t[0] if p[0] >= tau[rank] else None for t, p in zip(top, top_prob)]
        assert abstain.tolist() == expected
    # a consistent path: each non-null class's parent is the class above it, and null continues down
    for fam, gen in zip(frame[column(CONSISTENT, "family")], frame[column(CONSISTENT, "genus")]):
        if gen is not None:
            g = taxonomy.vocab[1].index(gen)
            assert fam is not None and taxonomy.vocab[0][int(taxonomy.parents[1][g])] == fam
    # the truth columns: a right prediction has severity 0, a wrong one a positive LCA height
    labelled = frame["true_path"] != ""
    assert (frame.loc[labelled & frame["correct"].astype(bool), "severity"] == 0).all()
    assert (frame.loc[labelled & ~frame["correct"].astype(bool), "severity"] > 0).all()
    assert frame["confidence"].between(0, 1).all()


def test_export_then_predict_in_a_fresh_process_without_a_store(db, trained, tmp_path, capsys):
    before = snapshot(db)
    assert cli_main(["export", RUN, "--store", str(db), "--out", str(tmp_path / "bundles")]) == 0
    bundle = tmp_path / "bundles" / f"{RUN}.pt"
    assert f"-> {bundle}" in capsys.readouterr().out
    assert snapshot(db) == before  # export only reads
    state = torch.load(bundle, map_location="cpu", weights_only=True)  # plain data and tensors only
    assert set(BUNDLE_KEYS) <= set(state) and state["run_id"] == RUN and state["input"]["feature_names"] == FEATURES
    assert sorted(state["tau"]) == sorted(RANKS) and state["versions"]["torch"] == torch.__version__
    assert load_bundle(bundle)["epoch"] == state["epoch"]
    del state["tau"]
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(StoreError, match=r"damaged\.pt: damaged bundle: no 'tau' in it; export one with"):
        load_bundle(tmp_path / "damaged.pt")
    expected = predict_from(RUN, db, data=trained / "data.csv", consistent=True, progress=False)

    missing = tmp_path / "nowhere" / "w.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), N.STORE_ENV: str(missing), "WANDB_MODE": "disabled"}
    out = tmp_path / "preds.parquet"
    res = subprocess.run([sys.executable, "-m", "workbench", "predict", str(bundle), "--store", str(missing),
                          "--data", str(trained / "data.csv"), "--out", str(out), "--consistent", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "partial-chain acc" in res.stdout and not missing.parent.exists()
    got = pd.read_parquet(out)
    assert list(got.columns) == list(expected.columns)
    plain = [c for c in expected if not c.startswith("top")]
    # Parquet reads a column of names back as pandas' string dtype (NaN for a null): compare as objects
    pd.testing.assert_frame_equal(_as_objects(got[plain]), _as_objects(expected[plain]))
    for c in (c for c in expected if c.startswith("top")):
        assert [list(v) for v in got[c]] == [list(v) for v in expected[c]], c


def _as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as objects with None for a missing value (so string dtypes and object columns compare)."""
    return frame.astype(object).where(frame.notna(), None)


def test_csv_output_joins_list_cells(db, trained, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert cli_main(["predict", RUN, "--store", str(db), "--split", "val", "--out", str(out), "--top-k", "2",
                     "--no-progress"]) == 0
    assert "val split" in capsys.readouterr().out
    df = pd.read_csv(out, keep_default_na=False)
    assert all(len(cell.split("|")) == 2 for cell in df[column(TOP, "genus")])
    assert {column(TRUE, "genus"), column(PRED, "genus"), "true_path", "pred_path", "severity"} <= set(df.columns)


def test_image_run_predicts_a_folder_with_truth_from_its_rank_folders(db, trained):
    frame = predict_from(IMAGE_RUN, db, data=trained / "tree", progress=False)
    assert len(frame) == 32 and frame["source"].iloc[0] == "bottom/q2/000.png"
    assert frame[column(TRUE, "quad")].iloc[0] == "q2" and frame["true_path"].iloc[0] == "bottom > q2"
    split = run_predictions(RunStore.open_existing(db), IMAGE_RUN, "val")
    stored = _stored(db, IMAGE_RUN, "val", split.attrs["epoch"])
    assert accuracy_summary(split, ["half", "quad"])["quad"] == pytest.approx(stored["val/acc/quad"], abs=1e-6)


# ---------------------------------------------------------------------- bad inputs: one clear line, store unchanged
def _bad_table(tmp_path: Path, trained: Path, edit) -> Path:
    df = pd.read_csv(trained / "data.csv", keep_default_na=False)
    path = tmp_path / "bad.csv"
    edit(df).to_csv(path, index=False)
    return path


def _other_taxonomy_bundle(db: Path, tmp_path: Path) -> Path:
    """A bundle of a run whose data had another genus ("Lynx" for "Felis"): what a bundle of another taxonomy is."""
    _, bundle = export_run(RunStore.open_existing(db), RUN, tmp_path / "orig.pt")
    vocab = bundle["taxonomy"]["vocab"][1]
    vocab[vocab.index("Felis")] = "Lynx"
    path = tmp_path / "other.pt"
    torch.save(bundle, path)
    return path


BAD = {
    "unknown run": (lambda db, tmp, tr: ["predict", "nope", "--store", str(db), "--split", "val"],
                    lambda db, tmp, tr: f"{db}: no run with id 'nope'"),
    "unknown run (export)": (lambda db, tmp, tr: ["export", "nope", "--store", str(db)],
                             lambda db, tmp, tr: f"{db}: no run with id 'nope'"),
    "missing store": (lambda db, tmp, tr: ["predict", RUN, "--store", str(tmp / "none.db"), "--split", "val"],
                      lambda db, tmp, tr: f"{tmp / 'none.db'}: no run store here (file not found); check the path "
                                          "(a store is created by the first `train`)"),
    "bundle of another taxonomy": (
        lambda db, tmp, tr: ["predict", str(_other_taxonomy_bundle(db, tmp)), "--split", "val"],
        lambda db, tmp, tr: f"run {RUN}: its data ({tr / 'data.csv'}) no longer matches the model: the taxonomy "
                            "changed (rank 'genus': 4 classes in the checkpoint vs 4 here; e.g. ['Lynx'] only in the "
                            "checkpoint); predict new data with --data"),
    "missing feature columns": (
        lambda db, tmp, tr: ["predict", RUN, "--store", str(db), "--data",
                             str(_bad_table(tmp, tr, lambda df: df.drop(columns=["x1", "x3"])))],
        lambda db, tmp, tr: f"{tmp / 'bad.csv'}: 2 feature column(s) the model was trained on not found: 'x1', 'x3'; "
                            f"it needs all 4: ['x0', 'x1', 'x2', 'x3']; columns here are "
                            f"['x0', 'x2', 'family', 'genus']"),
    "empty file": (lambda db, tmp, tr: ["predict", RUN, "--store", str(db), "--data", str(_empty(tmp))],
                   lambda db, tmp, tr: f"{tmp / 'empty.csv'}: file is empty"),
    "unknown class in a truth column": (
        lambda db, tmp, tr: ["predict", RUN, "--store", str(db), "--data",
                             str(_bad_table(tmp, tr, lambda df: df.assign(genus=["Canis"] * 4 + ["Lupus"] +
                                                                          list(df["genus"][5:]))))],
        lambda db, tmp, tr: f"{tmp / 'bad.csv'}: row 6 (spreadsheet row numbers, header = row 1): genus 'Lupus' is "
                            "not in the vocabulary of rank 'genus' (4 classes); the model predicts only the classes it "
                            "was trained on"),
    "unreadable image": (lambda db, tmp, tr: ["predict", IMAGE_RUN, "--store", str(db), "--data", str(_bad_tree(tmp, tr))],
                         lambda db, tmp, tr: f"{tmp / 'tree'}: 1 image(s) could not be read as images: "
                                             f"{tmp / 'tree' / 'top' / 'q0' / 'broken.png'}; fix or remove them "
                                             "(predict scores every image or none)"),
    "wrong output suffix": (lambda db, tmp, tr: ["predict", RUN, "--store", str(db), "--split", "val", "--out",
                                                 str(tmp / "p.xlsx")],
                            lambda db, tmp, tr: f"{tmp / 'p.xlsx'}: the predictions file must end in .parquet, .pq, "
                                                ".csv, got '.xlsx'"),
}


def _empty(tmp: Path) -> Path:
    (tmp / "empty.csv").write_text("")
    return tmp / "empty.csv"


def _bad_tree(tmp: Path, trained: Path) -> Path:
    shutil.copytree(trained / "tree", tmp / "tree")
    (tmp / "tree" / "top" / "q0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp / "tree"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line_and_the_store_is_unchanged(case, db, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    args, expected = BAD[case]
    argv = args(db, tmp_path, trained)
    if "--out" not in argv and argv[0] == "predict":
        argv += ["--out", str(tmp_path / "p.parquet")]
    if argv[0] == "export":
        argv += ["--out", str(tmp_path / "out")]
    before = snapshot(db)
    rc = cli_main([*argv, *(["--no-progress"] if argv[0] == "predict" else [])])
    err = capsys.readouterr().err
    assert "Traceback" not in err and rc == 2, err
    assert err == f"error: {expected(db, tmp_path, trained)}\n"
    assert snapshot(db) == before
    assert not (tmp_path / "p.parquet").exists() and not (tmp_path / "out").exists()


def test_export_of_a_run_without_weights_and_a_bundle_that_is_a_checkpoint(db, tmp_path, capsys):
    store = RunStore(db)
    store.create_run(Config().to_dict(), run_id="queued-run", status="queued")
    assert cli_main(["export", "queued-run", "--store", str(db), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {db}: run 'queued-run' has no weights to use (it has not finished an epoch yet;")
    ckpt = store.checkpoint_path(RUN)
    assert cli_main(["predict", str(ckpt), "--split", "val", "--out", str(tmp_path / "p.parquet")]) == 2
    assert capsys.readouterr().err == (
        f"error: {ckpt}: not a workbench bundle: no 'format' in it (a run's checkpoint, not an exported bundle); "
        f"export one with `python -m workbench export RUN_ID --out {ckpt.parent}`\n")


def test_a_run_without_best_pt_falls_back_to_its_last_checkpoint_with_a_note(db):
    store = RunStore.open_existing(db)
    (store.run_folder(RUN) / N.BEST_CHECKPOINT_NAME).unlink()
    frame = run_predictions(store, RUN, "val")
    last = store.last_epoch(RUN)
    assert frame.attrs["epoch"] == last and frame.attrs["weights"].startswith(f"checkpoint.pt: epoch {last + 1}, ")
    stored = _stored(db, RUN, "val", last)
    assert frame.attrs["tau"] == {rank: pytest.approx(stored[N.best_tau(rank)]) for rank in RANKS}
    assert accuracy_summary(frame, RANKS)["genus"] == pytest.approx(stored["val/acc/genus"], abs=1e-6)

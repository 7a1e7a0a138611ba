"""Sets (DESIGN.md 3.8): rows grouped by `DATA.GROUP_BY` into padded `(N, S, F)` sets with a `valid` mask, through
the file loader (CSV files written here) and the built-in `ratdat_sets`; padding never changes an output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.config import Config, ConfigError
from workbench.data import DataError, DataWarning, dataset_hash, load_dataset, load_table, split_dataset
from workbench.models import build_model
from workbench.sets import group_into_sets
from workbench.store import RunStore

REPO = Path(__file__).resolve().parents[1]
RANKS = ["genus", "species"]


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def observations(groups: dict, seed: int = 0) -> list[dict]:
    """Rows of a sightings table: ``groups`` maps a group id to ``(n rows, genus, species)``; two numeric features
    per row, and the group id is numeric too (it must never become a feature)."""
    rng = np.random.default_rng(seed)
    rows = []
    for gid, (n, genus, species) in groups.items():
        for _ in range(n):
            rows.append({"obs": gid, "x_len": round(float(rng.normal()), 4), "x_mass": round(float(rng.normal()), 4),
                         "genus": genus, "species": species})
    return rows


def data_config(path: Path, **extra) -> Config:
    return Config().with_overrides({"DATA.NAME": "file", "DATA.PATH": str(path), "DATA.RANKS": RANKS,
                                    "DATA.GROUP_BY": "obs", **extra})


# ---------------------------------------------------------------------- padding through the loader
def test_more_padding_never_changes_a_sets_outputs(tmp_path):
    base = {7: (3, "Canis", "Canis lupus"), 3: (2, "Vulpes", "Vulpes vulpes"), 9: (1, "Canis", "Canis latrans")}
    small = write_csv(tmp_path / "small.csv", observations(base))
    # the same rows plus a group of 6: every other set now gets more padding slots
    grown_rows = observations(base) + observations({11: (6, "Vulpes", "Vulpes vulpes")}, seed=1)
    grown = write_csv(tmp_path / "grown.csv", grown_rows)
    a, b = load_dataset(data_config(small).DATA), load_dataset(data_config(grown).DATA)

    assert a.feature_names == b.feature_names == ["x_len", "x_mass"]  # the numeric group id is not a feature
    assert tuple(a.features.shape) == (3, 3, 2) and tuple(b.features.shape) == (4, 6, 2)
    assert a.set_groups == [7, 3, 9] and b.set_groups == [7, 3, 9, 11]  # order of first appearance
    # polarity: True = a real element, real elements first, in the file's order
    assert b.valid[:3].tolist() == [[True] * 3 + [False] * 3, [True] * 2 + [False] * 4, [True] + [False] * 5]
    assert torch.equal(b.features[0, :3], torch.tensor([[r["x_len"], r["x_mass"]] for r in grown_rows[:3]]))
    assert float(b.features[~b.valid].abs().sum()) == 0.0
    assert a.taxonomy == b.taxonomy

    torch.manual_seed(0)
    model = build_model("set_attention", [16, 8], "independent", 2, a.taxonomy, dropout=0.1).eval()
    with torch.no_grad():
        out_a = model(a.features, a.valid)
        out_b = model(b.features, b.valid)
    for la, lb in zip(out_a, out_b):  # R x (N, K_r + 1)
        assert torch.allclose(la, lb[:3], atol=1e-6)
    # and the padding is really ignored, not merely equal by luck: garbage in the padded slots changes nothing
    noisy = b.features.clone()
    noisy[~b.valid] = 1e3
    with torch.no_grad():
        for lb, ln in zip(out_b, model(noisy, b.valid)):
            assert torch.allclose(lb, ln, atol=1e-5)
    # the content hash covers the mask: the same features with one more real element are other data
    flipped = b.subset(torch.arange(4))
    flipped.valid = b.valid.clone()
    flipped.valid[2, 1] = True
    assert dataset_hash(flipped) != dataset_hash(b)


# ---------------------------------------------------------------------- labels must agree within a group
def test_label_conflict_names_the_group_the_rows_and_the_values(tmp_path):
    rows = observations({"obs-1": (2, "Canis", "Canis lupus"), "obs-7": (3, "Canis", "Canis lupus"),
                         "obs-9": (2, "Vulpes", "Vulpes vulpes")})
    rows[2]["obs"] = rows[3]["obs"] = rows[4]["obs"] = "obs-7"
    rows[4]["species"] = "Canis latrans"  # spreadsheet row 6 (header = row 1)
    rows[6]["species"] = None  # obs-9: an empty label against a real one also disagrees
    path = write_csv(tmp_path / "conflict.csv", rows)
    with pytest.raises(DataError) as e:
        load_table(path, RANKS, group_by="obs")
    msg = str(e.value)
    assert str(path) in msg and "group 'obs-7'" in msg and "DATA.GROUP_BY column 'obs'" in msg
    assert "column 'species': 'Canis lupus' in rows 4, 5; 'Canis latrans' in row 6" in msg
    assert "spreadsheet row numbers, header = row 1" in msg
    assert "1 more group(s) disagree: 'obs-9'" in msg

    rows[4]["species"] = "Canis lupus"
    with pytest.raises(DataError, match=r"group 'obs-9'.*'Vulpes vulpes' in row 7; an empty cell in row 8"):
        load_table(write_csv(tmp_path / "null.csv", rows), RANKS, group_by="obs")
    # labels compare as the taxonomy reads them: "sp." and an empty cell are both null, spaces are stripped
    rows[5]["species"], rows[1]["species"] = "sp.", "Canis lupus "
    ds = load_table(write_csv(tmp_path / "nulls.csv", rows), RANKS, group_by="obs")
    assert ds.targets[:, 1].tolist()[2] == 0 and ds.taxonomy.vocab[1][ds.targets[0, 1]] == "Canis lupus"


def test_empty_group_id_is_an_error_naming_the_rows(tmp_path):
    rows = observations({"a": (2, "Canis", "Canis lupus"), "b": (3, "Vulpes", "Vulpes vulpes")})
    rows[1]["obs"], rows[3]["obs"] = None, "   "
    path = write_csv(tmp_path / "empty.csv", rows)
    with pytest.raises(DataError, match=r"column 'obs' \(DATA.GROUP_BY\) is empty in rows 3, 5 \(spreadsheet row"):
        load_table(path, RANKS, group_by="obs")
    with pytest.raises(DataError, match=r"column\(s\) \['group'\] not found"):
        load_table(path, RANKS, group_by="group")
    with pytest.raises(DataError, match=r"group column 'genus' \(DATA.GROUP_BY\) is also a rank"):
        load_table(path, RANKS, group_by="genus")


# ---------------------------------------------------------------------- MAX_SET_SIZE
def test_max_set_size_keeps_a_seeded_subsample_and_reports_the_cut(tmp_path):
    rows = observations({1: (10, "Canis", "Canis lupus"), 2: (3, "Vulpes", "Vulpes vulpes"),
                         3: (6, "Canis", "Canis latrans"), 4: (2, "Canis", "Canis lupus")})
    for i, r in enumerate(rows):
        r["x_len"] = float(i)  # each element says which row it came from
    path = write_csv(tmp_path / "long.csv", rows)

    def kept(seed: int) -> tuple[list[list[int]], object]:
        with pytest.warns(DataWarning, match="2 of 4 groups have more than DATA.MAX_SET_SIZE=4"):
            ds = load_dataset(data_config(path, **{"DATA.MAX_SET_SIZE": 4, "DATA.SEED": seed}).DATA)
        return [ds.features[g, ds.valid[g], 0].long().tolist() for g in range(len(ds))], ds

    first, ds = kept(0)
    assert kept(0)[0] == first  # same seed, same rows
    assert tuple(ds.features.shape) == (4, 4, 2) and ds.set_cut == 2
    assert first[1] == [10, 11, 12] and first[3] == [19, 20]  # short groups are whole
    for g, rows_of in ((0, range(0, 10)), (2, range(13, 19))):
        assert len(first[g]) == 4 and set(first[g]) <= set(rows_of)
        assert first[g] == sorted(first[g])  # the kept rows keep their order
    assert "2 group(s) cut to DATA.MAX_SET_SIZE" in ds.describe() and ds.set_summary()["cut"] == 2
    assert any(kept(seed)[0] != first for seed in (1, 2, 3))  # the seed draws the subsample
    # a group keeps its rows when other groups change (the draw is seeded by the group id, not its position)
    alone = group_into_sets(np.arange(10, dtype=np.float32)[:, None], pd.DataFrame({"species": ["x"] * 10}),
                            [1] * 10, 4, 0)
    assert alone.features[0, :, 0].long().tolist() == first[0] and alone.cut == 1
    assert alone.rows[0].tolist() == first[0]


# ---------------------------------------------------------------------- split column per group
def test_split_column_must_agree_within_a_group_and_splits_by_group(tmp_path):
    groups = {f"g{i}": (1 + i % 3, "Canis" if i % 2 else "Vulpes", "Canis lupus" if i % 2 else "Vulpes vulpes")
              for i in range(12)}
    rows = observations(groups)
    split_of = {g: ("train", "train", "val", "test")[i % 4] for i, g in enumerate(groups)}
    for r in rows:
        r["part"] = split_of[r["obs"]]
    good = load_dataset(data_config(write_csv(tmp_path / "split.csv", rows), **{"DATA.SPLIT_COLUMN": "part"}).DATA)
    assert "part" not in good.feature_names
    train, val, test = split_dataset(good, 0.25, 0.25, 0)  # the fixed split's own fractions (6 / 3 / 3 sets)
    assert [sorted(p.set_groups) for p in (val, test)] == [sorted(g for g, s in split_of.items() if s == name)
                                                           for name in ("val", "test")]
    assert torch.equal(val.valid, good.valid[[good.set_groups.index(g) for g in val.set_groups]])

    g4 = [i for i, r in enumerate(rows) if r["obs"] == "g5"]  # 3 rows
    rows[g4[1]]["part"] = "val"
    with pytest.raises(DataError) as e:
        load_table(write_csv(tmp_path / "bad.csv", rows), RANKS, split_column="part", group_by="obs")
    msg = str(e.value)
    assert "group 'g5'" in msg and "split (DATA.SPLIT_COLUMN) disagree" in msg
    assert f"'train' in rows {g4[0] + 2}, {g4[2] + 2}; 'val' in row {g4[1] + 2}" in msg


def test_group_config_keys_are_checked():
    with pytest.raises(ConfigError, match=r"`DATA.GROUP_BY` applies only when NAME is 'file' or 'images'"):
        Config().with_overrides({"DATA.NAME": "ratdat", "DATA.GROUP_BY": "plot_id"})
    with pytest.raises(ConfigError, match=r"`DATA.MAX_SET_SIZE` applies only to set data"):
        Config().with_overrides({"DATA.NAME": "olive", "DATA.MAX_SET_SIZE": 4})
    with pytest.raises(ConfigError, match=r"`DATA.MAX_SET_SIZE` must be >= 1, got 0"):
        Config().with_overrides({"DATA.NAME": "ratdat_sets", "DATA.MAX_SET_SIZE": 0})


# ---------------------------------------------------------------------- built-in ratdat_sets
def test_ratdat_sets_has_the_documented_sizes():
    ds = load_dataset(Config().with_overrides({"DATA.NAME": "ratdat_sets"}).DATA)
    sizes = ds.valid.sum(dim=1)
    assert len(ds) == 16_815 and int(sizes.sum()) == 34_786 and tuple(ds.features.shape[1:]) == (20, 14)
    assert torch.bincount(sizes)[1:4].tolist() == [8_956, 3_761, 1_802] and int((sizes >= 4).sum()) == 2_296
    assert torch.bincount(ds.fixed_split).tolist() == [10_091, 3_362, 3_362]
    assert list(ds.taxonomy.ranks) == ["taxa", "genus", "species"] and len(ds.set_groups) == len(ds)
    assert "16815 sets (samples) of 1 to 20 elements, median 1" in ds.describe()
    # one set is one species: every element's raw genus and species are the set's
    g = int(torch.argmax(sizes))
    assert ds.raw.iloc[g]["genus"] in ds.set_groups[g] and ds.raw.iloc[g]["species"] in ds.set_groups[g]


def test_cli_trains_set_attention_on_ratdat_sets_for_one_epoch(tmp_path):
    cfg = Config().with_overrides({
        "DATA.NAME": "ratdat_sets", "DATA.MAX_SET_SIZE": 8, "MODEL.BACKBONE": "set_attention", "MODEL.HIDDEN": [16],
        "TRAIN.EPOCHS": 1, "TRAIN.BATCH_SIZE": 512, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(tmp_path / "runs" / "w.db"),
    })
    cfg.save(tmp_path / "sets.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "workbench", "train", "--config", str(tmp_path / "sets.yaml"),
                          "--run-id", "sets-1", "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr
    assert "run sets-1: 1 epochs, status finished" in res.stdout
    assert "DATA.MAX_SET_SIZE=8" in res.stderr + res.stdout  # the cut is reported as a warning line
    run = RunStore(tmp_path / "runs" / "w.db").run("sets-1")
    assert run["status"] == "finished" and run["config"]["DATA"]["NAME"] == "ratdat_sets"


def test_image_data_with_group_by_says_to_embed_first():
    cfg = Config().with_overrides({"DATA.NAME": "images", "DATA.PATH": "labels.csv", "DATA.GROUP_BY": "sighting"})
    with pytest.raises(DataError, match=r"`DATA.GROUP_BY` 'sighting' on image data.*python -m workbench embed"):
        load_dataset(cfg.DATA)

"""Train / val / test splits (DESIGN.md 3.5): the seeded stratified draw, fixed splits of the built-ins,
``DATA.SPLIT_COLUMN`` in files and manifests, and the config checks of the fractions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import tree_frame, tree_taxonomy, trees
from workbench.config import Config, ConfigError
from workbench.data import (
    BUILTIN_SPLIT_FRACTIONS, MIN_STRATUM_TEST, MIN_STRATUM_VAL, SPREADSHEET_ROWS, TEST_CODE, TRAIN_CODE, VAL_CODE,
    DataError, DataWarning, HierarchicalDataset, load_dataset, load_table, make_synthetic, split_dataset,
    train_val_split,
)
from workbench.names import SPLITS


def _ids(part) -> list[int]:
    """The row ids of a part (feature 0 holds each row's position in the unsplit data)."""
    return [] if part is None else part.features[:, 0].long().tolist()


def _traced(ds: HierarchicalDataset) -> HierarchicalDataset:
    """The same labels with feature 0 = the row's position, to trace rows through a split."""
    return HierarchicalDataset(features=torch.arange(len(ds), dtype=torch.float32)[:, None], targets=ds.targets,
                               taxonomy=ds.taxonomy, feature_names=["row"], name=ds.name)


def _table(tree, counts) -> HierarchicalDataset:
    """Every label path of a random tree (each class, null below it), repeated ``counts`` times."""
    frame = tree_frame(*tree)
    counts = (counts * len(frame))[: len(frame)]
    labels = frame.loc[frame.index.repeat(counts)].reset_index(drop=True)
    taxonomy = tree_taxonomy(*tree)
    targets = taxonomy.encode(labels)
    return _traced(HierarchicalDataset(features=torch.zeros(len(labels), 1), targets=targets, taxonomy=taxonomy,
                                       feature_names=["x"], name="random"))


# ---------------------------------------------------------------------- the seeded, stratified draw
@settings(max_examples=60, deadline=None)
@given(tree=trees(max_ranks=3, max_classes=4), counts=st.lists(st.integers(0, 12), min_size=1, max_size=12),
       val=st.floats(0.05, 0.5), test=st.sampled_from([0.0, 0.1, 0.2, 0.3]), seed=st.integers(0, 2**32 - 1))
def test_split_is_disjoint_exhaustive_stratified_and_follows_the_small_stratum_rule(tree, counts, val, test, seed):
    ds = _table(tree, counts)
    paths, stratum, sizes = torch.unique(ds.targets, dim=0, return_inverse=True, return_counts=True)
    # the documented rule, per stratum of n: val round(n v) from n >= 2, test round(n t) from n >= 3, one train kept
    want_val, want_test = {}, {}
    for s, n in enumerate(sizes.tolist()):
        v = min(round(n * val) if n >= MIN_STRATUM_VAL else 0, n - 1)
        want_val[s], want_test[s] = v, min(round(n * test) if n >= MIN_STRATUM_TEST else 0, n - 1 - v)
    n_val, n_test = sum(want_val.values()), sum(want_test.values())
    if len(ds) == 0 or n_val == 0 or (test > 0 and n_test == 0):
        with pytest.raises(DataError, match=r"random: \d+ samples are too few for DATA\.(VAL|TEST)_FRACTION="):
            split_dataset(ds, val, test, seed)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # a far-off fraction is reported: tested below
        parts = split_dataset(ds, val, test, seed)
        again = split_dataset(ds, val, test, seed)
    train, val_part, test_part = parts
    assert (test_part is None) == (test == 0)
    ids = [_ids(p) for p in parts]
    assert [_ids(p) for p in again] == ids, "seeded: the same seed draws the same split"
    every = sorted(i for part in ids for i in part)
    assert every == list(range(len(ds))), "disjoint and exhaustive"
    for part, got in zip(parts, ids):
        if part is not None:
            assert torch.equal(part.targets, ds.targets[got]), "rows keep their labels"
            assert part.split == train.split
            assert part.split["train"] + part.split["val"] + part.split["test"] == len(ds)
    assert (train.split["train"], train.split["val"], train.split["test"]) == (len(ids[0]), n_val, n_test)
    assert train.split["val_fraction"] == pytest.approx(n_val / len(ds))
    assert train.split["test_fraction"] == pytest.approx(n_test / len(ds))
    assert train.split["lone_samples"] == int((sizes == 1).sum())
    # stratified: each label path's share of val and test is its rounded fraction (within rounding)
    for s in range(len(sizes)):
        rows = set(torch.nonzero(stratum == s).flatten().tolist())
        assert len(rows & set(ids[1])) == want_val[s] and len(rows & set(ids[2])) == want_test[s], (s, len(rows))
        assert rows & set(ids[0]), "every label path keeps a train sample"
        if sizes[s] >= MIN_STRATUM_VAL and round(int(sizes[s]) * val) + round(int(sizes[s]) * test) < sizes[s]:
            assert abs(want_val[s] - int(sizes[s]) * val) <= 0.5


def test_seeds_draw_different_splits_and_val_does_not_move_when_a_test_split_is_added():
    ds = _traced(make_synthetic(n=1500, seed=0))
    train, val, test = split_dataset(ds, 0.2, 0.2, seed=7)
    assert (len(train), len(val), len(test)) == (896, 302, 302)  # 1500 x 0.6 / 0.2 / 0.2 within per-path rounding
    assert set(_ids(split_dataset(ds, 0.2, 0.2, seed=8)[1])) != set(_ids(val))
    # adding a test split takes test rows from train only: the seed's val part is the two-way split's
    assert _ids(split_dataset(ds, 0.2, 0.0, seed=7)[1]) == _ids(val) == _ids(train_val_split(ds, 0.2, seed=7)[1])
    assert split_dataset(ds, 0.2, 0.0, seed=7)[2] is None


def test_a_test_fraction_the_small_label_paths_cannot_honour_is_reported():
    # 30 label paths of 2 samples give no test sample; one path of 40 gives 8 test: 8 of 100, asked 20
    labels = pd.DataFrame({"a": [f"p{i // 2}" for i in range(60)] + ["big"] * 40})
    ds = _traced(load_like(labels))
    with pytest.warns(DataWarning) as caught:
        train, val, test = split_dataset(ds, 0.2, 0.2, seed=0)
    assert [str(w.message) for w in caught] == [
        f"random: DATA.{part.upper()}_FRACTION=0.2 was asked, but only 8.0% of the samples (8 of 100) are in {part}: "
        f"60 sample(s) are in label paths too small to give a {part} sample (a path needs {need} or more, and its share "
        f"rounds per path; 0 sample(s) are alone in theirs); the split is stratified by label path; {part} metrics "
        "rest on few samples" for part, need in (("val", 2), ("test", 3))
    ]
    assert (len(train), len(val), len(test)) == (84, 8, 8)
    assert test.warnings == val.warnings and len(test.warnings) == 2  # the val shortfall is reported too
    assert "split: 84 train / 8 val / 8 test, fractions 0.080 val, 0.080 test (asked 0.2, 0.2)" in test.describe()


def load_like(labels: pd.DataFrame) -> HierarchicalDataset:
    from workbench.taxonomy import Taxonomy

    taxonomy = Taxonomy.from_frame(labels, list(labels.columns))
    return HierarchicalDataset(features=torch.zeros(len(labels), 1), targets=taxonomy.encode(labels),
                               taxonomy=taxonomy, feature_names=["x"], name="random")


@pytest.mark.parametrize("val, test, message", [
    (0.0, 0.2, "`DATA.VAL_FRACTION` must be in (0, 1), got 0.0"),
    (1.0, 0.0, "`DATA.VAL_FRACTION` must be in (0, 1), got 1.0"),
    (0.2, -0.1, "`DATA.TEST_FRACTION` must be in [0, 1), got -0.1"),
    (0.2, 1.0, "`DATA.TEST_FRACTION` must be in [0, 1), got 1.0"),
    (0.5, 0.5, "`DATA.VAL_FRACTION` + `DATA.TEST_FRACTION` must be < 1 (something must be left to train on), "
               "got 0.5 + 0.5"),
])
def test_bad_fractions_are_refused_by_the_split(val, test, message):
    with pytest.raises(DataError) as e:
        split_dataset(make_synthetic(n=200, seed=0), val, test)
    assert str(e.value) == message


@pytest.mark.parametrize("data, message", [
    ({"TEST_FRACTION": 1.0}, "`DATA.TEST_FRACTION` must be in [0, 0.98], got 1.0"),
    ({"TEST_FRACTION": -0.1}, "`DATA.TEST_FRACTION` must be in [0, 0.98], got -0.1"),
    ({"VAL_FRACTION": 0.6, "TEST_FRACTION": 0.4},
     "`DATA.TEST_FRACTION` plus VAL_FRACTION must be < 1 (something must be left to train on), got 0.4 + 0.6"),
    ({"NAME": "olive", "SPLIT_COLUMN": "split"},
     "`DATA.SPLIT_COLUMN` applies only when NAME is 'file' or 'images' (a manifest), got 'split' with NAME 'olive' "
     "(built-in data has its own split)"),
    ({"NAME": "file", "PATH": "x.csv", "SPLIT_COLUMN": ""}, "`DATA.SPLIT_COLUMN` must not be empty, got ''"),
])
def test_bad_split_config_is_refused(data, message):
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"DATA": data})
    assert str(e.value) == f"config: {message}"


def test_split_config_defaults():
    data = Config.from_dict({}).DATA
    assert (data.VAL_FRACTION, data.TEST_FRACTION, data.SPLIT_COLUMN) == (0.2, 0.2, None)
    assert Config.from_dict({"DATA": {"TEST_FRACTION": 0}}).DATA.TEST_FRACTION == 0


# ---------------------------------------------------------------------- fixed splits of the built-ins
@pytest.mark.parametrize("name, sizes", [("olive", (344, 114, 114)), ("ratdat", (21_331, 7_109, 7_109))])
def test_builtin_tables_have_a_fixed_documented_split_whatever_the_seed(name, sizes):
    ds = load_dataset(Config.from_dict({"DATA": {"NAME": name, "SEED": 5}}).DATA)
    assert ds.fixed_split.dtype == torch.long and tuple(torch.bincount(ds.fixed_split).tolist()) == sizes
    assert f"fixed split: {sizes[0]} train / {sizes[1]} val / {sizes[2]} test (set by the data's source" in ds.describe()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the default fractions are the fixed split's: no warning
        parts = split_dataset(ds, *BUILTIN_SPLIT_FRACTIONS, seed=0)
        other = split_dataset(ds, *BUILTIN_SPLIT_FRACTIONS, seed=99)
    assert tuple(len(p) for p in parts) == sizes and parts[0].split["fixed"] is True
    for a, b in zip(parts, other):
        assert torch.equal(a.targets, b.targets) and a.raw.index.equals(b.raw.index)
    # stratified by the full label path: every path with >= 3 samples is in every part
    paths, counts = torch.unique(ds.targets, dim=0, return_counts=True)
    for part in parts:
        seen = {tuple(p) for p in part.targets.tolist()}
        assert all(tuple(p) in seen for p, c in zip(paths.tolist(), counts.tolist()) if c >= 5)
    # fewer ranks: the same rows in each part (the split is drawn on every rank of the dataset); olive only,
    # as a second load of ratdat costs seconds and the code path is the same
    if name == "olive":
        coarse = load_dataset(Config.from_dict({"DATA": {"NAME": name, "RANKS": [ds.taxonomy.ranks[0]]}}).DATA)
        assert torch.equal(coarse.fixed_split, ds.fixed_split)
    # asked fractions it does not have: honoured anyway, and said once
    with pytest.warns(DataWarning, match=rf"{name}: the data has a fixed split \({sizes[0]} train / {sizes[1]} val / "
                                         rf"{sizes[2]} test.*instead of the asked DATA.VAL_FRACTION=0.3 \(DATA.SEED"):
        asked = split_dataset(ds, 0.3, 0.2, seed=1)
    assert tuple(len(p) for p in asked) == sizes and "instead of the asked" in asked[1].warnings[-1]


def test_animal_mnist_fixed_split_is_the_last_20_percent_test_and_the_20_before_val():
    ds = load_dataset(Config.from_dict({"DATA": {"NAME": "animal_mnist", "SEED": 3}}).DATA)
    train, val, test = split_dataset(ds, 0.2, 0.2, seed=11)
    assert (len(train), len(val), len(test)) == (6000, 2000, 2000)
    animal = ds.raw["animal_mnist_label"].to_numpy()
    for a in np.unique(animal):
        idx = np.nonzero(animal == a)[0]
        codes = ds.fixed_split[idx].tolist()
        assert codes == [TRAIN_CODE] * 600 + [VAL_CODE] * 200 + [TEST_CODE] * 200, a
    assert "6000 train / 2000 val / 2000 test" in test.describe()


# ---------------------------------------------------------------------- DATA.SPLIT_COLUMN
def _csv(path: Path, splits, extra_rows=()) -> Path:
    rows = [f"{'A' if i % 2 else 'B'},{'a' if i % 2 else 'b'}{i % 4},{i * 0.1:.1f},{(i % 3) * 1.0},{s}"
            for i, s in enumerate(splits)]
    path.write_text("order,family,x1,x2,split\n" + "\n".join([*rows, *extra_rows]) + "\n")
    return path


def test_split_column_of_a_file_is_the_split_and_never_a_feature(tmp_path):
    splits = ["train"] * 6 + [" Val", "VAL ", "test", "Test", "train", "val"]
    data = _csv(tmp_path / "s.csv", splits)
    cfg = Config.from_dict({"DATA": {"NAME": "file", "PATH": str(data), "RANKS": ["order", "family"],
                                     "SPLIT_COLUMN": "split", "VAL_FRACTION": 0.5, "TEST_FRACTION": 0.0}})
    ds = load_dataset(cfg.DATA)
    assert "split" not in ds.feature_names and ds.feature_names == ["x1", "x2"]
    assert ds.fixed_split.tolist() == [0] * 6 + [1, 1, 2, 2, 0, 1]
    with pytest.warns(DataWarning, match=r"s.csv: the data has a fixed split \(7 train / 3 val / 2 test"):
        train, val, test = split_dataset(ds, cfg.DATA.VAL_FRACTION, cfg.DATA.TEST_FRACTION, cfg.DATA.SEED)
    assert val.raw["x1"].tolist() == [0.6, 0.7, 1.1] and test.raw["x1"].tolist() == [0.8, 0.9]
    assert train.split["fixed"] and (train.split["train"], train.split["val"], train.split["test"]) == (7, 3, 2)
    # no test rows: no test split
    plain = load_table(_csv(tmp_path / "two.csv", ["train"] * 8 + ["val"] * 4), ["order", "family"],
                       split_column="split")
    with pytest.warns(DataWarning, match=r"two.csv: the data has a fixed split \(8 train / 4 val / 0 test, fractions "
                                         r"0.333 val, 0.000 test\); it is used instead of the asked DATA.VAL_FRACTION=0.2"):
        train, val, test = split_dataset(plain, 0.2, 0.0)
    assert (len(train), len(val), test) == (8, 4, None)


@pytest.mark.parametrize("cell, shown", [("trian", "'trian'"), ("", "an empty cell"), ("2", "'2'"),
                                         ("validation", "'validation'")])
def test_a_bad_split_cell_names_the_file_row_and_value(tmp_path, cell, shown):
    data = _csv(tmp_path / "bad.csv", ["train", "val", "test", cell, "train", cell])
    with pytest.raises(DataError) as e:
        load_table(data, ["order", "family"], split_column="split")
    assert str(e.value) == (f"{data}: column 'split' (DATA.SPLIT_COLUMN), row 5 ({SPREADSHEET_ROWS}): expected one "
                            f"of {', '.join(SPLITS)}, got {shown}; 1 more such cell(s): row 7")


@pytest.mark.parametrize("splits, kwargs, message", [
    (["train", "test"] * 3, {}, "{p}: column 'split' (DATA.SPLIT_COLUMN) has 3 train and 0 val rows; both need at "
                                "least one (test may be empty: no test split)"),
    (["val"] * 6, {}, "{p}: column 'split' (DATA.SPLIT_COLUMN) has 0 train and 6 val rows; both need at least one "
                      "(test may be empty: no test split)"),
    (["train", "val"] * 3, {"split_column": "fold"}, "{p}: column(s) ['fold'] not found; columns are "
                                                     "['order', 'family', 'x1', 'x2', 'split']"),
    (["train", "val"] * 3, {"features": ["x1", "split"]},
     "{p}: split column 'split' (DATA.SPLIT_COLUMN) is also a rank, the sample weight or a feature; it must be a "
     "column of its own"),
])
def test_split_column_errors(tmp_path, splits, kwargs, message):
    data = _csv(tmp_path / "bad.csv", splits)
    with pytest.raises(DataError) as e:
        load_table(data, ["order", "family"], **{"split_column": "split", **kwargs})
    assert str(e.value) == message.format(p=data)


def test_split_column_of_an_image_manifest(tmp_path):
    from PIL import Image

    rows = []
    for i in range(9):
        Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'A' if i % 2 else 'B'},{['train', 'train', 'VAL', 'Test'][i % 4] if i < 8 else 'x'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,order,fold\n" + "\n".join(rows[:8]) + "\n")
    data = {"NAME": "images", "PATH": str(manifest), "RANKS": ["order"], "SPLIT_COLUMN": "fold",
            "CACHE_DIR": str(tmp_path / "cache"), "IMAGE_SIZE": 8}
    ds = load_dataset(Config.from_dict({"DATA": data}).DATA)
    train, val, test = split_dataset(ds, 0.25, 0.25)
    assert (train.image_paths, val.image_paths, test.image_paths) == (["0.png", "1.png", "4.png", "5.png"],
                                                                      ["2.png", "6.png"], ["3.png", "7.png"])
    manifest.write_text("path,order,fold\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(Config.from_dict({"DATA": data}).DATA)
    assert str(e.value) == (f"{manifest}: column 'fold' (DATA.SPLIT_COLUMN), row 10 ({SPREADSHEET_ROWS}): expected "
                            "one of train, val, test, got 'x'")
    tree = tmp_path / "tree"
    (tree / "A").mkdir(parents=True)
    with pytest.raises(DataError, match=r"tree: DATA.SPLIT_COLUMN \('fold'\) needs a manifest with that column"):
        load_dataset(Config.from_dict({"DATA": {**data, "PATH": str(tree)}}).DATA)


def test_data_page_split_report_names_every_part():
    from app_pages._shared import split_report

    ds = make_synthetic(n=300, seed=0)
    caption, notes = split_report(ds, 0.2, 0)  # the config's default test fraction
    train, val, test = split_dataset(ds, 0.2, 0.2, 0)
    assert caption.startswith(f"Split: {len(train):,} train / {len(val):,} val / {len(test):,} test (")
    assert "stratified by label path, seed 0; asked 20% val, 20% test" in caption
    caption, _ = split_report(ds, 0.2, 0, 0.0)
    assert " val / no test (" in caption


def test_a_fixed_split_with_codes_outside_train_val_test_is_refused():
    ds = make_synthetic(n=20, seed=0)
    ds.fixed_split = torch.tensor([0, 1, 2, 3] * 5)
    with pytest.raises(DataError, match=r"synthetic: fixed_split must hold one split code per row, 0..2 \(train, val, "
                                        r"test\), got 20 codes for 20 rows with values \[0, 1, 2, 3\]"):
        split_dataset(ds, 0.2, 0.2)


def test_a_run_recorded_before_the_test_split_keeps_training_on_its_own_split():
    """A stored config without DATA.TEST_FRACTION is from a run that had no test split: resume, phase 2 and
    predict (all through Config.from_run) remake its two-way split, not today's three-way default."""
    from workbench.config import Config

    old = Config().to_dict()
    del old["DATA"]["TEST_FRACTION"]
    assert Config.from_run(old, "run old").DATA.TEST_FRACTION == 0.0
    assert Config.from_dict(old, "a new config").DATA.TEST_FRACTION == 0.2  # a new config gets the default
    recorded = Config().with_overrides({"DATA.TEST_FRACTION": 0.3}).to_dict()
    assert Config.from_run(recorded, "run new").DATA.TEST_FRACTION == 0.3  # a recorded value is kept

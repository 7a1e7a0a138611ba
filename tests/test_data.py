"""Datasets: built-in tables (ratdat, olive), the synthetic generator, the split, batching and the file loader."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.data import (
    OLIVE_ACIDS,
    RATDAT_PLACEHOLDER_GENERA,
    DataError,
    load_olive,
    load_ratdat,
    load_table,
    make_synthetic,
    train_val_split,
)


@functools.lru_cache(maxsize=1)
def ratdat():
    return load_ratdat()


# ---------------------------------------------------------------------- ratdat
def test_ratdat_shape_ranks_and_features():
    ds = ratdat()
    assert len(ds) == 35_549
    assert ds.taxonomy.ranks == ("taxa", "genus", "species")
    assert ds.targets.shape == (35_549, 3) and ds.targets.dtype == torch.long
    assert ds.features.shape == (35_549, len(ds.feature_names))
    assert torch.isfinite(ds.features).all()
    # rows stay aligned with the raw table
    assert len(ds.raw) == len(ds)


def test_ratdat_placeholders_encode_to_null():
    ds = ratdat()
    raw = ds.raw
    genus_col, species_col = ds.targets[:, 1], ds.targets[:, 2]
    placeholder = torch.tensor(raw["genus"].isin(RATDAT_PLACEHOLDER_GENERA).to_numpy(dtype=bool))
    assert placeholder.any(), "ratdat has placeholder genera"
    assert (genus_col[placeholder] == 0).all()
    assert (species_col[placeholder] == 0).all()
    sp = torch.tensor((raw["species"] == "sp.").to_numpy(dtype=bool))
    assert sp.any()
    assert (species_col[sp] == 0).all()
    # a real genus is never null
    real_genus = torch.tensor((~raw["genus"].isin(RATDAT_PLACEHOLDER_GENERA) & raw["genus"].notna()).to_numpy(dtype=bool))
    assert (genus_col[real_genus] != 0).all()
    # "Rodent" is a placeholder genus but a real class at the taxa rank
    rodent = torch.tensor((raw["taxa"] == "Rodent").to_numpy(dtype=bool))
    assert rodent.any() and (ds.targets[rodent, 0] != 0).all()
    for name in RATDAT_PLACEHOLDER_GENERA:
        assert name not in ds.taxonomy.vocab[1]
    assert "sp." not in " ".join(v for v in ds.taxonomy.vocab[2] if v is not None).split()


def test_ratdat_species_are_binomials_under_their_genus():
    ds = ratdat()
    tax = ds.taxonomy
    species_vocab, genus_vocab = tax.vocab[2], tax.vocab[1]
    parent = tax.parent(2)
    names = [v for v in species_vocab if v is not None]
    assert len(names) == len(set(names))
    for c in range(1, len(species_vocab)):
        genus = genus_vocab[int(parent[c])]
        name = species_vocab[c]
        assert name.split(" ")[0] == genus, (name, genus)
        assert len(name.split(" ")) == 2
    # an epithet shared by two genera gives two classes, not one
    epithets = pd.Series([n.split(" ")[1] for n in names])
    raw = ds.raw
    real = raw[~raw["genus"].isin(RATDAT_PLACEHOLDER_GENERA) & (raw["species"] != "sp.")]
    assert real.groupby("species")["genus"].nunique().max() > 1, "ratdat reuses epithets across genera"
    assert epithets.duplicated().any()
    # encoded species of a row decode to "<genus> <epithet>" of that row
    labelled = torch.nonzero(ds.targets[:, 2] != 0).flatten()[:200]
    decoded = tax.decode(ds.targets[labelled])
    expected = (raw["genus"] + " " + raw["species"]).iloc[labelled.numpy()].tolist()
    assert decoded["species"].tolist() == expected


# ---------------------------------------------------------------------- olive
def test_olive():
    ds = load_olive()
    assert len(ds) == 572
    assert ds.taxonomy.ranks == ("region", "area")
    assert ds.num_features == 8 and ds.feature_names == list(OLIVE_ACIDS)
    assert torch.isfinite(ds.features).all()
    assert (ds.targets != 0).all(), "olive is fully labelled"
    assert ds.taxonomy.num_classes[0] - 1 == ds.raw["region"].nunique()
    assert ds.taxonomy.num_classes[1] - 1 == ds.raw["area"].nunique()
    # standardised features
    assert torch.allclose(ds.features.mean(0), torch.zeros(8), atol=1e-4)


# ---------------------------------------------------------------------- synthetic
def test_synthetic_is_seeded():
    a = make_synthetic(n=600, seed=3)
    b = make_synthetic(n=600, seed=3)
    c = make_synthetic(n=600, seed=4)
    assert torch.equal(a.features, b.features) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.features, c.features)


def test_synthetic_nested_nulls_and_rates():
    rates = (0.05, 0.2, 0.5)
    ds = make_synthetic(n=6000, branching=(2, 3, 2), null_rates=rates, seed=1)
    y = ds.targets
    for r in range(y.shape[1] - 1):
        null_here = y[:, r] == 0
        assert (y[null_here, r + 1 :] == 0).all(), f"null at rank {r} must be null below it"
    observed = (y == 0).float().mean(0)
    for r, rate in enumerate(rates):
        assert abs(float(observed[r]) - rate) < 0.03, (r, float(observed[r]), rate)
    assert ds.taxonomy.num_classes == [3, 7, 13]


def test_synthetic_multilabel_rank_contains_true_class():
    r = 2
    ds = make_synthetic(n=2000, branching=(2, 3, 3), null_rates=(0.0, 0.1, 0.2), multilabel_rank=r, seed=2)
    multi = ds.multilabel[r]
    y = ds.targets[:, r]
    assert multi.shape == (len(ds), ds.taxonomy.num_classes[r])
    assert set(multi.unique().tolist()) <= {0.0, 1.0}
    assert (multi[torch.arange(len(ds)), y] == 1).all(), "the true class is always set"
    labelled = y != 0
    # null rows: only the null class; labelled rows: never the null class, one or two classes
    assert (multi[~labelled].sum(1) == 1).all() and (multi[~labelled, 0] == 1).all()
    assert (multi[labelled, 0] == 0).all()
    sizes = multi[labelled].sum(1)
    assert ((sizes == 1) | (sizes == 2)).all()
    assert (sizes == 2).any()
    # the extra class is a sibling: same parent as the true class
    parent = ds.taxonomy.parent(r)
    for i in torch.nonzero(labelled & (multi.sum(1) == 2)).flatten().tolist():
        classes = torch.nonzero(multi[i]).flatten()
        assert (parent[classes] == parent[y[i]]).all(), (i, classes.tolist(), int(y[i]))


# ---------------------------------------------------------------------- split
def _with_row_ids(ds):
    """The same dataset with feature 0 replaced by the row number (to trace rows through a split)."""
    features = ds.features.clone()
    features[:, 0] = torch.arange(len(ds), dtype=torch.float32)
    return dataclasses.replace(ds, features=features)


def test_split_disjoint_covering_seeded_and_stratified():
    ds = _with_row_ids(make_synthetic(n=1500, seed=0))
    train, val = train_val_split(ds, 0.25, seed=7)
    tr_ids = set(train.features[:, 0].long().tolist())
    va_ids = set(val.features[:, 0].long().tolist())
    assert not tr_ids & va_ids
    assert tr_ids | va_ids == set(range(len(ds)))
    assert len(train) + len(val) == len(ds)
    assert abs(len(val) / len(ds) - 0.25) < 0.02
    # rows keep their targets
    assert torch.equal(val.targets, ds.targets[val.features[:, 0].long()])
    # seeded
    train2, val2 = train_val_split(ds, 0.25, seed=7)
    assert torch.equal(val.features, val2.features)
    _, val3 = train_val_split(ds, 0.25, seed=8)
    assert set(val3.features[:, 0].long().tolist()) != va_ids
    # stratified: every label path with >= 2 samples appears in train
    paths, counts = torch.unique(ds.targets, dim=0, return_counts=True)
    train_paths = {tuple(p) for p in train.targets.tolist()}
    for path, count in zip(paths.tolist(), counts.tolist()):
        if count >= 2:
            assert tuple(path) in train_paths, path


def test_split_too_small_is_an_error():
    ds = make_synthetic(n=10, branching=(5, 2), null_rates=(0.0, 0.0), seed=0)
    with pytest.raises(DataError):
        train_val_split(ds, 0.2, seed=0)


# ---------------------------------------------------------------------- batches
def test_batches_cover_every_row_once_with_shuffle():
    ds = _with_row_ids(make_synthetic(n=1037, seed=0))
    g = torch.Generator().manual_seed(0)
    batches = list(ds.batches(100, shuffle=True, generator=g))
    assert [len(b.targets) for b in batches] == [100] * 10 + [37]
    ids = torch.cat([b.features[:, 0].long() for b in batches])
    assert torch.equal(torch.sort(ids).values, torch.arange(len(ds)))
    assert not torch.equal(ids, torch.arange(len(ds))), "shuffle=True changes the order"
    for b in batches:  # features and targets stay aligned
        assert torch.equal(b.targets, ds.targets[b.features[:, 0].long()])
    plain = torch.cat([b.features[:, 0].long() for b in ds.batches(100)])
    assert torch.equal(plain, torch.arange(len(ds)))
    # the same generator seed gives the same order
    again = torch.cat([b.features[:, 0].long() for b in ds.batches(100, True, torch.Generator().manual_seed(0))])
    assert torch.equal(ids, again)


def test_describe_mentions_ranks_nulls_and_traces_a_row():
    ds = make_synthetic(n=600, null_rates=(0.0, 0.2, 0.4), seed=0)
    row = 5
    text = ds.describe(row=row)
    for rank in ds.taxonomy.ranks:
        assert rank in text
    assert "null_rate" in text
    assert f"row {row}" in text
    assert str(ds.targets[row].tolist()) in text
    for label in ds.taxonomy.decode(ds.targets[row : row + 1]).iloc[0]:
        assert str(label) in text


# ---------------------------------------------------------------------- user files
def _table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    families = {"Muridae": ["Mus", "Rattus"], "Sciuridae": ["Sciurus", "Tamias", "Glaucomys"]}
    rows = []
    for i in range(n):
        fam = list(families)[i % 2]
        genus = families[fam][i % len(families[fam])]
        rows.append({"family": fam, "genus": genus if i % 7 else None, "f_len": rng.normal(),
                     "f_mass": rng.normal(), "year": 2000 + i % 5, "w": float(1 + i % 3)})
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path):
    if path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_table_features_by_list_prefix_and_default(tmp_path, suffix):
    df = _table()
    path = _write(df, tmp_path / f"rodents{suffix}")
    by_list = load_table(path, ["family", "genus"], features=["f_len", "f_mass"], sample_weight="w")
    assert by_list.taxonomy.ranks == ("family", "genus")
    assert by_list.feature_names == ["f_len", "f_mass"]
    assert np.allclose(by_list.features.numpy(), df[["f_len", "f_mass"]].to_numpy(), atol=1e-6)
    assert torch.allclose(by_list.sample_weight, torch.tensor(df["w"].to_numpy(), dtype=torch.float32))
    decoded = by_list.taxonomy.decode(by_list.targets)
    assert decoded["family"].tolist() == df["family"].tolist()
    as_names = lambda col: [g if isinstance(g, str) else None for g in col]  # noqa: E731  (pandas 3: None -> NaN)
    assert as_names(decoded["genus"]) == as_names(df["genus"])
    assert df["genus"].isna().any()
    assert (by_list.targets[torch.tensor(df["genus"].isna().to_numpy(dtype=bool)), 1] == 0).all()

    by_prefix = load_table(path, ["family", "genus"], feature_prefix="f_", sample_weight="w")
    assert by_prefix.feature_names == ["f_len", "f_mass"]
    assert torch.equal(by_prefix.features, by_list.features)

    default = load_table(path, ["family", "genus"], sample_weight="w")
    assert default.feature_names == ["f_len", "f_mass", "year"], "every numeric column but the weight"
    assert default.sample_weight is not None


def _msg(excinfo) -> str:
    return str(excinfo.value)


GOOD = "family,genus,x1,x2,w\nA,a1,1.0,2.0,1\nA,a2,1.5,2.5,1\nB,b1,3.0,1.0,2\nB,,3.0,1.0,2\n"


def _load(path, **kw):
    kw.setdefault("features", ["x1", "x2"])
    kw.setdefault("sample_weight", "w")
    return load_table(path, ["family", "genus"], **kw)


def test_good_fixture_loads(tmp_path):
    """The bad-file cases below are each one edit away from this file, which loads."""
    path = tmp_path / "good.csv"
    path.write_text(GOOD)
    ds = _load(path)
    assert len(ds) == 4 and ds.taxonomy.num_classes == [3, 4]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(path) in _msg(e) and "not found" in _msg(e)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(path) in _msg(e) and "empty" in _msg(e)


def test_header_only_file(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("family,genus,x1,x2,w\n")
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(path) in _msg(e) and "no data rows" in _msg(e)


def test_missing_rank_column(tmp_path):
    path = tmp_path / "norank.csv"
    path.write_text(GOOD.replace("genus", "gen", 1))
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(path) in _msg(e) and "'genus'" in _msg(e)


def test_non_numeric_feature_names_row_and_column(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text(GOOD.replace("1.5,2.5", "1.5,abc"))
    with pytest.raises(DataError) as e:
        _load(path)
    msg = _msg(e)
    assert str(path) in msg and "'x2'" in msg and "row 3 (spreadsheet row numbers, header = row 1)" in msg and "abc" in msg


def test_nan_feature_names_row_and_column(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text(GOOD.replace("B,b1,3.0,1.0", "B,b1,,1.0"))
    with pytest.raises(DataError) as e:
        _load(path)
    msg = _msg(e)
    assert str(path) in msg and "'x1'" in msg and "row 4 (spreadsheet row numbers, header = row 1)" in msg


def test_nan_feature_in_parquet(tmp_path):
    df = pd.read_csv(pd.io.common.StringIO(GOOD))
    df.loc[3, "x2"] = np.nan
    path = _write(df, tmp_path / "nan.parquet")
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(path) in _msg(e) and "'x2'" in _msg(e) and "row 5 (spreadsheet row numbers, header = row 1)" in _msg(e)


def test_all_labels_null(tmp_path):
    path = tmp_path / "nulls.csv"
    path.write_text("family,genus,x1,x2,w\n,,1,2,1\n,,2,3,1\n")
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(path) in _msg(e) and "family" in _msg(e) and "genus" in _msg(e)


def test_inconsistent_parents_name_both(tmp_path):
    path = tmp_path / "twoparents.csv"
    path.write_text(GOOD + "B,a1,1.0,1.0,1\n")
    with pytest.raises(DataError) as e:
        _load(path)
    msg = _msg(e)
    assert path.name in msg
    assert "'a1'" in msg and "'A'" in msg and "'B'" in msg
    assert "family 'A' in row 2; family 'B' in row 6" in msg and "(spreadsheet row numbers, header = row 1)" in msg


def test_duplicate_header(tmp_path):
    path = tmp_path / "dupe.csv"
    path.write_text("family,genus,x1,x1,w\nA,a1,1,2,1\nB,b1,2,3,1\n")
    with pytest.raises(DataError) as e:
        _load(path, features=["x1"])
    msg = _msg(e)
    assert str(path) in msg and "duplicate" in msg and "x1" in msg


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("family,genus,x1,x2,w\nA,a1,1,2,1\nB,caf\u00e9,2,3,1\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        _load(path)
    msg = _msg(e)
    assert str(path) in msg and "UTF-8" in msg
    assert "row 3 (spreadsheet row numbers, header = row 1), byte 6" in msg, "the message locates the bad byte by row"


def test_negative_sample_weight(tmp_path):
    path = tmp_path / "negw.csv"
    path.write_text(GOOD.replace("B,b1,3.0,1.0,2", "B,b1,3.0,1.0,-2"))
    with pytest.raises(DataError) as e:
        _load(path)
    msg = _msg(e)
    assert str(path) in msg and "'w'" in msg and "row 4 (spreadsheet row numbers, header = row 1)" in msg and "-2" in msg

"""Image data (issue 13 items 1-4): folder trees, manifests, the built-in animal_mnist and the decode cache.

Every image here is a real file written with Pillow (PNG, JPEG, BMP, WebP) in the test's own folder; the
decode cache always lives under ``tmp_path`` (never the user's ~/.cache). Bad inputs go through the CLI as
a user would, with the store-unchanged check of tests/test_bad_input.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from test_bad_input import assert_error_line, db, seeded_dir, store_unchanged, train, write_config  # noqa: F401
from workbench.config import Config
from workbench.data import DataError, DataWarning, load_dataset, split_dataset, train_val_split
from workbench.images import decode_images, load_animal_mnist, load_image_folder, load_image_manifest

RANKS = ["class", "order", "family", "animal"]
ROWS = "spreadsheet row numbers, header = row 1"


def write_image(path: Path, value: int = 128, size=(12, 10), mode: str = "L") -> Path:
    """A real image file (format from the suffix) of one grey level, or a colour for mode RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 30)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """A ragged-depth tree: images at depth 4 (animal), 3 (family), 2 (order) and 1 (class only), plus
    hidden entries, non-image files and an image directly in the root (labelled at no rank)."""
    root = tmp_path / "animals"
    write_image(root / "Mammalia/Carnivora/Felidae/cat/c1.png", 10)
    write_image(root / "Mammalia/Carnivora/Felidae/cat/c2.jpg", 20)
    write_image(root / "Mammalia/Carnivora/Canidae/dog/d1.bmp", 30)
    write_image(root / "Mammalia/Carnivora/Canidae/d_unknown_species.png", 40)  # family known, animal not
    write_image(root / "Mammalia/Artiodactyla/a_unknown_family.webp", 50)  # order known only
    write_image(root / "Aves/b1.png", 60)  # class only: a real partial label
    write_image(root / "Aves/b2.png", 70)
    write_image(root / ".thumbnails/Aves/t.png", 80)  # hidden folder: not entered
    (root / "Aves/.DS_Store").write_bytes(b"\0\0")  # hidden file
    (root / "notes.txt").write_text("not an image")
    (root / "Mammalia/README.md").write_text("# not an image")
    write_image(root / "loose.png", 90)  # no label at any rank
    return root


# ---------------------------------------------------------------------- folder trees
def test_ragged_folder_tree_gives_exact_ranks_vocabularies_and_null_ranks(tree, tmp_path):
    with pytest.warns(UserWarning):
        ds = load_image_folder(tree, RANKS, 16, cache_dir=tmp_path / "cache")
    assert ds.image_paths == [  # sorted walk, coarse folders first
        "Aves/b1.png", "Aves/b2.png", "Mammalia/Artiodactyla/a_unknown_family.webp",
        "Mammalia/Carnivora/Canidae/d_unknown_species.png", "Mammalia/Carnivora/Canidae/dog/d1.bmp",
        "Mammalia/Carnivora/Felidae/cat/c1.png", "Mammalia/Carnivora/Felidae/cat/c2.jpg",
    ]
    decoded = ds.taxonomy.decode(ds.targets).astype(object).where(lambda d: d.notna(), None).values.tolist()
    assert decoded == [
        ["Aves", None, None, None], ["Aves", None, None, None],
        ["Mammalia", "Artiodactyla", None, None],
        ["Mammalia", "Carnivora", "Canidae", None], ["Mammalia", "Carnivora", "Canidae", "dog"],
        ["Mammalia", "Carnivora", "Felidae", "cat"], ["Mammalia", "Carnivora", "Felidae", "cat"],
    ]
    assert [list(v) for v in ds.taxonomy.vocab] == [
        [None, "Aves", "Mammalia"], [None, "Artiodactyla", "Carnivora"], [None, "Canidae", "Felidae"],
        [None, "cat", "dog"],
    ]
    assert (ds.targets == 0).sum(dim=0).tolist() == [0, 2, 3, 4]  # null per rank
    # all sources grayscale -> one channel; uint8 (N, C, H, W) at IMAGE_SIZE
    assert ds.features.dtype == torch.uint8 and ds.input_shape == (1, 16, 16) and ds.is_image
    assert ds.features[0].unique().tolist() == [60]  # b1.png's grey level survives the resize
    assert ds.feature_names == [] and ds.meta is None
    # hidden entries, non-image files and the root-level image: skipped, counted and named
    notes = "\n".join(ds.warnings)
    assert "skipped 2 hidden file(s)/folder(s) (.thumbnails, Aves/.DS_Store)" in notes
    assert "skipped 2 non-image file(s) (notes.txt, Mammalia/README.md)" in notes
    assert "skipped 1 image(s) directly in the root, labelled at no rank (loose.png)" in notes
    assert "7 images, 1 channel(s) x 16 x 16 px" in ds.describe()
    assert "warning: " in ds.describe()


def test_one_colour_image_makes_the_dataset_rgb_and_squares_by_centre_crop(tmp_path):
    root = tmp_path / "t"
    write_image(root / "a/x.png", 100)
    write_image(root / "b/y.jpg", 200, mode="RGB")
    # 20 x 10 with a white strip on the left edge: resize-shorter-side + centre crop cuts it away
    strip = np.zeros((10, 20), dtype=np.uint8)
    strip[:, :4] = 255
    Image.fromarray(strip).save(root / "a/strip.png")
    ds = load_image_folder(root, ["letter"], 10, cache_dir=tmp_path / "cache")
    assert ds.input_shape == (3, 10, 10)
    by_path = dict(zip(ds.image_paths, ds.features))
    assert by_path["a/strip.png"].max() == 0  # the off-centre strip is cropped, not squeezed in
    assert by_path["a/x.png"].unique().tolist() == [100]  # grey in RGB: R = G = B


def test_corrupt_image_is_an_error_naming_the_file_or_skipped_and_listed(tree, tmp_path):
    bad = tree / "Aves/broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=rf"^{bad}: not a readable image \(") as e:
        load_image_folder(tree, RANKS, 16, cache_dir=tmp_path / "cache")
    assert "DATA.SKIP_BAD_IMAGES: true" in str(e.value)
    with pytest.warns(UserWarning):
        ds = load_image_folder(tree, RANKS, 16, skip_bad=True, cache_dir=tmp_path / "cache")
    assert len(ds) == 7 and "Aves/broken.png" not in ds.image_paths
    assert any(f"skipped 1 unreadable image(s) ({bad})" in w for w in ds.warnings)


def test_tree_deeper_than_ranks_is_an_error_naming_a_path(tree, tmp_path):
    deep = tree / "Mammalia/Carnivora/Felidae/cat/kitten/k.png"
    write_image(deep)
    with pytest.raises(DataError) as e:
        load_image_folder(tree, RANKS, 16, cache_dir=tmp_path / "cache")
    assert str(e.value) == (f"{deep}: is 5 folder levels below {tree}, but DATA.RANKS names 4 rank(s); each folder "
                            "level is one rank: add ranks or move the image up")


def test_folder_rank_conflict_is_the_taxonomy_error_naming_image_paths(tmp_path):
    root = tmp_path / "t"
    write_image(root / "Carnivora/Felidae/a.png")
    write_image(root / "Artiodactyla/Felidae/b.png")  # Felidae under two orders
    with pytest.raises(DataError) as e:
        load_image_folder(root, ["order", "family"], 8, cache_dir=tmp_path / "cache")
    assert str(e.value) == (
        f"{root}: every family class needs exactly one parent at rank order; 1 has more than one (image path "
        "relative to the root):\n  family 'Felidae': order 'Artiodactyla' in row Artiodactyla/Felidae/b.png; "
        "order 'Carnivora' in row Carnivora/Felidae/a.png"
    )


# ---------------------------------------------------------------------- the decode cache
def test_cache_round_trip_hits_then_misses_when_a_file_changes(tmp_path):
    root, cache = tmp_path / "t", tmp_path / "cache"
    first = write_image(root / "a/x.bmp", 10)  # BMP: the same size in bytes whatever the pixels
    write_image(root / "b/y.bmp", 20)
    ds = load_image_folder(root, ["letter"], 8, cache_dir=cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    stored = torch.load(files[0], weights_only=True)  # loadable without unpickling code
    assert torch.equal(stored["pixels"], ds.features)
    # rewrite x.bmp with other pixels, same byte size and mtime: the key is unchanged, so the cached
    # pixels come back (proof the second load did not decode)
    st = first.stat()
    write_image(first, 250)
    assert first.stat().st_size == st.st_size
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    hit = load_image_folder(root, ["letter"], 8, cache_dir=cache)
    assert hit.features[0].unique().tolist() == [10] and len(list(cache.glob("*.pt"))) == 1
    # a new mtime (a changed file) misses: decoded again, a second entry
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    miss = load_image_folder(root, ["letter"], 8, cache_dir=cache)
    assert miss.features[0].unique().tolist() == [250] and len(list(cache.glob("*.pt"))) == 2
    # another IMAGE_SIZE is another entry too
    assert load_image_folder(root, ["letter"], 12, cache_dir=cache).input_shape == (1, 12, 12)
    assert len(list(cache.glob("*.pt"))) == 3


def test_damaged_cache_entry_is_decoded_again(tmp_path):
    root, cache = tmp_path / "t", tmp_path / "cache"
    write_image(root / "a/x.png", 33)
    load_image_folder(root, ["letter"], 8, cache_dir=cache)
    entry = next(cache.glob("*.pt"))
    entry.write_bytes(entry.read_bytes()[:50])  # cut short
    with pytest.warns(UserWarning, match="damaged image cache entry, decoding again"):
        ds = load_image_folder(root, ["letter"], 8, cache_dir=cache)
    assert ds.features.unique().tolist() == [33]
    assert torch.equal(torch.load(entry, weights_only=True)["pixels"], ds.features)  # rewritten whole


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "envcache"))
    path = write_image(tmp_path / "t/a/x.png")
    _, kept, bad, cache_file = decode_images([path], 8)
    assert kept == [0] and bad == [] and cache_file.parent == tmp_path / "envcache" and cache_file.exists()


# ---------------------------------------------------------------------- manifests
@pytest.fixture
def manifest(tmp_path) -> tuple[Path, Path]:
    """``(manifest.csv, root)``: 4 images with class/order labels (one null order) and 2 metadata columns."""
    root = tmp_path / "root"
    for i, name in enumerate(["a.png", "b.png", "sub/c.jpg", "d.png"]):
        write_image(root / name, 40 * i + 10)
    table = pd.DataFrame({
        "path": ["a.png", "b.png", "sub/c.jpg", "d.png"],
        "class": ["Mammalia", "Mammalia", "Aves", "Mammalia"],
        "order": ["Carnivora", "Artiodactyla", "unknown", "Carnivora"],
        "meta_lat": [10.5, -3.0, 0.0, 44.0], "meta_day": [1, 2, 3, 4], "note": ["x", "y", "z", "w"],
    })
    path = tmp_path / "manifest.csv"
    table.to_csv(path, index=False)
    return path, root


def _write_rows(manifest: Path, changes: dict) -> Path:
    """The manifest with cells changed: ``changes = {column: {row position: value}}``."""
    table = pd.read_csv(manifest, keep_default_na=False, dtype=str)
    for col, cells in changes.items():
        for i, v in cells.items():
            table.loc[i, col] = v
    table.to_csv(manifest, index=False)
    return manifest


def test_manifest_labels_nulls_and_metadata(manifest, tmp_path):
    path, root = manifest
    ds = load_image_manifest(path, root, "path", ["class", "order"], 8, feature_prefix="meta_",
                             cache_dir=tmp_path / "cache")
    assert ds.image_paths == ["a.png", "b.png", "sub/c.jpg", "d.png"]
    assert ds.taxonomy.decode(ds.targets)["order"].tolist()[:2] == ["Carnivora", "Artiodactyla"]
    assert ds.targets[2].tolist() == [1, 0]  # Aves, null order ("unknown" is a null value, as in a table)
    assert ds.meta_names == ["meta_lat", "meta_day"]
    assert ds.meta.dtype == torch.float32
    assert ds.meta.tolist() == [[10.5, 1.0], [-3.0, 2.0], [0.0, 3.0], [44.0, 4.0]]
    assert [int(x.unique()) for x in ds.features] == [10, 50, 90, 130]
    # subsets carry metadata and paths, row for row
    part = ds.subset(torch.tensor([3, 0]))
    assert part.image_paths == ["d.png", "a.png"] and part.meta[:, 0].tolist() == [44.0, 10.5]
    assert "meta:     {'meta_lat': 10.5, 'meta_day': 1.0}" in ds.describe()


def test_manifest_root_defaults_to_the_manifest_folder(tmp_path):
    write_image(tmp_path / "imgs/a.png")
    write_image(tmp_path / "imgs/b.png")
    path = tmp_path / "m.csv"
    path.write_text("path,kind\nimgs/a.png,x\nimgs/b.png,y\n")
    assert load_image_manifest(path, None, "path", ["kind"], 8, cache_dir=tmp_path / "c").image_paths == [
        "imgs/a.png", "imgs/b.png"]


@pytest.mark.parametrize("changes, expected", [
    ({"path": {1: "missing.png"}},
     lambda m, r: f"{m}: column 'path', row 3 ({ROWS}): image file {r}/missing.png not found"),
    ({"path": {2: "../outside.png"}},
     lambda m, r: f"{m}: column 'path', row 4 ({ROWS}): path '../outside.png' resolves outside DATA.ROOT ({r}) to "
                  f"{r.parent / 'outside.png'}; image paths must stay inside the root"),
    ({"path": {0: "/etc/hostname"}},
     lambda m, r: f"{m}: column 'path', row 2 ({ROWS}): absolute path '/etc/hostname' is refused; image paths are "
                  f"relative to DATA.ROOT ({r})"),
    ({"path": {3: ""}}, lambda m, r: f"{m}: column 'path', row 5 ({ROWS}): the image path is empty"),
    ({"meta_lat": {2: "north"}},
     lambda m, r: f"{m}: column 'meta_lat', row 4 ({ROWS}): expected a finite number, got 'north'"),
], ids=["missing-file", "escapes-root", "absolute", "empty", "meta-not-numeric"])
def test_manifest_path_errors_name_the_file_and_row(manifest, tmp_path, changes, expected):
    path, root = manifest
    write_image(root.parent / "outside.png")  # exists, but outside the root
    _write_rows(path, changes)
    with pytest.raises(DataError) as e:
        load_image_manifest(path, root, "path", ["class", "order"], 8, feature_prefix="meta_",
                            cache_dir=tmp_path / "cache")
    assert str(e.value) == expected(path, root)


def test_manifest_symlink_out_of_the_root_is_refused(manifest, tmp_path):
    """A path inside the root that is a symlink to a file outside it escapes the root too."""
    path, root = manifest
    outside = write_image(tmp_path / "outside.png")
    (root / "link.png").symlink_to(outside)
    _write_rows(path, {"path": {0: "link.png"}})
    with pytest.raises(DataError) as e:
        load_image_manifest(path, root, "path", ["class", "order"], 8, cache_dir=tmp_path / "cache")
    assert str(e.value) == (f"{path}: column 'path', row 2 ({ROWS}): path 'link.png' resolves outside DATA.ROOT "
                            f"({root}) to {outside}; image paths must stay inside the root")


def test_manifest_corrupt_image_names_file_and_row_or_is_skipped(manifest, tmp_path):
    path, root = manifest
    (root / "b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"^{path}, row 3 \({ROWS}\): {root}/b.png: not a readable image"):
        load_image_manifest(path, root, "path", ["class", "order"], 8, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning):
        ds = load_image_manifest(path, root, "path", ["class", "order"], 8, feature_prefix="meta_",
                                 skip_bad=True, cache_dir=tmp_path / "cache")
    assert ds.image_paths == ["a.png", "sub/c.jpg", "d.png"] and ds.meta[:, 1].tolist() == [1.0, 3.0, 4.0]
    assert ds.taxonomy.decode(ds.targets)["class"].tolist() == ["Mammalia", "Aves", "Mammalia"]
    assert any("skipped 1 unreadable image(s)" in w and "row 3" in w for w in ds.warnings)


def test_manifest_rank_conflict_is_the_taxonomy_error_by_spreadsheet_row(manifest, tmp_path):
    path, root = manifest
    _write_rows(path, {"class": {1: "Aves"}, "order": {1: "Carnivora"}})  # Carnivora under Mammalia and Aves
    with pytest.raises(DataError) as e:
        load_image_manifest(path, root, "path", ["class", "order"], 8, cache_dir=tmp_path / "cache")
    assert str(e.value) == (
        f"{path}: every order class needs exactly one parent at rank class; 1 has more than one ({ROWS}):\n"
        "  order 'Carnivora': class 'Mammalia' in rows 2, 5; class 'Aves' in row 3"
    )


# ---------------------------------------------------------------------- animal_mnist
EXPECTED_TAXONOMY = {  # class, order, family (issue 13)
    "bear": ("Mammalia", "Carnivora", "Ursidae"), "cat": ("Mammalia", "Carnivora", "Felidae"),
    "dog": ("Mammalia", "Carnivora", "Canidae"), "cow": ("Mammalia", "Artiodactyla", "Bovidae"),
    "sheep": ("Mammalia", "Artiodactyla", "Bovidae"), "giraffe": ("Mammalia", "Artiodactyla", "Giraffidae"),
    "horse": ("Mammalia", "Perissodactyla", "Equidae"), "zebra": ("Mammalia", "Perissodactyla", "Equidae"),
    "elephant": ("Mammalia", "Proboscidea", "Elephantidae"),
}


def test_animal_mnist_loads_offline_with_its_taxonomy_partial_labels_and_fixed_split():
    ds = load_dataset(Config.from_dict({"DATA": {"NAME": "animal_mnist"}}).DATA)
    assert len(ds) == 10_000 and ds.input_shape == (1, 28, 28) and ds.features.dtype == torch.uint8
    assert ds.taxonomy.ranks == ("class", "order", "family", "animal")
    labels = ds.taxonomy.decode(ds.targets)
    birds = labels["class"] == "Aves"
    assert int(birds.sum()) == 1000 and labels.loc[birds, ["order", "family", "animal"]].isna().all().all()
    assert int(labels["animal"].notna().sum()) == 9000
    paths = {tuple(r) for r in labels.loc[~birds].itertuples(index=False)}
    assert paths == {(*v, k) for k, v in EXPECTED_TAXONOMY.items()}
    assert labels["animal"].value_counts().to_dict() == {k: 1000 for k in EXPECTED_TAXONOMY}
    # fixed split: per animal the last 200 by index are test and the 200 before them val, for any seed or fraction
    train_a, val_a, test_a = split_dataset(ds, 0.2, 0.2, seed=0)
    with pytest.warns(DataWarning, match=r"fixed split \(6000 train / 2000 val / 2000 test.*instead of the asked "
                                         r"DATA.VAL_FRACTION=0.5, DATA.TEST_FRACTION=0.1"):
        train_b, val_b, test_b = split_dataset(ds, 0.5, 0.1, seed=7)
    assert val_a.image_paths == val_b.image_paths and test_a.image_paths == test_b.image_paths
    assert (len(train_a), len(val_a), len(test_a)) == (6000, 2000, 2000)
    assert val_a.image_paths[:2] == ["animal_mnist#600", "animal_mnist#601"]
    assert test_a.image_paths[:2] == ["animal_mnist#800", "animal_mnist#801"]
    for part in (val_a, test_a):
        assert part.taxonomy.decode(part.targets)["class"].value_counts().to_dict() == {"Mammalia": 1800, "Aves": 200}
    assert "fixed by the data's source" in val_a.describe() and "6000 train / 2000 val / 2000 test" in val_a.describe()
    # the old two-way split still works: the same train and val, test rows in neither
    train_c, val_c = train_val_split(ds, 0.2, seed=3)
    assert val_c.image_paths == val_a.image_paths and train_c.image_paths == train_a.image_paths
    # the wheel's integer labels: label 0 is bear, 1 bird (checked by eye on rendered samples)
    assert labels["animal"].iloc[0] == "bear" and labels["class"].iloc[1000] == "Aves"
    assert labels["animal"].iloc[9999] == "zebra"


def test_animal_mnist_at_another_size_and_rank_subset():
    ds = load_animal_mnist(["order", "animal"], image_size=16)
    assert ds.input_shape == (1, 16, 16) and ds.taxonomy.ranks == ("order", "animal")
    with pytest.raises(DataError, match=r"animal_mnist: rank\(s\) \['species'\] not known"):
        load_animal_mnist(["class", "species"])


# ---------------------------------------------------------------------- bad input through the CLI
def _bad_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write_image(root / "a/b/c.png")
    write_image(root / "a/b/deeper/d.png")
    return root


def _bad_manifest(tmp_path: Path) -> Path:
    write_image(tmp_path / "imgs/a.png")
    path = tmp_path / "m.csv"
    path.write_text("path,family,genus\nimgs/a.png,F,G\n../secret.png,F,H\n")
    return path


CLI_CASES = [
    ("too-deep", lambda t: {"DATA.PATH": str(_bad_tree(t))},
     lambda t: f"{t}/tree/a/b/deeper/d.png: is 3 folder levels below {t}/tree, but DATA.RANKS names 2 rank(s); "
               "each folder level is one rank: add ranks or move the image up"),
    ("escaping-row", lambda t: {"DATA.PATH": str(_bad_manifest(t))},
     lambda t: f"{t}/m.csv: column 'path', row 3 ({ROWS}): path '../secret.png' resolves outside DATA.ROOT "
               f"({t}) to {t.parent / 'secret.png'}; image paths must stay inside the root"),
    ("no-such-path", lambda t: {"DATA.PATH": str(t / "nowhere")},
     lambda t: f"{t}/nowhere: DATA.PATH not found; expected a folder tree of images or a manifest "
               "(.csv, .tsv, .txt, .parquet, .pq)"),
    ("unknown-rank", lambda t: {"DATA.NAME": "animal_mnist", "DATA.RANKS": ["class", "species"]},
     lambda t: "animal_mnist: rank(s) ['species'] not known; its ranks are ['class', 'order', 'family', 'animal']"),
    ("image-size", lambda t: {"DATA.PATH": str(t), "DATA.IMAGE_SIZE": 4},
     lambda t: f"{t}/data.yaml: `DATA.IMAGE_SIZE` must be >= 8, got 4"),
]


@pytest.mark.parametrize("overrides, expected", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_image_input_from_the_cli(tmp_path, db, capsys, overrides, expected):  # noqa: F811 (fixture)
    over = {"DATA.NAME": "images", "DATA.RANKS": ["family", "genus"], "DATA.CACHE_DIR": str(tmp_path / "cache"),
            **overrides(tmp_path)}
    cfg = write_config(tmp_path / "data.yaml", db, **over)
    with store_unchanged(db):
        rc, err = train(capsys, cfg)
    assert_error_line(rc, err, expected(tmp_path))


def test_no_image_is_written_outside_the_cache_dir(tmp_path):
    """The loaders read the sources and write only the cache entry."""
    root = tmp_path / "t"
    write_image(root / "a/x.png")
    before = sorted(p for p in tmp_path.rglob("*"))
    load_image_folder(root, ["letter"], 8, cache_dir=tmp_path / "cache")
    after = sorted(p for p in tmp_path.rglob("*") if "cache" not in p.parts)
    assert after == before
    shutil.rmtree(tmp_path / "cache")

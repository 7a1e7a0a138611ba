"""Images in the app: the Data page's image sources (a folder on the server, an uploaded zip, the
built-in animal_mnist), the zip extraction's guards (zip-slip, symlinks, limits), the thumbnail grid
per class, and the Train page's backbone choices.

Trees and zips are real files made in a tmp folder; pages run in the real app with AppTest against a
tmp run store (the fixtures of ``test_app``).
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from test_app import app, charts, store_path, texts  # noqa: F401  (shared AppTest helpers and fixture)

# a ragged tree: class > order > animal; birds stop at class (a real partial label)
TREE = {
    "Mammalia/Carnivora/cat": 3, "Mammalia/Carnivora/dog": 3, "Mammalia/Perissodactyla/horse": 2, "Aves": 2,
}
RANKS = ["class", "order", "animal"]


def png_bytes(value: int, size: int = 12) -> bytes:
    """A real PNG: a grey square with a darker stripe (so every image decodes to something)."""
    from PIL import Image

    a = np.full((size, size, 3), value, np.uint8)
    a[size // 3: size // 2] = value // 2
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def make_tree(root: Path) -> Path:
    for i, (folder, n) in enumerate(TREE.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            (root / folder / f"{j:04d}.png").write_bytes(png_bytes(40 + 20 * i + j))
    return root


def make_zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A zip with ``members`` (name -> bytes) and ``links`` (name -> target) stored as symlinks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def tree_members(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{folder}/{j:04d}.png": png_bytes(40 + 20 * i + j)
            for i, (folder, n) in enumerate(TREE.items()) for j in range(n)}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------- zip extraction
def test_zip_of_a_folder_is_extracted_inside_the_uploads_folder(tmp_path):
    from app_pages._shared import extract_zip_upload

    uploads = tmp_path / "uploads"
    members = {**tree_members("animals/"), "animals/.DS_Store": b"x", "__MACOSX/animals/._0000.png": b"x",
               "animals/Aves/we ird*name?.png": png_bytes(9)}
    content = make_zip(members)
    root = extract_zip_upload(uploads, "../animals.zip", content)
    assert root.parent.parent == uploads.resolve() and root.name == "animals"
    got = files_under(root)
    # the zip's own folder is removed, hidden members and __MACOSX are left out, names are sanitised
    assert got == {k.removeprefix("animals/") for k in tree_members("animals/")} | {"Aves/we ird_name_.png"}
    assert not list(uploads.rglob(".*.part"))
    assert extract_zip_upload(uploads, "animals.zip", content) == root  # same bytes: same folder
    # a zip of the tree's contents (no enclosing folder) gives the same tree
    flat = extract_zip_upload(uploads, "flat.zip", make_zip(tree_members()))
    assert files_under(flat) == {k for k in tree_members()}


@pytest.mark.parametrize("bad, why", [
    ("/etc/evil.png", "points outside the folder"),
    ("../evil.png", "points outside the folder"),
    ("animals/../../evil.png", "points outside the folder"),
    ("..\\..\\evil.png", "points outside the folder"),
    ("C:/evil.png", "points outside the folder"),
])
def test_zip_slip_members_are_refused_and_nothing_is_written(tmp_path, bad, why):
    from app_pages._shared import extract_zip_upload
    from workbench.data import DataError

    uploads = tmp_path / "uploads"
    with pytest.raises(DataError, match=why) as e:
        extract_zip_upload(uploads, "slip.zip", make_zip({**tree_members("slip/"), bad: b"pwned"}))
    assert repr(bad) in str(e.value) and "slip.zip" in str(e.value)  # names the zip and the member
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    assert not uploads.exists() or not files_under(uploads)


def test_symlinks_in_a_zip_are_refused(tmp_path):
    from app_pages._shared import extract_zip_upload
    from workbench.data import DataError

    uploads = tmp_path / "uploads"
    data = make_zip(tree_members("t/"), links={"t/Aves/passwd.png": "/etc/passwd"})
    with pytest.raises(DataError, match=r"'t/Aves/passwd.png' is a symbolic link"):
        extract_zip_upload(uploads, "t.zip", data)
    assert not uploads.exists() or not files_under(uploads)


def test_zip_limits_and_bad_zips_are_clear_errors(tmp_path, monkeypatch):
    from app_pages import _shared as sh
    from workbench.data import DataError

    uploads = tmp_path / "uploads"
    with pytest.raises(DataError, match="upload limit"):
        sh.extract_zip_upload(uploads, "big.zip", b"0" * (sh.MAX_UPLOAD_MB * 1024 * 1024 + 1))
    with pytest.raises(DataError, match="not a readable zip file"):
        sh.extract_zip_upload(uploads, "junk.zip", b"this is not a zip")
    with pytest.raises(DataError, match=r"expected a \.zip"):
        sh.extract_zip_upload(uploads, "tree.tar", make_zip(tree_members()))
    with pytest.raises(DataError, match="same name after removing unsafe characters"):
        sh.extract_zip_upload(uploads, "clash.zip", make_zip({"A/x?.png": b"1", "A/x*.png": b"2"}))
    with pytest.raises(DataError, match="no files in the zip"):
        sh.extract_zip_upload(uploads, "empty.zip", make_zip({".hidden/a.png": b"1"}))
    # a zip bomb: what it expands to is checked before anything is written
    monkeypatch.setattr(sh, "MAX_UNZIPPED_MB", 1)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("A/zeros.png", b"\0" * (2 * 1024 * 1024))
    with pytest.raises(DataError, match="expands to 2 MB, over the 1 MB limit"):
        sh.extract_zip_upload(uploads, "bomb.zip", bomb.getvalue())
    assert not uploads.exists() or not files_under(uploads)


def test_tree_depth_counts_folder_levels(tmp_path):
    from app_pages._shared import tree_depth

    assert tree_depth(make_tree(tmp_path / "t")) == 3
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    assert tree_depth(tmp_path / "flat") == 1


# ---------------------------------------------------------------------- the thumbnail grid
def test_thumbnail_grid_one_row_per_class_with_counts_and_a_null_row():
    import base64

    import pandas as pd
    import torch
    from PIL import Image

    from workbench import plots
    from workbench.data import HierarchicalDataset
    from workbench.taxonomy import Taxonomy

    labels = pd.DataFrame({"a": ["x"] * 12 + ["y"] * 3 + ["z"] * 5, "b": ["x1"] * 10 + ["x2"] * 2 + [None] * 8})
    tax = Taxonomy.from_frame(labels, ["a", "b"])
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 6, 5).contiguous() * 10  # (N, 1, 6, 5)
    ds = HierarchicalDataset(images, tax.encode(labels), tax, [])
    fig = plots.thumbnail_grid(ds, "b", per_class=4)
    assert [t.type for t in fig.data] == ["image"]
    assert list(fig.layout.yaxis.ticktext) == ["x1 (10)", "x2 (2)", "(null) (8)"]  # largest first, null last
    png = Image.open(io.BytesIO(base64.b64decode(fig.data[0].source.split(",", 1)[1])))
    g = plots.THUMB_GUTTER_PX
    assert png.size == (4 * (5 + g) - g, 3 * (6 + g) - g)
    pixels = np.asarray(png)
    # row 0 holds images of x1 only (samples 0..9: grey values 0..90), in their own cells
    row0 = {int(pixels[0, c * (5 + g), 0]) for c in range(4)}
    assert row0 <= {10 * i for i in range(10)} and len(row0) == 4
    # row 1: x2 has 2 images, the other cells stay white
    assert int(pixels[6 + g, 2 * (5 + g), 0]) == 255 and int(pixels[6 + g, 0, 0]) in (100, 110)
    assert list(plots.thumbnail_grid(ds, "a").layout.yaxis.ticktext) == ["x (12)", "z (5)", "y (3)"]
    assert len(plots.thumbnail_grid(ds, "a", max_classes=2).layout.yaxis.ticktext) == 2
    with pytest.raises(ValueError, match="needs images"):
        plots.thumbnail_grid(HierarchicalDataset(torch.zeros(n, 3), tax.encode(labels), tax, ["f"] * 3), "a")


# ---------------------------------------------------------------------- the Data page
def image_source(at, where: str):
    at.segmented_control(key="d_source").set_value("Image folder").run()
    assert not at.exception, at.exception
    at.radio(key="d_img_from").set_value(where).run()
    assert not at.exception, at.exception
    return at


def thumbnail_labels(at) -> list[str]:
    spec = charts(at)["thumbnails"]
    assert spec["data"][0]["type"] == "image"
    return list(spec["layout"]["yaxis"]["ticktext"])


def test_folder_on_the_server_shows_sunburst_and_thumbnails_per_class(store_path, tmp_path):
    images = pytest.importorskip("workbench.images")  # noqa: F841  (the image loaders)
    root = make_tree(tmp_path / "animals")
    at = image_source(app(), "A folder on the server")
    at.text_input(key="d_img_path").set_value(str(root)).run()
    assert not at.exception, at.exception
    assert at.text_input(key="d_img_ranks").value == "level1, level2, level3"  # one per folder level
    at.text_input(key="d_img_ranks").set_value(", ".join(RANKS)).run()
    at.number_input(key="d_img_size").set_value(16).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    data = at.session_state["data_cfg"]
    assert data == {**data, "NAME": "images", "PATH": str(root.resolve()), "RANKS": RANKS, "IMAGE_SIZE": 16}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Samples"] == "10" and metrics["Ranks"] == "class > order > animal"
    assert metrics["Images"].endswith("×16×16")
    specs = charts(at)
    assert specs["sunburst"]["data"][0]["type"] == "sunburst"
    assert thumbnail_labels(at) == ["cat (3)", "dog (3)", "horse (2)", "(null) (2)"]  # Aves stops at class
    at.selectbox(key="d_thumb_rank").set_value("class").run()
    assert not at.exception, at.exception
    assert thumbnail_labels(at) == ["Mammalia (8)", "Aves (2)"]


def test_builtin_animal_mnist_shows_every_animal_and_the_birds_null_row(store_path):
    import importlib.util

    if importlib.util.find_spec("animal_mnist") is None:
        pytest.skip("the animal-mnist wheel is not installed (make install puts it in)")
    at = app(d_name="animal_mnist")
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Samples"] == "10,000" and metrics["Images"] == "1×28×28" and metrics["Fully labelled"] == "90.0%"
    labels = thumbnail_labels(at)
    assert labels[-1] == "(null) (1,000)" and len(labels) == 10  # 9 animals, then the birds (class only)
    assert {"cat (1,000)", "zebra (1,000)", "elephant (1,000)"} <= set(labels)
    at.selectbox(key="d_thumb_rank").set_value("order").run()
    assert thumbnail_labels(at) == ["Artiodactyla (3,000)", "Carnivora (3,000)", "Perissodactyla (2,000)",
                                    "Proboscidea (1,000)", "(null) (1,000)"]


@pytest.mark.parametrize("what, message", [("missing", "no such folder on the server"),
                                           ("file", "is a file, not a folder")])
def test_folder_path_is_validated(store_path, tmp_path, what, message):
    path = tmp_path / "nope"
    if what == "file":
        path.write_text("x")
    at = image_source(app(), "A folder on the server")
    at.text_input(key="d_img_path").set_value(str(path)).run()
    assert not at.exception, at.exception
    assert at.error and message in at.error[0].value
    assert (at.session_state["data_cfg"] or {}).get("NAME") != "images"


def test_uploaded_zip_becomes_an_image_dataset(store_path):
    pytest.importorskip("workbench.images")
    at = image_source(app(), "Upload a zip")
    at.file_uploader(key="d_img_zip").set_value(("my animals.zip", make_zip(tree_members("my animals/")),
                                                 "application/zip")).run()
    assert not at.exception, at.exception
    at.text_input(key="d_img_ranks").set_value(", ".join(RANKS)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    data = at.session_state["data_cfg"]
    root = Path(data["PATH"])
    assert root.parent.parent == (store_path.parent / "uploads").resolve() and root.name == "my animals"
    assert {m.label: m.value for m in at.metric}["Samples"] == "10"
    assert "cat (3)" in thumbnail_labels(at)


def test_bad_zip_upload_is_an_error_on_the_page(store_path):
    at = image_source(app(), "Upload a zip")
    at.file_uploader(key="d_img_zip").set_value(("slip.zip", make_zip({"../../evil.png": b"x"}),
                                                 "application/zip")).run()
    assert not at.exception, at.exception
    assert at.error and "points outside the folder" in at.error[0].value
    assert not (store_path.parent.parent / "evil.png").exists()


# ---------------------------------------------------------------------- the Train page
def test_train_page_offers_image_backbones_for_image_data_only(store_path):
    at = app("train")
    assert not at.exception, at.exception
    assert not [r for r in at.radio if r.key == "tr_img_backbone"]  # tables: the MLP's options
    from app_pages import _shared as sh

    at = app("train", data_cfg={"NAME": "animal_mnist", "VAL_FRACTION": 0.2, "SEED": 0})
    assert at.radio(key="tr_img_backbone").value == "resnet"
    at.number_input(key="tr_width").set_value(16).run()
    at.number_input(key="tr_depth").set_value(2).run()
    assert not at.exception, at.exception
    yaml = at.code[0].value
    assert "BACKBONE: resnet" in yaml and "WIDTH: 16" in yaml and "DEPTH: 2" in yaml
    at.radio(key="tr_img_backbone").set_value("timm").run()
    assert "vision extra" in texts(at)
    at.text_input(key="tr_arch").set_value("convnext_tiny").run()
    assert not at.exception, at.exception
    assert "BACKBONE: timm" in at.code[0].value and "ARCH: convnext_tiny" in at.code[0].value
    # a run's config goes back into the same widgets
    form = sh.config_to_form({"MODEL": {"BACKBONE": "resnet", "WIDTH": 8, "DEPTH": 3, "FREEZE_BACKBONE": True}})
    assert form["tr_img_backbone"] == "resnet" and form["tr_width"] == 8 and form["tr_depth"] == 3 and form["tr_freeze"]
    assert sh.config_not_in_form({"MODEL": {"BACKBONE": "resnet", "WIDTH": 8}}) == []
    assert sh.config_not_in_form({"MODEL": {"BACKBONE": "set_attention"}}) == ["MODEL.BACKBONE=set_attention"]

"""Image datasets (DESIGN.md section 3.8): folder trees, manifests and the built-in animal_mnist.

Every loader returns a :class:`~workbench.data.HierarchicalDataset` whose ``features`` are ``uint8
(N, C, H, W)`` at ``IMAGE_SIZE`` (C = 1 when every source is grayscale, else 3): images are decoded once,
squared (shorter side resized, centre cropped) and cached on disk (:func:`decode_images`); a set too large for
memory streams instead (``DATA.STREAM``; its ``features`` are a :class:`workbench.streaming.LazyImages`). Labels go the
same road as a table's (:func:`workbench.data.encode_labels`: null values, rank conflicts, empty ranks).
Pillow is imported inside the functions that decode, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.data import (
    BUILTIN_RANKS, TEST_CODE, TRAIN_CODE, VAL_CODE, DataError, DataWarning, HierarchicalDataset, _at_row,
    _feature_columns, _numeric_matrix, check_finite_features, encode_labels, rank_labels, read_table, spreadsheet_row,
    split_column_codes,
)
from workbench.config import STREAM_ABOVE_MB_DEFAULT
from workbench.streaming import STATS_NOTE, is_lazy, load_pixels
from workbench.taxonomy import TaxonomyError, format_rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Files a folder tree reads as images (Pillow decodes them all); any other file is skipped and counted."""
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
DEFAULT_IMAGE_SIZE = 64  # DATA.IMAGE_SIZE for folder trees and manifests when not set
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
"""Pillow modes with one intensity channel (plus alpha); a dataset of only grayscale images is stored as 1 channel."""
PROGRESS_MIN_IMAGES = 500  # decoding fewer images than this shows no progress bar
CACHE_ENV = "WORKBENCH_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/workbench/images")
CACHE_VERSION = 1  # bump when the decoded pixels of the same sources would change (resize method, channels)
SHOWN_NAMES = 5  # skipped files named in a warning before "and N more"
PATH_INDEX = "image path relative to the root"
"""The name of a folder tree's label index: taxonomy errors then say their rows are image paths."""

# ---------------------------------------------------------------------- animal_mnist
ANIMAL_MNIST_SIZE = 28
ANIMAL_MNIST_LABELS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
"""The animal of each integer label in the wheel's label file (alphabetical, as its README lists them;
checked by eye on rendered samples of every label)."""
ANIMAL_MNIST_TAXONOMY: dict[str, tuple[str, str | None, str | None]] = {
    "bear": ("Mammalia", "Carnivora", "Ursidae"),
    "cat": ("Mammalia", "Carnivora", "Felidae"),
    "dog": ("Mammalia", "Carnivora", "Canidae"),
    "cow": ("Mammalia", "Artiodactyla", "Bovidae"),
    "sheep": ("Mammalia", "Artiodactyla", "Bovidae"),
    "giraffe": ("Mammalia", "Artiodactyla", "Giraffidae"),
    "horse": ("Mammalia", "Perissodactyla", "Equidae"),
    "zebra": ("Mammalia", "Perissodactyla", "Equidae"),
    "elephant": ("Mammalia", "Proboscidea", "Elephantidae"),
    "bird": ("Aves", None, None),  # a real partial label: known to class only (and null at animal too)
}
"""animal -> (class, order, family). Birds are labelled Aves at class rank and null below."""
ANIMAL_MNIST_FILES = ("data/Animal_MNIST/animal_data_version_3.gz", "data/Animal_MNIST/animal_label_version_3.gz")
ANIMAL_MNIST_VAL_SHARE = ANIMAL_MNIST_TEST_SHARE = 0.2
"""The fixed split: per animal, the last 20% of its images by index in the wheel's file are test and the 20%
before them val (6,000 train / 2,000 val / 2,000 test)."""
ANIMAL_MNIST_INSTALL = "pip install --no-deps -c constraints.txt animal-mnist (it declares tensorflow, never needed here)"


# ---------------------------------------------------------------------- decoding and the cache
def default_cache_dir() -> Path:
    """``$WORKBENCH_CACHE`` or ``~/.cache/workbench/images``: independent of any run store."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _square(im, size: int):
    """Resize the shorter side to ``size`` and centre-crop the longer one: no distortion, no padding."""
    from PIL import Image, ImageOps

    return ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)


def _decode_one(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """``(H, W, 3) uint8`` and whether the image is grayscale: a one-channel mode, or R = G = B everywhere (WebP
    and many JPEG writers store grey images as RGB). A file Pillow cannot decode raises
    an exception of Pillow's (``OSError``, ``SyntaxError``, ``ValueError`` or a decompression bomb)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()  # a truncated or corrupt file fails here, not later
        gray = im.mode in GRAY_MODES
        im = ImageOps.exif_transpose(im)  # a phone photo's stored orientation
        array = np.asarray(_square(im.convert("RGB"), size))
    return array, gray or bool((array[..., :1] == array).all())


def _bad_image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return OSError, SyntaxError, ValueError, Image.DecompressionBombError


def bad_image_error(name: str, e: BaseException) -> DataError:
    """The error for a file Pillow cannot read (``e``, one of :func:`_bad_image_errors`), named by ``name``."""
    return DataError(
        f"{name}: not a readable image ({type(e).__name__}: {str(e).strip() or 'no detail'}); "
        "fix or remove it, or set DATA.SKIP_BAD_IMAGES: true to skip such files"
    )


def _cache_key(paths: Sequence[Path], size: int) -> str:
    """A content hash of the sources: each path with its size and modification time (ns), plus the size
    asked. Cheaper than hashing every byte; a file rewritten in place changes its mtime."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": size}).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def decode_images(
    paths: Sequence[Path], size: int, skip_bad: bool = False, cache_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[int], list[str], Path | None]:
    """Decode ``paths`` into ``uint8 (N, C, H, W)`` at ``size`` x ``size``, through the on-disk cache.

    Returns ``(pixels, kept, bad, cache_file)``: ``kept`` are the indices into ``paths`` of the rows of
    ``pixels`` (all of them unless ``skip_bad``), ``bad`` the names of undecodable files, ``cache_file``
    the cache entry used (``None`` when the cache is off: ``cache_dir=False``). A bad file is a
    :class:`DataError` naming it unless ``skip_bad``. ``names``: how errors name each path.
    """
    names = list(names) if names is not None else [str(p) for p in paths]
    cache_file = None
    if cache_dir is not False:
        cache_file = Path(cache_dir or default_cache_dir()).expanduser() / f"{_cache_key(paths, size)}.pt"
        hit = _read_cache(cache_file, len(paths))
        if hit is not None:
            return hit["pixels"], list(hit["kept"]), list(hit["bad"]), cache_file
    from tqdm.auto import tqdm

    bad_errors = _bad_image_errors()
    arrays, gray, kept, bad = [], [], [], []
    # disable=None: no bar where stderr is not a terminal (logs, tests, the app's worker processes)
    progress = tqdm(paths, desc="decoding images", unit="img", disable=True if len(paths) < PROGRESS_MIN_IMAGES else None)
    for i, path in enumerate(progress):
        try:
            array, is_gray = _decode_one(path, size)
        except bad_errors as e:
            if not skip_bad:
                raise bad_image_error(names[i], e) from e
            bad.append(names[i])
            continue
        arrays.append(array)
        gray.append(is_gray)
        kept.append(i)
    if arrays:
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
        if all(gray):
            pixels = pixels[:, :1].contiguous()  # R = G = B for a grayscale source: keep one channel
    else:
        pixels = torch.zeros((0, 1, size, size), dtype=torch.uint8)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")  # written whole, then renamed: never half a file
        torch.save({"pixels": pixels, "kept": kept, "bad": bad}, tmp)
        os.replace(tmp, cache_file)
    return pixels, kept, bad, cache_file


def _read_cache(cache_file: Path, n: int) -> dict | None:
    """The cache entry, or None when there is none or it is damaged (a disk filled mid-write by another tool,
    a file truncated by hand): a damaged entry is decoded again and overwritten, never trusted."""
    if not cache_file.exists():
        return None
    try:
        hit = torch.load(cache_file, weights_only=True)  # tensors, ints and strings only: no code runs
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        warnings.warn(f"{cache_file}: damaged image cache entry, decoding again ({type(e).__name__})", DataWarning,
                      stacklevel=3)
        return None
    ok = (isinstance(hit, dict) and isinstance(hit.get("pixels"), torch.Tensor)
          and len(hit.get("kept", ())) + len(hit.get("bad", ())) == n)
    return hit if ok else None


def _names_note(what: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"{len(names)} {what} ({shown}{more})"


def _warn(notes: list[str]) -> list[str]:
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=3)
    return notes


def _image_dataset(name, source, pixels, labels, ranks, null_values, paths, notes, meta=None, meta_names=(), raw=None):
    try:
        taxonomy, targets = encode_labels(labels, ranks, null_values, source)
    except TaxonomyError as e:
        raise DataError(str(e)) from e
    c, h, _ = pixels.shape[1:]
    streamed = f"; {STATS_NOTE}" if is_lazy(pixels) else ""  # what changes when pixels stream (DATA.STREAM)
    return HierarchicalDataset(
        features=pixels, targets=targets, taxonomy=taxonomy, feature_names=[], name=name,
        raw=labels.reset_index() if raw is None else raw.reset_index(drop=True), feature_notes=f"{'grayscale' if c == 1 else 'RGB'} images, {h}x{h} px{streamed}",
        warnings=[*taxonomy.warnings, *_warn(notes)], meta=meta, meta_names=list(meta_names),
        image_paths=list(paths),
    )


# ---------------------------------------------------------------------- folder trees
def scan_folder(root: Path, num_ranks: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(images, hidden, others, at_root)``: paths relative to ``root`` (POSIX, sorted) of the images at
    depth 1..num_ranks, of hidden entries (a name starting with "."; not entered), of non-image files, and
    of images directly in the root (no label at any rank). An image deeper than ``num_ranks`` folder levels
    is a :class:`DataError` naming it."""
    images, hidden, others, at_root = [], [], [], []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        hidden += [(rel / d).as_posix() for d in dirs if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            path = (rel / f).as_posix()
            if f.startswith("."):
                hidden.append(path)
            elif Path(f).suffix.lower() not in IMAGE_SUFFIXES:
                others.append(path)
            elif len(rel.parts) == 0:
                at_root.append(path)
            elif len(rel.parts) > num_ranks:
                raise DataError(
                    f"{root / path}: is {len(rel.parts)} folder levels below {root}, but DATA.RANKS names "
                    f"{num_ranks} rank(s); each folder level is one rank: add ranks or move the image up"
                )
            else:
                images.append(path)
    return images, hidden, others, at_root


def load_image_folder(
    root: str | Path, ranks: Sequence[str], image_size: int, null_values=None, skip_bad: bool = False,
    cache_dir: str | Path | None = None, stream: bool | str = False, stream_above_mb: float = STREAM_ABOVE_MB_DEFAULT,
) -> HierarchicalDataset:
    """A folder tree: each directory level below ``root`` is one rank, coarse to fine, and an image at
    depth ``d < len(ranks)`` is labelled to rank ``d`` only (finer ranks null: a partial label).

    Hidden entries and non-image files are skipped and counted in ``warnings``, as are images directly
    in the root (labelled at no rank). A folder named by a null value (``NA``, ``unknown``, ...) is null
    at its rank, as in a table. ``stream`` (``DATA.STREAM``: True, False or ``"auto"``) and ``stream_above_mb``:
    keep the pixels on disk, decoded batch by batch (:func:`workbench.streaming.load_pixels`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: DATA.PATH is not a folder" + ("" if root.exists() else " (it does not exist)"))
    ranks = list(ranks)
    images, hidden, others, at_root = scan_folder(root, len(ranks))
    if not images:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in folders below the root; each folder "
                        f"level below it is one rank of {ranks}")
    pixels, kept, bad = load_pixels(root, images, image_size, skip_bad, cache_dir, [str(root / p) for p in images],
                                    stream, stream_above_mb)
    images = [images[i] for i in kept]
    if not images:
        raise DataError(f"{root}: none of the images could be decoded ({_names_note('bad', bad)})")
    rows = [Path(p).parts[:-1] for p in images]
    labels = pd.DataFrame([list(parts) + [None] * (len(ranks) - len(parts)) for parts in rows], columns=ranks,
                          index=pd.Index(images, name=PATH_INDEX), dtype=object)
    notes = []
    if hidden:
        notes.append(f"{root}: skipped {_names_note('hidden file(s)/folder(s)', hidden)}")
    if others:
        notes.append(f"{root}: skipped {_names_note('non-image file(s)', others)}; images are {', '.join(IMAGE_SUFFIXES)}")
    if at_root:
        notes.append(f"{root}: skipped {_names_note('image(s) directly in the root, labelled at no rank', at_root)}")
    if bad:
        notes.append(f"{root}: skipped {_names_note('unreadable image(s)', bad)} (DATA.SKIP_BAD_IMAGES)")
    return _image_dataset(root.name or str(root), str(root), pixels, labels, ranks, null_values, images, notes)


# ---------------------------------------------------------------------- manifests
def _manifest_paths(df: pd.DataFrame, column: str, root: Path, source: str) -> list[str]:
    """The image column's cells as paths relative to ``root``; an error names the first empty cell,
    absolute path, path escaping ``root`` (``..`` or a symlink out) or missing file, by spreadsheet row."""
    top = root.resolve()
    paths, missing = [], []
    for i, cell in enumerate(df[column].tolist()):
        where = f"{source}: column {column!r}, {_at_row(i)}"
        if cell is None or (isinstance(cell, float) and np.isnan(cell)) or not str(cell).strip():
            raise DataError(f"{where}: the image path is empty")
        text = str(cell).strip()
        if Path(text).is_absolute() or text.startswith(("/", "\\")):
            raise DataError(f"{where}: absolute path {text!r} is refused; image paths are relative to DATA.ROOT ({root})")
        full = (root / text).resolve()
        if not full.is_relative_to(top):
            raise DataError(f"{where}: path {text!r} resolves outside DATA.ROOT ({root}) to {full}; "
                            "image paths must stay inside the root")
        if not full.is_file():
            missing.append(i)
        paths.append(text)
    if missing:
        more = [spreadsheet_row(i) for i in missing[1:]]
        rest = f"; {len(more)} more missing: {format_rows(more)}" if more else ""
        raise DataError(f"{source}: column {column!r}, {_at_row(missing[0])}: image file {root / paths[missing[0]]} "
                        f"not found{rest}")
    return paths


def load_image_manifest(
    path: str | Path, root: str | Path | None, image_column: str, ranks: Sequence[str], image_size: int,
    feature_prefix: str | None = None, null_values=None, skip_bad: bool = False, cache_dir: str | Path | None = None,
    split_column: str | None = None, stream: bool | str = False, stream_above_mb: float = STREAM_ABOVE_MB_DEFAULT,
) -> HierarchicalDataset:
    """A manifest (CSV/TSV/Parquet): one row per image, its path in ``image_column`` relative to ``root``
    (default: the manifest's folder), rank columns, and optional numeric metadata columns named by
    ``feature_prefix`` (into ``meta``, fed beside the image). ``split_column``: a column of
    ``train``/``val``/``test`` that becomes ``fixed_split`` (never metadata). Rows are named by spreadsheet row
    in errors."""
    source = str(path)
    df = read_table(path)
    root = Path(root) if root else Path(path).parent
    if not root.is_dir():
        raise DataError(f"{root}: DATA.ROOT is not a folder" + ("" if root.exists() else " (it does not exist)"))
    if image_column not in df.columns:
        raise DataError(f"{source}: image column {image_column!r} (DATA.IMAGE_COLUMN) not found; "
                        f"columns are {list(df.columns)}")
    labels = rank_labels(df, list(ranks), source)
    if split_column in (*ranks, image_column):
        raise DataError(f"{source}: split column {split_column!r} (DATA.SPLIT_COLUMN) is also a rank or the image "
                        "column; it must be a column of its own")
    split = split_column_codes(df, split_column, source) if split_column else None
    meta, meta_names = None, []
    if feature_prefix:
        taken = [*ranks, image_column, *([split_column] if split_column else [])]
        meta_names = _feature_columns(df, taken, None, feature_prefix, None, source)
        values = _numeric_matrix(df, meta_names, source)
        meta = torch.as_tensor(values, dtype=torch.float32)
        check_finite_features(meta, values, meta_names, labels.index, source)
    paths = _manifest_paths(df, image_column, root, source)
    names = [f"{source}, {_at_row(i)}: {root / p}" for i, p in enumerate(paths)]
    pixels, kept, bad = load_pixels(root, paths, image_size, skip_bad, cache_dir, names, stream, stream_above_mb)
    if not kept:
        raise DataError(f"{source}: none of the images could be decoded ({_names_note('bad', bad)})")
    keep = torch.as_tensor(kept, dtype=torch.long)
    notes = [f"{source}: skipped {_names_note('unreadable image(s)', bad)} (DATA.SKIP_BAD_IMAGES)"] if bad else []
    ds = _image_dataset(
        Path(path).name, source, pixels, labels.iloc[kept], list(ranks), null_values, [paths[i] for i in kept], notes,
        meta=None if meta is None else meta[keep], meta_names=meta_names, raw=df.iloc[kept],
    )
    ds.fixed_split = None if split is None else split[keep]
    return ds


# ---------------------------------------------------------------------- animal_mnist
def animal_mnist_files() -> tuple[Path, Path]:
    """The wheel's data and label files, found without importing the package (its loader imports tensorflow)."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"DATA.NAME 'animal_mnist' needs the animal-mnist package: {ANIMAL_MNIST_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = tuple(folder / f for f in ANIMAL_MNIST_FILES)
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: animal_mnist data file not found; reinstall: {ANIMAL_MNIST_INSTALL}")
    return files


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays only: any other global a file names (code to run) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"animal_mnist data file holds {module}.{name}, not a numpy array; reinstall the "
                            "pinned wheel: pip install --no-deps -c constraints.txt animal-mnist")
        return super().find_class(module, name)


def load_animal_mnist(ranks: Sequence[str] | None = None, image_size: int | None = None) -> HierarchicalDataset:
    """animal_mnist (Mohammadi 2025, MIT; the ``animal-mnist`` 0.4 wheel): 10,000 real 28x28 grayscale
    silhouettes, 1,000 per animal, labelled class > order > family > animal by :data:`ANIMAL_MNIST_TAXONOMY`
    (birds: Aves at class, null below). Fixed split: per animal the last :data:`ANIMAL_MNIST_TEST_SHARE` by
    index are test and the :data:`ANIMAL_MNIST_VAL_SHARE` before them val (6,000 / 2,000 / 2,000), whatever
    DATA.SEED, DATA.VAL_FRACTION and DATA.TEST_FRACTION say."""
    data_file, label_file = animal_mnist_files()
    # The files are gzip pickles of numpy arrays. They are read only from the pinned wheel (constraints.txt),
    # never from a user's path, and through an unpickler that builds numpy arrays and nothing else.
    with gzip.open(data_file, "rb") as f:
        images = np.asarray(_ArrayUnpickler(f).load(), dtype=np.uint8)  # (10000, 28, 28)
    with gzip.open(label_file, "rb") as f:
        codes = np.asarray(_ArrayUnpickler(f).load(), dtype=np.int64)  # (10000,), 0..9 in ANIMAL_MNIST_LABELS order
    size = image_size or ANIMAL_MNIST_SIZE
    if size != images.shape[1]:
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))
                           for a in images])
    animals = [ANIMAL_MNIST_LABELS[c] for c in codes]
    full = pd.DataFrame(
        [(*ANIMAL_MNIST_TAXONOMY[a], None if ANIMAL_MNIST_TAXONOMY[a][1] is None else a) for a in animals],
        columns=list(BUILTIN_RANKS["animal_mnist"]), dtype=object,
    )
    ranks = list(ranks or BUILTIN_RANKS["animal_mnist"])
    unknown = [r for r in ranks if r not in full.columns]
    if unknown:
        raise DataError(f"animal_mnist: rank(s) {unknown} not known; its ranks are {list(full.columns)}")
    # per animal, the last shares by index are val then test: stable across seeds and versions of this code
    split = np.full(len(codes), TRAIN_CODE, dtype=np.int64)
    for c in np.unique(codes):
        idx = np.nonzero(codes == c)[0]
        n_test, n_val = (int(round(len(idx) * share)) for share in (ANIMAL_MNIST_TEST_SHARE, ANIMAL_MNIST_VAL_SHARE))
        split[idx[len(idx) - n_test - n_val : len(idx) - n_test]] = VAL_CODE
        split[idx[len(idx) - n_test :]] = TEST_CODE
    pixels = torch.from_numpy(images).unsqueeze(1).contiguous()  # (N, 1, H, W)
    full.insert(0, "animal_mnist_label", animals)
    ds = _image_dataset("animal_mnist", "animal_mnist", pixels, full[ranks], ranks, None,
                        [f"animal_mnist#{i}" for i in range(len(codes))], [], raw=full)
    ds.fixed_split = torch.from_numpy(split)
    ds.feature_notes += (f"; fixed split: the last {ANIMAL_MNIST_TEST_SHARE:.0%} of each animal by index is test, "
                         f"the {ANIMAL_MNIST_VAL_SHARE:.0%} before them val")
    return ds


# ---------------------------------------------------------------------- config dispatch
def load_from_config(data_cfg, ranks: tuple[str, ...] | None) -> HierarchicalDataset:
    """The dataset of a ``DATA`` section with ``NAME: images`` (folder or manifest) or ``animal_mnist``."""
    if data_cfg.NAME == "animal_mnist":
        return _cached_animal_mnist(ranks, data_cfg.IMAGE_SIZE)
    if not ranks:
        raise DataError("`DATA.RANKS` must list the ranks (coarse to fine) when `DATA.NAME` is 'images'")
    size = data_cfg.IMAGE_SIZE or DEFAULT_IMAGE_SIZE
    path = Path(data_cfg.PATH)
    if path.is_dir():
        if data_cfg.SPLIT_COLUMN:
            raise DataError(f"{path}: DATA.SPLIT_COLUMN ({data_cfg.SPLIT_COLUMN!r}) needs a manifest with that column; "
                            "a folder tree has none (its split is drawn by DATA.VAL_FRACTION, DATA.TEST_FRACTION, DATA.SEED)")
        return load_image_folder(path, ranks, size, data_cfg.NULL_VALUES, data_cfg.SKIP_BAD_IMAGES, data_cfg.CACHE_DIR,
                                 data_cfg.STREAM, data_cfg.STREAM_ABOVE_MB)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return load_image_manifest(path, data_cfg.ROOT, data_cfg.IMAGE_COLUMN, ranks, size, data_cfg.FEATURE_PREFIX,
                                   data_cfg.NULL_VALUES, data_cfg.SKIP_BAD_IMAGES, data_cfg.CACHE_DIR,
                                   split_column=data_cfg.SPLIT_COLUMN, stream=data_cfg.STREAM,
                                   stream_above_mb=data_cfg.STREAM_ABOVE_MB)
    if not path.exists():
        raise DataError(f"{path}: DATA.PATH not found; expected a folder tree of images or a manifest "
                        f"({', '.join(MANIFEST_SUFFIXES)})")
    raise DataError(f"{path}: DATA.PATH must be a folder tree of images or a manifest ({', '.join(MANIFEST_SUFFIXES)}), "
                    f"got a {path.suffix or 'suffix-less'} file")


@functools.lru_cache(maxsize=1)  # one entry: 8 MB at 28 px, more at larger sizes
def _cached_animal_mnist(ranks: tuple[str, ...] | None, image_size: int | None) -> HierarchicalDataset:
    """animal_mnist is read once per process per (ranks, size): sweeps and the app load it many times."""
    return load_animal_mnist(list(ranks) if ranks else None, image_size)


__all__ = [
    "ANIMAL_MNIST_TAXONOMY", "ANIMAL_MNIST_LABELS", "decode_images", "load_animal_mnist",
    "load_image_folder", "load_image_manifest", "load_from_config",
]


def fit_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """``uint8 (N, C, H, W)`` with the model's channel count: grey images repeated to RGB, or RGB to grey by
    ITU-R 601-2 luma (Pillow's ``convert("L")``), so the same photo scores the same either way."""
    if pixels.shape[1] == channels:
        return pixels
    if channels == 3:
        return pixels.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    return (pixels.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)

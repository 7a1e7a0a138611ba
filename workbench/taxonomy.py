"""Taxonomy: ranks, vocabularies, parent maps, encode/decode, marginals and LCA heights.

Conventions (DESIGN.md section 2):
- ranks are ordered coarse to fine: ``ranks[0]`` is the coarsest, ``ranks[-1]`` the finest;
- class 0 is *null* at every rank, real classes are ``1..K_r``; a rank has ``K_r + 1`` classes;
- ``parent(r)[c]`` is the class at rank ``r - 1`` of class ``c`` at rank ``r``; ``parent(r)[0] == 0``.

A label row may be partial (null at some ranks). A row whose non-null labels at any two ranks
(adjacent or not) contradict the taxonomy is an error naming the row and the values. A non-null
class must have a non-null parent in at least one row (every non-null class has exactly one parent).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pandas is imported by the functions that take or return frames: the core stays light
    import pandas as pd

DEFAULT_NULL_VALUES: frozenset[str] = frozenset({"", "sp.", "unknown"})
"""Label strings that encode to null (0) at every rank unless overridden. NaN/None are always null."""

NullValues = Iterable[str] | Mapping[str, Iterable[str]] | None


from workbench.errors import DataWarning, TaxonomyError  # noqa: F401 (defined once in errors.py; re-exported)


def _null_sets(ranks: Sequence[str], null_values: NullValues) -> dict[str, frozenset[str]]:
    """Per-rank null label sets: one iterable for every rank, or a mapping rank -> iterable."""
    if null_values is None:
        return {r: DEFAULT_NULL_VALUES for r in ranks}
    if isinstance(null_values, Mapping):
        unknown = set(null_values) - set(ranks)
        if unknown:
            raise TaxonomyError(
                f"null_values names rank(s) {sorted(unknown)} that are not in ranks {list(ranks)}"
            )
        return {r: frozenset(str(v) for v in null_values.get(r, DEFAULT_NULL_VALUES)) for r in ranks}
    shared = frozenset(str(v) for v in null_values)
    return {r: shared for r in ranks}


def _is_null(value: object, nulls: frozenset[str]) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    pd = sys.modules.get("pandas")  # pd.NA / pd.NaT can only come from pandas, so only then is it loaded
    if pd is not None and (value is pd.NA or value is pd.NaT):
        return True
    return str(value).strip() in nulls


MAX_REPORTED = 20
"""Conflicting rows (or classes) listed in one error; the rest are counted ("and 7 more rows")."""


def _row_note(row_ids) -> str:
    """How the row ids in an error count: the index's name where it has one (a file loader names
    its index, e.g. "spreadsheet row numbers, header = row 1"), else nothing (the frame's labels)."""
    name = getattr(row_ids, "name", None)
    return f" ({name})" if name else ""


def format_rows(rows: Sequence) -> str:
    """``"row 4"``, ``"rows 2, 3, 5"``, or the first :data:`MAX_REPORTED` ids then ``"and 5 more"``."""
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(x) for x in rows[:MAX_REPORTED])
    more = f" and {len(rows) - MAX_REPORTED} more" if len(rows) > MAX_REPORTED else ""
    return f"rows {shown}{more}"


def _near_duplicates(ranks: Sequence[str], vocab, source: str) -> list[str]:
    """Per rank, one sentence naming labels that are equal up to case and inner spacing ('Canis lupus',
    'canis  lupus'): they become separate classes, which is rarely what the data means."""
    notes = []
    for rank, names in zip(ranks, vocab):
        groups: dict[str, list[str]] = {}
        for name in names[1:]:
            groups.setdefault(" ".join(name.split()).casefold(), []).append(name)
        dupes = [g for g in groups.values() if len(g) > 1]
        if dupes:
            shown = "; ".join(" / ".join(repr(n) for n in g) for g in dupes[:MAX_REPORTED])
            more = f"; and {len(dupes) - MAX_REPORTED} more groups" if len(dupes) > MAX_REPORTED else ""
            notes.append(
                f"{source}: rank {rank!r} has {len(dupes)} group(s) of labels that differ only in case or spacing "
                f"and are separate classes: {shown}{more}; make them identical if they are the same class"
            )
    return notes


def _check_ranks_present(df: pd.DataFrame, ranks: Sequence[str], source: str) -> None:
    missing = [r for r in ranks if r not in df.columns]
    if missing:
        raise TaxonomyError(
            f"{source}: rank column(s) {missing} missing; columns present: {list(df.columns)}"
        )


def _clean_labels(df: pd.DataFrame, rank: str, nulls: frozenset[str]) -> list[str | None]:
    """The rank's labels as stripped strings, None where null."""
    return [None if _is_null(v, nulls) else str(v).strip() for v in df[rank].tolist()]


@dataclass(frozen=True)
class Taxonomy:
    """A label tree over ``R`` ranks.

    Attributes:
        ranks: rank names, coarse to fine.
        vocab: per rank, the class names; ``vocab[r][0]`` is the null class (``None``).
        parents: per rank, ``LongTensor (K_r + 1,)``; ``parents[0]`` is all zeros.
        null_values: per rank, the label strings that encode to null.
    """

    ranks: tuple[str, ...]
    vocab: tuple[tuple[str | None, ...], ...]
    parents: tuple[torch.Tensor, ...]
    null_values: Mapping[str, frozenset[str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """What :meth:`from_frame` found odd but legal (labels equal up to case/spacing); not part of equality."""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """Derived tables (LCA-height matrices) computed once per taxonomy; the taxonomy itself never changes."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        ranks: Sequence[str],
        null_values: NullValues = None,
        source: str = "label table",
    ) -> Taxonomy:
        """Build the taxonomy from the rank columns of ``df`` (one row per sample).

        ``null_values`` is one collection of strings for every rank, or a mapping
        ``rank -> collection`` (ranks not named keep the defaults). ``source`` names the file in errors.
        """
        ranks = tuple(ranks)
        if not ranks:
            raise TaxonomyError("ranks must name at least one rank column, got []")
        if len(set(ranks)) != len(ranks):
            raise TaxonomyError(f"ranks must be distinct, got {list(ranks)}")
        _check_ranks_present(df, ranks, source)
        nulls = _null_sets(ranks, null_values)
        labels = [_clean_labels(df, r, nulls[r]) for r in ranks]
        vocab = tuple((None, *sorted({v for v in col if v is not None})) for col in labels)
        index = [{name: i for i, name in enumerate(v) if name is not None} for v in vocab]
        parents = [torch.zeros(len(vocab[0]), dtype=torch.long)]
        for r in range(1, len(ranks)):
            parents.append(
                cls._parent_map(ranks, r, labels, index, df.index, source)
            )
        notes = tuple(_near_duplicates(ranks, vocab, source))
        for note in notes:
            warnings.warn(note, DataWarning, stacklevel=2)
        taxonomy = cls(ranks, vocab, tuple(parents), nulls, notes)
        # adjacent ranks agree by construction; a row may still contradict across a null rank
        ids = [[0 if v is None else index[r][v] for v in col] for r, col in enumerate(labels)]
        targets = torch.tensor(ids, dtype=torch.long).T.reshape(len(df), len(ranks))  # (N, R)
        taxonomy._check_consistent(targets, df.index, source)
        return taxonomy

    @staticmethod
    def _parent_map(ranks, r, labels, index, row_ids, source) -> torch.Tensor:
        """Parent of each class at rank ``r``; an error if a class has two parents or none.

        The error lists every class with more than one parent (up to :data:`MAX_REPORTED`), each
        parent with the rows that give it (up to :data:`MAX_REPORTED` rows per parent).
        """
        parent = torch.zeros(len(index[r]) + 1, dtype=torch.long)
        rows_of: dict[str, dict[str, list]] = {}  # child -> parent -> row ids, in row order
        for row, child, par in zip(row_ids, labels[r], labels[r - 1]):
            if child is None or par is None:
                continue
            rows_of.setdefault(child, {}).setdefault(par, []).append(row)
        conflicts = {child: pars for child, pars in rows_of.items() if len(pars) > 1}
        if conflicts:
            lines = [
                f"  {ranks[r]} {child!r}: "
                + "; ".join(f"{ranks[r - 1]} {par!r} in {format_rows(rows)}" for par, rows in pars.items())
                for child, pars in list(conflicts.items())[:MAX_REPORTED]
            ]
            if len(conflicts) > MAX_REPORTED:
                lines.append(f"  and {len(conflicts) - MAX_REPORTED} more {ranks[r]} classes with more than one parent")
            raise TaxonomyError(
                f"{source}: every {ranks[r]} class needs exactly one parent at rank {ranks[r - 1]}; "
                f"{len(conflicts)} {'has' if len(conflicts) == 1 else 'have'} more than one{_row_note(row_ids)}:\n" + "\n".join(lines)
            )
        for child, pars in rows_of.items():
            parent[index[r][child]] = index[r - 1][next(iter(pars))]
        orphans = [name for name, c in index[r].items() if parent[c] == 0]
        if orphans:
            raise TaxonomyError(
                f"{source}: {ranks[r]} class(es) {orphans[:5]} never appear with a non-null "
                f"{ranks[r - 1]}; every non-null class needs exactly one parent"
            )
        return parent

    # ------------------------------------------------------------------ basic queries
    @property
    def num_ranks(self) -> int:
        return len(self.ranks)

    @property
    def num_classes(self) -> list[int]:
        """Per rank, ``K_r + 1`` (null included)."""
        return [len(v) for v in self.vocab]

    def rank_index(self, rank: str | int) -> int:
        if isinstance(rank, int):
            if not 0 <= rank < self.num_ranks:
                raise TaxonomyError(f"rank index must be in [0, {self.num_ranks - 1}], got {rank}")
            return rank
        if rank not in self.ranks:
            raise TaxonomyError(f"unknown rank {rank!r}; ranks are {list(self.ranks)}")
        return self.ranks.index(rank)

    def parent(self, rank: str | int) -> torch.Tensor:
        """``LongTensor (K_r + 1,)``: the class at rank ``r - 1`` of each class at rank ``r``."""
        return self.parents[self.rank_index(rank)]

    def ancestor_map(self, from_rank: str | int, to_rank: str | int) -> torch.Tensor:
        """``LongTensor (K_from + 1,)``: the ancestor at ``to_rank`` (<= from_rank) of each class."""
        f, t = self.rank_index(from_rank), self.rank_index(to_rank)
        if t > f:
            raise TaxonomyError(f"to_rank {self.ranks[t]!r} is finer than from_rank {self.ranks[f]!r}")
        mapping = torch.arange(self.num_classes[f])
        for r in range(f, t, -1):
            mapping = self.parents[r][mapping]
        return mapping

    def ancestors(self, rank: str | int, cls: int) -> list[int]:
        """Class ids of ``cls`` and its ancestors, coarse to fine (length ``r + 1``)."""
        r = self.rank_index(rank)
        return [int(self.ancestor_map(r, k)[cls]) for k in range(r + 1)]

    def descendants(self, rank: str | int, cls: int, to_rank: str | int) -> torch.Tensor:
        """``LongTensor (M,)``: the classes at ``to_rank`` (finer) that descend from ``cls``."""
        r, t = self.rank_index(rank), self.rank_index(to_rank)
        if cls == 0:
            raise TaxonomyError("the null class has no descendants")
        mapping = self.ancestor_map(t, r)
        return torch.nonzero(mapping == cls).flatten()

    def lca_height(self, rank: str | int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Height of the lowest common ancestor of classes ``a`` and ``b`` at ``rank`` (k).

        ``a, b``: ``LongTensor (N,)``. Returns ``LongTensor (N,)``: 0 where ``a == b``, ``h`` where
        their ancestors first agree ``h`` ranks up, ``k + 1`` where they share no ancestor. The null
        class has null ancestors, so a null against a real class has height ``k + 1``.
        """
        k = self.rank_index(rank)
        height = torch.full_like(a, k + 1)
        # walk from the root down: the finest rank where ancestors agree sets the height
        for up in range(k + 1):
            anc = self.ancestor_map(k, up).to(a.device)  # a (K + 1,) map beside the classes: any device
            agree = (anc[a] == anc[b]) & (anc[a] != 0)
            height = torch.where(agree, torch.full_like(a, k - up), height)
        return torch.where(a == b, torch.zeros_like(a), height)

    def lca_height_matrix(self, rank: str | int) -> torch.Tensor:
        """``LongTensor (K_r + 1, K_r + 1)``: entry ``[a, b]`` is :meth:`lca_height` of ``a`` and ``b`` at ``rank``.

        Null included (row/column 0: ``k + 1`` against a real class, 0 against itself). Computed once per
        rank and cached (the taxonomy is immutable); callers must not modify the returned tensor.
        """
        k = self.rank_index(rank)
        key = ("lca_height", k)
        if key not in self._cache:
            n = self.num_classes[k]
            a = torch.arange(n).repeat_interleave(n)  # (n * n,): row index
            b = torch.arange(n).repeat(n)  # (n * n,): column index
            self._cache[key] = self.lca_height(k, a, b).reshape(n, n)
        return self._cache[key]

    def has_leaf(self, rank: str | int) -> torch.Tensor:
        """``BoolTensor (K_r + 1,)``: True for the classes with at least one descendant at the finest rank
        (null included: the null leaf maps to null). A marginal head gives the others log-probability
        ``-inf`` (:meth:`marginal_log_probs`), so no target distribution may put mass on them."""
        k = self.rank_index(rank)
        groups = self.ancestor_map(self.num_ranks - 1, k)  # (K_leaf + 1,)
        return torch.bincount(groups, minlength=self.num_classes[k]) > 0

    # ------------------------------------------------------------------ encode / decode
    def encode(self, df: pd.DataFrame, source: str = "label table") -> torch.Tensor:
        """``LongTensor (N, R)`` of class ids for the rank columns of ``df``.

        Errors name the rank, the value and the row: a label not in the vocabulary, or a row whose
        labels at any two ranks contradict the taxonomy.
        """
        _check_ranks_present(df, self.ranks, source)
        cols = []
        for r, rank in enumerate(self.ranks):
            index = {name: i for i, name in enumerate(self.vocab[r]) if name is not None}
            ids = []
            for row, label in zip(df.index, _clean_labels(df, rank, self.null_values[rank])):
                if label is None:
                    ids.append(0)
                elif label in index:
                    ids.append(index[label])
                else:
                    raise TaxonomyError(
                        f"{source}: row {row}{_row_note(df.index)}: {rank} {label!r} is not in the "
                        f"vocabulary of rank {rank!r} ({len(index)} classes)"
                    )
            cols.append(torch.tensor(ids, dtype=torch.long))
        targets = torch.stack(cols, dim=1) if len(df) else torch.zeros(0, self.num_ranks, dtype=torch.long)
        self._check_consistent(targets, df.index, source)
        return targets

    def _check_consistent(self, targets: torch.Tensor, row_ids, source: str) -> None:
        """Raise if any row's non-null labels at two ranks contradict the tree, listing every such
        row (up to :data:`MAX_REPORTED`, then how many more).

        Every pair of ranks is checked, not only adjacent ones: ``(order A, null, genus g)``
        contradicts the tree when ``g`` belongs to another order. A row is reported once, for its
        first contradicting pair (finer rank first, then the nearest coarser rank).
        """
        first: dict[int, tuple[int, int]] = {}  # row position -> (finer rank, coarser rank)
        for r in range(1, self.num_ranks):
            for u in range(r - 1, -1, -1):
                child, anc = targets[:, r], targets[:, u]  # (N,), (N,)
                bad = (child != 0) & (anc != 0) & (self.ancestor_map(r, u)[child] != anc)  # (N,)
                for i in torch.nonzero(bad).flatten().tolist():
                    first.setdefault(i, (r, u))
        if not first:
            return
        lines = []
        for i in sorted(first)[:MAX_REPORTED]:
            r, u = first[i]
            child = int(targets[i, r])
            expected = self.vocab[u][int(self.ancestor_map(r, u)[child])]
            lines.append(f"  row {row_ids[i]}: {self.ranks[r]} {self.vocab[r][child]!r} belongs to "
                         f"{self.ranks[u]} {expected!r}, but the row says {self.vocab[u][int(targets[i, u])]!r}")
        if len(first) > MAX_REPORTED:
            lines.append(f"  and {len(first) - MAX_REPORTED} more rows")
        raise TaxonomyError(
            f"{source}: {len(first)} {'row contradicts' if len(first) == 1 else 'rows contradict'} the taxonomy"
            f"{_row_note(row_ids)}:\n" + "\n".join(lines)
        )

    def decode(self, targets: torch.Tensor) -> pd.DataFrame:
        """Inverse of :meth:`encode`: ``LongTensor (N, R)`` -> DataFrame of names (None = null)."""
        if targets.ndim != 2 or targets.shape[1] != self.num_ranks:
            raise TaxonomyError(f"targets must have shape (N, {self.num_ranks}), got {tuple(targets.shape)}")
        import pandas as pd

        return pd.DataFrame(
            {rank: [self.vocab[r][int(c)] for c in targets[:, r]] for r, rank in enumerate(self.ranks)}
        )

    # ------------------------------------------------------------------ marginal head mode
    def marginal_log_probs(self, leaf_logits: torch.Tensor) -> list[torch.Tensor]:
        """Log-probabilities at every rank from logits over the finest rank.

        ``leaf_logits``: ``(N, K_leaf + 1)``. Returns a list of ``R`` tensors ``(N, K_r + 1)``:
        ``log p(c at r) = logsumexp`` of the leaf log-probs of ``c``'s descendants (computed per
        group with the group's own max, never as ``log(sum(softmax))``). The null leaf maps to null
        at every rank. A class with no descendant leaf has log-probability ``-inf``.
        """
        leaf = torch.log_softmax(leaf_logits, dim=-1)  # (N, K_leaf + 1)
        out = []
        for r in range(self.num_ranks - 1):
            groups = self.ancestor_map(self.num_ranks - 1, r).to(leaf.device)  # (K_leaf + 1,)
            out.append(_grouped_logsumexp(leaf, groups, self.num_classes[r]))
        out.append(leaf)
        return out

    def to_dict(self) -> dict:
        """A JSON-able description (vocabularies and parents) for configs and checkpoints."""
        return {
            "ranks": list(self.ranks),
            "vocab": [list(v[1:]) for v in self.vocab],
            "parents": [p.tolist() for p in self.parents],
            "null_values": {r: sorted(v) for r, v in self.null_values.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Taxonomy:
        return cls(
            tuple(d["ranks"]),
            tuple((None, *v) for v in d["vocab"]),
            tuple(torch.tensor(p, dtype=torch.long) for p in d["parents"]),
            {r: frozenset(v) for r, v in d["null_values"].items()},
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Taxonomy) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.ranks, self.vocab))


def _grouped_logsumexp(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``values (N, M)``, ``groups (M,)`` in ``[0, G)`` -> ``(N, G)`` logsumexp within each group."""
    n = values.shape[0]
    index = groups.expand(n, -1)  # (N, M)
    gmax = torch.full((n, num_groups), -math.inf, dtype=values.dtype, device=values.device)
    gmax = gmax.scatter_reduce(1, index, values, reduce="amax", include_self=True)  # (N, G)
    # a detached max keeps the gradient exact; empty groups use 0 to avoid inf - inf
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax)).detach()
    summed = torch.zeros_like(gmax).index_add(1, groups, torch.exp(values - shift.gather(1, index)))
    # an empty group has sum 0: -inf, with a zero (not NaN) gradient through the clamp
    tiny = torch.finfo(summed.dtype).tiny
    logs = torch.where(summed > 0, torch.log(summed.clamp_min(tiny)), torch.full_like(summed, -math.inf))
    return logs + shift

"""Shared hypothesis strategies and slow references for random taxonomies (tests only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from workbench.taxonomy import Taxonomy


def class_name(rank: int, c: int) -> str:
    return f"r{rank}c{c:03d}"  # zero-padded: sorted vocabulary order == creation order == id


@st.composite
def trees(draw, max_ranks: int = 4, max_classes: int = 6):
    """``(sizes, parents)``: K_r per rank and, per rank, a list parent[c] (index 0 = null)."""
    num_ranks = draw(st.integers(1, max_ranks))
    sizes = [draw(st.integers(1, max_classes))]
    parents = [[0] * (sizes[0] + 1)]
    for _ in range(1, num_ranks):
        k = draw(st.integers(1, max_classes))
        parents.append([0] + [draw(st.integers(1, sizes[-1])) for _ in range(k)])
        sizes.append(k)
    return sizes, parents


def tree_frame(sizes, parents) -> pd.DataFrame:
    """One row per class at every rank: its path from the root, null below it."""
    num_ranks = len(sizes)
    rows = []
    for r in range(num_ranks):
        for c in range(1, sizes[r] + 1):
            path: list[object] = [np.nan] * num_ranks
            cur = c
            for u in range(r, -1, -1):
                path[u] = class_name(u, cur)
                cur = parents[u][cur]
            rows.append(path)
    return pd.DataFrame(rows, columns=[f"rank{r}" for r in range(num_ranks)], dtype=object)


def tree_taxonomy(sizes, parents) -> Taxonomy:
    return Taxonomy.from_frame(tree_frame(sizes, parents), [f"rank{r}" for r in range(len(sizes))])


def ref_ancestor(parents, rank: int, c: int, to_rank: int) -> int:
    for r in range(rank, to_rank, -1):
        c = parents[r][c]
    return c


def ref_lca_height(parents, k: int, a: int, b: int) -> int:
    """Slow reference: walk up the parent lists; first agreeing non-null ancestor sets the height."""
    if a == b:
        return 0
    for up in range(k, -1, -1):
        x, y = ref_ancestor(parents, k, a, up), ref_ancestor(parents, k, b, up)
        if x == y and x != 0:
            return k - up
    return k + 1

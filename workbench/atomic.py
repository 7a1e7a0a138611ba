"""Atomic file writes: a reader (or a resumed run) sees the old file or the whole new one, never half of one.

Standard library only. Every file the workbench replaces in place (checkpoints, ``best.pt``, bundles, embedding
parts and files) is written through :func:`atomic_path`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """The temp file beside ``path`` that :func:`atomic_path` writes: ``.<name>.<pid>.tmp`` (hidden; one per
    process, so two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder to write to; when the block ends without an error it is renamed
    over ``path`` (after an ``fsync`` when asked: a checkpoint must survive a power cut, not only a crash).
    When the block fails the temp file is removed (a half-written file from a full disk must not keep the
    space); a killed process leaves it behind, never under ``path``'s name.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

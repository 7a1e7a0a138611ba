"""Streamed image sets (issue 13 item 4): pixels decoded from disk batch by batch, in DataLoader workers.

Small image sets are decoded once into a ``uint8 (N, C, H, W)`` tensor (:func:`workbench.images.decode_images`).
A set too large for that (``DATA.STREAM: true``, or ``auto`` when the decoded size would exceed
``DATA.STREAM_ABOVE_MB``) keeps only its file paths: :class:`LazyImages` stands in for the tensor wherever the
dataset and the trainer use it (``.shape``, ``.dim()``, ``.dtype``, ``len``, row indexing, so
:meth:`~workbench.data.HierarchicalDataset.subset` and the splits work unchanged), and :class:`StreamLoader`
decodes the rows of each batch in ``DATA.NUM_WORKERS`` worker processes. Both roads decode with the same
:func:`workbench.images._decode_one`, so they give the same pixels, and the trainer draws the same batch order
for both, so they train to the same weights.

What streaming changes, and why:
- Files are checked by their header when the data is loaded (cheap: nothing is decoded), so a file that opens
  but is truncated, or that changes or vanishes later, stops the run when its batch is decoded, with a
  :class:`DataError` naming it: a batch is never silently dropped (that would change what the run saw).
- The channel count comes from the headers: 1 when every file is stored in a one-channel mode, else 3. (The
  in-memory road also keeps 1 channel for RGB files whose pixels are all grey, which needs every pixel.)
- The content hash (:func:`workbench.data.dataset_hash`) covers each file's path, size and modification time,
  not its pixels (:meth:`LazyImages.fingerprint`), and the normalisation statistics come from a fixed seeded
  sample of at most :data:`STATS_SAMPLE` images (:func:`workbench.augment.channel_stats`).

Pillow and :mod:`workbench.images` are imported inside the functions that need them: :mod:`workbench.data`
imports this module, and :mod:`workbench.images` imports :mod:`workbench.data`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from workbench.errors import DataError

BYTES_PER_MB = 2**20
STATS_SAMPLE = 2000
"""A streamed set's normalisation statistics come from at most this many images (decoding every image of a
set too large for memory would cost as long as an epoch): a fixed seeded sample, the same every run."""
STATS_SEED = 0
STATS_NOTE = (f"streamed from disk (DATA.STREAM): decoded batch by batch in DataLoader workers; normalisation "
              f"statistics from a fixed sample of at most {STATS_SAMPLE:,} training images")
"""Said in a streamed dataset's ``feature_notes`` (the Data page and ``describe()`` show it)."""


class LazyImages:
    """A stand-in for ``uint8 (N, C, H, W)`` images that are decoded only when asked (:meth:`decode`).

    Holds each image's path relative to ``root`` (UTF-8 bytes in one numpy array: no per-row Python
    object, so forked DataLoader workers share it instead of copying it page by page), the square side
    ``size`` and the channel count. Indexing with a ``LongTensor``, a ``BoolTensor``, a slice or a list gives a
    new :class:`LazyImages` over those rows (nothing decoded); an integer gives that image decoded, ``(C, H, W)``.
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, root: str | Path, paths: Sequence[str] | np.ndarray, size: int, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"LazyImages: channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        paths = np.asarray(paths)
        # a bytes array as given (an index of another LazyImages), else str paths encoded once
        self.paths = paths if paths.dtype.kind == "S" else np.array([os.fsencode(str(p)) for p in paths], dtype=bytes)
        self.size, self.channels = int(size), int(channels)

    # ------------------------------------------------------------------ the tensor-like surface
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), self.channels, self.size, self.size))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            return self.decode(torch.tensor([int(index)]))[0]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        elif isinstance(index, list):
            index = np.asarray(index, dtype=np.int64 if not index or not isinstance(index[0], bool) else bool)
        return LazyImages(self.root, np.atleast_1d(self.paths[index]), self.size, self.channels)

    def to(self, *args, **kwargs) -> torch.Tensor:
        """These rows decoded, then ``Tensor.to(*args, **kwargs)``: what code written for in-memory images gets
        when it moves a batch (``Batch.to``) or casts a few thumbnails. The trainer decodes in workers instead."""
        return self.decode().to(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images, {self.channels} x {self.size} x {self.size}, root {str(self.root)!r})"

    # ------------------------------------------------------------------ decoding
    def path(self, i: int) -> Path:
        """The full path of row ``i``."""
        return self.root / os.fsdecode(self.paths[i])

    def decode(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """``uint8 (B, C, H, W)`` of the rows in ``index`` (default: all), decoded with the same function as the
        in-memory road (:func:`workbench.images._decode_one`). A file that cannot be decoded now (changed,
        truncated or removed since the data was loaded) is a :class:`DataError` naming it."""
        from workbench.images import _bad_image_errors, _decode_one

        rows = range(len(self)) if index is None else (index.tolist() if isinstance(index, torch.Tensor) else list(index))
        bad_errors = _bad_image_errors()
        # filled as (B, C, H, W), so the tensor has the plain contiguous strides an indexed in-memory batch has
        # (a permuted (B, H, W, 1) array passes as contiguous with other strides, and conv kernels then pick
        # another code path, with other rounding)
        out = np.empty((len(rows), self.channels, self.size, self.size), dtype=np.uint8)
        for k, i in enumerate(rows):
            path = self.path(i)
            try:
                array, _ = _decode_one(path, self.size)  # (H, W, 3)
            except bad_errors as e:
                raise DataError(
                    f"{path}: not a readable image ({type(e).__name__}: {str(e).strip() or 'no detail'}); a streamed "
                    "set (DATA.STREAM) checks only each file's header when it loads and decodes the file at its batch, "
                    "so it is truncated, or changed or removed since: fix, restore or remove it and start the run again "
                    "(DATA.STREAM: false with DATA.SKIP_BAD_IMAGES: true finds and skips all such files at load)"
                ) from e
            out[k] = array.transpose(2, 0, 1)[: self.channels]  # grey decodes to R = G = B: the first channel is it
        return torch.from_numpy(out)

    def fingerprint(self) -> str:
        """A hash of the sources without reading pixels: each row's path (relative to the root, so a moved tree
        keeps it), size in bytes and modification time (ns), in row order, plus the decoded size and channels."""
        h = hashlib.sha256(json.dumps({"size": self.size, "channels": self.channels}).encode())
        for i, rel in enumerate(self.paths):
            try:
                st = os.stat(self.path(i))
            except OSError as e:
                raise DataError(f"{self.path(i)}: cannot read the image file's size and time ({e.strerror or e}); "
                                "it was listed when the data was loaded") from None
            h.update(rel + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def is_lazy(x) -> bool:
    """Whether ``x`` (a dataset's ``features``) is a streamed image set."""
    return isinstance(x, LazyImages)


# ---------------------------------------------------------------------- loading
def decoded_mb(n: int, channels: int, size: int) -> float:
    """Megabytes (2^20 bytes) of ``n`` decoded ``uint8`` images of ``channels`` x ``size`` x ``size``."""
    return n * channels * size * size / BYTES_PER_MB


def open_images(
    root: Path, rel_paths: Sequence[str], size: int, skip_bad: bool = False, names: Sequence[str] | None = None,
) -> tuple[LazyImages, list[int], list[str]]:
    """``(LazyImages, kept, bad)`` for the images ``root / rel_paths``, reading only each file's header (its
    format and mode): a file Pillow cannot open is a :class:`DataError` naming it (``names[i]``), or skipped and
    listed in ``bad`` with ``skip_bad``. One channel when every file is stored in a one-channel mode, else 3."""
    from PIL import Image

    from workbench.images import GRAY_MODES, _bad_image_errors, bad_image_error

    names = list(names) if names is not None else [str(root / p) for p in rel_paths]
    bad_errors = _bad_image_errors()
    kept, bad, gray = [], [], True
    for i, rel in enumerate(rel_paths):
        try:
            with Image.open(root / rel) as im:  # reads the header only
                mode = im.mode
        except bad_errors as e:
            if not skip_bad:
                raise bad_image_error(names[i], e) from e
            bad.append(names[i])
            continue
        kept.append(i)
        gray = gray and mode in GRAY_MODES
    return LazyImages(root, [rel_paths[i] for i in kept], size, 1 if gray else 3), kept, bad


def load_pixels(
    root: Path, rel_paths: Sequence[str], size: int, skip_bad: bool = False, cache_dir=None,
    names: Sequence[str] | None = None, stream: bool | str = "auto", stream_above_mb: float | None = None,
) -> tuple[torch.Tensor | LazyImages, list[int], list[str]]:
    """``(pixels, kept, bad)`` of the images ``root / rel_paths``: decoded into memory through the cache
    (:func:`workbench.images.decode_images`), or a :class:`LazyImages` when streaming.

    ``stream``: ``True`` streams, ``False`` decodes, ``"auto"`` streams when the decoded size ``N x C x H x W``
    bytes would exceed ``stream_above_mb`` megabytes (default ``DATA.STREAM_ABOVE_MB``'s). ``C`` is first taken as
    3 (no file opened: small sets decode straight away); only above the limit are the headers read for the true
    channel count.
    """
    if stream_above_mb is None:
        from workbench.config import STREAM_ABOVE_MB_DEFAULT  # here, not at the top: pydantic is slow to import

        stream_above_mb = STREAM_ABOVE_MB_DEFAULT
    if stream not in (True, False, "auto"):
        raise ValueError(f"stream must be True, False or 'auto', got {stream!r}")
    from workbench.images import decode_images

    def decode():
        pixels, kept, bad, _ = decode_images([root / p for p in rel_paths], size, skip_bad, cache_dir, names=names)
        return pixels, kept, bad

    if stream is False or (stream == "auto" and decoded_mb(len(rel_paths), 3, size) <= stream_above_mb):
        return decode()
    lazy, kept, bad = open_images(root, rel_paths, size, skip_bad, names)
    if stream == "auto" and decoded_mb(len(lazy), lazy.channels, size) <= stream_above_mb:
        return decode()  # grayscale: a third of the RGB bound, under the limit after all
    return lazy, kept, bad


# ---------------------------------------------------------------------- the DataLoader
class DecodeFailed:
    """What a worker returns instead of pixels when a file cannot be decoded: the message travels back whole,
    so the main process raises a one-line :class:`DataError` (an exception raised inside a worker would come
    back with the worker's traceback pasted into its message)."""

    def __init__(self, message: str):
        self.message = message


class _Decode(Dataset):
    """Stateless: each item *is* the batch to decode (a :class:`LazyImages` of B rows, sent by the sampler),
    so one pool of workers serves every split the trainer feeds, and no worker holds a copy of any split."""

    def __getitem__(self, rows: LazyImages) -> torch.Tensor | DecodeFailed:
        try:
            return rows.decode()
        except DataError as e:
            return DecodeFailed(str(e))


class _Feed(Sampler):
    """The batches of the current pass, set by :meth:`StreamLoader.__call__` before each pass."""

    def __init__(self):
        self.batches: Iterable[LazyImages] = ()

    def __iter__(self) -> Iterator[LazyImages]:
        return iter(self.batches)


class StreamLoader:
    """A torch DataLoader that decodes given batches of a :class:`LazyImages` in ``num_workers`` processes
    (0: in this process), in the order given, ``pin_memory`` for a fast copy to CUDA. With workers they persist
    across passes (epochs, evaluations): started once, not once per epoch. Its own random generator, so using
    it never moves torch's global random state (dropout, and a resumed run, see the same numbers with and
    without it). One pass at a time: starting a pass ends the previous one."""

    def __init__(self, num_workers: int = 0, pin_memory: bool = False):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self._feed = _Feed()
        self._pass = 0
        self.loader = DataLoader(
            _Decode(), batch_size=None, sampler=self._feed, num_workers=num_workers, pin_memory=pin_memory,
            persistent_workers=num_workers > 0, generator=torch.Generator(),
            worker_init_fn=_worker_init,
        )

    def __call__(self, batches: Iterable[LazyImages]) -> Iterator[torch.Tensor]:
        """``uint8 (B, C, H, W)`` per batch of ``batches`` (each a :class:`LazyImages`; read lazily, a few
        batches ahead), in that order."""
        self._pass += 1
        self._feed.batches = batches
        return self._read(self._pass, iter(self.loader))

    def _read(self, number: int, it: Iterator) -> Iterator[torch.Tensor]:
        for x in it:
            if number != self._pass:  # persistent workers share one iterator: a newer pass took it over
                raise RuntimeError("StreamLoader: a new pass started before this one ended; read passes one at a time")
            if isinstance(x, DecodeFailed):
                raise DataError(x.message)
            yield x


__all__ = ["STATS_NOTE", "STATS_SAMPLE", "LazyImages", "StreamLoader", "decoded_mb", "is_lazy", "load_pixels", "open_images"]


def _worker_init(worker_id: int) -> None:
    """A decoding worker drops its inherited copy of the trainer's run lock, so that a killed trainer's lock is
    free the moment the trainer dies, not when its workers notice (see ``trainer.HELD_LOCK_FDS``)."""
    from workbench.trainer import release_inherited_locks

    release_inherited_locks()

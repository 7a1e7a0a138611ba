"""Frozen embeddings of an image dataset (issue 15 item 3; DESIGN.md 3.8): run a backbone once, then sweep fast.

:func:`embed_dataset` (``python -m workbench embed --config cfg.yaml --out feats.parquet``) loads the config's
image data (a folder tree, a manifest or ``animal_mnist``), builds the backbone frozen in eval mode and writes
one Parquet row per image:

- ``emb_0 .. emb_{D-1}`` (float32): :meth:`workbench.models.HierarchicalModel.embed` without metadata, i.e. the
  backbone's output before the heads (after the model's own input normalisation);
- the rank columns, named as ``DATA.RANKS`` (class names; None = null);
- ``group``: the manifest's ``DATA.GROUP_BY`` column, when set (multi-view sets: train on the file with
  ``DATA.GROUP_BY: group``); absent otherwise;
- ``split``: ``train``/``val``/``test``, the split training on the images would use (the data's fixed split, or
  :func:`workbench.data.split_dataset`'s draw with ``DATA.VAL_FRACTION``/``TEST_FRACTION``/``SEED``; drawn per
  group when there are groups, so a group never straddles two splits);
- ``source``: the image path relative to the root (``animal_mnist#<index>`` for the built-in set).

Training on the output: ``DATA.NAME: file``, ``DATA.PATH: feats.parquet``, ``DATA.FEATURE_PREFIX: emb_``,
``DATA.RANKS`` as here and ``DATA.SPLIT_COLUMN: split`` (the same split as the images').

The weights (exactly one of): ``TRAIN.INIT_FROM``, a trained image run (a run id in ``TRACKING.STORE``, its
folder, its ``checkpoint.pt`` / ``best.pt``, or an exported bundle): its backbone and input normalisation, built
with *that run's* ``MODEL`` settings (the weights fix the architecture; this config's ``MODEL`` is not used);
or ``MODEL.PRETRAINED``, a local weights file for this config's ``MODEL.BACKBONE`` (``resnet``, ``timm``,
``torchvision``), normalised with the training split's channel statistics as the trainer does.

Resumable: rows are embedded in chunks, each written as one part file into ``<out>.parts/`` (whole or not at
all: a temp file renamed into place). A rerun with the same fingerprint (data content, labels, split, groups,
weights, architecture, chunk size) skips the finished parts; another fingerprint is an error, never a mix. The
parts are then streamed into ``out`` (temp file + rename) and the folder is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.atomic import atomic_path
from workbench.config import Config
from workbench.data import DataError, HierarchicalDataset, dataset_hash, load_dataset, split_dataset
from workbench.errors import ConfigError, StoreError
from workbench.models import IMAGE_BACKBONES, HierarchicalModel, build_model, load_pretrained
from workbench.names import BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, SPLITS
from workbench.streaming import StreamLoader, is_lazy

log = logging.getLogger(__name__)

EMBED_PREFIX = "emb_"  # emb_0 .. emb_{D-1}; train on the file with DATA.FEATURE_PREFIX: emb_
GROUP_COLUMN, SPLIT_COLUMN, SOURCE_COLUMN = "group", "split", "source"
EMBED_CHUNK_ROWS = 2048  # rows per part file: the work an interruption can lose
OUT_SUFFIXES = (".parquet", ".pq")
PARTS_SUFFIX = ".parts"  # <out>.parts/: the finished chunks of an embedding under way
FINGERPRINT_FILE = "fingerprint.json"
LOCK_FILE = "lock"
EMBED_FORMAT = "workbench-embeddings"
EMBED_VERSION = 1  # bump when the same inputs would give other numbers or columns (parts of older runs are refused)
EMBEDDING_PARTS = ("backbone.", "input.")  # the state-dict prefixes of what makes the embedding (not the heads)
METADATA_KEY = b"workbench.embed"  # the Parquet schema metadata entry describing the file (JSON)


def part_name(k: int) -> str:
    """The file of the ``k``-th chunk (0-based) in the parts folder."""
    return f"part-{k:06d}.parquet"


def parts_folder(out: str | os.PathLike) -> Path:
    """``<out>.parts``: where the chunks of ``out`` are kept until the whole file is written."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


@dataclass
class EmbedReport:
    """What :func:`run_embedding` did: the file, its shape, the weights used and how much was resumed."""

    path: Path
    rows: int
    dim: int
    parts: int
    reused_parts: int
    weights: str
    seconds: float
    ranks: list[str]  # the rank columns, coarse to fine
    grouped: bool  # whether the file has a group column (DATA.GROUP_BY)


# ---------------------------------------------------------------------- checks
def check_out_path(out: str | os.PathLike) -> Path:
    """``--out``: a Parquet file path (not a folder); its parts folder must not be a file."""
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: --out is a folder; give the embeddings file to write, e.g. {out / 'embeddings.parquet'}")
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise DataError(f"{out}: the embeddings file must end in {', '.join(OUT_SUFFIXES)}, got "
                        f"{out.suffix or 'no suffix'!r}")
    parts = parts_folder(out)
    if parts.exists() and not parts.is_dir():
        raise DataError(f"{parts}: is a file, but embed keeps its unfinished parts in a folder of that name; "
                        "move the file or use another --out")
    return out


def _weights_choice(cfg: Config) -> None:
    """Exactly one source of weights: a frozen random network gives embeddings that mean nothing."""
    init, pretrained = cfg.TRAIN.INIT_FROM, cfg.MODEL.PRETRAINED
    if init and pretrained:
        raise ConfigError(f"embed takes its weights from one place: `TRAIN.INIT_FROM` ({init!r}) or "
                          f"`MODEL.PRETRAINED` ({pretrained!r}); unset one")
    if not init and not pretrained:
        raise ConfigError("embed needs trained weights: set `TRAIN.INIT_FROM` (a trained image run: run id, run folder, "
                          "checkpoint or bundle) or `MODEL.PRETRAINED` (a local weights file for MODEL.BACKBONE); a "
                          "random backbone's embeddings mean nothing")
    if pretrained and cfg.MODEL.BACKBONE not in IMAGE_BACKBONES:
        raise ConfigError(f"`MODEL.BACKBONE` must be an image backbone ({', '.join(IMAGE_BACKBONES)}) to embed with "
                          f"MODEL.PRETRAINED, got {cfg.MODEL.BACKBONE!r}")


# ---------------------------------------------------------------------- TRAIN.INIT_FROM
def init_weights(ref: str, store_path: str | os.PathLike) -> dict:
    """The trained image run ``ref`` names: a checkpoint or bundle file, a run folder (its ``best.pt``, else its
    ``checkpoint.pt``) or a run id in the store at ``store_path`` (its selected weights, as ``predict`` uses).

    Returns ``{"model": state dict, "config": the run's config dict, "input_shape": [C, H, W] or None (unknown
    for a bare checkpoint.pt), "what": the weights in words}``; a :class:`ConfigError` naming ``ref`` otherwise.
    """
    from workbench.bundle import load_bundle, run_bundle
    from workbench.store import RUN_ID_RE, RunStore
    from workbench.trainer import load_checkpoint

    key = "`TRAIN.INIT_FROM`"
    path = Path(ref)
    if path.is_dir():
        found = [path / n for n in (BEST_CHECKPOINT_NAME, CHECKPOINT_NAME) if (path / n).is_file()]
        if not found:
            raise ConfigError(f"{key} {ref!r} is a folder without {BEST_CHECKPOINT_NAME} or {CHECKPOINT_NAME}; give a "
                              "run folder, a checkpoint file, an exported bundle or a run id")
        path = found[0]
    try:
        if path.is_file():
            state = load_checkpoint(path)  # tensors and plain data only; a StoreError names the file
            if "format" in state:  # an exported bundle: checked as `predict` checks it
                bundle = load_bundle(path)
                return {"model": bundle["model"], "config": bundle["config"],
                        "input_shape": bundle["input"]["input_shape"],
                        "what": f"bundle {path} (run {bundle['run_id']}, {bundle['weights']})"}
            if not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
                raise ConfigError(
                    f"{key} {str(path)!r}: not a workbench checkpoint or bundle (keys: "
                    f"{', '.join(map(str, list(state)[:10])) or 'none'}); a file of backbone weights alone goes in "
                    "MODEL.PRETRAINED, with MODEL.BACKBONE (and WIDTH, DEPTH or ARCH) set to fit it")
            epoch = f", epoch {int(state['epoch']) + 1}" if "epoch" in state else ""
            return {"model": state["model"], "config": state["config"], "input_shape": state.get("input_shape"),
                    "what": f"{path} (run {state.get('run_id', 'unknown')}{epoch})"}
        store_file = Path(store_path)
        if store_file.is_file() and RUN_ID_RE.fullmatch(ref):
            store = RunStore.open_existing(store_file)
            if store.has_run(ref):
                bundle = run_bundle(store, ref)
                return {"model": bundle["model"], "config": bundle["config"],
                        "input_shape": bundle["input"]["input_shape"], "what": f"run {ref} ({bundle['weights']})"}
    except StoreError as e:
        raise ConfigError(f"{key} {e}") from None
    where = f"a run id in {store_file}" if store_file.is_file() else f"a run id (there is no run store at {store_file})"
    raise ConfigError(f"{key} must be {where}, a run folder, a checkpoint file (checkpoint.pt, best.pt) or an "
                      f"exported bundle, got {ref!r}: no such run, file or folder")


def _load_parts(model: HierarchicalModel, state: dict, what: str) -> None:
    """Load the backbone and input-stage tensors of a whole model's ``state`` into ``model`` (its heads stay
    unused); any missing, unexpected or mis-shaped tensor is listed in the error."""
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(EMBEDDING_PARTS)}
    theirs = {k: v for k, v in state.items() if k.startswith(EMBEDDING_PARTS)}
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}" for k in sorted(set(ours) & set(theirs))
              if theirs[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise ConfigError(f"`TRAIN.INIT_FROM` {what}: its weights do not fit the backbone its config builds "
                          f"({'; '.join(parts)}); the checkpoint is damaged or from another version")
    model.load_state_dict({**model.state_dict(), **theirs})


# ---------------------------------------------------------------------- the frozen model
@dataclass
class FrozenBackbone:
    """A model in eval mode with no gradients, whose :meth:`~HierarchicalModel.embed` is the embedding; ``channels``:
    the channel count it takes (grey data is repeated to RGB, RGB turned grey, as ``predict`` does)."""

    model: HierarchicalModel
    channels: int
    what: str  # where the weights came from, in words
    arch: dict  # MODEL.BACKBONE / WIDTH / DEPTH / ARCH / HIDDEN of the network: part of the fingerprint

    @property
    def dim(self) -> int:
        return int(self.model.backbone.out_dim)


def frozen_backbone(cfg: Config, ds: HierarchicalDataset, train_rows: torch.Tensor,
                    info: dict | None = None) -> FrozenBackbone:
    """The configured backbone with its weights, frozen, in eval mode: ``info`` (:func:`init_weights` of
    ``TRAIN.INIT_FROM``; looked up when None and the key is set), else ``MODEL.PRETRAINED``. ``train_rows``: the
    training split's rows of ``ds``, whose channel statistics normalise the input when the weights come from
    ``MODEL.PRETRAINED`` (as the trainer would; an INIT_FROM run brings its own)."""
    from workbench.augment import channel_stats

    c, h, w = ds.input_shape
    if cfg.TRAIN.INIT_FROM:
        info = info or init_weights(cfg.TRAIN.INIT_FROM, cfg.TRACKING.STORE)
        run_cfg = Config.from_run(info["config"], source=f"`TRAIN.INIT_FROM` {cfg.TRAIN.INIT_FROM!r}")
        m = run_cfg.MODEL
        if m.BACKBONE not in IMAGE_BACKBONES or "input.mean" not in info["model"]:
            raise ConfigError(f"`TRAIN.INIT_FROM` {info['what']}: a model of MODEL.BACKBONE {m.BACKBONE!r}, not an image "
                              f"model; embed needs a trained image run ({', '.join(IMAGE_BACKBONES)})")
        channels = int(info["model"]["input.mean"].shape[0])
        shape = info["input_shape"]
        if shape is not None and list(shape[1:]) != [h, w]:
            raise ConfigError(f"`DATA.IMAGE_SIZE` gives {h}x{w} images, but the `TRAIN.INIT_FROM` model ({info['what']}) "
                              f"was trained on {shape[1]}x{shape[2]}; set DATA.IMAGE_SIZE: {shape[1]}")
        model = build_model(m.BACKBONE, m.HIDDEN, m.HEAD, w, ds.taxonomy, m.DROPOUT, input_shape=(channels, h, w),
                            width=m.WIDTH, depth=m.DEPTH, arch=m.ARCH)
        _load_parts(model, info["model"], info["what"])
        what = info["what"]
    else:
        m = cfg.MODEL
        channels = c
        model = build_model(m.BACKBONE, m.HIDDEN, m.HEAD, w, ds.taxonomy, m.DROPOUT, input_shape=(c, h, w),
                            width=m.WIDTH, depth=m.DEPTH, arch=m.ARCH)
        if cfg.AUG.NORMALIZE:  # as Trainer._build: the training split's statistics, before the weights load
            model.input.set_stats(*channel_stats(ds.features[train_rows]))
        load_pretrained(model, m.PRETRAINED)
        what = f"MODEL.PRETRAINED {m.PRETRAINED}"
    model.requires_grad_(False)
    model.eval()
    arch = {"BACKBONE": m.BACKBONE, "WIDTH": m.WIDTH, "DEPTH": m.DEPTH, "ARCH": m.ARCH}
    return FrozenBackbone(model, channels, what, arch)


# ---------------------------------------------------------------------- rows: labels, group, split, source
def _groups(ds: HierarchicalDataset, data_cfg, source: str) -> pd.Series:
    """The manifest's ``DATA.GROUP_BY`` column, one id per image (as text unless the ids are integers); an empty
    id is an error naming the row and its image."""
    column = data_cfg.GROUP_BY
    is_manifest = data_cfg.NAME == "images" and not Path(data_cfg.PATH).is_dir()
    if not is_manifest or ds.raw is None or column not in ds.raw.columns:
        what = (f"columns are {[str(c) for c in ds.raw.columns]}" if is_manifest and ds.raw is not None
                else "a folder tree or a built-in image set has no such column")
        raise DataError(f"{source}: `DATA.GROUP_BY` column {column!r} not found; the group ids of images come from a "
                        f"manifest column ({what})")
    values = ds.raw[column].reset_index(drop=True)
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        i = int(np.argmax(empty.to_numpy()))
        raise DataError(f"{source}: column {column!r} (DATA.GROUP_BY), image {ds.image_paths[i]}: the group id is "
                        "empty; every image needs one")
    if not pd.api.types.is_integer_dtype(values):
        values = values.astype(str)  # one Parquet type for the column, whatever mix the cells held
    return values


def split_codes(ds: HierarchicalDataset, data_cfg, groups: pd.Series | None = None) -> torch.Tensor:
    """``LongTensor (N,)`` split codes (an index into :data:`workbench.names.SPLITS`) of ``ds``'s rows: the split
    :func:`~workbench.data.split_dataset` makes of ``ds`` with ``data_cfg``'s fractions and seed (its fixed split
    when it has one). With ``groups`` (one id per row) and no fixed split the draw is over groups (each stratified
    by its first row's labels), so every row of a group gets its group's split."""
    n = len(ds)
    if groups is not None and ds.fixed_split is None:
        gid, _ = pd.factorize(groups)  # (N,) group number per row, in order of first appearance
        first = np.unique(gid, return_index=True)[1]  # (G,) each group's first row
        targets, fixed = ds.targets[torch.from_numpy(first)], None
    else:
        gid, targets, fixed = np.arange(n), ds.targets, ds.fixed_split
    # split_dataset is the one home of the rule; it runs on labels only (no pixels are indexed or copied)
    light = HierarchicalDataset(features=torch.zeros(len(targets), 0), targets=targets, taxonomy=ds.taxonomy,
                                feature_names=[], name=ds.name, raw=pd.DataFrame({"row": np.arange(len(targets))}),
                                warnings=list(ds.warnings), fixed_split=fixed)
    parts = split_dataset(light, data_cfg.VAL_FRACTION, data_cfg.TEST_FRACTION, data_cfg.SEED)
    codes = torch.full((len(targets),), -1, dtype=torch.long)
    for code, part in enumerate(parts):
        if part is not None:
            codes[torch.tensor(part.raw["row"].tolist(), dtype=torch.long)] = code
    assert bool((codes >= 0).all()), "split_dataset's parts cover every row"
    return codes[torch.as_tensor(gid)]


def row_frame(ds: HierarchicalDataset, codes: torch.Tensor, groups: pd.Series | None) -> pd.DataFrame:
    """The non-embedding columns, one row per image: ranks (None = null), ``group``, ``split``, ``source``."""
    names = ds.taxonomy.decode(ds.targets)
    frame = pd.DataFrame({rank: pd.Series([None if v is None else str(v) for v in names[rank]], dtype=object)
                          for rank in ds.taxonomy.ranks})
    if groups is not None:
        frame[GROUP_COLUMN] = groups.to_numpy()
    frame[SPLIT_COLUMN] = np.asarray(SPLITS, dtype=object)[codes.numpy()]
    frame[SOURCE_COLUMN] = pd.Series([str(p) for p in ds.image_paths], dtype=object)
    return frame


def _check_rank_names(ranks, source: str) -> None:
    """A rank may not take the name of a column the file gives another meaning."""
    for rank in ranks:
        if rank in (GROUP_COLUMN, SPLIT_COLUMN, SOURCE_COLUMN) or str(rank).startswith(EMBED_PREFIX):
            raise DataError(f"{source}: rank {rank!r} would clash with the embeddings file's own columns "
                            f"({EMBED_PREFIX}0.., {GROUP_COLUMN}, {SPLIT_COLUMN}, {SOURCE_COLUMN}); rename it in DATA.RANKS")


# ---------------------------------------------------------------------- fingerprint and parts
def _tensor_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def fingerprint(ds: HierarchicalDataset, rows: pd.DataFrame, net: FrozenBackbone, cfg: Config, chunk: int) -> str:
    """What fixes the output: the data's content, each row's labels/group/split/source, the weights (with the
    input normalisation), the architecture, the precision and the chunking. Loader settings that do not change a
    number (cache folder, streaming, workers) and the batch size are not in it."""
    h = hashlib.sha256(json.dumps({"format": EMBED_FORMAT, "version": EMBED_VERSION, "chunk": chunk,
                                   "arch": net.arch, "channels": net.channels, "amp": cfg.TRAIN.AMP},
                                  sort_keys=True).encode())
    h.update(dataset_hash(ds).encode())
    h.update(pd.util.hash_pandas_object(rows.astype(str), index=True).to_numpy().tobytes())
    # the backbone and the input stage only: the heads are never used (and are random)
    h.update(_tensor_hash({k: v for k, v in net.model.state_dict().items() if k.startswith(EMBEDDING_PARTS)}).encode())
    return h.hexdigest()


class _PartsLock:
    """An exclusive ``flock`` on ``<parts>/lock``: one embed writes one output at a time (released by the
    kernel however the process ends)."""

    def __init__(self, folder: Path, out: Path):
        self.path, self.out = folder / LOCK_FILE, out

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 100, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self.fd)
            raise DataError(f"{self.out}: another embed (pid {holder}) is writing this file; wait for it, or use "
                            "another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _open_parts(folder: Path, out: Path, print_: str) -> None:
    """Check (or write) the parts folder's fingerprint; another one is an error, never a mix of two embeddings."""
    fp_file = folder / FINGERPRINT_FILE
    if fp_file.is_file():
        try:
            old = json.loads(fp_file.read_text())["fingerprint"]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise DataError(f"{fp_file}: unreadable ({type(e).__name__}); delete {folder} to start over") from None
        if old != print_:
            raise DataError(f"{folder}: holds the parts of another embedding into {out.name} (other config, data or "
                            f"weights: fingerprint {old[:12]} there, {print_[:12]} now); use another --out, or delete "
                            f"{folder} to start over")
        return
    if any(folder.glob("part-*.parquet")):
        raise DataError(f"{folder}: holds parts but no {FINGERPRINT_FILE}, so they cannot be checked; delete {folder} "
                        "to start over")
    _atomic_write_bytes(fp_file, json.dumps({"fingerprint": print_, "out": out.name}).encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _part_done(path: Path, rows: int, names: list[str]) -> bool:
    """A finished part: it exists with ``rows`` rows and exactly the columns ``names``. A part that does not read
    (damaged outside this program: parts are written whole) is computed again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as e:
        log.warning("%s: unreadable part (%s), computing it again", path, e)
        return False
    return meta.num_rows == rows and meta.schema.to_arrow_schema().names == names


# ---------------------------------------------------------------------- the run
@dataclass
class _Device:
    """Where and how the frozen model runs (as the trainer runs it: bf16 autocast and channels-last on CUDA)."""

    device: torch.device
    amp: bool
    channels_last: bool

    @classmethod
    def from_config(cls, config: Config) -> _Device:
        from workbench.trainer import pick_device

        device = pick_device(config.TRAIN.DEVICE)
        amp = config.TRAIN.AMP == "bf16" or (config.TRAIN.AMP == "auto" and device.type == "cuda")
        return cls(device, amp, device.type == "cuda")


def _load_images(config: Config, dataset: HierarchicalDataset | None) -> tuple[HierarchicalDataset, str]:
    """The per-image dataset of ``config.DATA`` (``dataset`` when given) and how errors name it; table data is
    an error."""
    if dataset is None:
        # per image, whatever DATA.GROUP_BY says: the group column is carried, the images are not pooled here
        data_cfg = config.DATA.model_copy(update={"GROUP_BY": None}) if config.DATA.GROUP_BY else config.DATA
        dataset = load_dataset(data_cfg)
    source = config.DATA.PATH or f"DATA.NAME {config.DATA.NAME!r}"
    if not dataset.is_image:
        raise DataError(f"{source}: embed runs an image backbone over images, but this data is a table (features "
                        f"{tuple(dataset.features.shape)}); use DATA.NAME 'images' (a folder tree or a manifest) or "
                        "'animal_mnist', and train on tables directly")
    _check_rank_names(dataset.taxonomy.ranks, source)
    return dataset, source


def _embed_rows(net: FrozenBackbone, ds: HierarchicalDataset, start: int, stop: int, batch_size: int, run: _Device,
                stream: StreamLoader | None, tick: Callable[[int], None]) -> np.ndarray:
    """``float32 (stop - start, D)``: the embeddings of rows ``start:stop``, in batches (decoded by ``stream``'s
    workers for a streamed set); ``tick(rows)`` after each batch."""
    from workbench.images import fit_channels

    batches = [torch.arange(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]
    pixels = stream(ds.features[i] for i in batches) if stream is not None else None
    zs = []
    for idx in batches:
        x = next(pixels) if pixels is not None else ds.features[idx]  # uint8 (B, C, H, W)
        x = fit_channels(x, net.channels).to(run.device, non_blocking=True)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            zs.append(net.model.embed(x).float().cpu())  # (B, D): the backbone's output, no metadata
        tick(len(idx))
    return torch.cat(zs).numpy()


def _write_part(path: Path, z: np.ndarray, rows: pd.DataFrame, row_schema, schema) -> None:
    """One part file: ``z (rows, D)`` as the emb columns, then ``rows``; a temp file renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = np.ascontiguousarray(z.T)  # (D, rows): one array per column
    table = pa.Table.from_arrays(
        [*(pa.array(c) for c in columns), *pa.Table.from_pandas(rows, schema=row_schema, preserve_index=False).columns],
        schema=schema)
    with atomic_path(path) as tmp:  # a part is there whole or not at all
        pq.write_table(table, tmp)


def _join_parts(folder: Path, parts: int, out: Path, schema) -> None:
    """Stream the parts, in order, into ``out`` (a temp file renamed into place), then remove ``folder``."""
    import pyarrow.parquet as pq

    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:  # part by part: never all in memory
        for k in range(parts):
            writer.write_table(pq.read_table(folder / part_name(k)))
    shutil.rmtree(folder)  # the lock file goes with it; the lock itself is held until its descriptor closes


def run_embedding(
    config: Config, out: str | os.PathLike, progress: bool = True, chunk: int = EMBED_CHUNK_ROWS,
    batch_size: int | None = None, on_progress: Callable[[int, int], None] | None = None,
    dataset: HierarchicalDataset | None = None,
) -> EmbedReport:
    """:func:`embed_dataset`, returning an :class:`EmbedReport` (rows, dimension, parts reused, ...)."""
    import pyarrow as pa
    from tqdm import tqdm

    from workbench.trainer import EVAL_BATCH_IMAGES

    t0 = time.perf_counter()
    out = check_out_path(out)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    batch_size = batch_size or EVAL_BATCH_IMAGES
    if batch_size < 1:
        raise DataError(f"the batch size must be >= 1, got {batch_size}")
    _weights_choice(config)
    # a run id, file or folder that is not there fails here, before the data is read
    weights = init_weights(config.TRAIN.INIT_FROM, config.TRACKING.STORE) if config.TRAIN.INIT_FROM else None
    ds, source = _load_images(config, dataset)
    groups = _groups(ds, config.DATA, source) if config.DATA.GROUP_BY else None
    codes = split_codes(ds, config.DATA, groups)  # (N,)
    rows = row_frame(ds, codes, groups)
    if config.TRAIN.NUM_THREADS:
        torch.set_num_threads(config.TRAIN.NUM_THREADS)
    run = _Device.from_config(config)
    net = frozen_backbone(config, ds, torch.nonzero(codes == SPLITS.index("train")).flatten(), weights)
    net.model.to(run.device)

    n, d = len(ds), net.dim
    emb_names = [f"{EMBED_PREFIX}{j}" for j in range(d)]
    inferred = pa.Table.from_pandas(rows, preserve_index=False).schema  # types of the whole frame, not of a chunk's
    row_schema = pa.schema([pa.field(r, pa.string()) if r in ds.taxonomy.ranks else inferred.field(r)
                            for r in rows.columns])
    stamp = fingerprint(ds, rows, net, config, chunk)
    about = {"format": EMBED_FORMAT, "version": EMBED_VERSION, "fingerprint": stamp, "weights": net.what,
             "model": net.arch, "rows": n, "dim": d, "ranks": list(ds.taxonomy.ranks),
             "group_by": config.DATA.GROUP_BY, "data": source}
    schema = pa.schema([*(pa.field(e, pa.float32()) for e in emb_names), *row_schema],
                       metadata={METADATA_KEY: json.dumps(about, sort_keys=True).encode()})

    folder = parts_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    spans = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    stream = StreamLoader(config.DATA.NUM_WORKERS, pin_memory=run.device.type == "cuda") if is_lazy(ds.features) else None
    with _PartsLock(folder, out):
        _open_parts(folder, out, stamp)
        for stale in folder.glob(".part-*.tmp"):  # a killed run's half-written part: never renamed, never used
            stale.unlink()
        done = [_part_done(folder / part_name(k), e - s, schema.names) for k, (s, e) in enumerate(spans)]
        count = [sum(e - s for (s, e), ok in zip(spans, done) if ok)]  # rows done so far (a cell the tick updates)
        if on_progress is not None:
            on_progress(count[0], n)
        bar = tqdm(total=n, initial=count[0], desc="embedding", unit="img", disable=not progress)

        def tick(rows_in_batch: int) -> None:
            count[0] += rows_in_batch
            bar.update(rows_in_batch)
            if on_progress is not None:
                on_progress(count[0], n)

        try:
            for k, (s, e) in enumerate(spans):
                if not done[k]:
                    z = _embed_rows(net, ds, s, e, batch_size, run, stream, tick)
                    _write_part(folder / part_name(k), z, rows.iloc[s:e], row_schema, schema)
        finally:
            bar.close()
        _join_parts(folder, len(spans), out, schema)
    reused = sum(done)
    if reused:
        log.info("%s: %d of %d parts were already done and were reused", out, reused, len(spans))
    return EmbedReport(out, n, d, len(spans), reused, net.what, time.perf_counter() - t0, list(ds.taxonomy.ranks),
                       groups is not None)


def embed_dataset(
    config: Config, out: str | os.PathLike, progress: bool = True, chunk: int = EMBED_CHUNK_ROWS,
    batch_size: int | None = None, on_progress: Callable[[int, int], None] | None = None,
    dataset: HierarchicalDataset | None = None,
) -> Path:
    """Embed ``config``'s image data with its frozen backbone into the Parquet file ``out`` (module docstring:
    columns, weights, resuming); returns ``out``.

    ``chunk``: rows per part file (what an interruption can lose); ``batch_size``: images per forward (default
    the trainer's evaluation batch); ``on_progress(done, total)``: called with rows done, once at the start
    (counting the parts a previous run finished) and after every batch; an exception it raises stops the run,
    and a rerun goes on from the last finished part. ``dataset``: the per-image data of ``config.DATA``, when
    already loaded. A tqdm bar on stderr unless ``progress`` is False.
    """
    return run_embedding(config, out, progress, chunk, batch_size, on_progress, dataset).path


def read_info(path: str | os.PathLike) -> dict:
    """The description an embeddings file carries in its Parquet metadata (weights, model, rows, dim, ...)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise DataError(f"{path}: not an embeddings file written by `python -m workbench embed` (no "
                        f"{METADATA_KEY.decode()} metadata)")
    return json.loads(meta[METADATA_KEY])


__all__ = ["EMBED_PREFIX", "EmbedReport", "embed_dataset", "read_info", "run_embedding", "split_codes"]

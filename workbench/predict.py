"""Predictions of a trained model on new data or on its run's own split (DESIGN.md 3.7; issue 14 item 4).

A :class:`Predictor` is built from a bundle (:mod:`workbench.bundle`: an exported file, or a run's
``best.pt`` read through the store) and scores a :class:`~workbench.data.HierarchicalDataset` in eval
mode, in batches, with a progress bar. :func:`predictions_frame` turns its outputs into the predictions
frame (one row per sample; columns in :func:`column`'s names):

- ``sample`` (position within the data or split), ``source`` (image path, or ``<name> row <spreadsheet row>``);
- per rank: ``true/<rank>`` (when the truth is known; None = null), ``pred/<rank>`` (argmax over every
  output, null included; None = null), ``prob/<rank>`` (that output's probability), ``abstain/<rank>`` (the
  abstaining prediction at the run's val-chosen tau: the class, or None where it abstains), ``top/<rank>``
  and ``top_prob/<rank>`` (the ``top_k`` most probable real classes and their probabilities), and with
  ``consistent=True`` ``consistent/<rank>`` (the best path of the taxonomy, DESIGN.md 3.7);
- with the truth: ``true_path`` / ``pred_path`` (non-null names joined by ``" > "``), ``confidence`` (the
  probability of the predicted class at the sample's finest labelled rank), ``correct`` (partial-chain
  correct: every non-null true rank predicted) and ``severity`` (the LCA height of prediction and truth at
  that rank, 0 when right); these are missing (NA) for a sample labelled at no rank.

:func:`run_predictions` (the app) predicts a run's val or test split from the store;
:func:`predict_from` is what ``python -m workbench predict`` runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from workbench import metrics as M
from workbench.bundle import load_bundle, run_bundle
from workbench.data import (
    SPREADSHEET_ROWS, DataError, HierarchicalDataset, _numeric_matrix, check_finite_features, dataset_hash,
    load_dataset, read_table, spreadsheet_row, split_dataset,
)
from workbench.errors import StoreError, TaxonomyError
from workbench.taxonomy import Taxonomy
# rows per forward: the trainer's own evaluation batch sizes, so a split's outputs are computed the same way
from workbench.trainer import EVAL_BATCH_IMAGES, EVAL_BATCH_ROWS, pick_device, taxonomy_difference

DEFAULT_TOP_K = 3
PATH_SEPARATOR = " > "  # true_path / pred_path: the non-null names, coarse to fine
LIST_SEPARATOR = "|"  # a CSV cell of a list column (top/<rank>, top_prob/<rank>)
OUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}  # --out suffix -> format
PREDICT_SPLITS = ("val", "test")  # what --split may name (train is what the model saw)

# the per-rank column kinds of the predictions frame (``<kind>/<rank>``)
TRUE, PRED, PROB, ABSTAIN, TOP, TOP_PROB, CONSISTENT = (
    "true", "pred", "prob", "abstain", "top", "top_prob", "consistent")
LIST_KINDS = (TOP, TOP_PROB)


def column(kind: str, rank: str) -> str:
    """A per-rank column of the predictions frame: ``column("pred", "genus") == "pred/genus"``."""
    return f"{kind}/{rank}"


# ---------------------------------------------------------------------- outputs -> predictions
def _names(vocab, ids: torch.Tensor) -> pd.Series:
    """Class names of ``ids (N,)`` at one rank, None for null (``vocab[0]``); object dtype, so a null stays
    None (pandas would infer its string dtype, whose missing value is NaN)."""
    return pd.Series(np.asarray(vocab, dtype=object)[ids.numpy()], dtype=object)


def _paths(taxonomy: Taxonomy, ids: torch.Tensor) -> list[str]:
    """``"A > a1 > x"`` per row of ``ids (N, R)``: the non-null names, coarse to fine."""
    names = [np.asarray(v, dtype=object)[ids[:, r].numpy()] for r, v in enumerate(taxonomy.vocab)]
    return [PATH_SEPARATOR.join(n for n in row if n is not None) for row in zip(*names)]


def predictions_frame(
    logits: list[torch.Tensor], taxonomy: Taxonomy, tau: dict[str, float], sources, targets: torch.Tensor | None = None,
    top_k: int = DEFAULT_TOP_K, consistent: bool = False, multilabel_ranks=(),
) -> pd.DataFrame:
    """The predictions frame (module docstring) of ``logits`` (R tensors ``(N, K_r + 1)``), one row per sample.

    ``tau``: ``{rank: threshold}`` for the abstaining prediction; ``sources``: N strings; ``targets``:
    ``LongTensor (N, R)`` when the truth is known, else None.
    """
    from workbench.decoding import abstaining_predictions, argmax_classes, consistent_paths, rank_probabilities

    ranks = taxonomy.ranks
    probs = rank_probabilities(logits, multilabel_ranks)
    preds = argmax_classes(logits, multilabel_ranks)  # (N, R)
    abstain = abstaining_predictions(probs, [float(tau[rank]) for rank in ranks])  # (N, R)
    n = preds.shape[0]
    data: dict[str, object] = {"sample": np.arange(n), "source": pd.Series([str(s) for s in sources], dtype=object)}
    for r, rank in enumerate(ranks):
        vocab = taxonomy.vocab[r]
        if targets is not None:
            data[column(TRUE, rank)] = _names(vocab, targets[:, r])
        data[column(PRED, rank)] = _names(vocab, preds[:, r])
        data[column(PROB, rank)] = probs[r].gather(1, preds[:, r : r + 1])[:, 0].double().numpy()
        data[column(ABSTAIN, rank)] = _names(vocab, abstain[:, r])
        k = min(top_k, probs[r].shape[1] - 1)
        top_p, top_i = probs[r][:, 1:].topk(k, dim=1)  # (N, k) over the real classes
        names = np.asarray(vocab, dtype=object)[(top_i + 1).numpy()]  # (N, k)
        data[column(TOP, rank)] = [list(row) for row in names]
        data[column(TOP_PROB, rank)] = top_p.double().tolist()
    if consistent:
        paths = consistent_paths([torch.log_softmax(lg.double(), dim=1) for lg in logits], taxonomy)  # (N, R)
        for r, rank in enumerate(ranks):
            data[column(CONSISTENT, rank)] = _names(taxonomy.vocab[r], paths[:, r])
    if targets is not None:
        labelled = (targets != 0).any(dim=1)  # (N,)
        k = M.finest_labelled_rank(targets).clamp_min(0)  # (N,)
        conf = torch.stack([probs[r].gather(1, preds[:, r : r + 1])[:, 0] for r in range(len(ranks))], dim=1)
        correct = ((preds == targets) | (targets == 0)).all(dim=1)  # (N,) partial chain
        heights = M.sample_heights(preds, targets, taxonomy)
        data["true_path"] = _paths(taxonomy, targets)
        data["pred_path"] = _paths(taxonomy, preds)
        data["confidence"] = np.where(labelled.numpy(), conf.gather(1, k[:, None])[:, 0].double().numpy(), np.nan)
        data["correct"] = pd.array(correct.numpy(), dtype="boolean")
        data["correct"][~labelled.numpy()] = pd.NA
        data["severity"] = pd.array(heights.numpy(), dtype="Int64")
        data["severity"][~labelled.numpy()] = pd.NA
    return pd.DataFrame(data)


# ---------------------------------------------------------------------- the model
@dataclass
class Predictor:
    """A trained model ready to score data: built from a bundle (:func:`workbench.bundle.load_bundle` or
    :func:`workbench.bundle.run_bundle`), in eval mode on ``device``."""

    bundle: dict  # the bundle without its weights: run_id, epoch, config, tau, input, weights, versions, ...
    model: torch.nn.Module
    taxonomy: Taxonomy
    device: torch.device

    @classmethod
    def from_bundle(cls, bundle: dict, device: str = "cpu") -> Predictor:
        """The model of ``bundle``'s config with its weights; weights that do not fit the model its config
        builds (a damaged or hand-edited bundle) are a :class:`StoreError`."""
        from workbench.config import Config
        from workbench.models import build_model

        cfg = Config.from_run(bundle["config"], source=f"run {bundle['run_id']}")
        taxonomy = Taxonomy.from_dict(bundle["taxonomy"])
        spec = bundle["input"]
        shape = tuple(spec["input_shape"])
        m = cfg.MODEL
        model = build_model(m.BACKBONE, m.HIDDEN, m.HEAD, shape[-1], taxonomy, m.DROPOUT, input_shape=shape,
                            width=m.WIDTH, depth=m.DEPTH, arch=m.ARCH, meta_dim=len(spec["meta_names"]), pool=m.POOL)
        try:
            model.load_state_dict(bundle["model"])
        except RuntimeError as e:
            first = (str(e).splitlines() or [""])[0][:300]
            raise StoreError(f"run {bundle['run_id']}: its weights do not fit the model its config builds "
                             f"(MODEL.BACKBONE {m.BACKBONE!r}, input {list(shape)}): {first}") from None
        device = pick_device(device)
        model.to(device).eval()
        info = {k: v for k, v in bundle.items() if k != "model"}
        return cls(info, model, taxonomy, device)

    @property
    def ranks(self) -> tuple[str, ...]:
        return self.taxonomy.ranks

    @property
    def input(self) -> dict:
        return self.bundle["input"]

    @property
    def config(self):
        from workbench.config import Config

        return Config.from_run(self.bundle["config"], source=f"run {self.bundle['run_id']}")

    @torch.no_grad()
    def logits(self, ds: HierarchicalDataset, batch_size: int | None = None, progress: bool = True) -> list[torch.Tensor]:
        """R tensors ``(N, K_r + 1)``: the model's outputs on ``ds`` in eval mode, in batches (the trainer's
        evaluation batch size unless given), on the CPU."""
        self._check_input(ds)
        batch_size = batch_size or (EVAL_BATCH_IMAGES if ds.is_image else EVAL_BATCH_ROWS)
        n, outs = len(ds), []
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="predicting", unit="batch", disable=not progress or len(starts) < 2):
            idx = torch.arange(start, min(start + batch_size, n))
            batch = ds.batch(idx).to(self.device)
            meta = None if ds.meta is None else ds.meta[idx].to(self.device)
            logits, _ = self.model.forward_with_embedding(batch.features, batch.valid, meta)
            outs.append([lg.float().cpu() for lg in logits])
        if not outs:  # no rows (an empty split): no outputs, of the right widths
            return [torch.zeros(0, k) for k in self.taxonomy.num_classes]
        return [torch.cat([o[r] for o in outs]) for r in range(self.taxonomy.num_ranks)]

    def _check_input(self, ds: HierarchicalDataset) -> None:
        """The data's layout is the one the model was trained on (shape of a sample, metadata columns)."""
        want, got = list(self.input["input_shape"]), list(ds.input_shape)
        if len(want) == 2 and len(got) == 2:  # sets (S, F): the padded width S is the data's, only F is the model's
            want, got = want[1:], got[1:]
        if want != got:
            raise DataError(f"{ds.name}: samples of shape {got} do not fit run {self.bundle['run_id']}'s model, "
                            f"trained on {self.input['kind']} of shape {want}")
        meta = 0 if ds.meta is None else ds.meta.shape[1]
        if meta != len(self.input["meta_names"]):
            raise DataError(f"{ds.name}: {meta} metadata column(s), but run {self.bundle['run_id']}'s model takes "
                            f"{len(self.input['meta_names'])}: {self.input['meta_names']}")

    def frame(self, ds: HierarchicalDataset, sources, truth: bool, top_k: int = DEFAULT_TOP_K,
              consistent: bool = False, progress: bool = True) -> pd.DataFrame:
        """The predictions frame of ``ds`` (module docstring); ``truth``: whether ``ds.targets`` are known labels."""
        if top_k < 1:
            raise DataError(f"top_k must be >= 1, got {top_k}")
        frame = predictions_frame(
            self.logits(ds, progress=progress), self.taxonomy, self.bundle["tau"], sources,
            ds.targets if truth else None, top_k, consistent, frozenset(self.bundle["multilabel_ranks"]),
        )
        frame.attrs.update({k: self.bundle[k] for k in ("run_id", "epoch", "weights", "select_by", "tau")})
        frame.attrs["data"] = ds.name
        return frame


# ---------------------------------------------------------------------- data to score
def _row_index(n: int) -> pd.RangeIndex:
    """Spreadsheet row numbers (header = row 1) for ``n`` data rows, named so errors say how rows count."""
    return pd.RangeIndex(spreadsheet_row(0), spreadsheet_row(n), name=SPREADSHEET_ROWS)


def _truth(df: pd.DataFrame, taxonomy: Taxonomy, source: str) -> torch.Tensor | None:
    """``LongTensor (N, R)`` from the model's rank columns of ``df`` when it has them (None when it has none);
    a class the model does not know is an error naming the column, row and value."""
    ranks = list(taxonomy.ranks)
    present = [r for r in ranks if r in df.columns]
    if not present:
        return None
    if len(present) < len(ranks):
        missing = [r for r in ranks if r not in df.columns]
        raise DataError(f"{source}: rank column(s) {missing} not found, but {present} are; the truth needs every "
                        f"rank column of the model ({ranks}) or none")
    labels = df[ranks].set_axis(_row_index(len(df)))
    try:
        return taxonomy.encode(labels, source=source)
    except TaxonomyError as e:
        raise DataError(f"{e}; the model predicts only the classes it was trained on") from None


def _feature_matrix(df: pd.DataFrame, names: list[str], source: str, what: str) -> torch.Tensor:
    """``(N, len(names))`` float32 from the named columns of ``df``; a missing column, a non-number or a
    non-finite value is an error naming it."""
    missing = [c for c in names if c not in df.columns]
    if missing:
        shown = ", ".join(map(repr, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(f"{source}: {len(missing)} {what} column(s) the model was trained on not found: {shown}; "
                        f"it needs all {len(names)}: {names[:20]}{' ...' if len(names) > 20 else ''}; "
                        f"columns here are {list(df.columns)[:20]}")
    values = _numeric_matrix(df, names, source)
    x = torch.as_tensor(values, dtype=torch.float32)
    check_finite_features(x, values, names, _row_index(len(df)), source)
    return x


def _decode_all(paths: list[Path], names: list[str], size: int, channels: int, cache_dir, source: str) -> torch.Tensor:
    """Every image decoded at the model's size and channels; unreadable ones are one error naming them all
    (predict scores every image or stops: never a silent drop)."""
    from workbench.images import decode_images, fit_channels

    pixels, _, bad, _ = decode_images(paths, size, skip_bad=True, cache_dir=cache_dir, names=names)
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{source}: {len(bad)} image(s) could not be read as images: {shown}; fix or remove them "
                        f"(predict scores every image or none)")
    return fit_channels(pixels, channels)


def table_data(path: str | os.PathLike, predictor: Predictor) -> tuple[HierarchicalDataset, list[str], bool]:
    """A CSV/TSV/Parquet table to score: the model's feature columns (by name, any order, other columns
    ignored) and, when present, its rank columns as the truth. Returns ``(dataset, sources, has_truth)``."""
    source = str(path)
    df = read_table(path)  # missing, empty, unparseable: DataError naming the file
    x = _feature_matrix(df, predictor.input["feature_names"], source, "feature")
    targets = _truth(df, predictor.taxonomy, source)
    name = Path(path).name
    ds = HierarchicalDataset(
        features=x, targets=targets if targets is not None else torch.zeros(len(df), len(predictor.ranks), dtype=torch.long),
        taxonomy=predictor.taxonomy, feature_names=list(predictor.input["feature_names"]), name=name,
        raw=df.reset_index(drop=True),
    )
    return ds, [f"{name} row {spreadsheet_row(i)}" for i in range(len(df))], targets is not None


def image_data(path: str | os.PathLike, predictor: Predictor) -> tuple[HierarchicalDataset, list[str], bool]:
    """Images to score, decoded at the model's size: a folder (each folder level below it is one rank, coarse
    to fine, taken as the truth; images directly in it have none) or a manifest (CSV/Parquet: an image-path
    column, ``DATA.IMAGE_COLUMN`` of the run, relative to the manifest's folder; the model's metadata columns;
    rank columns as the truth when present). Returns ``(dataset, sources, has_truth)``."""
    from workbench.images import MANIFEST_SUFFIXES, _manifest_paths, scan_folder

    path, spec, taxonomy = Path(path), predictor.input, predictor.taxonomy
    cfg = predictor.config
    size, channels, ranks = spec["image_size"], spec["channels"], list(predictor.ranks)
    if path.is_dir():
        images, _, _, at_root = scan_folder(path, len(ranks))
        rel = at_root + images
        if not rel:
            raise DataError(f"{path}: no images ({', '.join(_image_suffixes())}) in the folder or below it")
        pixels = _decode_all([path / p for p in rel], [str(path / p) for p in rel], size, channels, cfg.DATA.CACHE_DIR,
                             str(path))
        labels = pd.DataFrame([list(Path(p).parts[:-1]) + [None] * (len(ranks) - len(Path(p).parts[:-1])) for p in rel],
                              columns=ranks, index=pd.Index(rel, name="image path relative to the root"), dtype=object)
        targets = None
        if images:  # images in rank folders: the folders are their labels
            try:
                targets = taxonomy.encode(labels, source=str(path))
            except TaxonomyError as e:
                raise DataError(f"{e}; the model predicts only the classes it was trained on") from None
        ds = HierarchicalDataset(features=pixels, targets=targets if targets is not None else
                                 torch.zeros(len(rel), len(ranks), dtype=torch.long), taxonomy=taxonomy,
                                 feature_names=[], name=path.name or str(path), image_paths=rel)
        return ds, rel, targets is not None
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise DataError(f"{path}: run {predictor.bundle['run_id']} classifies images: --data must be a folder of "
                        f"images or a manifest ({', '.join(MANIFEST_SUFFIXES)})" + ("" if path.exists() else
                                                                                  " (it does not exist)"))
    source, column_name = str(path), cfg.DATA.IMAGE_COLUMN
    df = read_table(path)
    if column_name not in df.columns:
        raise DataError(f"{source}: image column {column_name!r} (the run's DATA.IMAGE_COLUMN) not found; "
                        f"columns are {list(df.columns)}")
    meta = _feature_matrix(df, spec["meta_names"], source, "metadata") if spec["meta_names"] else None
    rel = _manifest_paths(df, column_name, path.parent, source)
    names = [f"{source}, row {spreadsheet_row(i)} ({SPREADSHEET_ROWS}): {path.parent / p}" for i, p in enumerate(rel)]
    pixels = _decode_all([path.parent / p for p in rel], names, size, channels, cfg.DATA.CACHE_DIR, source)
    targets = _truth(df, taxonomy, source)
    ds = HierarchicalDataset(features=pixels, targets=targets if targets is not None else
                             torch.zeros(len(df), len(ranks), dtype=torch.long), taxonomy=taxonomy, feature_names=[],
                             name=path.name, meta=meta, meta_names=list(spec["meta_names"]), image_paths=rel,
                             raw=df.reset_index(drop=True))
    return ds, rel, targets is not None


def _image_suffixes():
    from workbench.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def new_data(path: str | os.PathLike, predictor: Predictor) -> tuple[HierarchicalDataset, list[str], bool]:
    """Data from a file or folder the model has not seen, in the form its run was trained on."""
    kind = predictor.input["kind"]
    if kind == "images":
        return image_data(path, predictor)
    if kind == "sets":
        raise DataError(f"{path}: run {predictor.bundle['run_id']} takes padded sets of rows; predict reads tables "
                        f"and images only: use --split val|test for its own data")
    return table_data(path, predictor)


def split_data(bundle: dict, split: str, dataset: HierarchicalDataset | None = None
               ) -> tuple[HierarchicalDataset, list[str]]:
    """The run's own ``split`` (val or test), re-made from its config as the trainer made it; the data must be
    the one the run was trained on (same taxonomy and content hash). Returns ``(part, sources)``."""
    from workbench.config import Config

    if split not in PREDICT_SPLITS:
        raise DataError(f"split must be one of {list(PREDICT_SPLITS)}, got {split!r}")
    cfg = Config.from_run(bundle["config"], source=f"run {bundle['run_id']}")
    ds = dataset if dataset is not None else load_dataset(cfg.DATA)
    where = cfg.DATA.PATH if cfg.DATA.PATH else f"DATA.NAME {cfg.DATA.NAME!r}"
    theirs = Taxonomy.from_dict(bundle["taxonomy"])
    if theirs != ds.taxonomy:
        raise DataError(f"run {bundle['run_id']}: its data ({where}) no longer matches the model: the taxonomy "
                        f"changed ({taxonomy_difference(theirs, ds.taxonomy)}); predict new data with --data")
    if bundle.get("data_hash") and bundle["data_hash"] != dataset_hash(ds):
        raise DataError(f"run {bundle['run_id']}: its data ({where}) changed since it was trained (content hash "
                        f"{bundle['data_hash'][:12]} then, {dataset_hash(ds)[:12]} now), so its {split} split cannot be "
                        f"re-made; predict new data with --data")
    _, val, test = split_dataset(ds, cfg.DATA.VAL_FRACTION, cfg.DATA.TEST_FRACTION, cfg.DATA.SEED)
    part = val if split == "val" else test
    if part is None:
        raise DataError(f"run {bundle['run_id']} has no test split (DATA.TEST_FRACTION is 0 and its data fixes none)")
    return part, _sources(part)


def _sources(ds: HierarchicalDataset) -> list[str]:
    """Each row's source: its image path, or ``<name> row <spreadsheet row>`` of the table it came from."""
    if ds.image_paths is not None:
        return list(ds.image_paths)
    if ds.raw is not None:  # a part keeps its rows' positions in the whole table as the index
        return [f"{ds.name} row {spreadsheet_row(int(i))}" for i in ds.raw.index]
    return [f"{ds.name} row {i}" for i in range(len(ds))]


# ---------------------------------------------------------------------- entry points
def _open_store(store):
    from workbench.store import RunStore

    return store if isinstance(store, RunStore) else RunStore.open_existing(store)


def run_predictions(store, run_id: str, split: str = "test", top_k: int = DEFAULT_TOP_K,
                    consistent: bool = False, progress: bool = False) -> pd.DataFrame:
    """The predictions frame of run ``run_id``'s ``split`` (val or test), from ``store`` (a RunStore or its
    path; only read): its config and data, re-split, its best.pt (else its last checkpoint; ``frame.attrs
    ["weights"]`` says which)."""
    from workbench.config import Config
    from workbench.store import validate_run_id

    store = _open_store(store)
    run = store.run(validate_run_id(run_id))
    ds = load_dataset(Config.from_run(run["config"], source=f"run {run_id}").DATA)
    bundle = run_bundle(store, run_id, dataset=ds)
    part, sources = split_data(bundle, split, ds)
    frame = Predictor.from_bundle(bundle).frame(part, sources, True, top_k, consistent, progress)
    frame.attrs["split"] = split
    return frame


def is_bundle_ref(ref: str) -> bool:
    """``predict RUN_ID|BUNDLE``: a bundle when ``ref`` is a file, ends in ``.pt`` or has a path separator
    (a run id never has one)."""
    return Path(ref).is_file() or ref.endswith(".pt") or "/" in ref or os.sep in ref


def predict_from(ref: str, store_path=None, data=None, split: str | None = None, top_k: int = DEFAULT_TOP_K,
                 consistent: bool = False, progress: bool = True, device: str = "cpu") -> pd.DataFrame:
    """``python -m workbench predict``: the predictions frame of a bundle file or a run id of ``store_path``
    (never opened for a bundle) on ``data`` (a path) or the run's own ``split``."""
    if (data is None) == (split is None):
        raise DataError("give either data (a table, image folder or manifest) or a split (val or test)")
    if is_bundle_ref(ref):
        bundle = load_bundle(ref)
    else:
        from workbench.store import validate_run_id

        bundle = run_bundle(_open_store(store_path), validate_run_id(ref))
    predictor = Predictor.from_bundle(bundle, device)
    if data is not None:
        ds, sources, truth = new_data(data, predictor)
    else:
        (ds, sources), truth = split_data(bundle, split), True
    frame = predictor.frame(ds, sources, truth, top_k, consistent, progress)
    if split is not None:
        frame.attrs["split"] = split
    return frame


def output_format(path: str | os.PathLike) -> str:
    """``parquet`` or ``csv`` from the suffix of ``--out`` (:data:`OUT_FORMATS`)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUT_FORMATS:
        raise DataError(f"{path}: the predictions file must end in {', '.join(OUT_FORMATS)}, got {suffix or 'no suffix'!r}")
    return OUT_FORMATS[suffix]


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as Parquet, or as CSV (suffix ``.csv``) with each list cell joined by ``"|"``."""
    path = Path(path)
    fmt = output_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            flat = frame.copy()
            for col in flat.columns:
                if col.split("/")[0] in LIST_KINDS:
                    flat[col] = [LIST_SEPARATOR.join(map(str, v)) for v in flat[col]]
            flat.to_csv(path, index=False)
    except OSError as e:
        raise DataError(f"{path}: cannot write the predictions ({e.strerror or e})") from None
    return path


def accuracy_summary(frame: pd.DataFrame, ranks) -> dict[str, float]:
    """Per rank the accuracy over samples labelled at it (``pred == true``), and ``partial_chain``: the
    fraction of ``correct`` over labelled samples, from a frame with the truth (DESIGN.md 3.4)."""
    out = {}
    for rank in ranks:
        true, pred = frame[column(TRUE, rank)], frame[column(PRED, rank)]
        labelled = true.notna()
        out[rank] = float((pred[labelled] == true[labelled]).mean()) if labelled.any() else float("nan")
    correct = frame["correct"].dropna()
    out["partial_chain"] = float(correct.mean()) if len(correct) else float("nan")
    return out

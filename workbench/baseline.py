"""A classical baseline: one gradient-boosted classifier per rank, scored like a run (issue 18).

``python -m workbench baseline --config C`` (or :func:`fit_gradient_boosting`) answers "does the network
beat it?" on a tabular config: the data is loaded and split exactly as :class:`workbench.trainer.Trainer`
loads and splits it (``load_dataset`` -> ``split_dataset`` with ``DATA.VAL_FRACTION``, ``DATA.TEST_FRACTION``
and ``DATA.SEED``; a fixed split is honoured), and both splits are scored by the same functions a run's are
(:func:`workbench.evaluation.score`; on test, :func:`workbench.evaluation.at_val_taus` with each rank's
val-chosen threshold). So its metrics carry the keys a run stores for val at its selected epoch and for test.

The model, per rank ``r``: a scikit-learn ``HistGradientBoostingClassifier`` trained on the TRAIN split's rows
labelled at ``r`` (a null is "not labelled here", never a class it learns), with the features the Trainer's
model sees, the rows' ``sample_weight`` when the data has one, and ``random_state = seed``. Its early stopping
uses its own validation piece carved from those training rows (:data:`INTERNAL_VALIDATION_FRACTION` of each
class, seeded); the val and test splits are never seen while fitting. Its class probabilities become the
rank's ``(N, K_r + 1)`` log-probabilities:

- the null column (0) is ``-inf``: the baseline never predicts null, so its ``null`` accuracy is that of a
  model that always commits;
- a real class absent from the rank's labelled training rows gets ``-inf`` too (probability 0: it is never
  predicted, and ranks last in top-k);
- a rank with a single labelled training class gives it probability 1; a rank without labelled training
  rows gives its real classes equal probability (class 1 is then the prediction).

No loss keys (``core/<split>_loss``, ``<split>/loss/<rank>``): the network's loss charges a null target with
the null output's log-probability, which is ``-inf`` here; and no ``train/`` keys. Tables only (images and
sets raise :class:`ConfigError`), and no multi-label (BCE) ranks.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.config import Config, ConfigError
from workbench.data import HierarchicalDataset, check_finite_features, load_dataset, split_dataset
from workbench.evaluation import at_val_taus, chosen_taus, score
from workbench.names import SET_SOURCES

IMAGE_SOURCES = ("images", "animal_mnist")  # DATA.NAME values that load images (workbench/data.py load_dataset)
INTERNAL_VALIDATION_FRACTION = 0.1  # of each class's training rows: the HGB's early-stopping piece
# scikit-learn's HGB defaults, except: more iterations (early stopping usually ends it sooner); early stopping
# always on (scikit-learn's "auto" turns it on only above 10,000 rows); and an L2 penalty on leaf values. Without
# it a leaf holding a few rows of a rare class (tiny hessians p(1 - p)) gets a huge value and the multi-class log
# loss diverges: on ratdat (rare taxa and species) the training loss went from 0.09 to 6 in ten iterations and test
# partial-chain accuracy was 0.666; with l2_regularization 1 it is 0.764 (seed 0, 2026-12-01)
HGB_DEFAULTS = {"max_iter": 200, "early_stopping": True, "n_iter_no_change": 10, "l2_regularization": 1.0}
SKLEARN_HINT = "pip install scikit-learn (or the `sweep` extra: pip install -e '.[sweep]')"


@dataclass
class BaselineResult:
    """What :func:`fit_gradient_boosting` returns.

    Attributes:
        metrics: val keys (as a run stores them at its selected epoch) and, with a test split, test keys (as a
            run's test result: ``test/tau/<rank>`` etc. at the val-chosen thresholds, no ``test/best_tau*``).
        val_curves: the val threshold curves (a ``split`` column first, as a run's).
        test_curves: the test ones, or None without a test split.
        seconds: wall time of fitting and scoring.
        models: ``{rank: fitted HistGradientBoostingClassifier}``, None for a rank with fewer than two labelled
            training classes (see the module docstring).
        iterations: ``{rank: boosting iterations used}`` (0 for a rank without a fitted model).
        taus: ``{rank: tau}`` chosen on val, the ones test is scored at.
        train, val, test: the split parts, the very rows the Trainer uses (``test`` None without a test split).
    """

    metrics: dict[str, float]
    val_curves: pd.DataFrame
    test_curves: pd.DataFrame | None
    seconds: float
    models: dict = field(default_factory=dict)
    iterations: dict[str, int] = field(default_factory=dict)
    taus: dict[str, float] = field(default_factory=dict)
    train: HierarchicalDataset | None = None
    val: HierarchicalDataset | None = None
    test: HierarchicalDataset | None = None

    def log_probs(self, ds: HierarchicalDataset) -> list[torch.Tensor]:
        """The baseline's ``R`` tensors ``(N, K_r + 1)`` of log-probabilities on ``ds`` (a table with the same
        features), as :func:`workbench.evaluation.score` gets them."""
        x = _table_features(ds)
        return [_rank_log_probs(self.models[rank], x, k, self._single[rank])
                for rank, k in zip(ds.taxonomy.ranks, ds.taxonomy.num_classes)]

    _single: dict = field(default_factory=dict, repr=False)  # {rank: the one class} where models[rank] is None


def _hgb_class():
    """scikit-learn's ``HistGradientBoostingClassifier``, imported only when a baseline is asked for."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        raise ImportError(f"the gradient-boosting baseline needs scikit-learn: {SKLEARN_HINT}") from None
    return HistGradientBoostingClassifier


def check_baseline_config(config: Config) -> None:
    """Refuse, before any data is loaded, a config the baseline cannot score: image or set data."""
    name = config.DATA.NAME
    if name in IMAGE_SOURCES:
        raise ConfigError(f"`DATA.NAME` must be table data for the gradient-boosting baseline, got {name!r} (images); "
                          "embed the images first (`python -m workbench embed`) and run the baseline on that table")
    if name in SET_SOURCES or config.DATA.GROUP_BY:
        what = f"`DATA.NAME` {name!r}" if name in SET_SOURCES else f"`DATA.GROUP_BY` {config.DATA.GROUP_BY!r}"
        raise ConfigError(f"{what} makes sets of rows; the gradient-boosting baseline takes one row per sample "
                          "(a table): drop DATA.GROUP_BY, or use the per-row data (e.g. ratdat)")


def _check_dataset(ds: HierarchicalDataset, config: Config) -> None:
    """The loaded (or given) data must be a table without multi-label ranks scored as such."""
    if ds.is_image:
        raise ConfigError(f"{ds.name}: the gradient-boosting baseline takes table data (N, features), got images "
                          f"of shape {tuple(ds.features.shape)}")
    if ds.features.dim() != 2:
        raise ConfigError(f"{ds.name}: the gradient-boosting baseline takes table data (N, features), got sets of "
                          f"shape {tuple(ds.features.shape)} (N, set size, features)")
    if config.LOSS.MULTILABEL and ds.multilabel:
        ranks = ", ".join(ds.taxonomy.ranks[r] for r in sorted(ds.multilabel))
        raise ConfigError(f"`LOSS.MULTILABEL` true scores rank(s) {ranks} of {ds.name} as multi-label; the "
                          "gradient-boosting baseline has one single-label classifier per rank: set "
                          "LOSS.MULTILABEL: false to score them single-label")


def _table_features(ds: HierarchicalDataset) -> np.ndarray:
    return ds.features.numpy()  # float32 (N, F): what the Trainer's model gets


def _internal_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the rows held out for the HGB's early stopping: ``floor(fraction * n_c)`` random rows of
    each class ``c`` (a class with fewer than ``1 / fraction`` rows keeps them all for fitting), so every class
    the validation piece holds is also fitted on."""
    held = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = int(fraction * len(rows))
        if k:
            held[rng.choice(rows, size=k, replace=False)] = True
    return held


def _rank_log_probs(model, x: np.ndarray, num_outputs: int, single: int | None) -> torch.Tensor:
    """``float64 (N, num_outputs)`` log-probabilities of one rank (module docstring: null and unseen classes
    ``-inf``)."""
    out = torch.full((len(x), num_outputs), -torch.inf, dtype=torch.float64)
    if model is not None:
        with np.errstate(divide="ignore"):  # a probability of exactly 0 is -inf, as an unseen class's
            out[:, torch.as_tensor(model.classes_, dtype=torch.long)] = torch.from_numpy(
                np.log(model.predict_proba(x)).astype(np.float64))
    elif single is not None:
        out[:, single] = 0.0
    else:  # no labelled training rows: every real class alike
        out[:, 1:] = -float(np.log(max(num_outputs - 1, 1)))
    return out


@contextmanager
def _thread_limit(num_threads: int):
    """``TRAIN.NUM_THREADS`` (0: the library's default) for scikit-learn's OpenMP threads, as the Trainer sets
    torch's: on a machine shared with other jobs, more threads than free cores make HGB many times slower."""
    if not num_threads:
        yield
        return
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(limits=num_threads, user_api="openmp"):
        yield


def _fit_rank(HGB, kwargs: dict, fraction: float, rng: np.random.Generator, x_train: np.ndarray,
              y_all: np.ndarray, weights: np.ndarray | None, rank: str, num_real: int, progress: bool):
    """``(model or None, the single class or None, iterations)`` of one rank, fitted on the training rows labelled
    there (module docstring)."""
    t0 = time.perf_counter()
    labelled = y_all != 0  # nulls are "not labelled at this rank": never a class here
    x, y = x_train[labelled], y_all[labelled]
    w = None if weights is None else weights[labelled]
    classes = np.unique(y)
    model, single = None, (int(classes[0]) if len(classes) == 1 else None)
    if len(classes) >= 2:
        model = HGB(**kwargs)
        held = _internal_split(y, fraction, rng) if kwargs.get("early_stopping") else np.zeros(len(y), bool)
        if held.any():  # scikit-learn's early stopping on our seeded, per-class piece of the training rows
            fit = ~held
            model.fit(x[fit], y[fit], None if w is None else w[fit], X_val=x[held], y_val=y[held],
                      sample_weight_val=None if w is None else w[held])
        else:  # too few rows for a validation piece (or early stopping off): max_iter iterations
            model.set_params(early_stopping=False)
            model.fit(x, y, w)
    iterations = 0 if model is None else int(model.n_iter_)
    if progress:
        print(f"baseline {rank}: {len(classes)} of {num_real} classes in {int(labelled.sum())} labelled train rows, "
              f"{iterations} boosting iterations, {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return model, single, iterations


def fit_gradient_boosting(config: Config, dataset: HierarchicalDataset | None = None, *, seed: int = 0,
                          progress: bool = True, **hgb_kwargs) -> BaselineResult:
    """Fit one ``HistGradientBoostingClassifier`` per rank on ``config``'s train split and score val and test.

    Args:
        config: a validated config; its ``DATA`` section picks and splits the data (as the Trainer's).
        dataset: preloaded data (default: loaded from ``DATA``), split as the Trainer splits it.
        seed: every classifier's ``random_state`` and the seed of its early-stopping piece.
        progress: one line per rank on stderr (classes, rows, iterations, seconds).
        The classifiers use ``TRAIN.NUM_THREADS`` OpenMP threads (0: scikit-learn's default, every core).
        **hgb_kwargs: passed to the classifiers over :data:`HGB_DEFAULTS` (e.g. ``max_iter``,
            ``learning_rate``, ``class_weight="balanced"``, ``early_stopping=False``).

    Raises:
        ConfigError: image or set data, or multi-label ranks (``LOSS.MULTILABEL``).
        ImportError: scikit-learn is not installed (the message says how to install it).
    """
    HGB = _hgb_class()
    if dataset is None:
        check_baseline_config(config)  # before loading: images are not read only to be refused
    t0 = time.perf_counter()
    ds = dataset if dataset is not None else load_dataset(config.DATA)
    _check_dataset(ds, config)
    check_finite_features(ds.features, ds.features, ds.feature_names, None, ds.name)  # as the Trainer
    train, val, test = split_dataset(ds, config.DATA.VAL_FRACTION, config.DATA.TEST_FRACTION, config.DATA.SEED)
    taxonomy = ds.taxonomy
    kwargs = {**HGB_DEFAULTS, **hgb_kwargs, "random_state": seed}
    fraction = kwargs.pop("validation_fraction", INTERNAL_VALIDATION_FRACTION)
    rng = np.random.default_rng(seed)
    x_train = _table_features(train)
    weights = None if train.sample_weight is None else train.sample_weight.numpy().astype(np.float64)
    models, single, iterations = {}, {}, {}
    with _thread_limit(config.TRAIN.NUM_THREADS):
        for r, rank in enumerate(taxonomy.ranks):
            models[rank], single[rank], iterations[rank] = _fit_rank(
                HGB, kwargs, fraction, rng, x_train, train.targets[:, r].numpy(), weights, rank,
                taxonomy.num_classes[r] - 1, progress)
        result = BaselineResult({}, pd.DataFrame(), None, 0.0, models, iterations, train=train, val=val, test=test,
                                _single=single)
        val_metrics, result.val_curves, _ = score(result.log_probs(val), val.targets, taxonomy, "val")
        result.taus = chosen_taus(val_metrics, taxonomy.ranks)
        result.metrics = dict(val_metrics)
        if test is not None:  # the test-time rule of a run: each rank's val-chosen tau, nothing chosen on test
            test_metrics, result.test_curves, _ = score(result.log_probs(test), test.targets, taxonomy, "test")
            result.metrics.update(at_val_taus(test_metrics, result.test_curves, result.taus))
    result.seconds = time.perf_counter() - t0
    return result

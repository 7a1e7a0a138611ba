"""``python -m workbench``: train, resume, runs, predict, export, embed, baseline, sweep. Errors print one clear line, never a traceback.

Only the standard library and :mod:`workbench.errors` / :mod:`workbench.names` are imported at the top:
``--help``, ``runs`` and a config error answer without importing torch, Ray, W&B or Streamlit (each
command imports what it needs; ``sweep`` is :mod:`workbench.sweep_cli`, imported only when used).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from workbench.errors import USER_ERRORS, DataWarning, TrainingFailed
from workbench.names import (
    ACC, ACTIVE, DEFAULT_STORE, ENDED_OK, SELECT_BY_DEFAULT, SUMMARY_HOWS, TEST_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC,
    VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, rank_key, val_acc,
)

RUNS_NAME_WIDTH = 30  # a long run name is cut in the `runs` table (the store keeps it whole)
RUNS_LIMIT = 20  # the `runs` table shows the newest this many runs unless --limit says otherwise


def positive_int(text: str) -> int:
    """argparse type for counts such as ``--limit``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench", description="Hierarchical classification workbench")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run from a YAML config")
    t.add_argument("--config", required=True, help="YAML config (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. LOSS.W=0.3")
    t.add_argument("--run-id", help="use this run id (a launcher creates the run row first)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="data-parallel processes on this machine (torch.distributed.run; gloo on CPU, NCCL with one "
                        "GPU each); TRAIN.BATCH_SIZE is per process (default 1: this process alone)")
    c = t.add_argument_group("on a Ray cluster (Ray Train: the same trainer on N data-parallel workers; the run is "
                             "recorded in this machine's store)")
    c.add_argument("--address", default=None, help="the Ray cluster: 'auto' or host:port (default: train here)")
    c.add_argument("--workers", type=positive_int, default=None, help="Ray Train workers (default 1; needs --address)")
    c.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (default 0: CPU, gloo)")
    c.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker, fractions allowed (default 1)")
    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_id")
    r.add_argument("--store", default=DEFAULT_STORE)
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--nproc", type=positive_int, default=None, metavar="N",
                   help="data-parallel processes; as many as wrote the checkpoint (the default)")
    _runs_parser(sub)
    pr = sub.add_parser("predict", help="predict new data (or a run's own val/test split) with a run or an exported bundle")
    pr.add_argument("model", metavar="RUN_ID|BUNDLE", help="a run id in --store, or a bundle file written by `export`")
    pr.add_argument("--store", default=DEFAULT_STORE, help="the run store of RUN_ID (never opened for a bundle)")
    what = pr.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", metavar="PATH", help="a table (CSV/TSV/Parquet) with the run's feature columns, or "
                      "for an image run a folder of images or a manifest; rank columns (or rank folders) are the truth")
    what.add_argument("--split", choices=("val", "test"), help="the run's own split, re-made from its config")
    pr.add_argument("--out", required=True, help="predictions file: .parquet, or .csv (list cells joined by '|')")
    pr.add_argument("--top-k", type=positive_int, default=3, help="real classes listed per rank (default 3)")
    pr.add_argument("--consistent", action="store_true", help="also the best path of the taxonomy (consistent/<rank>)")
    pr.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where to run the model")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex = sub.add_parser("export", help="write a run's selected weights, taxonomy, config and tau as one bundle file")
    ex.add_argument("run_id", help="the run to export (its selected epoch: best.pt)")
    ex.add_argument("--store", default=DEFAULT_STORE, help="the run store (only read)")
    ex.add_argument("--out", required=True, help="a .pt file, or a folder (then <folder>/<run id>.pt)")
    em = sub.add_parser("embed", help="run a frozen image backbone once over image data: one row of embeddings per "
                        "image (emb_0..), its ranks, group and split, in a Parquet file to train on")
    em.add_argument("--config", required=True, help="YAML config: image DATA, and TRAIN.INIT_FROM (a trained image "
                    "run, checkpoint or bundle) or MODEL.PRETRAINED (local weights for MODEL.BACKBONE)")
    em.add_argument("--out", required=True, help="the embeddings file (.parquet); unfinished work is kept in "
                    "<out>.parts/ and a rerun goes on from there")
    em.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. DATA.IMAGE_SIZE=64")
    em.add_argument("--batch-size", type=positive_int, default=None, help="images per forward pass (default: the trainer's evaluation batch for images)")
    em.add_argument("--no-progress", action="store_true", help="no progress bar")
    bl = sub.add_parser("baseline", help="a classical baseline: one gradient-boosted classifier per rank (scikit-learn) "
                        "on a table config's train split, scored on val and test with a run's metrics")
    bl.add_argument("--config", required=True, help="YAML config (see configs/); its DATA picks and splits the data")
    bl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. DATA.SEED=1")
    bl.add_argument("--seed", type=int, default=0, help="the classifiers' random_state (default 0)")
    bl.add_argument("--json", action="store_true", help="print the metrics as JSON (NaN as null), not a table")
    # `sweep` has its own parser (workbench.sweep_cli): main() hands it the rest of the command line
    sub.add_parser("sweep", help="a Ray Tune sweep over w and the null-masking schedule (see `sweep --help`)",
                   add_help=False)
    return p


def _runs_parser(sub) -> None:
    """``runs``: list (filter, summary, JSON) and, as sub-commands, tag / untag / note / rename / archive / delete."""
    ls = sub.add_parser("runs", help="list, filter, tag, annotate, rename, archive and delete runs",
                        description="Without an action: list the runs (newest first; archived runs hidden). "
                                    "Actions change one run: tag, untag, note, rename, archive, delete.")
    ls.add_argument("--store", default=DEFAULT_STORE, help=f"the run store (default {DEFAULT_STORE})")
    ls.add_argument("--limit", type=positive_int, default=None,
                    help=f"show the newest N runs (N >= 1; default: {RUNS_LIMIT} in the table, all with --json)")
    ls.add_argument("--json", action="store_true",
                    help="print a JSON list, one object per run: id, name, status, parent_id, sweep_id, ranks (coarse "
                         "to fine), config, environment, tags (list), notes (text or null), archived, last, best, "
                         "min and max (metric key -> value, test keys left out; null for NaN), selected (the values "
                         "at selected_epoch, test keys left out), test (test key -> value at the selected epoch; {} "
                         "when none) and selected_epoch (0-based)")
    ls.add_argument("--filter", metavar="EXPR", default=None,
                    help="keep the runs matching EXPR, e.g. \"LOSS.W >= 0.2 and core/val_partial_chain_acc > 0.7 and "
                         "tag:baseline\" (config keys, metric keys, status/name/id/sweep_id/parent_id/epochs_done; "
                         "== = != < <= > >= ~ (substring); and or not ( ); tag:NAME; null); metrics are read as "
                         "--summary says")
    ls.add_argument("--summary", choices=SUMMARY_HOWS, default="last",
                    help="how a metric's epochs give one number in the table and the filter: the last epoch, the "
                         "best (in the metric's direction), min, max, or the value at the epoch selected on val "
                         "(default: last)")
    ls.add_argument("--archived", action="store_true", help="include archived runs")
    acts = ls.add_subparsers(dest="action", metavar="[ACTION]")
    store = {"default": argparse.SUPPRESS, "help": f"the run store (default {DEFAULT_STORE})"}  # before or after ACTION

    a = acts.add_parser("tag", help="add tags to a run")
    a.add_argument("run_id")
    a.add_argument("tags", nargs="+", metavar="TAG", help="any text up to 64 characters without control characters")
    a.add_argument("--store", **store)
    a = acts.add_parser("untag", help="remove tags from a run (one it does not have is fine)")
    a.add_argument("run_id")
    a.add_argument("tags", nargs="+", metavar="TAG")
    a.add_argument("--store", **store)
    a = acts.add_parser("note", help="set a run's notes ('-' reads them from stdin; '' clears them)")
    a.add_argument("run_id")
    a.add_argument("text", metavar="TEXT")
    a.add_argument("--store", **store)
    a = acts.add_parser("rename", help="give a run a new name (its id never changes)")
    a.add_argument("run_id")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--store", **store)
    a = acts.add_parser("archive", help="hide a run from `runs` and the dashboard's tables (nothing is deleted)")
    a.add_argument("run_id")
    a.add_argument("--undo", action="store_true", help="bring an archived run back")
    a.add_argument("--store", **store)
    a = acts.add_parser("delete", help="delete a run's rows, curves, tags and files (asks first; a running run is "
                                       "refused)")
    a.add_argument("run_id")
    a.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    a.add_argument("--store", **store)


def cmd_train(args) -> int:
    from workbench.config import Config
    from workbench.store import validate_run_id

    if args.run_id is not None:
        validate_run_id(args.run_id)  # before anything else: the id becomes a folder name
    cfg = Config.load(args.config, args.set)
    if args.run_id:
        _check_run_id_is_new_or_queued(cfg.TRACKING.STORE, args.run_id)
    if args.nproc > 1 and args.address is not None:
        from workbench.errors import ConfigError

        raise ConfigError(f"--nproc {args.nproc} starts processes on this machine; on a Ray cluster (--address) "
                          "ask for --workers instead")
    cluster = _cluster_settings(args)
    if cluster is not None:
        return _train_on_cluster(cfg, args.run_id, cluster)
    if args.nproc > 1:
        return _train_on_many(cfg, args)

    from workbench.trainer import Trainer  # torch: only once the config is known to be good

    trainer = Trainer(cfg, run_id=args.run_id, progress=not args.no_progress)
    status = trainer.fit()
    _print_result(trainer.store, trainer.run_id, trainer.taxonomy.ranks)
    return 0 if status in ENDED_OK else 1


def _cluster_settings(args):
    """``train --address ...``: the run's :class:`workbench.cluster_run.ClusterSettings`, validated; None to train
    here. A worker flag without ``--address`` is an error (it would be silently ignored)."""
    from workbench.errors import ConfigError

    flags = {"--workers": args.workers, "--gpus-per-worker": args.gpus_per_worker,
             "--cpus-per-worker": args.cpus_per_worker}
    if args.address is None:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} needs --address (a Ray cluster: 'auto' or host:port)")
        return None
    from workbench.cluster_run import ClusterSettings

    settings = ClusterSettings(address=args.address, workers=args.workers or 1,
                               gpus_per_worker=args.gpus_per_worker or 0.0,
                               cpus_per_worker=1.0 if args.cpus_per_worker is None else args.cpus_per_worker)
    settings.validate()
    return settings


def _train_on_cluster(cfg, run_id: str | None, settings) -> int:
    """``train --address``: the run's row first (queued; a launcher's row is reused), then the cluster run;
    a cluster that does not answer is an error before any row is made."""
    from workbench.cluster_run import run_on_cluster
    from workbench.store import RunStore
    from workbench.sweep import check_reachable

    check_reachable(settings.address)
    store = RunStore(cfg.TRACKING.STORE)
    if run_id is None or not store.has_run(run_id):
        init = cfg.TRAIN.INIT_FROM  # phase 2 of a run in this store: its parent
        parent = init if init and store.has_run(init) else None
        run_id = store.create_run(cfg.to_dict(), name=cfg.TRACKING.RUN_NAME, run_id=run_id, parent_id=parent,
                                  status="queued")
    print(f"run {run_id}: {settings.workers} Ray Train worker{'s' if settings.workers != 1 else ''} on the Ray "
          f"cluster at {settings.address}; recorded in {store.path}", flush=True)
    status = run_on_cluster(cfg, run_id, settings)
    if status == "failed":  # the store keeps the whole error (the worker's traceback); its last line says why
        from workbench.launch import last_error_line

        why = last_error_line(store.run(run_id)["error"] or "") or "see the run's error in the store"
        print(f"error: run {run_id} failed on the cluster: {why}", file=sys.stderr)
        return 1
    _print_result(store, run_id, store.run_ranks(run_id))
    return 0 if status in ENDED_OK else 1


def _train_on_many(cfg, args) -> int:
    """``train --nproc N``: create the run's row (``queued``; its id is every worker's), save its resolved config
    beside the store, and run N workers (:func:`workbench.distributed.launch_local`)."""
    from workbench.distributed import check_devices, launch_local
    from workbench.names import config_file
    from workbench.store import RunStore

    check_devices(cfg, args.nproc)
    store = RunStore(cfg.TRACKING.STORE)
    store.check_writable()
    init = cfg.TRAIN.INIT_FROM  # phase 2 of a run in this store: its parent (a checkpoint file: rank 0 fills it in)
    parent = init if init and store.has_run(init) else None
    run_id = args.run_id if args.run_id and store.has_run(args.run_id) else store.create_run(
        cfg.to_dict(), name=cfg.TRACKING.RUN_NAME, run_id=args.run_id, parent_id=parent, status="queued")
    cfg_file = config_file(store.path, run_id)
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.save(cfg_file)
    worker_args = ["train", "--run-id", run_id, "--config", str(cfg_file)] + ([] if args.no_progress else ["--progress"])
    launch_local(args.nproc, worker_args, store.path, run_id)
    _print_result(store, run_id, store.run_ranks(run_id))
    return 0 if store.run(run_id)["status"] in ENDED_OK else 1


def _check_run_id_is_new_or_queued(store_path: str, run_id: str) -> None:
    """``train --run-id`` starts a run from epoch 0: only a new id or a launcher's queued row, never a
    run that already trained (its stored epochs would be overwritten)."""
    from workbench.store import RunStore, StoreError

    store = RunStore(store_path)
    if store.has_run(run_id):
        run = store.run(run_id)
        if run["status"] != "queued":
            raise StoreError(
                f"{store.path}: run {run_id!r} already exists (status {run['status']}, epochs done: {run['epochs_done']}); "
                f"`train --run-id` takes a new id (or a queued run's); continue this one with "
                f"`python -m workbench resume {run_id} --store {store.path}`"
            )


def cmd_resume(args) -> int:
    from workbench.store import RunStore, validate_run_id

    validate_run_id(args.run_id)
    store = RunStore(args.store, create=False)  # resuming needs a store that exists; never create one
    run = store.run(args.run_id)
    store.check_writable()  # before torch is imported and the data loaded: a read-only store fails at once

    from workbench.config import Config
    from workbench.trainer import Trainer

    cfg = Config.from_run(run["config"], source=f"run {args.run_id}")
    from workbench.distributed import checkpoint_world, resume_world_error

    world = checkpoint_world(store, args.run_id)
    if args.nproc is not None and args.nproc != world and store.checkpoint_path(args.run_id).is_file():
        raise resume_world_error(args.run_id, store.checkpoint_path(args.run_id), written=world, asked=args.nproc)
    nproc = args.nproc or world
    if nproc > 1:  # N workers (workbench.distributed.launch_local); each checks the checkpoint's world
        return _resume_on_many(store, run, cfg, args, nproc)
    trainer = Trainer(cfg, store=store, run_id=args.run_id, progress=not args.no_progress)
    if run["status"] in ("stopped", "failed") and store.stop_requested(args.run_id):
        store.clear_stop(args.run_id)  # no trainer holds it: its old stop request would end it after one epoch
    status = trainer.fit(resume=True)
    _print_result(store, args.run_id, trainer.taxonomy.ranks)
    return 0 if status in ENDED_OK else 1


def _resume_on_many(store, run, cfg, args, nproc: int) -> int:
    """``resume RUN_ID --nproc N``: N workers continue the run from its checkpoint."""
    from workbench.distributed import check_devices, launch_local

    check_devices(cfg, nproc)
    if run["status"] in ("stopped", "failed") and store.stop_requested(args.run_id):
        store.clear_stop(args.run_id)  # no trainer holds it: its old stop request would end it after one epoch
    worker_args = ["resume", "--run-id", args.run_id, "--store", str(store.path)] + (
        [] if args.no_progress else ["--progress"])
    launch_local(nproc, worker_args, store.path, args.run_id, resume=True)
    _print_result(store, args.run_id, store.run_ranks(args.run_id))
    return 0 if store.run(args.run_id)["status"] in ENDED_OK else 1


def cmd_runs(args) -> int:
    if args.action is not None:
        return RUN_ACTIONS[args.action](args)
    from workbench.filters import FilterError, parse_filter
    from workbench.store import RunStore

    try:
        where = parse_filter(args.filter) if args.filter is not None else None  # a typo fails before the store opens
        store = RunStore.open_existing(args.store)  # a read never creates or migrates
        if args.json:  # compact: the C encoder, for scripts
            records = runs_records(store, args.limit, where=where, how=args.summary, include_archived=args.archived)
            print(json.dumps(records, allow_nan=False))
        else:
            print(runs_table(store, args.limit or RUNS_LIMIT, how=args.summary, where=where,
                             include_archived=args.archived))
    except FilterError as e:  # the reason, then the expression with a caret under the bad token
        print(f"error: bad --filter: {e}", file=sys.stderr)
        return 2
    return 0


def _matching_ids(store, where, how: str, include_archived: bool) -> list[str] | None:
    """The ids of the runs ``where`` keeps (newest first), or None when there is no filter (every run)."""
    if where is None or where.tree is None:
        return None
    from workbench.tracker import run_table

    table = run_table(store, how, include_archived=include_archived)
    return list(table.loc[where.mask(table), "id"])


def runs_records(store, limit: int | None = None, where=None, how: str = "last",
                 include_archived: bool = False) -> list[dict]:
    """The runs (newest first, at most ``limit``; archived ones only with ``include_archived``; those the
    :class:`workbench.filters.RunFilter` ``where`` keeps, its metrics read as ``how`` says) as JSON-ready
    dicts: ``id, name, status, parent_id, sweep_id, ranks`` (coarse to fine), ``config``, ``environment``,
    ``tags`` (sorted list), ``notes`` (text or None), ``archived``, and (NaN -> None in each):

    - ``last`` / ``best`` / ``min`` / ``max``: metric key -> value at the run's last epoch / best over epochs in the
      metric's direction / smallest / largest (:func:`workbench.summaries.metric_values`); val, train and run keys
      only (test is evaluated once: a "best test" would select on test);
    - ``selected``: metric key -> value at ``selected_epoch`` (test keys left out, as in ``last``);
    - ``test``: test key -> value, the run's test numbers (at its selected epoch); ``{}`` when it has none
      (an old or failed run, no test split, a run still training);
    - ``selected_epoch``: the epoch the run selected on val, **0-based** like ``epoch`` in the store (so
      ``selected_epoch == 2`` is the third epoch): its test rows' epoch, else where its ``TRAIN.SELECT_BY``
      is best so far; None before its first epoch.
    """
    from workbench.summaries import metric_values, run_selected_epoch, test_mask, test_values, values_at_epoch

    runs = store.runs(include_archived=include_archived)
    keep = _matching_ids(store, where, how, include_archived)
    if keep is not None:
        runs = runs[runs["id"].isin(keep)]
    if limit is not None:
        runs = runs.head(limit)
    if runs.empty:
        return []
    ids = list(runs["id"])
    long = store.metrics(ids)
    configs = {row.id: json.loads(row.config) for row in runs.itertuples(index=False)}
    is_test = test_mask(long["key"])
    # last: test keys left out here; best / min / max leave them out themselves (never an extreme of a test key)
    values = {how_: metric_values(long[~is_test] if how_ == "last" else long, how_)
              for how_ in ("last", "best", "min", "max")}
    test = test_values(long)
    logged = long[is_test].groupby("run_id")["key"].agg(set)  # a run's test dict: the keys it logged (NaN -> None)
    chosen = run_selected_epoch(long, {r: (c.get("TRAIN") or {}).get("SELECT_BY") for r, c in configs.items()})
    values["selected"] = values_at_epoch(long[~is_test], chosen)
    records = []
    for row in runs.itertuples(index=False):
        records.append({
            "id": row.id, "name": _text(row.name), "status": row.status, "parent_id": _text(row.parent_id),
            "sweep_id": _text(row.sweep_id), "ranks": row.ranks if row.ranks is not None else store.run_ranks(row.id),
            "config": configs[row.id], "environment": row.environment,
            "tags": list(row.tags), "notes": _text(row.notes), "archived": bool(row.archived),
            **{how_: _finite_values(table, row.id) for how_, table in values.items()},
            "test": _finite_values(test, row.id, only=logged.get(row.id, set())),
            "selected_epoch": int(chosen[row.id]) if row.id in chosen.index else None,
        })
    return records


def _text(value) -> str | None:
    """A text column's cell for JSON: a missing one is None (pandas reads NULL in a text column as NaN)."""
    return value if isinstance(value, str) else None


def _finite_values(table, run_id: str, only: set | None = None) -> dict:
    """One run's row of a metric_values table as ``{key: float | None}`` (NaN and missing -> None);
    ``only``: just these keys (the ones this run logged, where the table has columns for other runs' keys)."""
    if run_id not in table.index:
        return {}
    values = [(k, v) for k, v in table.loc[run_id].items() if only is None or k in only]
    return {str(k): (None if v is None or not math.isfinite(v) else float(v)) for k, v in values}


def runs_table(store, limit: int = RUNS_LIMIT, how: str = "last", where=None, include_archived: bool = False) -> str:
    """The run list as text: id, name, status, epochs, w, phase 1, the val chain and partial-chain
    accuracies (read as ``how`` says: the last epoch by default), and the test partial-chain accuracy (at
    the epoch selected on val) when any listed run has one. ``where``: only the runs this
    :class:`workbench.filters.RunFilter` keeps; archived runs only with ``include_archived``."""
    from workbench.tracker import run_table

    filtering = where is not None and where.tree is not None
    shown = (VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC)
    # a filter may read any key (and names the closest ones when it reads an unknown one): then every column
    table = run_table(store, how, keys=None if filtering else shown, include_archived=include_archived)
    if filtering:
        table = table[where.mask(table)]
    if table.empty:
        return _no_runs(store, filtering, include_archived)
    table = table.head(limit).set_index("id")
    table["name"] = [_short_name(n, i) for n, i in zip(table["name"], table.index)]
    columns = {"name": "name", "status": "status", "epochs_done": "epochs", "DATA.NAME": "data", "LOSS.W": "w",
               "TRAIN.PHASE1_MASK_NULL_LOSS": "phase1", "parent_id": "parent", VAL_CHAIN_ACC: "val_chain",
               VAL_PARTIAL_CHAIN_ACC: "val_partial_chain"}
    if TEST_PARTIAL_CHAIN_ACC in table and table[TEST_PARTIAL_CHAIN_ACC].notna().any():  # others show NaN there
        columns[TEST_PARTIAL_CHAIN_ACC] = "test_partial_chain"
    out = table.reindex(columns=list(columns)).rename(columns=columns)  # runs without an epoch yet: NaN
    for column in ("val_chain", "val_partial_chain", "test_partial_chain"):
        if column in out:
            out[column] = out[column].astype(float)
    out.index.name = None
    return out.to_string(float_format=lambda v: f"{v:.4f}")


def _no_runs(store, filtering: bool, include_archived: bool) -> str:
    """Why the run list is empty: no runs at all, none matching the filter, or only archived ones."""
    if filtering:
        archived = "" if include_archived else " (archived runs: --archived)"
        return f"no run in {store.path} matches the filter{archived}"
    hidden = 0 if include_archived else int(store.runs()["archived"].sum())
    if hidden:
        return f"no runs in {store.path} but {hidden} archived (--archived lists them)"
    return f"no runs in {store.path}"


# ---------------------------------------------------------------------- runs ACTION: change one run
def _run_to_change(args):
    """The store (opened for writing, never created: an older store is migrated) and the validated run id."""
    from workbench.store import RunStore, validate_run_id

    validate_run_id(args.run_id)
    store = RunStore(args.store, create=False)
    store.check_writable()
    return store, args.run_id


def _tag_list(tags: list[str]) -> str:
    return ", ".join(repr(t) for t in tags) if tags else "(none)"


def cmd_runs_tag(args) -> int:
    store, run_id = _run_to_change(args)
    print(f"run {run_id} tags: {_tag_list(store.add_tags(run_id, args.tags))}")
    return 0


def cmd_runs_untag(args) -> int:
    store, run_id = _run_to_change(args)
    print(f"run {run_id} tags: {_tag_list(store.remove_tags(run_id, args.tags))}")
    return 0


def cmd_runs_note(args) -> int:
    text = args.text
    if text == "-":  # a note from a file or a heredoc; the newline that ends the input is not part of it
        text = sys.stdin.read()
        text = text[:-1] if text.endswith("\n") else text
    store, run_id = _run_to_change(args)
    store.set_notes(run_id, text or None)
    print(f"run {run_id}: notes saved ({len(text):,} characters)" if text else f"run {run_id}: notes cleared")
    return 0


def cmd_runs_rename(args) -> int:
    store, run_id = _run_to_change(args)
    store.rename(run_id, args.name)
    print(f"run {run_id} is now named {args.name!r}")
    return 0


def cmd_runs_archive(args) -> int:
    store, run_id = _run_to_change(args)
    store.set_archived(run_id, not args.undo)
    if args.undo:
        print(f"run {run_id} is back in the run lists")
    else:
        print(f"run {run_id} archived: hidden from `runs` and the dashboard's tables (`runs --archived` lists it; "
              f"`runs archive {run_id} --undo` brings it back)")
    return 0


def cmd_runs_delete(args) -> int:
    """Print what goes, ask (on a terminal; ``--yes`` skips it), then delete. Refusals exit 2, a failed delete 1."""
    from workbench.errors import StoreError
    from workbench.launch import reconcile  # pandas and the config only: no torch

    store, run_id = _run_to_change(args)
    reconcile(store, [run_id])  # a launched run whose process died is marked failed first, so it can go
    plan = store.delete_plan(run_id)
    if plan.status in ACTIVE:
        raise StoreError(f"run {run_id} is {plan.status}: stop it first (Stop on the dashboard's Train page, Ctrl-C "
                         "where it trains, or wait for it to end); nothing was deleted. A run launched from the "
                         "dashboard whose process has died is marked failed by this command; this one's is alive "
                         "or unknown here (started by `train` or a sweep)")
    print(plan.describe())
    if not args.yes:
        if not sys.stdin.isatty():
            raise StoreError(f"run {run_id}: deleting asks for confirmation and stdin is not a terminal; run again "
                             "with --yes to delete it; nothing was deleted")
        try:
            answer = input("Delete? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing was deleted")
            return 0
    try:
        store.delete_run(run_id)
    except StoreError as e:  # the store says whether the rows went
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deleted run {run_id}")
    return 0


RUN_ACTIONS = {"tag": cmd_runs_tag, "untag": cmd_runs_untag, "note": cmd_runs_note, "rename": cmd_runs_rename,
               "archive": cmd_runs_archive, "delete": cmd_runs_delete}


def _short_name(name, run_id: str) -> str:
    """A run's name for the table: '' when it is just the id, cut to :data:`RUNS_NAME_WIDTH` characters."""
    if name is None or name == run_id:
        return ""
    name = str(name)
    return name if len(name) <= RUNS_NAME_WIDTH else name[: RUNS_NAME_WIDTH - 1] + "…"


def cmd_predict(args) -> int:
    from workbench.predict import accuracy_summary, output_format, predict_from, write_predictions

    output_format(args.out)  # a wrong suffix fails before the model and data are loaded
    frame = predict_from(args.model, args.store, data=args.data, split=args.split, top_k=args.top_k,
                         consistent=args.consistent, progress=not args.no_progress, device=args.device)
    path = write_predictions(frame, args.out)
    a = frame.attrs
    print(f"predicted {len(frame)} samples of {args.split + ' split' if args.split else a['data']} with run "
          f"{a['run_id']} ({a['weights']}) -> {path}")
    if "correct" in frame:  # the truth was known
        ranks = [c.split("/", 1)[1] for c in frame.columns if c.startswith("pred/")]
        acc = accuracy_summary(frame, ranks)
        print(f"  partial-chain acc {acc['partial_chain']:.4f}   acc per rank: "
              + ", ".join(f"{r} {acc[r]:.4f}" for r in ranks))
    return 0


def cmd_export(args) -> int:
    from workbench.store import RunStore, validate_run_id

    validate_run_id(args.run_id)
    store = RunStore.open_existing(args.store)  # export only reads: never creates, migrates or writes a store

    from workbench.bundle import export_run

    path, bundle = export_run(store, args.run_id, args.out)
    print(f"exported run {args.run_id} ({bundle['weights']}) -> {path}")
    if bundle["status"] != "finished":
        print(f"  note: the run's status is {bundle['status']}: these are the weights it had selected by then")
    return 0


def cmd_embed(args) -> int:
    from workbench.config import Config

    cfg = Config.load(args.config, args.set)

    # torch: only once the config is known to be good
    from workbench.embed import EMBED_PREFIX, GROUP_COLUMN, SPLIT_COLUMN, check_out_path, run_embedding

    check_out_path(args.out)  # a folder or a wrong suffix fails before the data and weights are loaded
    report = run_embedding(cfg, args.out, progress=not args.no_progress, batch_size=args.batch_size)
    resumed = f"; {report.reused_parts} of {report.parts} parts reused from an interrupted run" if report.reused_parts else ""
    print(f"embedded {report.rows} images into {report.dim} dimensions with {report.weights} in "
          f"{report.seconds:.1f} s{resumed} -> {report.path}")
    print(f"  train on it with DATA.NAME: file, DATA.PATH: {report.path}, DATA.FEATURE_PREFIX: {EMBED_PREFIX}, "
          f"DATA.RANKS: {report.ranks}, DATA.SPLIT_COLUMN: {SPLIT_COLUMN}"
          + (f", DATA.GROUP_BY: {GROUP_COLUMN}" if report.grouped else ""))
    return 0


def cmd_baseline(args) -> int:
    from workbench.config import Config

    cfg = Config.load(args.config, args.set)

    from workbench.baseline import _hgb_class, check_baseline_config  # torch: only once the config is known to be good

    check_baseline_config(cfg)
    try:
        _hgb_class()
    except ImportError as e:  # an optional dependency: one line saying how to install it
        print(f"error: {e}", file=sys.stderr)
        return 2
    from workbench.baseline import fit_gradient_boosting

    result = fit_gradient_boosting(cfg, seed=args.seed, progress=True)
    ranks = list(result.val.taxonomy.ranks)
    if args.json:
        out = {"seed": args.seed, "seconds": result.seconds, "iterations": result.iterations,
               "split": {"train": len(result.train), "val": len(result.val),
                         "test": 0 if result.test is None else len(result.test)},
               "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(result.metrics.items())}}
        print(json.dumps(out, allow_nan=False))
        return 0
    print(baseline_table(result.metrics, ranks))
    n_test = "no test split" if result.test is None else f"{len(result.test)} test"
    print(f"gradient boosting (seed {args.seed}) on {len(result.train)} train / {len(result.val)} val / {n_test} rows "
          f"in {result.seconds:.1f} s; test at each rank's val-chosen tau")
    return 0


def baseline_table(metrics: dict, ranks) -> str:
    """The baseline's headline metrics as text: one row per metric, a ``val`` and a ``test`` column (``n/a``
    where a split has no such key: no test split, or the threshold a split does not choose)."""
    rows = [("chain acc", "core/val_chain_acc", "core/test_chain_acc"),
            ("partial-chain acc", VAL_PARTIAL_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC)]
    rows += [(f"{what}", f"val/{what}", f"test/{what}") for what in ("consistency", "severity", "hdist@1", "hF")]
    for r in ranks:
        rows += [(f"acc {r}", rank_key("val", ACC, r), rank_key("test", ACC, r)),
                 (f"tau {r} (chosen on val)", rank_key("val", "best_tau", r), rank_key("test", "tau", r)),
                 (f"coverage at tau {r}", None, rank_key("test", "coverage_at_tau", r)),
                 (f"selective acc at tau {r}", None, rank_key("test", "selective_accuracy_at_tau", r))]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'metric':<{width}}  {'val':>8}  {'test':>8}"]
    for label, v, t in rows:
        lines.append(f"{label:<{width}}  {_num(metrics.get(v)) if v else 'n/a':>8}  {_num(metrics.get(t)):>8}")
    return "\n".join(lines)


def _print_result(store, run_id: str, ranks) -> None:
    """After ``train`` / ``resume``: the last epoch's val numbers, then the test numbers at the epoch
    selected on val (or why there are none), then the health warnings."""
    from workbench.summaries import metric_values, test_epoch, test_values

    long = store.metrics([run_id])
    if long.empty:
        return
    run = store.run(run_id)
    last = metric_values(long, "last").loc[run_id]
    print(f"run {run_id}: {int(long['epoch'].max()) + 1} epochs, status {run['status']}")
    print(f"  val chain acc {last[VAL_CHAIN_ACC]:.4f}   val partial-chain acc {last[VAL_PARTIAL_CHAIN_ACC]:.4f}"
          "   (last epoch)")
    print("  val acc per rank: " + ", ".join(f"{r} {last[val_acc(r)]:.4f}" for r in ranks))
    test = test_values(long)
    if run_id in test.index:
        values, epoch = test.loc[run_id], int(test_epoch(long).loc[run_id])
        select_by = (run["config"].get("TRAIN") or {}).get("SELECT_BY") or SELECT_BY_DEFAULT
        chosen = long[(long["epoch"] == epoch) & (long["key"] == select_by)]["value"]
        by = f"{select_by} {chosen.iloc[0]:.4f}" if len(chosen) else select_by
        # epochs read by people count from 1, as the dashboard shows them (the store's column is 0-based)
        print(f"  test at epoch {epoch + 1} (selected on val by {by}):")
        print(f"    test chain acc {_num(values.get(TEST_CHAIN_ACC))}   "
              f"test partial-chain acc {_num(values.get(TEST_PARTIAL_CHAIN_ACC))}")
        print("    test acc per rank: " + ", ".join(f"{r} {_num(values.get(rank_key('test', ACC, r)))}" for r in ranks))
    else:
        print("  no test numbers (no test split, or the run did not end normally)")
    _print_health(run.get("health"))


def _num(value) -> str:
    """A metric for a line of text: 4 decimals; ``n/a`` when missing or NaN."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _print_health(health_json: str | None) -> None:
    """The health checks that fired in the run's last epoch, each as one plain sentence (the store keeps
    them too, but a warning seen only in the app is a warning missed)."""
    import json

    from workbench.health import explain

    for check, message in (json.loads(health_json) if health_json else {}).items():
        print(f"  health warning: {explain(check, message)}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Data warnings (labels equal up to case, a split off its fractions) as ``warning: ...`` lines on
    stderr; other warnings as Python shows them."""
    if issubclass(category, DataWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # its own parser and error handling (also `sweeps/run.py`)
        from workbench.sweep_cli import main as sweep_main

        return sweep_main(argv[1:])
    args = _parser().parse_args(argv)
    commands = {"train": cmd_train, "resume": cmd_resume, "runs": cmd_runs, "predict": cmd_predict,
                "export": cmd_export, "embed": cmd_embed, "baseline": cmd_baseline}
    try:
        with warnings.catch_warnings():  # restores Python's own display afterwards
            warnings.showwarning = _show_warning
            return commands[args.command](args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:  # the run is recorded as failed with this message
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `runs --json | head`: the reader left; no traceback, and none at exit either
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it

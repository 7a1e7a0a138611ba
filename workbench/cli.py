"""``python -m workbench``: train, resume, runs, predict, export, embed, sweep. Errors print one clear line, never a traceback.

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
    ACC, DEFAULT_STORE, ENDED_OK, SELECT_BY_DEFAULT, TEST_CHAIN_ACC, TEST_PARTIAL_CHAIN_ACC, VAL_CHAIN_ACC,
    VAL_PARTIAL_CHAIN_ACC, rank_key, val_acc,
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
    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_id")
    r.add_argument("--store", default=DEFAULT_STORE)
    r.add_argument("--no-progress", action="store_true")
    ls = sub.add_parser("runs", help="list the runs in the store")
    ls.add_argument("--store", default=DEFAULT_STORE)
    ls.add_argument("--limit", type=positive_int, default=None,
                    help=f"show the newest N runs (N >= 1; default: {RUNS_LIMIT} in the table, all with --json)")
    ls.add_argument("--json", action="store_true",
                    help="print a JSON list, one object per run: id, name, status, parent_id, sweep_id, ranks (coarse "
                         "to fine), config, environment, last and best (metric key -> value, test keys left out; "
                         "null for NaN), test (test key -> value at the selected epoch; {} when none) and "
                         "selected_epoch (0-based)")
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
    # `sweep` has its own parser (workbench.sweep_cli): main() hands it the rest of the command line
    sub.add_parser("sweep", help="a Ray Tune sweep over w and the null-masking schedule (see `sweep --help`)",
                   add_help=False)
    return p


def cmd_train(args) -> int:
    from workbench.config import Config
    from workbench.store import validate_run_id

    if args.run_id is not None:
        validate_run_id(args.run_id)  # before anything else: the id becomes a folder name
    cfg = Config.load(args.config, args.set)
    if args.run_id:
        _check_run_id_is_new_or_queued(cfg.TRACKING.STORE, args.run_id)

    from workbench.trainer import Trainer  # torch: only once the config is known to be good

    trainer = Trainer(cfg, run_id=args.run_id, progress=not args.no_progress)
    status = trainer.fit()
    _print_result(trainer.store, trainer.run_id, trainer.taxonomy.ranks)
    return 0 if status in ENDED_OK else 1


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
    trainer = Trainer(cfg, store=store, run_id=args.run_id, progress=not args.no_progress)
    if run["status"] in ("stopped", "failed") and store.stop_requested(args.run_id):
        store.clear_stop(args.run_id)  # no trainer holds it: its old stop request would end it after one epoch
    status = trainer.fit(resume=True)
    _print_result(store, args.run_id, trainer.taxonomy.ranks)
    return 0 if status in ENDED_OK else 1


def cmd_runs(args) -> int:
    from workbench.store import RunStore

    store = RunStore.open_existing(args.store)  # a read never creates or migrates
    if args.json:
        print(json.dumps(runs_records(store, args.limit), allow_nan=False))  # compact: the C encoder, for scripts
    else:
        print(runs_table(store, args.limit or RUNS_LIMIT))
    return 0


def runs_records(store, limit: int | None = None) -> list[dict]:
    """The runs (newest first, at most ``limit``) as JSON-ready dicts: ``id, name, status, parent_id,
    sweep_id, ranks`` (coarse to fine), ``config``, ``environment``, and (NaN -> None in all three):

    - ``last`` / ``best``: metric key -> value at the run's last epoch / best over epochs in the metric's
      direction; val, train and run keys only (test is evaluated once: a "best test" would select on test);
    - ``test``: test key -> value, the run's test numbers (at its selected epoch); ``{}`` when it has none
      (an old or failed run, no test split, a run still training);
    - ``selected_epoch``: the epoch the run selected on val, **0-based** like ``epoch`` in the store (so
      ``selected_epoch == 2`` is the third epoch): its test rows' epoch, else where its ``TRAIN.SELECT_BY``
      is best so far; None before its first epoch.
    """
    from workbench.summaries import metric_values, run_selected_epoch, test_mask, test_values

    runs = store.runs()
    if limit is not None:
        runs = runs.head(limit)
    if runs.empty:
        return []
    ids = list(runs["id"])
    long = store.metrics(ids)
    configs = {row.id: json.loads(row.config) for row in runs.itertuples(index=False)}
    is_test = test_mask(long["key"])
    last, best, test = metric_values(long[~is_test], "last"), metric_values(long, "best"), test_values(long)
    logged = long[is_test].groupby("run_id")["key"].agg(set)  # a run's test dict: the keys it logged (NaN -> None)
    chosen = run_selected_epoch(long, {r: (c.get("TRAIN") or {}).get("SELECT_BY") for r, c in configs.items()})
    records = []
    for row in runs.itertuples(index=False):
        records.append({
            "id": row.id, "name": row.name, "status": row.status, "parent_id": row.parent_id, "sweep_id": row.sweep_id,
            "ranks": row.ranks if row.ranks is not None else store.run_ranks(row.id),
            "config": configs[row.id], "environment": row.environment,
            "last": _finite_values(last, row.id), "best": _finite_values(best, row.id),
            "test": _finite_values(test, row.id, only=logged.get(row.id, set())),
            "selected_epoch": int(chosen[row.id]) if row.id in chosen.index else None,
        })
    return records


def _finite_values(table, run_id: str, only: set | None = None) -> dict:
    """One run's row of a metric_values table as ``{key: float | None}`` (NaN and missing -> None);
    ``only``: just these keys (the ones this run logged, where the table has columns for other runs' keys)."""
    if run_id not in table.index:
        return {}
    values = [(k, v) for k, v in table.loc[run_id].items() if only is None or k in only]
    return {str(k): (None if v is None or not math.isfinite(v) else float(v)) for k, v in values}


def runs_table(store, limit: int = 20) -> str:
    """The run list as text: id, name, status, epochs, w, phase 1, final val accuracies, and the test
    partial-chain accuracy (at the epoch selected on val) when any listed run has one."""
    from workbench.summaries import metric_values, test_values

    runs = store.runs(with_config=True).head(limit)
    if runs.empty:
        return f"no runs in {store.path}"
    final = metric_values(store.metrics(list(runs["id"]), [VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC]), "last")
    runs["name"] = [_short_name(n, i) for n, i in zip(runs["name"], runs["id"])]
    table = runs.set_index("id")[["name", "status", "epochs_done", "DATA.NAME", "LOSS.W", "TRAIN.PHASE1_MASK_NULL_LOSS",
                                  "parent_id"]]
    for key in (VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC):  # runs without an epoch yet: NaN
        if key not in final:
            final[key] = float("nan")
    table = table.join(final[[VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC]])
    table.columns = ["name", "status", "epochs", "data", "w", "phase1", "parent", "val_chain", "val_partial_chain"]
    test = test_values(store.metrics(list(runs["id"]), [TEST_PARTIAL_CHAIN_ACC]))
    if TEST_PARTIAL_CHAIN_ACC in test:  # a run without test numbers shows NaN there
        table["test_partial_chain"] = test[TEST_PARTIAL_CHAIN_ACC].reindex(table.index)
    table.index.name = None
    return table.to_string(float_format=lambda v: f"{v:.4f}")


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
                "export": cmd_export, "embed": cmd_embed}
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

"""``python -m workbench``: train, resume, runs, sweep. Errors print one clear line, never a traceback.

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
from workbench.names import DEFAULT_STORE, ENDED_OK, VAL_CHAIN_ACC, VAL_PARTIAL_CHAIN_ACC, val_acc

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
                         "to fine), config, environment, last and best (metric key -> value; null for NaN)")
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

    cfg = Config.from_dict(run["config"], source=f"run {args.run_id}")
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
    sweep_id, ranks`` (coarse to fine), ``config``, ``environment``, and ``last`` / ``best`` (metric key ->
    value at the run's last epoch / best over epochs in the metric's direction; NaN -> None)."""
    from workbench.summaries import metric_values

    runs = store.runs()
    if limit is not None:
        runs = runs.head(limit)
    if runs.empty:
        return []
    ids = list(runs["id"])
    long = store.metrics(ids)
    last, best = metric_values(long, "last"), metric_values(long, "best")
    records = []
    for row in runs.itertuples(index=False):
        records.append({
            "id": row.id, "name": row.name, "status": row.status, "parent_id": row.parent_id, "sweep_id": row.sweep_id,
            "ranks": row.ranks if row.ranks is not None else store.run_ranks(row.id),
            "config": json.loads(row.config), "environment": row.environment,
            "last": _finite_values(last, row.id), "best": _finite_values(best, row.id),
        })
    return records


def _finite_values(table, run_id: str) -> dict:
    """One run's row of a metric_values table as ``{key: float | None}`` (NaN and missing -> None)."""
    if run_id not in table.index:
        return {}
    return {str(k): (None if v is None or not math.isfinite(v) else float(v)) for k, v in table.loc[run_id].items()}


def runs_table(store, limit: int = 20) -> str:
    """The run list as text: id, name, status, epochs, w, phase 1, final val accuracies."""
    from workbench.summaries import metric_values

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
    table.index.name = None
    return table.to_string(float_format=lambda v: f"{v:.4f}")


def _short_name(name, run_id: str) -> str:
    """A run's name for the table: '' when it is just the id, cut to :data:`RUNS_NAME_WIDTH` characters."""
    if name is None or name == run_id:
        return ""
    name = str(name)
    return name if len(name) <= RUNS_NAME_WIDTH else name[: RUNS_NAME_WIDTH - 1] + "…"


def _print_result(store, run_id: str, ranks) -> None:
    from workbench.summaries import metric_values

    long = store.metrics([run_id])
    if long.empty:
        return
    last = metric_values(long, "last").loc[run_id]
    print(f"run {run_id}: {int(long['epoch'].max()) + 1} epochs, status {store.run(run_id)['status']}")
    print(f"  val chain acc {last[VAL_CHAIN_ACC]:.4f}   val partial-chain acc {last[VAL_PARTIAL_CHAIN_ACC]:.4f}")
    print("  val acc per rank: " + ", ".join(f"{r} {last[val_acc(r)]:.4f}" for r in ranks))
    _print_health(store.run(run_id).get("health"))


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
    commands = {"train": cmd_train, "resume": cmd_resume, "runs": cmd_runs}
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

"""``python -m workbench``: train, resume, runs. Errors print one clear line, never a traceback."""

from __future__ import annotations

import argparse
import sys

from workbench.config import Config, ConfigError


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
    r.add_argument("--store", default="runs/workbench.db")
    r.add_argument("--no-progress", action="store_true")
    ls = sub.add_parser("runs", help="list the runs in the store")
    ls.add_argument("--store", default="runs/workbench.db")
    ls.add_argument("--limit", type=int, default=20)
    return p


def cmd_train(args) -> int:
    from workbench.trainer import Trainer

    cfg = Config.load(args.config, args.set)
    if args.run_id:
        _check_run_id_is_new_or_queued(cfg.TRACKING.STORE, args.run_id)
    trainer = Trainer(cfg, run_id=args.run_id, progress=not args.no_progress)
    status = trainer.fit()
    _print_result(trainer.store, trainer.run_id, trainer.taxonomy.ranks)
    return 0 if status in ("finished", "stopped") else 1


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
    from workbench.store import RunStore
    from workbench.trainer import Trainer

    store = RunStore(args.store)
    run = store.run(args.run_id)
    cfg = Config.from_dict(run["config"], source=f"run {args.run_id}")
    trainer = Trainer(cfg, store=store, run_id=args.run_id, progress=not args.no_progress)
    status = trainer.fit(resume=True)
    _print_result(store, args.run_id, trainer.taxonomy.ranks)
    return 0 if status in ("finished", "stopped") else 1


def cmd_runs(args) -> int:
    from workbench.store import RunStore

    print(runs_table(RunStore(args.store), args.limit))
    return 0


def runs_table(store, limit: int = 20) -> str:
    """The run list as text: id, status, epochs, w, phase 1, final val accuracies."""
    runs = store.runs(with_config=True).head(limit)
    if runs.empty:
        return f"no runs in {store.path}"
    final = store.metrics_wide(list(runs["id"]), ["core/val_chain_acc", "core/val_partial_chain_acc"])
    final = final.sort_values("epoch").groupby("run_id").last()
    table = runs.set_index("id")[["status", "epochs_done", "DATA.NAME", "LOSS.W", "TRAIN.PHASE1_MASK_NULL_LOSS", "parent_id"]]
    table = table.join(final[["core/val_chain_acc", "core/val_partial_chain_acc"]] if len(final) else None)
    table.columns = ["status", "epochs", "data", "w", "phase1", "parent", "val_chain", "val_partial_chain"]
    table.index.name = None
    return table.to_string(float_format=lambda v: f"{v:.4f}")


def _print_result(store, run_id: str, ranks) -> None:
    wide = store.metrics_wide([run_id])
    if wide.empty:
        return
    last = wide.iloc[-1]
    print(f"run {run_id}: {int(last['epoch']) + 1} epochs, status {store.run(run_id)['status']}")
    print(f"  val chain acc {last['core/val_chain_acc']:.4f}   val partial-chain acc {last['core/val_partial_chain_acc']:.4f}")
    print("  val acc per rank: " + ", ".join(f"{r} {last[f'val/acc/{r}']:.4f}" for r in ranks))


def main(argv: list[str] | None = None) -> int:
    from workbench.data import DataError
    from workbench.store import StoreError
    from workbench.taxonomy import TaxonomyError

    args = _parser().parse_args(argv)
    commands = {"train": cmd_train, "resume": cmd_resume, "runs": cmd_runs}
    try:
        return commands[args.command](args)
    except (ConfigError, DataError, TaxonomyError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

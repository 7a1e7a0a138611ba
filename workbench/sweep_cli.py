"""``python -m workbench sweep``: Ray Tune sweeps over `w` and the null-masking schedule, locally or on a Ray cluster.

Example:
    python -m workbench sweep --config configs/ratdat_phase2.yaml --w 0:1:0.1 --seeds 3 --end-epoch 5,20 \\
        --address auto --wandb-project hier --wandb-mode offline

Prints Tune's progress while running, then the results (mean ± std over seeds of per-rank, chain and
partial-chain accuracy): at each trial's epoch selected on val, the val number it was selected by and
the test numbers (select on val, report test; val numbers with a "selection bias" note when there is no
test split), then every val number at the final epoch. Built from what was pulled back from W&B (the
run store when W&B is off; test numbers, evaluated once per trial, always come from the store), it
writes the table (CSV) and a figure of accuracy at each rank vs the swept key (HTML; PNG where kaleido
is installed) to --out.

The sweep's status (running, finished, failed, stopped) is recorded in
``<store dir>/sweeps/<sweep id>/status.json``, which the dashboard's Sweeps page lists. Bad
arguments (a grid value, a resource request no machine can meet, a cluster that does not answer, a
reused sweep id) are one ``error: ...`` line and exit code 2 before Ray starts, with nothing stored.
``--smoke-test`` uses a temporary run store unless ``--store`` is given. W&B logging: ``--wandb-project``;
its mode and folder default to the base config's ``TRACKING.WANDB.MODE`` / ``DIR``.

Everything heavy (the config, torch, Ray, W&B) is imported inside the functions, so ``--help`` is fast;
``sweeps/run.py`` is a shim over :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from workbench.errors import USER_ERRORS, ConfigError
from workbench.names import MAX_TRIALS, RESULTS_DIR, SWEEP_ACTIVE, wandb_dir_for

PROG = "python -m workbench sweep"
WANDB_MODES = ("online", "offline", "disabled")
SMOKE = {"TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 256, "MODEL.HIDDEN": [32], "DATA.SYNTHETIC.N": 800}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip('"'),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/synthetic.yaml", help="base YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    g = p.add_argument_group("search space (lists: 'a,b,c' or a range 'lo:hi:step')")
    g.add_argument("--w", help="values of LOSS.W (hierarchical loss weight), e.g. 0:1:0.1")
    g.add_argument("--end-epoch", help="values of SCHEDULE.NULL_MASKING.END_EPOCH")
    g.add_argument("--start-prob", help="values of SCHEDULE.NULL_MASKING.START_PROB")
    g.add_argument("--end-prob", help="values of SCHEDULE.NULL_MASKING.END_PROB")
    g.add_argument("--phase1", help="values of TRAIN.PHASE1_MASK_NULL_LOSS, e.g. true,false")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2", help="any other config key")
    g.add_argument("--dist", action="append", default=[], metavar="KEY=uniform:lo:hi", help="sampled key (with --num-samples)")
    g.add_argument("--seeds", type=int, default=1, help="repeats of every point (TRAIN.SEED = 0..n-1)")
    g.add_argument("--num-samples", type=int, default=1, help="samples of the distributions")
    g.add_argument("--max-trials", type=int, default=None,
                   help=f"refuse a sweep of more trials than this (default: {MAX_TRIALS})")
    g.add_argument("--yes", action="store_true", help="run a sweep of any size (no --max-trials limit)")
    r = p.add_argument_group("execution")
    r.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default: local Ray")
    r.add_argument("--cpus-per-trial", type=float, default=1.0)
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    r.add_argument("--workers-per-trial", type=int, default=1,
                   help="Ray Train workers per trial (data-parallel trials; the trial's CPUs and GPUs are split "
                        "evenly among them)")
    r.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once (default: as resources allow)")
    r.add_argument("--asha", action="store_true", help="ASHA early stopping on val partial-chain accuracy")
    r.add_argument("--optuna", action="store_true", help="Optuna search over --dist keys")
    r.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial")
    r.add_argument("--resume", metavar="SWEEP_ID", help="resume an interrupted sweep")
    r.add_argument("--sweep-id", default=None, help="id for a new sweep (default: generated); launchers pass one to watch it")
    r.add_argument("--smoke-test", action="store_true",
                   help="tiny trials (2 epochs) for CI, in a temporary run store unless --store is given")
    o = p.add_argument_group("tracking and output")
    o.add_argument("--store", default=None, help="run store (default: the config's TRACKING.STORE)")
    o.add_argument("--results-dir", default=None,
                   help=f"Tune experiment folder (default: {RESULTS_DIR}; with --smoke-test, inside the temporary folder)")
    o.add_argument("--wandb-project", default=None, help="log every trial to this W&B project")
    o.add_argument("--wandb-mode", default=None, choices=WANDB_MODES,
                   help="W&B mode (default: the config's TRACKING.WANDB.MODE); 'disabled' logs nothing to W&B")
    o.add_argument("--wandb-dir", default=None,
                   help="W&B folder (default: the config's TRACKING.WANDB.DIR, else next to the store)")
    o.add_argument("--out", default=None,
                   help="folder for the results CSV and figure (default: <store dir>/sweeps/<sweep id>)")
    return p


def spec_from_args(args):
    from workbench.config import Config
    from workbench.sweep import ALIASES, SweepSpec, parse_dist_arg, parse_grid_args, parse_values

    overrides = list(args.set)
    base = Config.load(args.config, overrides).to_dict()
    if args.smoke_test:
        base = Config.from_dict(base).with_overrides(SMOKE).to_dict()
    if args.store:
        base["TRACKING"]["STORE"] = args.store
    grid = parse_grid_args(args.grid)
    for name in ("w", "end_epoch", "start_prob", "end_prob", "phase1"):
        if getattr(args, name) is not None:
            grid[name] = parse_values(getattr(args, name), ALIASES[name])
    dists = dict(parse_dist_arg(item) for item in args.dist)
    return SweepSpec(base=base, grid=grid, distributions=dists, seeds=args.seeds, num_samples=args.num_samples)


def results(spec, settings, sweep_id: str, out_dir: Path) -> str:
    """Pull results (W&B, else the store), print the table, write CSV + figure; returns the table text."""
    from workbench.store import RunStore
    from workbench.sweep import swept_keys
    from workbench.sweep_results import (
        accuracy_vs_key_figure, format_summary, store_tidy, summarize, with_store_test_rows,
    )
    from workbench.tracking import pull_wandb

    source = "run store"
    tidy = None
    if settings.wandb:
        if settings.wandb_mode == "offline":
            tidy = pull_wandb(offline_root=settings.wandb_dir, group=sweep_id)
        else:
            tidy = pull_wandb(project=settings.wandb_project, group=sweep_id)
        source = f"W&B ({settings.wandb_mode})"
        if not tidy.empty:  # test numbers live in the W&B summary: a run pulled without them takes the store's
            pulled = len(tidy)
            tidy = with_store_test_rows(tidy, RunStore(settings.store_path), sweep_id)
            source += "; test numbers from the run store" if len(tidy) > pulled else ""
    if tidy is None or tidy.empty:
        tidy = store_tidy(RunStore(settings.store_path), sweep_id)
        source = "run store"
    keys = swept_keys(spec) or ["LOSS.W"]
    summary = summarize(tidy, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "summary.csv", index=False)
    text = f"results of {sweep_id} ({tidy['run'].nunique()} runs, from {source}):\n{format_summary(summary)}"
    print(text)
    ranks = sweep_ranks(RunStore(settings.store_path), sweep_id, spec.base, tidy["metric"].unique())
    fig = accuracy_vs_key_figure(summary, keys[0], ranks)
    fig.write_html(out_dir / "accuracy_vs_key.html", include_plotlyjs=True)  # works offline
    print(write_png(fig, out_dir / "accuracy_vs_key.png") or f"wrote {out_dir / 'accuracy_vs_key.png'}")
    print(f"wrote {out_dir / 'summary.csv'} and {out_dir / 'accuracy_vs_key.html'}")
    return text


def sweep_ranks(store, sweep_id: str, base: dict, metric_keys) -> list[str]:
    """The sweep's ranks in order, coarse to fine: as its first trial recorded them in the store, else
    guessed from the base config / metric keys (:func:`workbench.store.fallback_ranks`), never sorted."""
    from workbench.store import fallback_ranks

    trials = store.runs(sweep_id=sweep_id)
    if len(trials):
        return store.run_ranks(trials["id"].iloc[-1])  # newest first: the last row is the first trial
    return fallback_ranks(base, list(metric_keys))


def write_png(fig, path: Path) -> str | None:
    """Write ``fig`` as a PNG; returns why it was skipped, or None when written (kaleido is optional)."""
    import importlib.util

    if importlib.util.find_spec("kaleido") is None:
        return "(PNG skipped: install kaleido to export PNG: pip install 'kaleido>=1')"
    try:
        fig.write_image(path, width=1100, height=450)
    except Exception as e:  # kaleido also needs a Chrome it can start; a failure costs only the PNG
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return f"(PNG skipped: {type(e).__name__}: {lines[0] if lines else 'no message'})"
    return None


def check_out_dir(out: str | None) -> None:
    """``--out`` must be (or become) a folder: an existing file there, or above it, is refused."""
    if out is None:
        return
    path = Path(out)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {out}: {p} is a file; --out must be a folder (for summary.csv and "
                                  "accuracy_vs_key.html)")
            return


def resolve_paths(args, spec) -> str | None:
    """Smoke mode's temporary store and results folder (unless given); returns the temporary folder."""
    if not args.smoke_test or args.store:
        args.results_dir = args.results_dir or RESULTS_DIR
        return None
    tmp = tempfile.mkdtemp(prefix="workbench-smoke-")
    spec.base["TRACKING"]["STORE"] = str(Path(tmp) / "runs" / "workbench.db")
    args.results_dir = args.results_dir or str(Path(tmp) / RESULTS_DIR)
    return tmp


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # before the imports below: `--help` and a bad flag answer at once

    from workbench.launch import process_start_time
    from workbench.store import RunStore
    from workbench.sweep import (
        SweepSettings, check_reachable, check_reuse, connect_ray, new_sweep_id,
        read_sweep_status, run_sweep, sweep_dir, validate_sweep_id, write_sweep_status,
    )

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store_path = sweep_id = None
    try:
        # everything a user can get wrong is checked here, before Ray starts or anything is written
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise ConfigError(f"`--max-concurrent` must be >= 1, got {args.max_concurrent}")
        if args.max_trials is not None and args.max_trials < 1:
            raise ConfigError(f"`--max-trials` must be >= 1, got {args.max_trials}")
        for flag, given in (("--resume", args.resume), ("--sweep-id", args.sweep_id)):
            if given is not None:
                try:
                    validate_sweep_id(given)
                except ConfigError as e:
                    raise ConfigError(f"{flag}: {e}") from None
        spec = spec_from_args(args)
        tmp = resolve_paths(args, spec)
        store_path = spec.base["TRACKING"]["STORE"]
        sweep_id = args.resume or args.sweep_id or new_sweep_id()
        spec.check_size(None if args.yes else (args.max_trials or MAX_TRIALS))
        wandb_cfg = spec.base["TRACKING"]["WANDB"]  # the user's choice in the config, unless a flag overrides it
        wandb_mode = args.wandb_mode or wandb_cfg["MODE"]
        spec.validate()
        settings = SweepSettings(
            store_path=store_path, results_dir=args.results_dir, address=args.address,
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent or 0,
            workers_per_trial=args.workers_per_trial,
            asha=args.asha, optuna=args.optuna, max_failures=args.max_failures,
            wandb=bool(args.wandb_project) and wandb_mode != "disabled",
            wandb_project=args.wandb_project or wandb_cfg["PROJECT"], wandb_mode=wandb_mode,
            wandb_dir=wandb_dir_for(store_path, args.wandb_dir or wandb_cfg.get("DIR")),
        )
        settings.validate()
        # a launcher's record shows what each trial asks for (a sweep the CLI started has no record yet)
        write_sweep_status(store_path, sweep_id, create=False, if_status=SWEEP_ACTIVE,
                           trial_resources=settings.trial_resources())
        check_out_dir(args.out)
        if not args.resume and Path(store_path).is_file():  # (opening a missing store would create it)
            check_reuse(RunStore(store_path), sweep_id, spec)
        if args.address:
            check_reachable(args.address)
        out_dir = Path(args.out) if args.out else sweep_dir(store_path, sweep_id)
    except (*USER_ERRORS, ValueError) as e:
        _fail_record(store_path, sweep_id, str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2

    if tmp:
        print(f"smoke test: run store {store_path}, Tune results in {settings.results_dir}", flush=True)
    print(f"sweep: {spec.num_trials()} trials over {', '.join(spec.resolved_grid()) or '-'}"
          f"{' on ' + args.address if args.address else ' on local Ray'} (sweep id {sweep_id})", flush=True)
    previous = read_sweep_status(store_path, sweep_id) or {}
    write_sweep_status(store_path, sweep_id, status="running", reason=None, finished=None, pid=os.getpid(),
                       pid_start=process_start_time(os.getpid()), started=previous.get("started") or time.time(),
                       grid=spec.resolved_grid(), n_trials=spec.num_trials(), address=args.address,
                       resumed=bool(args.resume), log=previous.get("log"), trial_resources=settings.trial_resources())
    try:
        connect_ray(args.address, temp_dir=None)
        sweep_id, grid = run_sweep(spec, settings, sweep_id=sweep_id, resume=bool(args.resume))
        failed = [r for r in grid if r.error is not None]
        results(spec, settings, sweep_id, out_dir)
    except (*USER_ERRORS, ValueError, ConnectionError) as e:
        # found once Ray is up (a cluster without the resources a trial needs, no Tune state to resume)
        _fail_record(store_path, sweep_id, str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:  # recorded, then re-raised with its traceback: nothing is hidden
        if isinstance(e, KeyboardInterrupt):
            status, reason = "stopped", "interrupted (Ctrl-C)"
        elif isinstance(e, SystemExit) and e.code == signal.SIGTERM:  # ray.init turns SIGTERM into sys.exit(15)
            status, reason = "stopped", "terminated (SIGTERM)"
        else:
            status, reason = "failed", f"{type(e).__name__}: {e}".strip().splitlines()[0]
        write_sweep_status(store_path, sweep_id, if_status=SWEEP_ACTIVE, status=status, finished=time.time(),
                           reason=reason)
        raise
    reason = None
    if failed:
        first = (str(failed[0].error).strip().splitlines() or [""])[-1]
        reason = f"{len(failed)} of {len(grid)} trials failed" + (f"; first: {first}" if first else "")
        print(f"{len(failed)} of {len(grid)} trials failed; see their errors in the store / Tune logs", file=sys.stderr)
    write_sweep_status(store_path, sweep_id, status="failed" if len(failed) == len(grid) else "finished",
                       reason=reason, finished=time.time(), trials=len(grid), trials_failed=len(failed))
    print(f"sweep id: {sweep_id}")
    return 1 if len(failed) == len(grid) else 0


def _fail_record(store_path, sweep_id, reason: str) -> None:
    """A launcher's ``starting`` record becomes ``failed`` (a sweep the CLI refused has no record: none is made)."""
    from workbench.sweep import write_sweep_status

    if store_path is None or sweep_id is None:
        return
    write_sweep_status(store_path, sweep_id, create=False, if_status=SWEEP_ACTIVE, status="failed",
                       reason=reason.splitlines()[0] if reason else None, finished=time.time())



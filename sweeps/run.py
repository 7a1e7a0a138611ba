"""Ray Tune sweeps over `w` and the null-masking schedule, locally or on a Ray cluster.

Example:
    python sweeps/run.py --config configs/ratdat_phase2.yaml --w 0:1:0.1 --seeds 3 --end-epoch 5,20 \
        --address auto --wandb-project hier --wandb-mode offline

Prints Tune's progress while running, then a results table (mean ± std over seeds of per-rank,
chain and partial-chain accuracy, at the best and at the final epoch), built from what was pulled
back from W&B (the run store when W&B is off), and writes the table (CSV) and a figure of accuracy
at each rank vs the swept key (HTML; PNG where kaleido is installed) to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOKE = {"TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 256, "MODEL.HIDDEN": [32], "DATA.SYNTHETIC.N": 800}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/synthetic.yaml", help="base YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    g = p.add_argument_group("search space (lists: 'a,b,c' or a range 'lo:hi:step')")
    g.add_argument("--w", help="values of LOSS.W, e.g. 0:1:0.1")
    g.add_argument("--end-epoch", help="values of SCHEDULE.NULL_MASKING.END_EPOCH")
    g.add_argument("--start-prob", help="values of SCHEDULE.NULL_MASKING.START_PROB")
    g.add_argument("--end-prob", help="values of SCHEDULE.NULL_MASKING.END_PROB")
    g.add_argument("--phase1", help="values of TRAIN.PHASE1_MASK_NULL_LOSS, e.g. true,false")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2", help="any other config key")
    g.add_argument("--dist", action="append", default=[], metavar="KEY=uniform:lo:hi", help="sampled key (with --num-samples)")
    g.add_argument("--seeds", type=int, default=1, help="repeats of every point (TRAIN.SEED = 0..n-1)")
    g.add_argument("--num-samples", type=int, default=1, help="samples of the distributions")
    r = p.add_argument_group("execution")
    r.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default: local Ray")
    r.add_argument("--cpus-per-trial", type=float, default=1.0)
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    r.add_argument("--max-concurrent", type=int, default=0)
    r.add_argument("--asha", action="store_true", help="ASHA early stopping on val partial-chain accuracy")
    r.add_argument("--optuna", action="store_true", help="Optuna search over --dist keys")
    r.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial")
    r.add_argument("--resume", metavar="SWEEP_ID", help="resume an interrupted sweep")
    r.add_argument("--sweep-id", default=None, help="id for a new sweep (default: generated); launchers pass one to watch it")
    r.add_argument("--smoke-test", action="store_true", help="tiny trials (2 epochs) for CI")
    o = p.add_argument_group("tracking and output")
    o.add_argument("--store", default=None, help="run store (default: the config's TRACKING.STORE)")
    o.add_argument("--results-dir", default="ray_results", help="Tune experiment folder")
    o.add_argument("--wandb-project", default=None, help="log every trial to this W&B project")
    o.add_argument("--wandb-mode", default="offline", choices=["online", "offline"])
    o.add_argument("--wandb-dir", default=None, help="W&B folder (default: next to the store)")
    o.add_argument("--out", default=None, help="folder for the results CSV and figure (default: <results-dir>/<sweep id>)")
    return p


def spec_from_args(args):
    from workbench.config import Config
    from workbench.sweep import SweepSpec, parse_dist_arg, parse_grid_args, parse_values

    overrides = list(args.set)
    base = Config.load(args.config, overrides).to_dict()
    if args.smoke_test:
        base = Config.from_dict(base).with_overrides(SMOKE).to_dict()
    if args.store:
        base["TRACKING"]["STORE"] = args.store
    grid = parse_grid_args(args.grid)
    for name in ("w", "end_epoch", "start_prob", "end_prob", "phase1"):
        if getattr(args, name) is not None:
            grid[name] = parse_values(getattr(args, name))
    dists = dict(parse_dist_arg(item) for item in args.dist)
    return SweepSpec(base=base, grid=grid, distributions=dists, seeds=args.seeds, num_samples=args.num_samples)


def results(spec, settings, sweep_id: str, out_dir: Path) -> str:
    """Pull results (W&B, else the store), print the table, write CSV + figure; returns the table text."""
    from workbench.store import RunStore
    from workbench.sweep import swept_keys
    from workbench.sweep_results import accuracy_vs_key_figure, format_summary, store_tidy, summarize
    from workbench.tracking import pull_wandb

    source = "run store"
    tidy = None
    if settings.wandb:
        if settings.wandb_mode == "offline":
            tidy = pull_wandb(offline_root=settings.wandb_dir, group=sweep_id)
        else:
            tidy = pull_wandb(project=settings.wandb_project, group=sweep_id)
        source = f"W&B ({settings.wandb_mode})"
    if tidy is None or tidy.empty:
        tidy = store_tidy(RunStore(settings.store_path), sweep_id)
        source = "run store"
    keys = swept_keys(spec) or ["LOSS.W"]
    summary = summarize(tidy, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "summary.csv", index=False)
    text = f"results of {sweep_id} ({tidy['run'].nunique()} runs, from {source}):\n{format_summary(summary)}"
    print(text)
    ranks = spec.base["DATA"].get("RANKS") or sorted({m.split("/")[-1] for m in tidy["metric"] if m.startswith("val/acc/")})
    fig = accuracy_vs_key_figure(summary, keys[0], ranks)
    fig.write_html(out_dir / "accuracy_vs_key.html", include_plotlyjs=True)  # works offline
    try:
        fig.write_image(out_dir / "accuracy_vs_key.png", width=1100, height=450)
    except Exception as e:  # kaleido (and a browser for it) is optional
        print(f"(PNG skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    print(f"wrote {out_dir / 'summary.csv'} and {out_dir / 'accuracy_vs_key.html'}")
    return text


def main(argv=None) -> int:
    from workbench.config import ConfigError
    from workbench.data import DataError
    from workbench.sweep import SweepSettings, connect_ray, run_sweep

    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        spec = spec_from_args(args)
        spec.validate()
        settings = SweepSettings(
            store_path=spec.base["TRACKING"]["STORE"], results_dir=args.results_dir, address=args.address,
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
            asha=args.asha, optuna=args.optuna, max_failures=args.max_failures, wandb=bool(args.wandb_project),
            wandb_project=args.wandb_project or "workbench", wandb_mode=args.wandb_mode,
            wandb_dir=args.wandb_dir or str(Path(spec.base["TRACKING"]["STORE"]).parent),
        )
        print(f"sweep: {spec.num_trials()} trials over {', '.join(spec.resolved_grid()) or '-'}"
              f"{' on ' + args.address if args.address else ' on local Ray'}", flush=True)
        connect_ray(args.address, temp_dir=None)
        sweep_id, grid = run_sweep(spec, settings, sweep_id=args.resume or args.sweep_id, resume=bool(args.resume))
    except (ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in grid if r.error is not None]
    out_dir = Path(args.out) if args.out else Path(args.results_dir) / sweep_id
    results(spec, settings, sweep_id, out_dir)
    if failed:
        print(f"{len(failed)} of {len(grid)} trials failed; see their errors in the store / Tune logs", file=sys.stderr)
    print(f"sweep id: {sweep_id}")
    return 1 if len(failed) == len(grid) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Trainer overhead: a bare PyTorch loop vs ``Trainer.train_epoch`` on the same model and data.

    python bench/bench_trainer.py            # N=50,000, 64 features, batch 256, 2 threads, best of 3
    python bench/bench_trainer.py --smoke    # a tiny run that only checks the script works

(1) bare: shuffled tensor-indexed batches, AdamW, plain cross-entropy summed over ranks; no
    masking, no metrics. (2) ``Trainer.train_epoch``: null keep-mask at the fractional epoch,
    hierarchical loss, per-epoch training metrics. Both start from the same weights (copied) and
    use the same optimizer settings. One warm-up epoch each, then the best of ``--repeats``,
    interleaved so that machine noise hits both alike. ``Trainer.evaluate`` on the validation set
    (predictions, metrics and threshold curves) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.config import Config  # noqa: E402
from workbench.data import make_synthetic  # noqa: E402
from workbench.models import build_model  # noqa: E402
from workbench.trainer import Trainer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that the script runs")
    p.add_argument("--n", type=int, default=50_000, help="synthetic samples (train + val)")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 256, 128])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.features, args.hidden, args.repeats = 2_000, 16, [32], 1
    return args


def bare_epoch(model, optimizer, x, y, batch_size: int, generator: torch.Generator) -> None:
    """The reference loop: ``x (N, F)``, ``y (N, R)``; CE summed over ranks, nothing else."""
    model.train()
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        logits = model(x[idx])
        yb = y[idx]  # (B, R)
        loss = sum(F.cross_entropy(lg, yb[:, r]) for r, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = make_synthetic(n=args.n, num_features=args.features, null_rates=(0.0, 0.1, 0.3), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config().with_overrides({
            "MODEL.HIDDEN": args.hidden, "TRAIN.BATCH_SIZE": args.batch_size, "TRAIN.NUM_THREADS": args.threads,
            "TRAIN.DEVICE": "cpu", "TRACKING.STORE": str(Path(tmp) / "bench.db"),
            # a ramp that is mid-way during the benchmark: Bernoulli draws for null labels on every batch
            "SCHEDULE.NULL_MASKING.START_PROB": 0.2, "SCHEDULE.NULL_MASKING.END_EPOCH": 10,
        })
        trainer = Trainer(cfg, dataset=ds, progress=False)
        train, val = trainer.train_ds, trainer.val_ds
        m = cfg.MODEL
        model = build_model(m.BACKBONE, m.HIDDEN, m.HEAD, train.num_features, trainer.taxonomy, m.DROPOUT)
        model.load_state_dict(trainer.model.state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WEIGHT_DECAY)
        gen = torch.Generator().manual_seed(0)
        x, y = train.features, train.targets

        run_bare = lambda: bare_epoch(model, optimizer, x, y, args.batch_size, gen)  # noqa: E731
        epoch = iter(range(10_000))
        run_trainer = lambda: trainer.train_epoch(next(epoch))  # noqa: E731
        run_eval = lambda: trainer.evaluate(val, split="val")  # noqa: E731
        for fn in (run_bare, run_trainer, run_eval):  # warm-up
            fn()
        bare, full, evals = [], [], []
        for _ in range(args.repeats):
            bare.append(timed(run_bare))
            full.append(timed(run_trainer))
            evals.append(timed(run_eval))

    n_train, n_val = len(train), len(val)
    bare_sps, trainer_sps = n_train / min(bare), n_train / min(full)
    overhead = bare_sps / trainer_sps - 1
    print(f"workbench trainer benchmark{' (smoke)' if args.smoke else ''}: "
          f"{n_train} train / {n_val} val samples, {args.features} features, hidden {args.hidden}, "
          f"{trainer.taxonomy.num_ranks} ranks {trainer.taxonomy.num_classes}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load:.1f} at the end "
          f"(a load above the core count makes multi-threaded timings unreliable)")
    print(f"{'loop':<32}{'best s/epoch':>14}{'samples/s':>14}")
    print(f"{'bare PyTorch (CE summed)':<32}{min(bare):>14.3f}{bare_sps:>14,.0f}")
    print(f"{'Trainer.train_epoch':<32}{min(full):>14.3f}{trainer_sps:>14,.0f}")
    print(f"overhead (bare / trainer - 1): {overhead:+.1%}  (target < 10%: {'ok' if overhead < 0.10 else 'OVER'})")
    print(f"Trainer.evaluate on val: best {min(evals):.3f} s for {n_val} samples "
          f"({n_val / min(evals):,.0f} samples/s, metrics + threshold curves)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

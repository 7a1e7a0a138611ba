"""Benchmark: partial-chain accuracy and threshold curves against naive references.

    python bench/bench_metrics.py [--n 1000000] [--smoke]

N samples x 4 ranks (5 / 20 / 60 / 200 real classes), ~10% null targets, 2 torch threads.
- partial_chain_accuracy vs a per-sample pure-Python loop. The loop is timed on a subsample
  (``--ref-n``, default 100,000) and extrapolated linearly to N; the table says so.
- threshold_curves (one bucket histogram per rank) vs a naive loop over the 101 thresholds that recomputes
  the prediction masks with torch at every threshold.
Both comparisons also check that the two implementations agree.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from workbench.metrics import default_thresholds, partial_chain_accuracy, threshold_curves  # noqa: E402

CLASSES = (5, 20, 60, 200)
NULL_FRACTION = 0.1


def make_data(n: int, seed: int = 0):
    """Targets and predictions ``LongTensor (N, R)`` and softmax probabilities ``R x (N, K_r + 1)``."""
    g = torch.Generator().manual_seed(seed)
    targets, preds, probs = [], [], []
    for k in CLASSES:
        y = torch.randint(1, k + 1, (n,), generator=g)
        y = torch.where(torch.rand(n, generator=g) < NULL_FRACTION, 0, y)  # (N,)
        noise = torch.randint(0, k + 1, (n,), generator=g)
        targets.append(y)
        preds.append(torch.where(torch.rand(n, generator=g) < 0.8, y, noise))
        logits = 2 * torch.randn(n, k + 1, generator=g)  # (N, K + 1)
        logits[torch.arange(n), y] += 3.0  # some signal, so the curves are not flat
        probs.append(torch.softmax(logits, dim=1))
    return torch.stack(preds, dim=1), torch.stack(targets, dim=1), probs


def partial_chain_python(preds: list[list[int]], targets: list[list[int]]) -> float:
    """Per-sample reference of DESIGN 3.4: all-null samples excluded, null ranks not scored."""
    correct = total = 0
    for p, t in zip(preds, targets):
        scored = False
        ok = True
        for a, b in zip(p, t):
            if b != 0:
                scored = True
                if a != b:
                    ok = False
        if scored:
            total += 1
            correct += ok
    return correct / total if total else math.nan


def threshold_curves_naive(probs, targets, thresholds):
    """One pass per threshold: prediction masks recomputed with torch at every tau."""
    out = {}
    for r, p in enumerate(probs):
        conf, cls = p[:, 1:].max(dim=1)
        cls = cls + 1
        conf = conf.double()
        target = targets[:, r]
        labelled = target != 0
        n_labelled, n_null = labelled.sum().double(), (~labelled).sum().double()
        curves = {"coverage": [], "selective_accuracy": [], "accuracy": [], "null_false_positive_rate": []}
        for tau in thresholds.tolist():
            pred = torch.where(conf >= tau, cls, torch.zeros_like(cls))
            made = pred != 0
            made_labelled = (made & labelled).sum().double()
            correct = (made & (pred == target)).sum().double()
            curves["coverage"].append(made_labelled / n_labelled)
            curves["selective_accuracy"].append(
                correct / made_labelled if made_labelled else torch.tensor(math.nan, dtype=torch.float64)
            )
            curves["accuracy"].append((pred == target).double().mean())
            curves["null_false_positive_rate"].append((made & ~labelled).sum() / n_null)
        out[r] = {name: torch.stack(v).double() for name, v in curves.items()}
    return out


def best_of(fn, repeat: int):
    """``(best wall time in s, last result)`` over ``repeat`` calls."""
    best, result = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="samples (default 1,000,000)")
    parser.add_argument("--ref-n", type=int, default=100_000, help="subsample for the pure-Python reference")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats for the fast functions (best of)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="quick run: n=20,000, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.repeat = 20_000, 1
    args.ref_n = min(args.ref_n, args.n)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    preds, targets, probs = make_data(args.n)
    taus = default_thresholds()

    # partial-chain accuracy: vectorised counts vs a per-sample Python loop on a subsample
    t_fast, value = best_of(lambda: partial_chain_accuracy(preds, targets), args.repeat)
    sub_p, sub_t = preds[: args.ref_n].tolist(), targets[: args.ref_n].tolist()  # list conversion not timed
    t0 = time.perf_counter()
    ref_value = partial_chain_python(sub_p, sub_t)
    t_ref_sub = time.perf_counter() - t0
    t_ref = t_ref_sub * args.n / args.ref_n
    sub_value = partial_chain_accuracy(preds[: args.ref_n], targets[: args.ref_n]).item()
    assert sub_value == ref_value, (sub_value, ref_value)

    # threshold curves: one bucket histogram per rank vs a loop over thresholds
    t_curves, curves = best_of(lambda: threshold_curves(probs, targets, thresholds=taus), args.repeat)
    t0 = time.perf_counter()
    naive = threshold_curves_naive(probs, targets, taus)
    t_naive = time.perf_counter() - t0
    for r in naive:
        for name, values in naive[r].items():
            torch.testing.assert_close(curves[r][name], values, equal_nan=True, atol=1e-9, rtol=0)

    extrapolated = args.ref_n != args.n
    rows = [
        ("partial_chain_accuracy", "workbench (vectorised counts)", t_fast, ""),
        ("partial_chain_accuracy", "pure-Python per-sample loop" + (" (*)" if extrapolated else ""), t_ref,
         f"{t_ref / t_fast:,.0f}x slower"),
        ("threshold_curves", f"workbench (one histogram per rank, {len(taus)} taus)", t_curves, ""),
        ("threshold_curves", f"naive loop over {len(taus)} taus (torch masks)", t_naive,
         f"{t_naive / t_curves:,.1f}x slower"),
    ]
    print(f"workbench metrics benchmark: N={args.n:,} samples x {len(CLASSES)} ranks "
          f"(classes {'/'.join(map(str, CLASSES))}), ~{NULL_FRACTION:.0%} null targets, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"partial-chain accuracy = {value.item():.6f}; results of fast and reference implementations agree")
    header = f"{'function':<24} {'implementation':<44} {'time (s)':>10}  {'vs workbench':>14}"
    print(header)
    print("-" * len(header))
    for fn, impl, t, ratio in rows:
        print(f"{fn:<24} {impl:<44} {t:>10.4f}  {ratio:>14}")
    print(f"speed-up: partial_chain_accuracy {t_ref / t_fast:,.0f}x, threshold_curves {t_naive / t_curves:,.1f}x "
          f"(workbench: best of {args.repeat})")
    if extrapolated:
        print(f"(*) timed on a {args.ref_n:,}-sample subsample ({t_ref_sub:.3f} s) and extrapolated linearly "
              f"to N={args.n:,}; list conversion excluded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

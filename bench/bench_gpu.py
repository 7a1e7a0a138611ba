"""GPU efficiency (issue 16): the Trainer against a bare loop with the data on the GPU, and the metric core against
its memory floors.

    python bench/bench_gpu.py              # needs CUDA (exits 0 with a message without it)
    python bench/bench_gpu.py --compile    # also the Trainer with TRAIN.COMPILE: true
    python bench/bench_gpu.py --smoke      # tiny sizes on the CPU in seconds: checks that the script works

(1) MLP: the synthetic set (``--n`` train samples, 64 features, hidden [512, 256, 128], 3 ranks) at batch 1024,
    4096 and 16384. bare: the training split resident on the device, a permutation drawn on the device, bf16
    autocast, fused AdamW, cross-entropy summed over ranks; nothing else. ``Trainer.train_epoch``: the same model
    and data (resident by the trainer's own rule), null keep-mask, hierarchical loss, the epoch's training metrics.
    One warm-up epoch each, then the best of ``--repeats``, interleaved. ``Trainer.evaluate`` on val separately.
    Aim: Trainer >= 0.9x bare at every batch size.
(2) Metric core vs memory floor: partial-chain accuracy over ``--chain-n`` x 4 labels (floor: reading preds and
    targets once) and threshold curves over ``--curve-n`` x 4 ranks x 51 classes (floor: reading the probabilities
    once), at the read bandwidth measured here (a float32 sum over a tensor of the same order of size).
    Aims: partial chain within 3x, curves within 5x.
(3) images/s of a torchvision resnet18 at 64 and 224 px (batch 512 / 256), Trainer vs bare loop (data resident,
    channels-last, bf16, fused AdamW, no augmentation in either), when torchvision imports.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from workbench import metrics as M  # noqa: E402
from workbench.config import Config  # noqa: E402
from workbench.data import make_synthetic  # noqa: E402
from workbench.models import build_model  # noqa: E402
from workbench.trainer import Trainer  # noqa: E402

TRAINER_AIM = 0.9  # Trainer samples/s at least this share of the bare loop's (issue 16)
CHAIN_AIM, CURVES_AIM = 3.0, 5.0  # times the memory floor


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on the CPU, one repeat: checks that the script runs")
    p.add_argument("--n", type=int, default=320_000, help="MLP training samples (val is a quarter of that again)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--chain-n", type=int, default=100_000_000, help="rows of the partial-chain measurement")
    p.add_argument("--curve-n", type=int, default=10_000_000, help="rows of the threshold-curves measurement")
    p.add_argument("--image-n", type=int, nargs=2, default=[20_000, 5_000], help="images at 64 px and at 224 px")
    p.add_argument("--compile", action="store_true", help="also time the Trainer with TRAIN.COMPILE: true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.batch_sizes, args.repeats = 2_000, [256], 1
        args.chain_n, args.curve_n, args.image_n = 100_000, 10_000, [64, 32]
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def best_of(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """One warm-up call of each, then the best of ``repeats``, interleaved so that noise hits all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: min(v) for k, v in times.items()}


def bare_epoch(model, optimizer, x, y, batch_size: int, generator: torch.Generator, amp: bool) -> None:
    """The reference loop, data already on the device: ``x (N, ...)``, ``y (N, R)``; CE summed over ranks."""
    model.train()
    order = torch.randperm(len(y), device=x.device, generator=generator)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x[idx])
        yb = y[idx]
        loss = sum(F.cross_entropy(lg.float(), yb[:, r]) for r, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bare_twin(trainer: Trainer, device: torch.device):
    """A plain copy of the trainer's model (same weights, layout) and a fused AdamW on CUDA, for the bare loop."""
    m, ds = trainer.cfg.MODEL, trainer.train_ds
    model = build_model(m.BACKBONE, m.HIDDEN, m.HEAD, ds.num_features, trainer.taxonomy, m.DROPOUT,
                        input_shape=tuple(ds.features.shape[1:]), width=m.WIDTH, depth=m.DEPTH, arch=m.ARCH)
    model.load_state_dict(trainer.model.state_dict())
    model = model.to(device, memory_format=torch.channels_last) if trainer.channels_last else model.to(device)
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.cfg.TRAIN.LR,
                                  weight_decay=trainer.cfg.TRAIN.WEIGHT_DECAY, fused=fused)
    return model, optimizer


def trainer_vs_bare(cfg: Config, ds, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per epoch: ``bare`` and ``trainer`` (and ``evaluate`` on val) for one config."""
    trainer = Trainer(cfg, dataset=ds, progress=False)
    model, optimizer = bare_twin(trainer, device)
    x, y = trainer.train_ds.features.to(device), trainer.train_ds.targets.to(device)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(0)
    epoch = iter(range(10_000))
    return best_of({
        "bare": lambda: bare_epoch(model, optimizer, x, y, cfg.TRAIN.BATCH_SIZE, gen, trainer.use_amp),
        "trainer": lambda: trainer.train_epoch(next(epoch)),
        "evaluate": lambda: trainer.evaluate(trainer.val_ds, split="val"),
    }, repeats, device) | {"train_n": len(trainer.train_ds), "val_n": len(trainer.val_ds)}


def mlp_rows(args, device: torch.device, tmp: Path) -> list[tuple]:
    n_val = args.n // 4
    ds = make_synthetic(n=args.n + n_val, num_features=16 if args.smoke else 64, null_rates=(0.0, 0.1, 0.3), seed=0)
    rows = []
    for bs in args.batch_sizes:
        for compiled in (False, True) if args.compile else (False,):
            cfg = Config().with_overrides({
                "MODEL.HIDDEN": [32] if args.smoke else [512, 256, 128], "TRAIN.BATCH_SIZE": bs,
                "TRAIN.DEVICE": device.type, "TRAIN.COMPILE": compiled, "DATA.VAL_FRACTION": n_val / (args.n + n_val),
                "DATA.TEST_FRACTION": 0.0, "TRACKING.STORE": str(tmp / f"mlp{bs}{compiled}.db")})
            t = trainer_vs_bare(cfg, ds, device, args.repeats)
            bare, full = t["train_n"] / t["bare"], t["train_n"] / t["trainer"]
            name = f"{bs:,}{' compiled' if compiled else ''}"
            rows.append((name, bare, full, full / bare, t["val_n"] / t["evaluate"]))
    return rows


def read_bandwidth(nbytes: int, device: torch.device, repeats: int) -> float:
    """Bytes/s of reading a float32 tensor of ``nbytes`` once (a sum: one read, nothing written)."""
    big = torch.ones(max(nbytes // 4, 1), device=device)
    return nbytes / best_of({"sum": lambda: big.sum()}, repeats, device)["sum"]


def chain_row(args, device: torch.device, g: torch.Generator, r: int) -> tuple[tuple, float]:
    """Partial-chain accuracy over ``--chain-n`` x ``r`` labels (its tensors freed on return), and the bandwidth."""
    n = args.chain_n
    targets = torch.randint(0, 6, (n, r), device=device, generator=g)  # ~1/6 nulls per rank
    preds = torch.where(torch.rand(n, r, device=device, generator=g) < 0.8, targets,
                        torch.randint(0, 6, (n, r), device=device, generator=g))
    nbytes = 2 * targets.numel() * targets.element_size()
    bw = read_bandwidth(nbytes, device, args.repeats)
    s = best_of({"chain": lambda: M.partial_chain_accuracy(preds, targets)}, args.repeats, device)["chain"]
    return (f"partial-chain accuracy {n:.0e} x {r}", s * 1e3, nbytes / bw * 1e3, s * bw / nbytes, CHAIN_AIM), bw


def core_rows(args, device: torch.device) -> tuple[list[tuple], float]:
    """``(what, ms, floor ms, ratio, aim)`` of partial-chain accuracy and threshold curves; the read bandwidth."""
    g = torch.Generator(device=device).manual_seed(0)
    r = 4
    chain, bw = chain_row(args, device, g, r)
    rows = [chain]
    n, k = args.curve_n, 51
    probs = []
    for _ in range(r):
        p = torch.rand(n, k, device=device, generator=g)
        probs.append(p.div_(p.sum(dim=1, keepdim=True)))
    targets = torch.randint(0, k, (n, r), device=device, generator=g)
    nbytes = sum(p.numel() * p.element_size() for p in probs)
    s = best_of({"curves": lambda: M.threshold_curves(probs, targets, M.default_thresholds())},
                args.repeats, device)["curves"]
    rows.append((f"threshold curves {n:.0e} x {r} x {k}", s * 1e3, nbytes / bw * 1e3, s * bw / nbytes, CURVES_AIM))
    return rows, bw


def image_rows(args, device: torch.device, tmp: Path) -> list[tuple] | str:
    """resnet18 images/s at 64 and 224 px, or why not measured."""
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    try:
        importlib.import_module("torchvision")
    except (ImportError, RuntimeError) as e:  # the CPU torch wheel with PyPI's CUDA torchvision (DESIGN.md 6)
        return f"torchvision does not import here ({type(e).__name__}: {str(e)[:120]})"
    from test_models_images import quadrant_images  # the same learnable image set as the tests

    rows = []
    for (size, bs), n in zip(((64, 512), (224, 256)), args.image_n):
        if args.smoke:
            size, bs = size // 8, 16
        cfg = Config().with_overrides({
            "MODEL.BACKBONE": "torchvision", "MODEL.ARCH": "resnet18", "TRAIN.BATCH_SIZE": bs,
            "TRAIN.DEVICE": device.type, "AUG.RANDOM_RESIZED_CROP": None, "AUG.HFLIP": False,
            "TRACKING.STORE": str(tmp / f"img{size}.db")})
        t = trainer_vs_bare(cfg, quadrant_images(n, c=3, size=size), device, args.repeats)
        bare, full = t["train_n"] / t["bare"], t["train_n"] / t["trainer"]
        rows.append((f"{size} px, batch {bs}", bare, full, full / bare, t["val_n"] / t["evaluate"]))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(2)
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (run it on a GPU machine, or --smoke on the CPU)")
        return 0
    else:
        device = torch.device("cuda")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"workbench GPU benchmark{' (smoke, CPU)' if args.smoke else ''}: {where}, torch {torch.__version__}, "
          f"best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        mlp = mlp_rows(args, device, Path(tmp))
        head = (f"{'batch':<18}{'bare samples/s':>16}{'Trainer samples/s':>19}{'Trainer / bare':>16}"
                f"{'evaluate rows/s':>17}")
        print(f"\n(1) MLP, {args.n:,} train samples, bf16 on CUDA, fused AdamW on CUDA, data on the device "
              f"(aim: Trainer / bare >= {TRAINER_AIM})")
        print(head)
        for name, bare, full, ratio, ev in mlp:
            flag = "ok" if ratio >= TRAINER_AIM else "UNDER"
            print(f"{name:<18}{bare:>16,.0f}{full:>19,.0f}{ratio:>12.2f} {flag:<3}{ev:>17,.0f}")
        core, bw = core_rows(args, device)
        print(f"\n(2) metric core vs memory floor (read bandwidth measured here: {bw / 1e9:,.0f} GB/s)")
        print(f"{'measurement':<40}{'ms':>10}{'floor ms':>10}{'x floor':>10}{'aim':>8}")
        for name, ms, floor, ratio, aim in core:
            print(f"{name:<40}{ms:>10.2f}{floor:>10.2f}{ratio:>10.1f}{'<= ' + format(aim, 'g'):>8} "
                  f"{'ok' if ratio <= aim else 'OVER'}")
        images = image_rows(args, device, Path(tmp))
        print("\n(3) torchvision resnet18, images/s")
        if isinstance(images, str):
            print(f"not measured: {images}")
        else:
            print(head.replace("batch", "images", 1).replace("samples/s", "images/s"))
            for name, bare, full, ratio, ev in images:
                flag = "ok" if ratio >= TRAINER_AIM else "UNDER"
                print(f"{name:<18}{bare:>16,.0f}{full:>19,.0f}{ratio:>12.2f} {flag:<3}{ev:>17,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

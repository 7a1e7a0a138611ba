"""Image training throughput: ``Trainer.train_epoch`` vs a bare PyTorch loop, and the input pipeline alone.

    python bench/bench_images.py            # animal_mnist (8,000 train images, 28x28), resnet width 16, batch 128
    python bench/bench_images.py --device cuda --batch-size 512
    python bench/bench_images.py --smoke    # a tiny synthetic run that only checks the script works

(1) bare: shuffled tensor-indexed uint8 batches, the same augmentation (random resized crop + flip on
    the batch), the same model (weights copied, normalisation included), AdamW, cross-entropy summed
    over ranks; nothing else. (2) ``Trainer.train_epoch``: the same plus the null keep-mask, the
    hierarchical loss and the epoch's training metrics. (3) the input pipeline alone: batch indexing,
    the copy to the device and the augmentation, no model: it must be far faster than (1), or the
    model waits for data. One warm-up epoch each, then the best of ``--repeats``, interleaved so that
    machine noise hits all alike. Images/s are training images per second.
(4) streaming (DATA.STREAM): a tree of ``--stream-n`` PNGs of ``--stream-size`` px written to a temp folder,
    read as a streamed set; one shuffled epoch of uint8 batches from the DataLoader road
    (:class:`workbench.streaming.StreamLoader`, decoding in 0 and in ``--stream-workers`` processes) against
    indexing the same set decoded in memory. No model: the input pipeline alone, as (3).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_models_images import quadrant_images  # noqa: E402  (the same learnable image set as the tests)

from workbench.augment import Augment  # noqa: E402
from workbench.images import load_image_folder  # noqa: E402
from workbench.streaming import StreamLoader  # noqa: E402
from workbench.config import Config  # noqa: E402
from workbench.models import build_model  # noqa: E402
from workbench.trainer import Trainer, pick_device  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny synthetic sizes, one repeat: checks that the script runs")
    p.add_argument("--data", choices=["animal_mnist", "synthetic"], default="animal_mnist",
                   help="animal_mnist (the built-in real set; synthetic when its wheel is missing) or synthetic")
    p.add_argument("--n", type=int, default=10_000, help="synthetic images (train + val)")
    p.add_argument("--size", type=int, default=28, help="synthetic image side")
    p.add_argument("--width", type=int, default=16, help="MODEL.WIDTH of the resnet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stream-n", type=int, default=2000, help="PNGs in the streaming measurement's tree")
    p.add_argument("--stream-size", type=int, default=64, help="side of those PNGs (and DATA.IMAGE_SIZE)")
    p.add_argument("--stream-workers", type=int, default=2, help="DATA.NUM_WORKERS measured beside 0")
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.n, args.size, args.width, args.repeats, args.threads = "synthetic", 512, 16, 4, 1, 1
        args.stream_n, args.stream_size = 128, 16
    if args.data == "animal_mnist" and importlib.util.find_spec("animal_mnist") is None:
        print("animal_mnist is not installed: using synthetic images")
        args.data = "synthetic"
    return args


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device):
    """Shuffled ``(uint8 images, targets)`` batches on ``device`` (pinned first on CUDA)."""
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if device.type == "cuda":
            xb = xb.pin_memory()
        yield xb.to(device, non_blocking=True), y[idx].to(device, non_blocking=True)


def bare_epoch(model, optimizer, augment, x, y, batch_size, generator, aug_gen, device, amp: bool) -> None:
    """The reference loop: augment, forward, CE summed over ranks, step; nothing else."""
    model.train()
    for xb, yb in batches(x, y, batch_size, generator, device):
        xb = augment(xb, aug_gen)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        loss = sum(F.cross_entropy(lg.float(), yb[:, r]) for r, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def pipeline_epoch(augment, x, y, batch_size, generator, aug_gen, device) -> None:
    """Input pipeline alone: indexing, copy to the device, augmentation."""
    last = None
    for xb, _ in batches(x, y, batch_size, generator, device):
        last = augment(xb, aug_gen)
    if last is not None and device.type == "cuda":
        torch.cuda.synchronize()


def write_png_tree(root: Path, n: int, size: int) -> None:
    """``n`` random RGB PNGs of ``size`` px in a two-rank tree (4 classes), as a camera-trap export would be."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"g{i % 2}" / f"s{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def stream_benchmark(args, device: torch.device) -> list[tuple[str, float, float]]:
    """(4): ``(label, best s/epoch, images/s)`` of one shuffled epoch of batches from a PNG tree on disk: the
    set decoded in memory and indexed, then streamed with 0 and ``--stream-workers`` decoding processes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        write_png_tree(root, args.stream_n, args.stream_size)
        t0 = time.perf_counter()
        memory = load_image_folder(root, ["genus", "species"], args.stream_size, cache_dir=False).features
        decode_s = time.perf_counter() - t0
        lazy = load_image_folder(root, ["genus", "species"], args.stream_size, stream=True).features
        gen = torch.Generator().manual_seed(0)
        pin = device.type == "cuda"

        def in_memory():
            order = torch.randperm(len(memory), generator=gen)
            for start in range(0, len(order), args.batch_size):
                xb = memory[order[start : start + args.batch_size]]
                xb = (xb.pin_memory() if pin else xb).to(device, non_blocking=True)

        def streamed(loader):
            order = torch.randperm(len(lazy), generator=gen)
            for xb in loader(lazy[order[s : s + args.batch_size]] for s in range(0, len(order), args.batch_size)):
                xb = xb.to(device, non_blocking=True)

        runs = [("in memory: index the decoded tensor", in_memory)]
        for w in sorted({0, args.stream_workers}):
            loader = StreamLoader(w, pin_memory=pin)  # persistent workers: started once, as in a run
            runs.append((f"streamed: decode in {w} worker(s)", lambda loader=loader: streamed(loader)))
        times = {label: [] for label, _ in runs}
        for label, fn in runs:  # warm-up (starts the workers)
            fn()
        for _ in range(args.repeats):
            for label, fn in runs:
                times[label].append(timed(fn, device))
    rows = [(f"decode once into memory ({args.stream_n} PNGs)", decode_s, args.stream_n / decode_s)]
    rows += [(label, min(t), args.stream_n / min(t)) for label, t in times.items()]
    return rows


def timed(fn, device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "MODEL.BACKBONE": "resnet", "MODEL.WIDTH": args.width, "TRAIN.BATCH_SIZE": args.batch_size,
            "TRAIN.NUM_THREADS": args.threads, "TRAIN.DEVICE": str(device.type), "TRAIN.LR": 0.003,
            "AUG.RANDOM_RESIZED_CROP": [0.8, 1.0], "AUG.HFLIP": True, "TRACKING.STORE": str(Path(tmp) / "bench.db"),
        }
        if args.data == "animal_mnist":
            cfg = Config().with_overrides({**overrides, "DATA.NAME": "animal_mnist"})
            trainer = Trainer(cfg, progress=False)
        else:
            cfg = Config().with_overrides(overrides)
            trainer = Trainer(cfg, dataset=quadrant_images(args.n, size=args.size), progress=False)
        train = trainer.train_ds
        m = cfg.MODEL
        model = build_model(m.BACKBONE, m.HIDDEN, m.HEAD, train.num_features, trainer.taxonomy, m.DROPOUT,
                            input_shape=tuple(train.features.shape[1:]), width=m.WIDTH, depth=m.DEPTH)
        model.load_state_dict(trainer.model.state_dict())
        model = model.to(device, memory_format=torch.channels_last) if device.type == "cuda" else model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WEIGHT_DECAY)
        augment = Augment.from_config(cfg)
        gen, aug_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        x, y = train.features, train.targets

        run_bare = lambda: bare_epoch(model, optimizer, augment, x, y, args.batch_size, gen, aug_gen,  # noqa: E731
                                      device, trainer.use_amp)
        epoch = iter(range(10_000))
        run_trainer = lambda: trainer.train_epoch(next(epoch))  # noqa: E731
        run_pipe = lambda: pipeline_epoch(augment, x, y, args.batch_size, gen, aug_gen, device)  # noqa: E731
        run_eval = lambda: trainer.evaluate(trainer.val_ds, split="val")  # noqa: E731
        for fn in (run_bare, run_trainer, run_pipe, run_eval):  # warm-up
            fn()
        bare, full, pipe, evals = [], [], [], []
        for _ in range(args.repeats):
            bare.append(timed(run_bare, device))
            full.append(timed(run_trainer, device))
            pipe.append(timed(run_pipe, device))
            evals.append(timed(run_eval, device))

    n_train, n_val = len(train), len(trainer.val_ds)
    bare_ips, trainer_ips, pipe_ips = n_train / min(bare), n_train / min(full), n_train / min(pipe)
    ratio = trainer_ips / bare_ips
    shape = "x".join(map(str, train.features.shape[1:]))
    print(f"workbench image benchmark{' (smoke)' if args.smoke else ''}: {args.data}, {n_train} train / {n_val} val "
          f"images {shape}, resnet width {args.width}, {trainer.taxonomy.num_ranks} ranks {trainer.taxonomy.num_classes}, "
          f"batch {args.batch_size}, device {device}{' (bf16 autocast)' if trainer.use_amp else ''}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load:.1f} at the end "
          f"(a load above the core count makes multi-threaded timings unreliable)")
    print(f"{'loop':<40}{'best s/epoch':>14}{'images/s':>14}")
    print(f"{'bare PyTorch (augment + CE summed)':<40}{min(bare):>14.3f}{bare_ips:>14,.0f}")
    print(f"{'Trainer.train_epoch':<40}{min(full):>14.3f}{trainer_ips:>14,.0f}")
    print(f"{'input pipeline alone (index + augment)':<40}{min(pipe):>14.3f}{pipe_ips:>14,.0f}")
    print(f"trainer / bare: {ratio:.2f}x  (target >= 0.9x: {'ok' if ratio >= 0.9 else 'UNDER'})")
    print(f"input pipeline / bare loop: {pipe_ips / bare_ips:.1f}x faster than training consumes "
          f"({'not the bottleneck' if pipe_ips > 3 * bare_ips else 'CLOSE TO THE BOTTLENECK'})")
    print(f"Trainer.evaluate on val: best {min(evals):.3f} s for {n_val} images ({n_val / min(evals):,.0f} images/s)")
    rows = stream_benchmark(args, device)
    print(f"\nstreaming input pipeline (DATA.STREAM): {args.stream_n} RGB PNGs {args.stream_size}x{args.stream_size} "
          f"on disk, batch {args.batch_size}, one shuffled epoch, no model, best of {args.repeats}")
    print(f"{'input':<48}{'best s/epoch':>14}{'images/s':>14}")
    for label, seconds, ips in rows:
        print(f"{label:<48}{seconds:>14.3f}{ips:>14,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

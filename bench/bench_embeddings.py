"""Embed once, sweep fast: an 8-trial ``w`` sweep on frozen embeddings vs the same sweep end to end on the images.

    python bench/bench_embeddings.py                  # animal_mnist, 200 train images per animal, 2 epochs, 8 trials
    python bench/bench_embeddings.py --per-animal 0   # every image of the fixed split
    python bench/bench_embeddings.py --smoke          # a tiny run that only checks the script works

Both sweeps are the same in-process loop over :class:`workbench.trainer.Trainer` (one thread, CPU, ``w`` evenly
spaced in [0, 1], the same epochs, selection on val and one test evaluation each). On the images a trial trains
the small ResNet (``MODEL.BACKBONE: resnet``) end to end; on the embeddings it trains an MLP (hidden 64) on the
frozen ResNet's output, read back from the Parquet file ``workbench.embed.embed_dataset`` writes. The one-off
cost of the embeddings (training the backbone run, then embedding every image once) is timed apart and added in
the last line. Test accuracy at the finest rank is printed beside the times, so the speed is not bought blind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench import names as N  # noqa: E402
from workbench.config import Config  # noqa: E402
from workbench.data import load_dataset, load_table  # noqa: E402
from workbench.embed import EMBED_PREFIX, embed_dataset  # noqa: E402
from workbench.errors import DataWarning  # noqa: E402
from workbench.store import RunStore  # noqa: E402
from workbench.summaries import test_values  # noqa: E402
from workbench.trainer import Trainer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 trials: checks that the script runs")
    p.add_argument("--per-animal", type=int, default=200,
                   help="train images per animal (val and test get half as many); 0 = every image")
    p.add_argument("--trials", type=int, default=8, help="w values per sweep")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (both sweeps, and the backbone run)")
    p.add_argument("--width", type=int, default=8, help="MODEL.WIDTH of the resnet")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.smoke:
        a.per_animal, a.trials, a.epochs, a.width = 6, 2, 1, 4
    return a


def subset(full, per_animal: int):
    """The first ``per_animal`` train and ``per_animal // 2`` val and test images of each animal (0: all)."""
    if per_animal <= 0:
        return full
    _, group = torch.unique(full.targets, dim=0, return_inverse=True)  # one group per animal
    want = {"train": per_animal, "val": max(per_animal // 2, 1), "test": max(per_animal // 2, 1)}
    keep = [torch.nonzero((group == g) & (full.fixed_split == N.SPLITS.index(part))).flatten()[:n]
            for g in range(int(group.max()) + 1) for part, n in want.items()]
    return full.subset(torch.sort(torch.cat(keep)).values)


def main(argv=None) -> int:
    a = parse_args(argv)
    # animal_mnist's fixed split replaces the default fractions: said once here, not once per trial
    warnings.filterwarnings("ignore", category=DataWarning)
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-emb-"))
    store = RunStore(tmp / "w.db")
    data = {"NAME": "animal_mnist", "VAL_FRACTION": 0.2, "SEED": 0}
    images = subset(load_dataset(Config.from_dict({"DATA": data}).DATA), a.per_animal)
    ranks = list(images.taxonomy.ranks)
    common = {"LOSS": {"W": 0.4}, "SCHEDULE": {"NULL_MASKING": {"ENABLED": False}},
              "TRAIN": {"EPOCHS": a.epochs, "BATCH_SIZE": 64, "LR": 0.005, "DEVICE": "cpu", "NUM_THREADS": a.threads},
              "TRACKING": {"STORE": str(store.path), "CURVES": "last_epoch"}}
    image_cfg = Config.from_dict({**common, "DATA": data, "MODEL": {"BACKBONE": "resnet", "WIDTH": a.width, "HIDDEN": [],
                                                                    "DROPOUT": 0.0}})

    # the one-off cost: a backbone run, then every image through its frozen backbone once
    t0 = time.perf_counter()
    backbone = Trainer(image_cfg, store=store, dataset=images, progress=False)
    backbone.fit()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = embed_dataset(image_cfg.with_overrides({"TRAIN.INIT_FROM": backbone.run_id}), tmp / "emb.parquet",
                          progress=False, dataset=images)
    embed_s = time.perf_counter() - t0
    emb = load_table(feats, ranks, feature_prefix=EMBED_PREFIX, split_column="split")
    emb_cfg = Config.from_dict({**common, "DATA": {"NAME": "file", "PATH": str(feats), "RANKS": ranks,
                                                   "FEATURE_PREFIX": EMBED_PREFIX, "SPLIT_COLUMN": "split"},
                                "MODEL": {"BACKBONE": "mlp", "HIDDEN": [64], "DROPOUT": 0.0}})

    fine = N.rank_key("test", N.ACC, ranks[-1])
    results = {}
    for label, cfg, ds in (("embeddings", emb_cfg, emb), ("images", image_cfg, images)):
        seconds, accs = [], []
        for w in np.linspace(0.0, 1.0, a.trials):
            t0 = time.perf_counter()
            tr = Trainer(cfg.with_overrides({"LOSS.W": float(w)}), store=store, dataset=ds, progress=False)
            tr.fit()
            seconds.append(time.perf_counter() - t0)
            accs.append(float(test_values(store.metrics(tr.run_id)).loc[tr.run_id][fine]))
        results[label] = (np.array(seconds), np.array(accs))

    print(f"animal_mnist: {len(images):,} images ({int((images.fixed_split == 0).sum()):,} train), {emb.num_features}-dim "
          f"embeddings; {a.trials} trials x {a.epochs} epoch(s), w in [0, 1]; {a.threads} thread(s), CPU")
    print(f"{'sweep on':<12}{'trials':>7}{'total s':>10}{'s / trial':>11}{'best test ' + ranks[-1]:>20}"
          f"{'mean test ' + ranks[-1]:>20}")
    for label, (s, acc) in results.items():
        print(f"{label:<12}{len(s):>7}{s.sum():>10.1f}{s.mean():>11.2f}{np.nanmax(acc):>20.3f}{np.nanmean(acc):>20.3f}")
    ratio = results["images"][0].sum() / results["embeddings"][0].sum()
    once = train_s + embed_s
    print(f"wall-time ratio images / embeddings: {ratio:.1f}x per sweep; one-off cost of the embeddings "
          f"{once:.1f} s (backbone run {train_s:.1f} s + embedding {embed_s:.1f} s); including it: "
          f"{results['images'][0].sum() / (results['embeddings'][0].sum() + once):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

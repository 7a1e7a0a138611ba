"""Streamed image sets (issue 13 item 4): LazyImages, the DataLoader road in the trainer, DATA.STREAM /
NUM_WORKERS / STREAM_ABOVE_MB. Real PNG trees on disk, real DataLoader worker processes, real training,
a real SIGKILL of the CLI."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from killing import kill_mid_run_then_resume
from test_models_images import write_tree

from workbench import augment
from workbench import names as N
from workbench.config import Config, ConfigError, DataConfig
from workbench.data import DataError, DataWarning, dataset_hash, load_dataset
from workbench.images import load_image_folder, load_image_manifest
from workbench.plots import thumbnail_grid
from workbench.streaming import STATS_NOTE, LazyImages, StreamLoader, is_lazy
from workbench.trainer import Trainer

RANKS = ["half", "quad"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """160 grayscale 16x16 PNGs, half/quad/<n>.png (one bright quadrant per class), shared read-only."""
    root = tmp_path_factory.mktemp("stream") / "tree"
    write_tree(root)
    return root


def rgb_tree(root: Path, n: int = 12, size: int = 20) -> Path:
    """RGB PNGs and JPEGs of two sizes (both are squared on decode), plus one image labelled at the first rank only."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        half = "warm" if i % 2 else "cold"
        folder = root / half / f"{half}{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = (size, size + 7 * (i % 2), 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.{'jpg' if i % 4 == 0 else 'png'}")
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "warm" / "partial.png")
    return root


def cfg_for(root: Path, tmp_path: Path, **overrides) -> Config:
    base = {
        "DATA.NAME": "images", "DATA.PATH": str(root), "DATA.RANKS": RANKS, "DATA.IMAGE_SIZE": 16,
        "DATA.CACHE_DIR": str(tmp_path / "cache"), "MODEL.BACKBONE": "resnet", "MODEL.WIDTH": 4,
        "AUG.RANDOM_RESIZED_CROP": [0.8, 1.0], "AUG.HFLIP": True,
        "TRAIN.EPOCHS": 2, "TRAIN.BATCH_SIZE": 16, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(tmp_path / "runs" / "w.db"), "TRACKING.CURVES": "last_epoch",
    }
    base.update(overrides)
    return Config().with_overrides(base)


# ---------------------------------------------------------------------- the same pixels
@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_lazy_images_decode_the_same_pixels_as_the_in_memory_road(kind, tree, tmp_path):
    root = tree if kind == "gray" else rgb_tree(tmp_path / "rgb")
    mem = load_image_folder(root, RANKS, 16, cache_dir=False)
    lazy = load_image_folder(root, RANKS, 16, stream=True)
    x = lazy.features
    assert isinstance(x, LazyImages) and not isinstance(mem.features, LazyImages)
    assert x.shape == mem.features.shape and x.dim() == 4 and x.dtype == torch.uint8 and len(x) == len(mem)
    assert x.shape[1] == (1 if kind == "gray" else 3)
    assert torch.equal(x.decode(), mem.features), "every pixel as the in-memory road decodes it"
    # and the same memory layout as an indexed in-memory batch: conv kernels choose their code path by strides
    assert x.decode(torch.arange(4)).stride() == mem.features[torch.arange(4)].stride()
    assert torch.equal(lazy.targets, mem.targets) and lazy.image_paths == mem.image_paths
    assert lazy.taxonomy == mem.taxonomy
    idx = torch.tensor([5, 0, 3])
    part = lazy.subset(idx)  # the splits' road: rows picked without decoding anything
    assert isinstance(part.features, LazyImages) and torch.equal(part.features.decode(), mem.features[idx])
    assert torch.equal(x[2], mem.features[2]), "an integer index decodes that one image"
    assert torch.equal(x[1:4].decode(), mem.features[1:4])
    assert STATS_NOTE in lazy.feature_notes and STATS_NOTE not in mem.feature_notes
    assert [torch.equal(a, b) for a, b in zip(augment.channel_stats(x), augment.channel_stats(mem.features))] == [True, True]
    assert "pixels:" in lazy.describe(2) and thumbnail_grid(lazy, "quad") is not None  # Data page uses both


def test_manifest_streams_too(tree, tmp_path):
    paths = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,half,quad\n" + "".join(f"{p},{p.split('/')[0]},{p.split('/')[1]}\n" for p in paths))
    mem = load_image_manifest(manifest, tree, "path", RANKS, 16, cache_dir=False)
    lazy = load_image_manifest(manifest, tree, "path", RANKS, 16, stream=True)
    assert is_lazy(lazy.features) and torch.equal(lazy.features.decode(), mem.features)
    assert torch.equal(lazy.targets, mem.targets)


def test_stats_of_a_large_streamed_set_come_from_a_fixed_sample(tree, monkeypatch):
    lazy = load_image_folder(tree, RANKS, 16, stream=True).features
    monkeypatch.setattr(augment, "STATS_SAMPLE", 50)  # 160 images > 50: a sample, as for a set of millions
    mean, std = augment.channel_stats(lazy)
    pick = torch.randperm(len(lazy), generator=torch.Generator().manual_seed(augment.STATS_SEED))[:50].sort().values
    want = augment.channel_stats(lazy.decode(pick))
    assert torch.equal(mean, want[0]) and torch.equal(std, want[1])
    assert torch.equal(augment.channel_stats(lazy)[0], mean), "the same sample every time"
    assert not torch.equal(mean, augment.channel_stats(lazy.decode())[0]), "not the whole set"


# ---------------------------------------------------------------------- the same training
@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_trains_exactly_like_in_memory(workers, tree, tmp_path):
    runs = {}
    for stream in (False, True):
        cfg = cfg_for(tree, tmp_path / str(stream), **{"DATA.STREAM": stream, "DATA.NUM_WORKERS": workers})
        t = Trainer(cfg, progress=False)
        assert is_lazy(t.train_ds.features) is stream and is_lazy(t.val_ds.features) is stream
        assert t.fit() == "finished"
        m = t.store.metrics(t.run_id)
        m = m[~m["key"].isin([N.EPOCH_SECONDS, N.TRAIN_SAMPLES_PER_SEC])].reset_index(drop=True)
        logits, _ = t.predict(t.val_ds, batch_size=7)  # evaluation streams too, in any batch size
        runs[stream] = (t.model.state_dict(), m, logits, torch.get_rng_state())
        del t  # its persistent workers end with it
    (s0, m0, l0, r0), (s1, m1, l1, r1) = runs[False], runs[True]
    assert sorted(s0) == sorted(s1)
    differ = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert not differ, f"model tensors differ between the roads: {differ[:5]}"
    cols = ["epoch", "split", "key", "value"]
    both = m0[cols].merge(m1[cols], on=["epoch", "split", "key"], how="outer", suffixes=("_mem", "_stream"))
    differ = both[~((both["value_mem"] == both["value_stream"]) | (both["value_mem"].isna() & both["value_stream"].isna()))]
    assert len(m0) > 20 and len(m0) == len(m1) and differ.empty, f"stored metrics differ:\n{differ.to_string()}"
    assert all(torch.equal(a, b) for a, b in zip(l0, l1))
    assert torch.equal(r0, r1), "the DataLoader never draws from torch's global random state"


def test_auto_streams_above_the_limit(tree):
    def load(**kw):
        return load_dataset(DataConfig(NAME="images", PATH=str(tree), RANKS=RANKS, IMAGE_SIZE=16, CACHE_DIR=None, **kw))

    # 160 grey 16x16 images: 0.039 MB decoded (0.117 MB if they were RGB, the bound used before any file is opened)
    assert not is_lazy(load().features), "default: 2 GB, far above"
    assert is_lazy(load(STREAM_ABOVE_MB=0.01).features)
    assert not is_lazy(load(STREAM_ABOVE_MB=0.06).features), "above the RGB bound, but grey: in memory after all"
    assert not is_lazy(load(STREAM=False, STREAM_ABOVE_MB=0.0).features)
    assert is_lazy(load(STREAM=True).features)


def test_streamed_hash_follows_the_files_not_the_pixels(tree, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    first = dataset_hash(load_image_folder(root, RANKS, 16, stream=True))
    assert dataset_hash(load_image_folder(root, RANKS, 16, stream=True)) == first, "stable across loads"
    f = root / "top" / "q0" / "000.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert dataset_hash(load_image_folder(root, RANKS, 16, stream=True)) != first, "a file rewritten: its mtime moved"


# ---------------------------------------------------------------------- errors
def test_unreadable_header_at_load_names_the_file_or_is_skipped(tree, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    bad = root / "top" / "q1" / "007.png"
    bad.write_text("not a png")
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: not a readable image \(UnidentifiedImageError"):
        load_image_folder(root, RANKS, 16, stream=True)
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable image\(s\) \(.*007.png\) \(DATA.SKIP_BAD_IMAGES\)"):
        ds = load_image_folder(root, RANKS, 16, skip_bad=True, stream=True)
    assert len(ds) == 159 and any("007.png" in w for w in ds.warnings)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_becomes_unreadable_mid_run_stops_it_naming_the_file(workers, tree, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    t = Trainer(cfg_for(root, tmp_path, **{"DATA.STREAM": True, "DATA.NUM_WORKERS": workers}), progress=False)
    victim = t.train_ds.features.path(3)
    victim.write_bytes(victim.read_bytes()[:40])  # truncated after the header: it still opens, it no longer decodes
    with pytest.raises(DataError) as e:
        t.fit()
    msg = str(e.value)
    assert msg.startswith(f"{victim}: not a readable image (") and "\n" not in msg, msg
    assert "checks only each file's header when it loads" in msg
    run = t.store.run(t.run_id)
    assert run["status"] == "failed" and run["epochs_done"] == 0, "no epoch recorded without that image"
    victim.unlink()
    with pytest.raises(DataError, match=rf"^{re.escape(str(victim))}: not a readable image \(FileNotFoundError"):
        t.predict(t.train_ds)  # evaluation streams: the same error, and the loader is reusable after one


def test_stream_loader_reads_one_pass_at_a_time(tree):
    lazy = load_image_folder(tree, RANKS, 16, stream=True).features
    loader = StreamLoader(0)
    first = loader([lazy[torch.arange(4)], lazy[torch.arange(4, 8)]])
    assert torch.equal(next(first), lazy.decode(torch.arange(4)))
    second = loader([lazy[torch.arange(2)]])
    with pytest.raises(RuntimeError, match="a new pass started before this one ended"):
        next(first)
    assert torch.equal(next(second), lazy.decode(torch.arange(2)))


def test_stream_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"`DATA.STREAM` is true, but only image files stream .*NAME 'ratdat' is read "
                                          r"into memory whole: use auto or false"):
        Config().with_overrides({"DATA.NAME": "ratdat", "DATA.STREAM": True})
    with pytest.raises(ConfigError, match=r"`DATA.STREAM` is true, but .*NAME 'file'"):
        Config().with_overrides({"DATA.NAME": "file", "DATA.PATH": "x.csv", "DATA.STREAM": True})
    with pytest.raises(ConfigError, match=r"`DATA.NUM_WORKERS` must be >= 0, got -1"):
        Config().with_overrides({"DATA.NUM_WORKERS": -1})
    with pytest.raises(ConfigError, match=r"`DATA.STREAM` must be auto, true or false, got 'yes'"):
        Config().with_overrides({"DATA.STREAM": "yes"})
    with pytest.raises(ConfigError, match=r"`DATA.STREAM_ABOVE_MB` must be >= 0, got -5"):
        Config().with_overrides(["DATA.STREAM_ABOVE_MB=-5"])
    cfg = Config().with_overrides(["DATA.NAME=images", "DATA.PATH=x", "DATA.STREAM=true", "DATA.NUM_WORKERS=0"])
    assert cfg.DATA.STREAM is True and cfg.DATA.NUM_WORKERS == 0 and Config().DATA.STREAM == "auto"
    path = tmp_path / "c.yaml"
    cfg.save(path)
    assert Config.load(path).DATA.STREAM is True, "round-trips through YAML"


# ---------------------------------------------------------------------- SIGKILL + resume, streaming
@pytest.mark.slow
def test_sigkill_mid_streamed_run_then_resume_has_every_epoch_once(tree, tmp_path):
    epochs = 4  # 8 batches of 16 an epoch, decoded by 2 persistent workers, which die with the killed trainer
    cfg = cfg_for(tree, tmp_path, **{"DATA.STREAM": True, "DATA.NUM_WORKERS": 2, "TRAIN.EPOCHS": epochs})
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    kill_mid_run_then_resume(path, Path(cfg.TRACKING.STORE),
                             "killed-stream-run", epochs, settle_s=0.05,
                             metric="val/acc/quad")

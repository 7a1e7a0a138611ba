"""Image backbones, metadata fusion, MODEL.PRETRAINED, FREEZE_BACKBONE, TRAIN.AMP and the image trainer
(issue 13 items 5-6): real models, real training, a real SIGKILL of the CLI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from killing import kill_mid_run_then_resume

from workbench.config import Config, ConfigError
from workbench.data import HierarchicalDataset
from workbench.models import ResNetBackbone, build_model, import_vision, load_pretrained, save_backbone
from workbench.store import RunStore
from workbench.taxonomy import Taxonomy
from workbench.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None


def quadrant_images(n: int = 256, c: int = 1, size: int = 16, seed: int = 0, meta: int = 0) -> HierarchicalDataset:
    """A learnable image set: one bright quadrant per image; half (top/bottom) > quadrant."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, 60, (n, c, size, size), generator=g, dtype=torch.uint8)
    h = size // 2
    for k in range(4):
        r, col = divmod(k, 2)
        x[q == k, :, r * h : (r + 1) * h, col * h : (col + 1) * h] += 150
    df = pd.DataFrame({"half": ["top" if k < 2 else "bottom" for k in q.tolist()], "quad": [f"q{k}" for k in q.tolist()]})
    tax = Taxonomy.from_frame(df, ["half", "quad"])
    ds = HierarchicalDataset(features=x, targets=tax.encode(df), taxonomy=tax, feature_names=[], name="quadrants")
    if meta:
        ds.meta = torch.randn(n, meta, generator=g)
        ds.meta_names = [f"m{i}" for i in range(meta)]
    return ds


def image_cfg(tmp_path, **overrides) -> Config:
    base = {"MODEL.BACKBONE": "resnet", "MODEL.WIDTH": 4, "TRAIN.EPOCHS": 1, "TRAIN.BATCH_SIZE": 32,
            "TRAIN.LR": 0.01, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
            "TRACKING.STORE": str(tmp_path / "runs" / "w.db")}
    base.update(overrides)
    return Config().with_overrides(base)


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet_forward_shapes(device, shape):
    tax = quadrant_images(8).taxonomy
    model = build_model("resnet", [], "independent", shape[-1], tax, input_shape=shape, width=8, depth=2).to(device)
    x = torch.randint(0, 256, (5, *shape), dtype=torch.uint8, device=device)
    logits, z = model.forward_with_embedding(x)
    assert z.shape == (5, 32)  # 4 x width after global pooling
    assert [tuple(lg.shape) for lg in logits] == [(5, k) for k in tax.num_classes]
    assert all(bool(torch.isfinite(lg).all()) for lg in logits)


@pytest.mark.parametrize("device", DEVICES)
def test_metadata_is_fused_before_the_heads(device):
    tax = quadrant_images(8).taxonomy
    model = build_model("resnet", [], "marginal", 16, tax, input_shape=(3, 16, 16), width=4, meta_dim=3).to(device).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, device=device)
    meta = torch.randn(4, 3, device=device)
    logits, z = model.forward_with_embedding(x, None, meta)
    assert z.shape == (4, 16 + 3) and torch.equal(z[:, 16:], meta), "the embedding ends with the metadata"
    other, _ = model.forward_with_embedding(x, None, meta + 1.0)
    assert not torch.allclose(other[-1], logits[-1]), "the heads see the metadata"
    with pytest.raises(ValueError, match="fuses 3 metadata column"):
        model(x)


def test_trainer_carries_meta_and_amp_key(tmp_path):
    ds = quadrant_images(128, meta=2)
    t = Trainer(image_cfg(tmp_path, **{"TRAIN.AMP": "bf16"}), dataset=ds, progress=False)
    assert t.model.meta_dim == 2 and t.use_amp  # bf16 autocast asked for explicitly, even on the CPU
    m = t.run_epoch(0).metrics
    assert 0.0 <= m["val/acc/quad"] <= 1.0 and m["core/train_loss"] > 0
    assert not Trainer(image_cfg(tmp_path), dataset=ds, progress=False).use_amp, "auto: off on the CPU"


def test_table_backbone_on_images_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"`MODEL.BACKBONE` 'mlp' needs features \(N, F\) or \(N, S, F\); the data "
                                          r"'quadrants' has features of shape \(\d+, 1, 16, 16\); use 'resnet'"):
        Trainer(image_cfg(tmp_path, **{"MODEL.BACKBONE": "mlp"}), dataset=quadrant_images(64), progress=False)


# ---------------------------------------------------------------------- training works on images
def test_resnet_learns_quadrants_and_evaluates_in_batches(tmp_path):
    ds = quadrant_images(512)
    t = Trainer(image_cfg(tmp_path, **{"TRAIN.EPOCHS": 3, "MODEL.WIDTH": 8}), dataset=ds, progress=False)
    assert t.fit() == "finished"
    run = t.store.run(t.run_id)
    assert run["epochs_done"] == 3
    logits, z = t.predict(t.val_ds, batch_size=7)  # many small batches give the same as one
    one, _ = t.predict(t.val_ds, batch_size=10_000)
    assert torch.allclose(logits[-1], one[-1], atol=1e-4)
    acc = float((t.predict_classes(logits)[:, 1] == t.val_ds.targets[:, 1]).float().mean())
    assert acc > 0.6, f"a bright quadrant is easy: val accuracy {acc:.2f} after 3 epochs (chance 0.25)"


# ---------------------------------------------------------------------- pretrained weights
@pytest.mark.parametrize("suffix", [".pt", pytest.param(".safetensors", marks=pytest.mark.skipif(
    not HAS_SAFETENSORS, reason="the safetensors package is not installed here (.pt is tested)"))])
def test_pretrained_round_trip(tmp_path, suffix):
    ds = quadrant_images(192)
    first = Trainer(image_cfg(tmp_path), dataset=ds, progress=False)
    first.fit()
    path = tmp_path / f"backbone{suffix}"
    save_backbone(first.model, path)
    second = Trainer(image_cfg(tmp_path, **{"MODEL.PRETRAINED": str(path), "TRAIN.SEED": 5}), dataset=ds, progress=False)
    x = ds.features[:16].float() / 255
    first.model.eval(), second.model.eval()
    with torch.no_grad():
        assert torch.equal(first.model.backbone(x), second.model.backbone(x)), "the same backbone outputs"
        fresh = Trainer(image_cfg(tmp_path, **{"TRAIN.SEED": 5}), dataset=ds, progress=False).model.eval()
        assert not torch.allclose(fresh.backbone(x), first.model.backbone(x)), "without the file: other weights"


def test_pretrained_file_that_does_not_fit_lists_the_keys(tmp_path):
    ds = quadrant_images(64)
    other = tmp_path / "wide.pt"
    torch.save({**ResNetBackbone(1, width=8).state_dict(), "extra.weight": torch.zeros(2)}, other)
    with pytest.raises(ConfigError) as e:
        Trainer(image_cfg(tmp_path, **{"MODEL.PRETRAINED": str(other)}), dataset=ds, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"`MODEL.PRETRAINED` '{other}' does not fit this backbone (ResNetBackbone)")
    assert "unexpected (1): extra.weight" in msg
    assert "wrong shape (" in msg and "blocks.0.conv1.weight (8, 8, 3, 3) in the file vs (4, 4, 3, 3) here" in msg
    assert "more); check MODEL.BACKBONE, MODEL.WIDTH, MODEL.DEPTH and MODEL.ARCH" in msg, "a long list is cut"
    deeper = tmp_path / "deeper.pt"
    torch.save(ResNetBackbone(1, width=4, depth=2).state_dict(), deeper)
    with pytest.raises(ConfigError, match=r"; unexpected \(42\): blocks\.3\.bn1\.bias, "):
        Trainer(image_cfg(tmp_path, **{"MODEL.PRETRAINED": str(deeper)}), dataset=ds, progress=False)
    model = build_model("resnet", [], "independent", 16, ds.taxonomy, input_shape=(1, 16, 16), width=4, depth=2)
    with pytest.raises(ConfigError, match=r"missing \(\d+\): blocks\.3\.bn1\.bias, "):
        load_pretrained(model, _save(ResNetBackbone(1, 4, 1), tmp_path / "shallow.pt"))
    code = tmp_path / "code.pt"
    torch.save({"w": object()}, code)
    with pytest.raises(ConfigError, match="refused without loading them"):
        load_pretrained(model, code)
    with pytest.raises(ConfigError, match=r"must be a weights file .*no such file"):
        load_pretrained(model, tmp_path / "absent.pt")


def _save(module: torch.nn.Module, path: Path) -> Path:
    torch.save(module.state_dict(), path)
    return path


# ---------------------------------------------------------------------- frozen backbone
def test_freeze_backbone_trains_only_the_heads(tmp_path):
    ds = quadrant_images(192)
    t = Trainer(image_cfg(tmp_path, **{"MODEL.FREEZE_BACKBONE": True}), dataset=ds, progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train_epoch(0)
    after = t.model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    heads = [k for k in before if k.startswith("head.")]
    assert backbone and heads
    changed = [k for k in backbone if not torch.equal(before[k], after[k])]
    assert not changed, f"frozen backbone tensors changed (weights or batch-norm statistics): {changed[:5]}"
    assert all(not torch.equal(before[k], after[k]) for k in heads), "every head tensor trained"
    n_opt = sum(p.numel() for g in t.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in t.model.head.parameters()), "the optimizer holds the heads only"


# ---------------------------------------------------------------------- timm / torchvision
@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_vision_library_missing_is_a_config_error_with_install_advice(library, tmp_path):
    if importlib.util.find_spec(library) is not None:
        try:
            importlib.import_module(library)
            pytest.skip(f"{library} imports here; its build test runs instead")
        except Exception:  # noqa: BLE001 (installed but broken, e.g. torchvision for another torch build)
            pass
    with pytest.raises(ConfigError) as e:
        import_vision(library)
    msg = str(e.value)
    assert msg.startswith(f"`MODEL.BACKBONE` '{library}' needs the {library} package, which cannot be imported here (")
    assert "pip install timm torchvision" in msg and "MODEL.BACKBONE 'resnet'" in msg
    with pytest.raises(ConfigError, match=f"needs the {library} package"):  # the same from a run
        Trainer(image_cfg(tmp_path, **{"MODEL.BACKBONE": library, "MODEL.ARCH": "resnet18"}),
                dataset=quadrant_images(64), progress=False)


def _imports(library: str) -> str | None:
    """None when ``library`` imports, else why not (the skip reason)."""
    try:
        importlib.import_module(library)
        return None
    except Exception as e:  # noqa: BLE001 (the reason is the point: torchvision raises RuntimeError with CPU torch)
        return f"{library} cannot be imported here ({type(e).__name__}: {str(e)[:120]}); tested where it imports"


@pytest.mark.parametrize("library", ["timm", "torchvision"])
@pytest.mark.parametrize("device", DEVICES)
def test_vision_backbone_builds_trains_and_round_trips(library, device, tmp_path):
    why = _imports(library)
    if why:
        pytest.skip(why)
    ds = quadrant_images(96, c=1, size=32)
    cfg = image_cfg(tmp_path, **{"MODEL.BACKBONE": library, "MODEL.ARCH": "resnet18", "TRAIN.DEVICE": device,
                                 "TRAIN.BATCH_SIZE": 16})
    t = Trainer(cfg, dataset=ds, progress=False)
    m = t.run_epoch(0).metrics
    assert 0.0 <= m["val/acc/quad"] <= 1.0
    path = tmp_path / "vision.pt"
    save_backbone(t.model, path)
    t2 = Trainer(image_cfg(tmp_path, **{**{"MODEL.BACKBONE": library, "MODEL.ARCH": "resnet18", "TRAIN.DEVICE": device},
                                        "MODEL.PRETRAINED": str(path)}), dataset=ds, progress=False)
    x = (ds.features[:4].float() / 255).to(device)
    t.model.eval(), t2.model.eval()
    with torch.no_grad():
        assert torch.allclose(t.model.backbone(x), t2.model.backbone(x), atol=1e-5)


# ---------------------------------------------------------------------- SIGKILL + resume (CLI)
def write_tree(root: Path, per_class: int = 40, size: int = 16) -> None:
    """A folder tree of real PNGs: half/quad/<n>.png, one bright quadrant per class."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    h = size // 2
    for k, (half, quad) in enumerate([("top", "q0"), ("top", "q1"), ("bottom", "q2"), ("bottom", "q3")]):
        folder = root / half / quad
        folder.mkdir(parents=True)
        r, col = divmod(k, 2)
        for i in range(per_class):
            x = torch.randint(0, 60, (size, size), generator=g, dtype=torch.uint8)
            x[r * h : (r + 1) * h, col * h : (col + 1) * h] += 150
            Image.fromarray(x.numpy(), mode="L").save(folder / f"{i:03d}.png")


@pytest.mark.slow
def test_sigkill_mid_image_run_then_resume_has_every_epoch_once(tmp_path):
    root = tmp_path / "tree"
    write_tree(root)
    epochs = 6  # ~0.5 s each on one thread (16 batches of 8): the kill lands well before the end
    cfg = Config().with_overrides({
        "DATA.NAME": "images", "DATA.PATH": str(root), "DATA.RANKS": ["half", "quad"], "DATA.IMAGE_SIZE": 16,
        "DATA.CACHE_DIR": str(tmp_path / "cache"), "MODEL.BACKBONE": "resnet", "MODEL.WIDTH": 4,
        "AUG.RANDOM_RESIZED_CROP": [0.8, 1.0], "AUG.HFLIP": True,
        "TRAIN.EPOCHS": epochs, "TRAIN.BATCH_SIZE": 8, "TRAIN.NUM_THREADS": 1, "TRAIN.DEVICE": "cpu",
        "TRACKING.STORE": str(tmp_path / "runs" / "w.db"), "TRACKING.CURVES": "last_epoch",
    })
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    kill_mid_run_then_resume(path, Path(cfg.TRACKING.STORE),
                             "killed-image-run", epochs, settle_s=0.1,
                             metric="val/acc/quad")


# ---------------------------------------------------------------------- CLI smoke on the built-in set
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None, reason="the animal-mnist wheel is not installed")
def test_cli_trains_resnet_on_animal_mnist_smoke(tmp_path):
    """One small epoch from the CLI (the acceptance run, several epochs, is measured in the report)."""
    store = tmp_path / "w.db"
    res = subprocess.run(
        [sys.executable, "-m", "workbench", "train", "--config", str(REPO / "configs" / "animal_mnist_resnet.yaml"),
         "--set", "TRAIN.EPOCHS=1", "--set", "MODEL.WIDTH=2", "--set", "TRAIN.BATCH_SIZE=256",
         "--set", "TRAIN.NUM_THREADS=1", "--set", f"TRACKING.STORE={store}", "--no-progress"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = RunStore(store).runs()
    assert list(runs["status"]) == ["finished"] and list(runs["epochs_done"]) == [1]

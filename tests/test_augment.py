"""Batch augmentation (workbench/augment.py): crops inside the image, exact flips, seeded, identity in eval."""

from __future__ import annotations

import torch

from workbench.augment import Augment, channel_stats, crop_resize, hflip, sample_crop_boxes, to_float
from workbench.models import ImageInput

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def images(n=16, c=3, size=32, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_boxes_stay_inside_the_image_with_the_asked_area():
    g = torch.Generator().manual_seed(0)
    h, w = 28, 40
    boxes = sample_crop_boxes(5000, h, w, (0.3, 0.9), g)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert bool((x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w + 1e-4).all() and (y1 <= h + 1e-4).all())
    assert bool((x1 > x0).all() and (y1 > y0).all())
    area = (x1 - x0) * (y1 - y0) / (h * w)
    assert float(area.max()) <= 0.9 + 1e-4, "a clipped side only makes a crop smaller"
    assert float(area.min()) >= 0.3 * 0.7, f"crops far below the asked area: {float(area.min()):.3f}"
    assert 0.45 < float(area.mean()) < 0.65  # ~uniform in [0.3, 0.9]: mean 0.6 less a little clipping


def test_a_full_image_box_reproduces_the_image_and_a_half_box_its_half():
    x = to_float(images(4, 2, 16))
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(4, 4)
    assert torch.allclose(crop_resize(x, full), x, atol=1e-5)
    # the left half stretched 2x: every even output column samples between two input columns of the left half
    left = torch.tensor([[0.0, 0.0, 8.0, 16.0]]).expand(4, 4)
    out = crop_resize(x, left)
    assert out.shape == x.shape
    assert float(out.min()) >= float(x[..., :8].min()) - 1e-5 and float(out.max()) <= float(x[..., :9].max()) + 1e-5
    # nothing from the right half beyond column 8 leaks in: a bright right half leaves the crop unchanged
    y = x.clone()
    y[..., 9:] = 1.0
    assert torch.allclose(crop_resize(y, left), out, atol=1e-5)


def test_hflip_flips_exactly_the_masked_samples():
    x = to_float(images(6))
    mask = torch.tensor([True, False, True, False, False, True])
    out = hflip(x, mask)
    for i, m in enumerate(mask.tolist()):
        assert torch.equal(out[i], x[i].flip(-1) if m else x[i]), f"sample {i} (mask {m})"
    assert torch.equal(hflip(x, torch.zeros(6, dtype=torch.bool)), x), "an all-False mask flips nothing"


def test_augment_is_seeded_and_deterministic_on_every_device():
    x = images(8, 1, 28)
    aug = Augment(crop=(0.5, 1.0), flip=True)
    ref = aug(x, torch.Generator().manual_seed(7))
    for device in DEVICES:
        again = aug(x.to(device), torch.Generator().manual_seed(7)).cpu()
        assert torch.allclose(again, ref, atol=1e-5), device
    other = aug(x, torch.Generator().manual_seed(8))
    assert not torch.allclose(other, ref), "another seed gives other crops"
    assert ref.dtype == torch.float32 and float(ref.min()) >= 0.0 and float(ref.max()) <= 1.0


def test_no_augmentation_configured_is_the_plain_float_image():
    x = images(4)
    assert not Augment().active
    assert torch.equal(Augment()(x, torch.Generator()), x.float() / 255)


def test_eval_path_is_identity_after_normalisation():
    """The model's input stage on raw uint8 equals (x / 255 - mean) / std: no crop, no flip, ever."""
    x = images(32, 3, 16)
    mean, std = channel_stats(x)
    ref = x.double() / 255
    assert torch.allclose(mean.double(), ref.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(std.double(), ref.std(dim=(0, 2, 3), unbiased=False), atol=1e-5)
    stage = ImageInput(3)
    stage.set_stats(mean, std)
    out = stage(x)
    expect = (x.float() / 255 - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(out, expect, atol=1e-5)
    assert torch.allclose(stage(x.float() / 255), out, atol=1e-5), "float input in [0, 1] (augmented) is the same scale"


def test_constant_channel_gets_unit_std():
    x = torch.full((4, 1, 8, 8), 17, dtype=torch.uint8)
    mean, std = channel_stats(x)
    assert torch.allclose(mean, torch.tensor([17 / 255])) and torch.equal(std, torch.ones(1))

"""Image augmentation on the batch, on the training device (issue 13, DESIGN.md 3.8).

Pure tensor functions over a whole batch ``(B, C, H, W)``: no per-image Python, no PIL, so the
same code runs on the CPU and on a GPU. Random draws come from a CPU ``torch.Generator`` (a few
numbers per image, moved to the batch's device), so a seeded run augments identically on any device
and the generator's state goes into the checkpoint for ``resume``. Evaluation never augments.

Normalisation is not here: the model owns it (:class:`workbench.models.ImageInput`, per-channel
mean and std of the training split in its state dict), so a saved model predicts on raw images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.streaming import STATS_SAMPLE, STATS_SEED, LazyImages

# torchvision's RandomResizedCrop default aspect-ratio range: crops are never stretched further
CROP_RATIO = (3 / 4, 4 / 3)
STATS_CHUNK = 4096  # images per chunk when computing channel statistics (bounded float32 memory)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """``uint8 (B, C, H, W)`` -> ``float32`` in [0, 1]; a float tensor is returned as is."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def channel_stats(images: torch.Tensor | LazyImages) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation ``(C,), (C,)`` of ``uint8 (N, C, H, W)`` images in [0, 1]
    units, in float64 over chunks (one pass; no float copy of the whole set). A constant channel gets
    std 1, so normalising never divides by zero.

    A streamed set (:class:`~workbench.streaming.LazyImages`) is not decoded whole: the statistics come from a
    fixed seeded sample of at most :data:`~workbench.streaming.STATS_SAMPLE` of its images (all of them, in
    order, when it has no more: then exactly the in-memory numbers), and its ``feature_notes`` say so."""
    if isinstance(images, LazyImages):
        n = len(images)
        if n > STATS_SAMPLE:  # sorted: files read in folder order, kinder to a disk than a random walk
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(STATS_SEED))[:STATS_SAMPLE].sort().values
        else:
            pick = torch.arange(n)
        images = images.decode(pick)
    c = images.shape[1]
    total, total_sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for start in range(0, images.shape[0], STATS_CHUNK):
        x = images[start : start + STATS_CHUNK].double().div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        return torch.zeros(c), torch.ones(c)
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
    ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """``(n, 4)`` crop boxes ``x0, y0, x1, y1`` in pixels, inside the image: area a uniform fraction in
    ``scale`` of the image, aspect ratio log-uniform in ``ratio``, position uniform. Where the drawn
    shape does not fit, the side is clipped to the image (the crop still lies inside it)."""
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * height * width
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(1.0, width)
    h = torch.sqrt(area / aspect).clamp(1.0, height)
    x0 = (width - w) * u[:, 2]
    y0 = (height - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1).float()


def crop_resize(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box resampled to the full ``(H, W)`` (bilinear): ``x (B, C, H, W)`` float, ``boxes (B, 4)``
    in pixels. One affine grid per image and one ``grid_sample`` for the batch."""
    b, _, h, w = x.shape
    boxes = boxes.to(x.device, torch.float32, non_blocking=True)  # staged at once: no wait for the GPU per batch
    # normalised coordinates (align_corners=False): pixel edge 0 -> -1, edge W -> +1
    cx = (boxes[:, 0] + boxes[:, 2]) / w - 1.0
    cy = (boxes[:, 1] + boxes[:, 3]) / h - 1.0
    sx = (boxes[:, 2] - boxes[:, 0]) / w
    sy = (boxes[:, 3] - boxes[:, 1]) / h
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x.float(), grid.to(x.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False).to(x.dtype)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip left-right exactly the images where ``mask (B,)`` is True."""
    mask = mask.to(x.device, torch.bool, non_blocking=True)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


@dataclass
class Augment:
    """The ``AUG`` section as a batch transform for training: ``uint8 (B, C, H, W)`` -> float in [0, 1],
    randomly cropped (``crop``: area fraction range, or None) and flipped (``flip``)."""

    crop: tuple[float, float] | None = None
    flip: bool = False

    @classmethod
    def from_config(cls, config) -> Augment:
        """From ``config.AUG`` when the section exists (defaults: no crop, no flip)."""
        aug = getattr(config, "AUG", None)
        crop = getattr(aug, "RANDOM_RESIZED_CROP", None)
        return cls(crop=tuple(float(v) for v in crop) if crop else None, flip=bool(getattr(aug, "HFLIP", False)))

    @property
    def active(self) -> bool:
        return self.crop is not None or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = to_float(x)
        b, _, h, w = x.shape
        if self.crop is not None:
            x = crop_resize(x, sample_crop_boxes(b, h, w, self.crop, generator))
        if self.flip:
            x = hflip(x, torch.rand(b, generator=generator) < 0.5)
        return x

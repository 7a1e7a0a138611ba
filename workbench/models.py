"""Backbones (MLP, set attention, small ResNet, timm/torchvision) and heads (independent per rank, marginal over the finest rank)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from workbench.errors import ConfigError, DataError
from workbench.names import SET_POOLS
from workbench.taxonomy import Taxonomy


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class MLPBackbone(nn.Module):
    """``(B, F) -> (B, H)``."""

    def __init__(self, num_features: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.net = _mlp([num_features, *hidden], dropout)
        self.out_dim = hidden[-1] if hidden else num_features

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class SetAttentionBackbone(nn.Module):
    """Pooling over a padded set: ``(B, S, F)`` and ``valid (B, S)`` -> ``(B, H)``.

    Each element is encoded by an MLP, then pooled: ``pool="attention"`` (a learned score per element,
    softmax over the set) or ``pool="mean"`` (the plain mean of the real elements, the baseline).
    ``valid`` is True for real elements; padding gets zero weight in both, so padding never
    changes the output. A row with no valid element pools to zeros (finite, not NaN).
    """

    def __init__(self, num_features: int, hidden: Sequence[int], dropout: float = 0.0, pool: str = "attention"):
        super().__init__()
        if pool not in SET_POOLS:
            raise ValueError(f"`MODEL.POOL` must be one of {list(SET_POOLS)}, got {pool!r}")
        self.encode = _mlp([num_features, *hidden], dropout)
        self.out_dim = hidden[-1]
        self.pool = pool
        self.score = nn.Linear(self.out_dim, 1) if pool == "attention" else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(x)  # (B, S, H)
        if valid is None:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if self.score is None:  # mean pooling: the real elements' mean; an empty set gives 0 / 1 = zeros
            counts = valid.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)  # (B, 1)
            return (h * valid.unsqueeze(-1).to(h.dtype)).sum(dim=1) / counts  # (B, H)
        scores = self.score(h).squeeze(-1).masked_fill(~valid, float("-inf"))  # (B, S)
        any_valid = valid.any(dim=1, keepdim=True)  # (B, 1)
        # an all-padding row would softmax to NaN: give it zero weights instead
        weights = torch.softmax(torch.where(any_valid, scores, torch.zeros_like(scores)), dim=1)
        weights = torch.where(valid, weights, torch.zeros_like(weights))
        return (weights.unsqueeze(-1) * h).sum(dim=1)  # (B, H)


class IndependentHeads(nn.Module):
    """One linear head per rank: ``(B, H) -> R x (B, K_r + 1)`` logits."""

    def __init__(self, in_dim: int, taxonomy: Taxonomy):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_dim, k) for k in taxonomy.num_classes)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [head(z) for head in self.heads]


class MarginalHead(nn.Module):
    """One head over the finest rank; coarser ranks are sums of descendant probabilities.

    Returns ``R x (B, K_r + 1)`` *log-probabilities* (softmax of them is themselves, so callers
    can treat them as logits).
    """

    def __init__(self, in_dim: int, taxonomy: Taxonomy):
        super().__init__()
        self.taxonomy = taxonomy
        self.leaf = nn.Linear(in_dim, taxonomy.num_classes[-1])

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return self.taxonomy.marginal_log_probs(self.leaf(z))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNetBackbone(nn.Module):
    """A small ResNet in plain torch: ``(B, C, H, W)`` float -> ``(B, 4 * width)``.

    A 3x3 stem, then 3 stages of ``depth`` basic blocks at widths ``width, 2 width, 4 width`` (strides
    1, 2, 2), then global average pooling. Small images (28-64 px) keep their resolution in the stem.
    """

    def __init__(self, in_channels: int, width: int = 32, depth: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage, stride in enumerate((1, 2, 2)):
            cout = width * 2**stage
            for d in range(depth):
                blocks.append(BasicBlock(cin, cout, stride if d == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = cin

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


VISION_INSTALL = ("pip install timm torchvision, built for the installed torch (torchvision's version must match "
                  "torch's: a CPU torch needs the CPU torchvision wheel from download.pytorch.org)")


def import_vision(package: str):
    """``timm`` or ``torchvision``, imported on first use: an optional extra that does not import with
    every torch build (DESIGN.md section 6). Where it cannot, a :class:`ConfigError` with the reason."""
    import importlib

    try:
        return importlib.import_module(package)
    except Exception as e:  # noqa: BLE001 (any import failure: missing, or a _C.so built for another torch)
        first = (str(e).splitlines() or [""])[0][:300]
        raise ConfigError(
            f"`MODEL.BACKBONE` {package!r} needs the {package} package, which cannot be imported here "
            f"({type(e).__name__}: {first}); install it with: {VISION_INSTALL}; or use MODEL.BACKBONE 'resnet' "
            f"(plain torch, works everywhere)"
        ) from None


class VisionBackbone(nn.Module):
    """A timm or torchvision network without its classifier: ``(B, C, H, W)`` -> ``(B, D)``.

    Built with random weights (never downloaded; ``MODEL.PRETRAINED`` loads local ones). Grayscale input
    is repeated to 3 channels for torchvision models, which are built for RGB.
    """

    def __init__(self, library: str, arch: str, in_channels: int, image_size: int):
        super().__init__()
        lib = import_vision(library)
        self.repeat = 1
        if library == "timm":
            try:
                self.net = lib.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels)
            except RuntimeError as e:  # timm's "Unknown model (...)"
                raise ConfigError(f"`MODEL.ARCH` {arch!r} is not a timm model ({e}); see timm.list_models()") from None
        else:
            try:
                self.net = lib.models.get_model(arch, weights=None)
            except (ValueError, KeyError) as e:
                raise ConfigError(f"`MODEL.ARCH` {arch!r} is not a torchvision model ({e}); see "
                                  f"torchvision.models.list_models()") from None
            self.repeat = 3 if in_channels == 1 else 1
            _drop_classifier(self.net, arch)
        with torch.no_grad():  # the embedding size, from one forward (architectures name it differently)
            was = self.net.training
            self.net.eval()
            probe = torch.zeros(1, in_channels * self.repeat, image_size, image_size)
            self.out_dim = int(self.net(probe).reshape(1, -1).shape[1])
            self.net.train(was)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        return self.net(x).flatten(1)


def _drop_classifier(net: nn.Module, arch: str) -> None:
    """Replace a torchvision model's last ``nn.Linear`` (its classifier) by the identity."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ConfigError(f"`MODEL.ARCH` {arch!r}: no linear classifier found to remove; use a classification model")
    parent = net.get_submodule(last.rpartition(".")[0]) if "." in last else net
    setattr(parent, last.rpartition(".")[2], nn.Identity())


class ImageInput(nn.Module):
    """Image input stage: ``uint8`` -> float in [0, 1] (a float input is taken as already in [0, 1], as the
    trainer's augmentation gives it), then per-channel normalisation with the training split's mean and std.

    The statistics are buffers: they travel in the state dict, so a saved model predicts on raw images.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x
        return (x - self.mean[:, None, None].to(x.dtype)) / self.std[:, None, None].to(x.dtype)


def check_valid_mask(features: torch.Tensor, valid: torch.Tensor) -> None:
    """Assert the padding mask's polarity contract where data enters the model (DESIGN.md section 2).

    ``valid`` must be ``BoolTensor (B, S)`` matching ``features (B, S, F)``, True = real element. A float or
    integer 0/1 mask is refused rather than cast: it is the usual sign of a mask built with the other
    polarity (1 = padding) or of a key-padding mask from another library. Cheap: dtype and shape only, no
    host sync (an inverted *bool* mask cannot be told from a real one here; the ``empty_sets`` health check
    catches its usual symptom, sets with no real element).
    """
    if valid.dtype != torch.bool:
        raise DataError(f"the set padding mask `valid` must be a bool tensor (True = real element), got dtype "
                        f"{valid.dtype}; build it as `counts[:, None] > torch.arange(S)`, not as a 0/1 or "
                        f"True = padding mask")
    if features.dim() != 3 or tuple(valid.shape) != tuple(features.shape[:2]):
        raise DataError(f"the set padding mask `valid` must have shape (B, S) = features.shape[:2] for features "
                        f"(B, S, F); got valid {tuple(valid.shape)} for features {tuple(features.shape)}")


class HierarchicalModel(nn.Module):
    """Input stage + backbone + head. ``forward(features, valid=None, meta=None) -> R x (B, K_r + 1)``.

    Images go through :class:`ImageInput` first (``input`` is None for tables and sets). ``meta (B, M)``,
    numeric metadata beside an image, is concatenated to the backbone's embedding before the heads
    (as linnaeus fuses location and date); ``meta_dim`` fixes ``M`` at construction.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, input: nn.Module | None = None, meta_dim: int = 0):
        super().__init__()
        self.backbone, self.head, self.input = backbone, head, input
        self.meta_dim = meta_dim

    def embed(self, features: torch.Tensor, valid: torch.Tensor | None = None,
              meta: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding the heads see ``(B, H [+ M])``. ``valid (B, S)`` (sets only) must be a bool mask,
        True = real element; anything else is a :class:`DataError` here, where data enters the model."""
        if valid is not None:
            check_valid_mask(features, valid)
        x = features if self.input is None else self.input(features)
        z = self.backbone(x, valid)
        if self.meta_dim:
            if meta is None or meta.shape[-1] != self.meta_dim:
                got = None if meta is None else tuple(meta.shape)
                raise ValueError(f"this model fuses {self.meta_dim} metadata column(s) with the image; got meta {got}")
            z = torch.cat([z, meta.to(z.dtype)], dim=1)
        return z

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None,
                meta: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.head(self.embed(features, valid, meta))

    def forward_with_embedding(self, features, valid=None, meta=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.embed(features, valid, meta)  # (B, H)
        return self.head(z), z


from workbench.names import IMAGE_BACKBONES  # noqa: E402 (one home: names.py)


def backbone_mismatch(backbone: str, shape: tuple[int, ...], name: str) -> str | None:
    """Why ``MODEL.BACKBONE`` cannot train on features of ``shape`` (the data ``name``), or None when it can.

    The one wording of this refusal: the trainer raises it as a ``ConfigError``, and the Train page
    shows it before launching (an mlp on set data, set_attention on a table).
    """
    if backbone in IMAGE_BACKBONES or len(shape) == 4:
        if backbone not in IMAGE_BACKBONES or len(shape) != 4:
            needs = "images, features (N, C, H, W)" if backbone in IMAGE_BACKBONES else "features (N, F) or (N, S, F)"
            return (f"`MODEL.BACKBONE` {backbone!r} needs {needs}; the data {name!r} has features of shape {shape}"
                    + ("; use 'resnet', 'timm' or 'torchvision'" if len(shape) == 4 else "; use 'mlp' or 'set_attention'"))
        return None
    want = 3 if backbone == "set_attention" else 2
    if len(shape) != want:
        needs = "padded sets, features (N, S, F) with a valid mask" if want == 3 else "features (N, F), one row per sample"
        return (f"`MODEL.BACKBONE` {backbone!r} needs {needs}; the data {name!r} has features of shape {shape}"
                + ("; use 'set_attention'" if want == 2 else "; use 'mlp'"))
    return None


PRETRAINED_SUFFIXES = (".safetensors", ".pt", ".pth")
SHOWN_KEYS = 12  # keys listed per kind (missing, unexpected, wrong shape) in a MODEL.PRETRAINED error


def build_model(
    backbone: str, hidden: Sequence[int], head: str, num_features: int, taxonomy: Taxonomy, dropout: float = 0.0,
    *, input_shape: Sequence[int] | None = None, width: int = 32, depth: int = 1, arch: str | None = None,
    meta_dim: int = 0, pool: str = "attention",
) -> HierarchicalModel:
    """A model from the ``MODEL`` config section's values.

    Image backbones need ``input_shape = (C, H, W)``; ``meta_dim`` metadata columns are fused with the
    image embedding before the heads; ``pool`` is ``set_attention``'s pooling (``MODEL.POOL``).
    """
    backbones = {"mlp": MLPBackbone, "set_attention": SetAttentionBackbone}
    heads = {"independent": IndependentHeads, "marginal": MarginalHead}
    if backbone not in (*backbones, *IMAGE_BACKBONES):
        raise ValueError(f"`MODEL.BACKBONE` must be one of {sorted([*backbones, *IMAGE_BACKBONES])}, got {backbone!r}")
    if head not in heads:
        raise ValueError(f"`MODEL.HEAD` must be one of {sorted(heads)}, got {head!r}")
    if backbone not in IMAGE_BACKBONES:
        extra = {"pool": pool} if backbone == "set_attention" else {}
        body = backbones[backbone](num_features, list(hidden), dropout, **extra)
        return HierarchicalModel(body, heads[head](body.out_dim, taxonomy))
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"`MODEL.BACKBONE` {backbone!r} needs input_shape (C, H, W), got {input_shape}")
    c, h, _ = input_shape
    body = ResNetBackbone(c, width, depth) if backbone == "resnet" else VisionBackbone(backbone, arch or "", c, h)
    return HierarchicalModel(body, heads[head](body.out_dim + meta_dim, taxonomy), ImageInput(c), meta_dim)


# ---------------------------------------------------------------------- MODEL.PRETRAINED
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: ``.safetensors`` (needs the safetensors package), or a
    ``.pt``/``.pth`` ``torch.save`` of a state dict loaded with ``weights_only`` (no code runs). A
    workbench checkpoint (``{"model": ...}``) or a ``{"state_dict": ...}`` wrapper is unwrapped."""
    p = Path(path)
    what = "`MODEL.PRETRAINED`"
    if not p.is_file():
        raise ConfigError(f"{what} must be a weights file ({', '.join(PRETRAINED_SUFFIXES)}), got {str(path)!r}: "
                          f"no such file")
    if p.suffix not in PRETRAINED_SUFFIXES:
        raise ConfigError(f"{what} must end in {', '.join(PRETRAINED_SUFFIXES)}, got {str(path)!r}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{what} {str(path)!r}: reading .safetensors needs the safetensors package "
                              f"(pip install safetensors), or save the weights with torch.save as .pt") from None
        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 (safetensors raises its own SafetensorError type for any bad header)
            raise ConfigError(f"{what} {str(path)!r}: not a readable .safetensors file ({type(e).__name__}: {e})") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{what} {str(path)!r}: holds objects other than tensors (refused without loading them: "
                          f"that could run code); save a state dict: torch.save(model.state_dict(), path)") from None
    except (EOFError, RuntimeError, KeyError, ValueError, OSError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"{what} {str(path)!r}: not a readable torch.save file ({type(e).__name__}: {first})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what} {str(path)!r}: not a state dict of tensors (holds a {type(state).__name__})")
    if any(k.startswith("backbone.") for k in state):  # a whole workbench model: its backbone's part
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_pretrained(model: HierarchicalModel, path: str | Path) -> None:
    """Load local backbone weights into ``model.backbone``; every missing, unexpected or mis-shaped key
    is listed in the error (a timm/torchvision file loads into the ``net.`` it was made for)."""
    state = read_weights(path)
    ours = model.backbone.state_dict()
    if isinstance(model.backbone, VisionBackbone) and not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a file saved from the bare timm/torchvision model
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(ours[k].shape)} here"
              for k in sorted(set(ours) & set(state)) if state[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:SHOWN_KEYS]) + (f", ... ({len(keys) - SHOWN_KEYS} more)"
                                                         if len(keys) > SHOWN_KEYS else "")
                parts.append(f"{label} ({len(keys)}): {shown}")
        raise ConfigError(f"`MODEL.PRETRAINED` {str(path)!r} does not fit this backbone ({type(model.backbone).__name__}"
                          f"): {'; '.join(parts)}; check MODEL.BACKBONE, MODEL.WIDTH, MODEL.DEPTH and MODEL.ARCH")
    model.backbone.load_state_dict(state)


def save_backbone(model: HierarchicalModel, path: str | Path) -> None:
    """Write ``model.backbone``'s weights for ``MODEL.PRETRAINED``: ``.safetensors`` or ``.pt``/``.pth``."""
    p = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(p))
    else:
        torch.save(state, p)

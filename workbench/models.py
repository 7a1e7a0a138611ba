"""Backbones (MLP, set attention) and heads (independent per rank, marginal over the finest rank)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

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
    """Attention pooling over a padded set: ``(B, S, F)`` and ``valid (B, S)`` -> ``(B, H)``.

    ``valid`` is True for real elements; padding gets zero attention weight, so padding never
    changes the output. A row with no valid element pools to zeros (finite, not NaN).
    """

    def __init__(self, num_features: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.encode = _mlp([num_features, *hidden], dropout)
        self.out_dim = hidden[-1]
        self.score = nn.Linear(self.out_dim, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(x)  # (B, S, H)
        if valid is None:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
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


class HierarchicalModel(nn.Module):
    """Backbone + head. ``forward(features, valid=None) -> R x (B, K_r + 1)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.head(self.backbone(features, valid))

    def forward_with_embedding(self, features, valid=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.backbone(features, valid)  # (B, H)
        return self.head(z), z


def build_model(
    backbone: str, hidden: Sequence[int], head: str, num_features: int, taxonomy: Taxonomy, dropout: float = 0.0
) -> HierarchicalModel:
    """A model from the ``MODEL`` config section's values."""
    backbones = {"mlp": MLPBackbone, "set_attention": SetAttentionBackbone}
    heads = {"independent": IndependentHeads, "marginal": MarginalHead}
    if backbone not in backbones:
        raise ValueError(f"`MODEL.BACKBONE` must be one of {sorted(backbones)}, got {backbone!r}")
    if head not in heads:
        raise ValueError(f"`MODEL.HEAD` must be one of {sorted(heads)}, got {head!r}")
    body = backbones[backbone](num_features, list(hidden), dropout)
    return HierarchicalModel(body, heads[head](body.out_dim, taxonomy))

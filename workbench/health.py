"""Model health checks run every epoch: the failures that otherwise look like "accuracy is just low".

Checks (each a flag per epoch, with a message when it fires):
- ``nonfinite_loss``: a training batch loss was NaN/inf;
- ``nonfinite_grad``: a gradient was NaN/inf (checked on the epoch's last batch, to keep the hot
  path free of a pass over every parameter);
- ``rank_all_masked``: every training label of a rank was masked this epoch (that rank learned nothing);
- ``constant_predictions``: validation predictions at a rank are one class for every input
  while the targets have several;
- ``collapsed_embeddings``: pooled embeddings are (near) identical across inputs, the symptom of an
  inverted padding mask or a dead backbone;
- ``empty_sets``: set inputs whose ``valid`` mask is all False for real samples.
"""

from __future__ import annotations


import torch

CHECKS = ("nonfinite_loss", "nonfinite_grad", "rank_all_masked", "constant_predictions",
          "collapsed_embeddings", "empty_sets")


def embeddings_collapsed(z: torch.Tensor, rel_tol: float = 1e-4) -> bool:
    """``z (N, H)``: True when the spread across samples is negligible against the scale."""
    if z.shape[0] < 2:
        return False
    spread = z.std(dim=0).mean()
    scale = z.abs().mean().clamp_min(1e-12)
    return bool(spread <= rel_tol * scale) or bool(z.abs().max() == 0)


class HealthMonitor:
    """Collects per-batch signals cheaply and evaluates the checks at the end of each epoch."""

    def __init__(self, ranks):
        self.ranks = tuple(ranks)
        self._flags = dict.fromkeys(CHECKS, False)
        self._bad_loss = False

    def record_losses(self, batch_losses: torch.Tensor) -> None:
        """The epoch's training batch losses ``(batches,)``, handed over once (no per-batch sync)."""
        self._bad_loss = self._bad_loss or not bool(torch.isfinite(batch_losses).all())

    def _grads_finite(self, model: torch.nn.Module) -> bool:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return all(bool(torch.isfinite(g).all()) for g in grads)

    def check_epoch(self, train_metrics: dict, val_out: dict, model: torch.nn.Module) -> dict[str, str]:
        """``{check: message}`` for the checks that fired this epoch; resets the per-epoch signals."""
        fired: dict[str, str] = {}
        if self._bad_loss:
            fired["nonfinite_loss"] = "a training batch loss was NaN or inf"
        if not self._grads_finite(model):
            fired["nonfinite_grad"] = "gradients of the last batch contain NaN or inf"
        masked = [r for r in self.ranks if train_metrics.get(f"train/kept/{r}", 1) == 0]
        if masked:
            fired["rank_all_masked"] = f"every training label was masked at rank(s) {masked}"
        preds, targets = val_out["preds"], val_out["targets"]
        constant = [
            rank for r, rank in enumerate(self.ranks)
            if preds.shape[0] > 1 and preds[:, r].unique().numel() == 1 and targets[:, r].unique().numel() > 1
        ]
        if constant:
            fired["constant_predictions"] = f"validation predictions are one class for every input at rank(s) {constant}"
        if embeddings_collapsed(val_out["embeddings"]):
            fired["collapsed_embeddings"] = (
                "pooled embeddings are identical across inputs (an inverted padding mask? a dead backbone?)"
            )
        valid = val_out.get("valid")
        if valid is not None and (~valid.any(dim=1)).any():
            n = int((~valid.any(dim=1)).sum())
            fired["empty_sets"] = f"{n} samples have a valid mask that is all False (no real set element)"
        self._flags = {c: c in fired for c in CHECKS}
        self._bad_loss = False
        return fired

    def flags(self) -> dict[str, bool]:
        return dict(self._flags)

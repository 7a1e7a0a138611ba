"""Model health checks run every epoch: the failures that otherwise look like "accuracy is just low".

Checks (each a flag per epoch, with a message when it fires):
- ``nonfinite_loss``: a training batch loss was NaN/inf (the Trainer goes further and fails the run,
  see ``Trainer._check_finite_loss``; the flag serves loops that feed :meth:`HealthMonitor.record_losses`);
- ``nonfinite_grad``: a gradient was NaN/inf (checked on the epoch's last batch, to keep the hot
  path free of a pass over every parameter);
- ``rank_all_masked``: every training label of a rank was masked this epoch (that rank learned nothing);
- ``constant_predictions``: validation predictions at a rank are one class for every input
  while the targets have several;
- ``collapsed_embeddings``: pooled embeddings are (near) identical across inputs, the symptom of an
  inverted padding mask or a dead backbone;
- ``empty_sets``: set inputs whose ``valid`` mask is all False for real samples;
- ``zero_total_weight``: the loss weights leave nothing to learn from: every rank weight is 0, every
  training sample weight is 0, or every labelled training sample of a weighted rank has weight 0
  (a property of the data and config, so it fires every epoch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from workbench.names import KEPT, rank_key

CHECKS = ("nonfinite_loss", "nonfinite_grad", "rank_all_masked", "constant_predictions",
          "collapsed_embeddings", "empty_sets", "zero_total_weight")


class Advice(NamedTuple):
    """What a fired check means for the user, in words, and what to try."""

    title: str
    meaning: str
    suggestion: str


# One home for the human text of every check (the dashboard and the CLI show it); a new check adds
# its entry here. Keyed by the check name stored in the run's ``health`` JSON.
EXPLANATIONS: dict[str, Advice] = {
    "nonfinite_loss": Advice(
        "Loss is NaN or infinite",
        "A training batch loss was NaN or infinite, so the weights after it are not meaningful.",
        "lower TRAIN.LR; look for huge or missing feature values on the Data page."),
    "nonfinite_grad": Advice(
        "Gradients are NaN or infinite",
        "The last batch's gradients contain NaN or inf; the next optimizer step corrupts the weights.",
        "lower TRAIN.LR; look for extreme feature values on the Data page."),
    "rank_all_masked": Advice(
        "A rank learned nothing this epoch",
        "Every training label of the rank was left out of the loss this epoch (null masking), so its head "
        "got no training signal.",
        "expected in phase 1 for a rank whose labels are all null; otherwise raise "
        "SCHEDULE.NULL_MASKING.START_PROB or check the rank's null rate on the Data page."),
    "constant_predictions": Advice(
        "One class predicted for everything",
        "The model predicts the same class for every validation sample at the rank, usually the majority "
        "class of an imbalanced rank (ratdat's taxa rank is almost all Rodent), so rare classes are never predicted.",
        "LOSS.CLASS_WEIGHTS: balanced (weights rare classes up); or more epochs, a higher TRAIN.LR, or a "
        "larger LOSS.W for a coarse rank."),
    "collapsed_embeddings": Advice(
        "Embeddings collapsed",
        "The backbone gives (nearly) the same embedding for every input, so no head can tell inputs apart.",
        "for set inputs check the padding mask (True = real element); lower TRAIN.LR; check that the features "
        "are not constant."),
    "empty_sets": Advice(
        "Samples with no set element",
        "Some samples have an all-False valid mask: the model sees only padding for them.",
        "check DATA.GROUP_BY and the data's group ids; drop empty groups."),
    "zero_total_weight": Advice(
        "Nothing carries weight in the loss",
        "The loss weights are 0 wherever there are labels (all rank weights, all sample weights, or all "
        "weights of a rank's labelled samples), so that part of the model learns nothing and its accuracy "
        "is not a result.",
        "check the sample-weight column (DATA.SAMPLE_WEIGHT) and LOSS.RANK_WEIGHTS / LOSS.W."),
}


def explain(check: str, message: str = "") -> str:
    """One plain sentence for a fired check: what it means, the run's detail, what to try.

    An unknown check (a store written by another version) still shows its name and message.
    """
    advice = EXPLANATIONS.get(check)
    if advice is None:
        return f"{check}: {message}" if message else check
    head = f"{advice.title}: {message.rstrip('.')}." if message else f"{advice.title}."
    return f"{head} {advice.meaning} Try: {advice.suggestion}"


def embeddings_collapsed(z: torch.Tensor, rel_tol: float = 1e-4) -> bool:
    """``z (N, H)``: True when the spread across samples is negligible against the scale."""
    if z.shape[0] < 2:
        return False
    spread = z.std(dim=0).mean()
    scale = z.abs().mean().clamp_min(1e-12)
    return bool(spread <= rel_tol * scale) or bool(z.abs().max() == 0)


def zero_total_weight(
    targets: torch.Tensor, sample_weight: torch.Tensor | None, rank_weights: torch.Tensor, ranks
) -> dict[str, str]:
    """``{"zero_total_weight": message}`` when the training weights leave nothing to learn, else ``{}``.

    ``targets (N, R)`` and ``sample_weight (N,)`` (None = all 1) of the training set, ``rank_weights (R,)``.
    Fires when every rank weight is 0, every sample weight is 0, or, at a rank with a positive weight, every
    labelled sample has weight 0 (that rank's loss is 0 with zero gradient by the denominator rule).
    """
    if not bool((rank_weights != 0).any()):
        return {"zero_total_weight": f"every rank weight is 0 ({rank_weights.tolist()})"}
    if sample_weight is None:
        return {}
    if not bool((sample_weight != 0).any()):
        return {"zero_total_weight": f"every training sample weight is 0 ({len(sample_weight)} samples)"}
    labelled = targets != 0  # (N, R)
    dead = [rank for r, rank in enumerate(ranks)
            if rank_weights[r] != 0 and labelled[:, r].any() and not bool((sample_weight[labelled[:, r]] != 0).any())]
    if dead:
        return {"zero_total_weight": f"every labelled training sample has sample weight 0 at rank(s) {dead}"}
    return {}


class HealthMonitor:
    """Collects per-batch signals cheaply and evaluates the checks at the end of each epoch.

    ``standing``: ``{check: message}`` of checks decided once from the data and config (such as
    :func:`zero_total_weight`); they fire every epoch, like the others, so the stored health shows them.
    """

    def __init__(self, ranks, standing: dict[str, str] | None = None):
        self.ranks = tuple(ranks)
        self.standing = dict(standing or {})
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
        fired: dict[str, str] = dict(self.standing)
        if self._bad_loss:
            fired["nonfinite_loss"] = "a training batch loss was NaN or inf"
        if not self._grads_finite(model):
            fired["nonfinite_grad"] = "gradients of the last batch contain NaN or inf"
        masked = [r for r in self.ranks if train_metrics.get(rank_key("train", KEPT, r), 1) == 0]
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

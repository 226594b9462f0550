"""Feature alignment inside a training step: endless target batches and the losses
between source and target features (skada's deep losses: deep CORAL, DAN's MMD, and
DANN's adversarial domain classifier)."""

from __future__ import annotations

import math

import torch
from sklearn.exceptions import ConvergenceWarning
from skorch.utils import to_tensor
from torch import nn


class DomainAlignment:
    """What a training step needs to align source and target features: batches of
    target inputs, drawn without end from ``loader``, a ``loss(features_source,
    features_target, progress)`` and its ``weight``. ``progress`` (0 to 1 over ``total_steps``
    calls of ``next_batch``) drives the schedule of adversarial losses."""

    def __init__(self, loader, loss, weight, total_steps=1):
        self.loader, self.loss, self.weight = loader, loss, weight
        self.total_steps, self.steps = max(1, total_steps), 0
        self._batches = iter(())

    @property
    def progress(self) -> float:
        return min(1.0, self.steps / self.total_steps)

    def next_batch(self, device):
        self.steps += 1
        try:
            x = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            x = next(self._batches)
        return to_tensor(x, device=device)


class DomainClassifier(nn.Module):
    """DANN's domain classifier (Ganin et al., 2016) on pooled features, behind a
    gradient-reversal layer (skada's): one logit per image, source 0, target 1."""

    def __init__(self, n_features, hidden=100):
        from skada.deep.modules import GradientReversalLayer

        super().__init__()
        self.reverse = GradientReversalLayer.apply
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, features, reversal):
        return self.layers(self.reverse(features, reversal))[:, 0]


class FeatureLoss:
    """A distance between source and target features (deep CORAL, MMD): no schedule."""

    def __init__(self, distance):
        self.distance = distance

    def __call__(self, features_source, features_target, progress):
        return self.distance(features_source, features_target)


class AdversarialLoss:
    """DANN's loss: the domain classifier's cross-entropy on source and target features
    (skada's ``DANNLoss`` on logits), its gradient reversed into the backbone with the
    usual ramp ``2 / (1 + exp(-10 p)) - 1`` of training progress ``p``."""

    def __init__(self, domain_head):
        from skada.deep import DANNLoss

        self.domain_head = domain_head
        self.criterion = DANNLoss(domain_criterion=nn.BCEWithLogitsLoss())

    def __call__(self, features_source, features_target, progress):
        reversal = 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
        # One batch of both domains, as in DANN and skada: a BatchNorm in the domain
        # classifier that saw each domain alone would normalise away their difference.
        logits = self.domain_head(torch.cat([features_source, features_target]), reversal)
        n = len(features_source)
        return self.criterion(logits[:n], logits[n:])


def require_skada(method: str) -> None:
    """Raise an ImportError that says how to install skada, whose deep losses every
    alignment method uses, when it is missing."""
    try:
        import skada.deep.losses  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"domain_adaptation={method!r} uses the deep losses of skada: pip install "
            "'sktransfer[da]' (or pip install skada)."
        ) from exc


def skada_distance(method: str):
    """skada's deep loss for ``method``: deep CORAL or DAN's multi-kernel MMD."""
    require_skada(method)
    from skada.deep.losses import dan_loss, deepcoral_loss

    return {"coral": deepcoral_loss, "mmd": dan_loss}[method]


def adversary_diverged(history) -> ConvergenceWarning | None:
    """The warning to give when DANN's domain classifier ended far from chance.

    It should end near the loss ``2 log 2`` of a constant guess; far above it, the
    backbone won the game by flipping the domains rather than merging them (measured on
    ELPV: target ROC AUC fell to chance or below)."""
    loss, chance = history[-1, "domain_loss"], 2 * math.log(2)
    if loss <= 1.5 * chance:
        return None
    return ConvergenceWarning(
        f"domain_adaptation='dann' diverged: in the last epoch the domain "
        f"classifier's loss was {loss:.2f}, far above {chance:.2f} (a constant "
        "guess), so the backbone flipped the domains instead of merging them, which "
        "usually ruins the target predictions. Check them before use, or prefer "
        "domain_adaptation='adabn' or 'coral' (the guide's domain adaptation page)."
    )

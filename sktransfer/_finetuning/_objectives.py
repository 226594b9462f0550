"""Objectives: one object per target kind, owning its criterion, its accuracy, the
dtype of its targets and what it can be combined with (modelled on timm's ``task/``
classes).

The target code (``sktransfer._targets``) reads ``y`` and chooses the objective;
the regressor's ``loss`` string becomes one in ``REGRESSION_LOSSES``. Every later
decision (which loss, whether to record accuracy, how to mix) asks the object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class Objective(ABC):
    """What a fine-tune minimises for one kind of target."""

    target_dtype: torch.dtype = torch.float32
    multilabel: bool = False  # several 0/1 labels per image (how timm's Mixup mixes them)
    label_smoothing: float = 0.0  # of the targets, by the loss or by timm's Mixup
    # ``entropy(logits)``: each image's entropy of its predicted distribution (what
    # test-time adaptation minimises); None for targets without one (real values).
    entropy: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Whether the loss is smooth and convex in the weights of a linear head, so that a
    # head stage on fixed pooled features is solved to its optimum (``_head``)
    # rather than stepped by epochs.
    solvable: bool = False

    @abstractmethod
    def criterion(self, mixing: bool) -> nn.Module:
        """The loss module, one loss per image (``reduction="none"``); ``mixing``: the
        targets arrive mixed (and smoothed) by timm's Mixup."""

    def hits(self) -> Callable | None:
        """Scores each image's prediction for the accuracy columns of ``history_``
        (``hits(y_pred, y)``: 1 per right image); None records no accuracy."""
        return None

    def strata(self, y: torch.Tensor) -> torch.Tensor | None:
        """What to stratify the folds of a head solve by (None: plain folds)."""
        return None

    def check(self, *, mixing: bool = False, class_weighted: bool = False) -> None:  # noqa: B027
        """Raise if this target kind cannot train with mixup/cutmix or class weights
        (every combination is fine unless a target kind says otherwise)."""


@dataclass(frozen=True)
class CrossEntropy(Objective):
    """Class labels: one softmax over the classes."""

    label_smoothing: float = 0.0
    class_weight: tuple | None = None  # one weight per class, from the training labels

    target_dtype = torch.long
    solvable = True

    def criterion(self, mixing):
        weight = self.class_weight
        return nn.CrossEntropyLoss(
            weight=None if weight is None else torch.tensor(weight, dtype=torch.float32),
            label_smoothing=0.0 if mixing else self.label_smoothing,  # Mixup smooths
            reduction="none",
        )

    def hits(self):
        return label_hits

    def strata(self, y):
        return y

    def entropy(self, logits):
        return softmax_entropy(logits)


@dataclass(frozen=True)
class Multilabel(Objective):
    """A 0/1 indicator matrix: one sigmoid per label (``label_smoothing`` applies only
    where timm's Mixup mixes the targets)."""

    label_smoothing: float = 0.0

    multilabel = True
    solvable = True

    def criterion(self, mixing):
        return nn.BCEWithLogitsLoss(reduction="none")

    def hits(self):
        return multilabel_hits

    def entropy(self, logits):
        p, log_sigmoid = torch.sigmoid(logits), nn.functional.logsigmoid
        return -(p * log_sigmoid(logits) + (1 - p) * log_sigmoid(-logits)).sum(dim=1)

    def check(self, *, mixing=False, class_weighted=False):
        if class_weighted:
            raise ValueError("class_weight is not supported for multilabel targets.")


@dataclass(frozen=True)
class MultiTask(Objective):
    """Several label columns: one block of logits (one linear head) per task."""

    task_sizes: tuple
    task_weights: tuple
    label_smoothing: float = 0.0

    target_dtype = torch.long
    solvable = True

    def criterion(self, mixing):
        return MultiTaskCrossEntropy(self.task_sizes, self.task_weights, self.label_smoothing)

    def hits(self):
        return TaskHits(self.task_sizes)

    def entropy(self, logits):
        blocks = torch.split(logits, self.task_sizes, dim=1)
        return sum(softmax_entropy(block) for block in blocks)

    def check(self, *, mixing=False, class_weighted=False):
        if mixing or class_weighted:
            raise ValueError(
                "Several label columns (multi-task) support neither class_weight nor "
                "mixup/cutmix (they mix or weigh one label per image); set "
                "class_weight=None, mixup=0 and cutmix=0, or fit one column at a time."
            )


# The regressor's ``loss`` parameter: each name and its criterion.
REGRESSION_LOSSES = {
    "squared_error": lambda: nn.MSELoss(reduction="none"),
    "huber": lambda: nn.HuberLoss(reduction="none", delta=1.0),
}
# Those smooth enough for L-BFGS (Huber's loss is once differentiable: enough).
SMOOTH_REGRESSION_LOSSES = frozenset({"squared_error", "huber"})


@dataclass(frozen=True)
class StandardisedRegression(Objective):
    """Real targets, standardised per column inside ``fit``."""

    loss: str = "squared_error"  # a key of REGRESSION_LOSSES

    @property
    def solvable(self):
        return self.loss in SMOOTH_REGRESSION_LOSSES

    def criterion(self, mixing):
        return REGRESSION_LOSSES[self.loss]()


class MultiTaskCrossEntropy(nn.Module):
    """The loss of several label columns on one backbone: the outputs hold one block of
    logits per task (one linear head each), and each image's loss is the weighted sum
    over tasks of its cross-entropy (``reduction="none"``: one loss per image)."""

    def __init__(self, task_sizes, task_weights, label_smoothing=0.0):
        super().__init__()
        self.task_sizes = tuple(task_sizes)
        self.task_weights = tuple(task_weights)
        self.label_smoothing = label_smoothing

    def forward(self, logits, y):
        blocks = torch.split(logits, self.task_sizes, dim=1)
        losses = [
            weight
            * nn.functional.cross_entropy(
                block, y[:, t], reduction="none", label_smoothing=self.label_smoothing
            )
            for t, (block, weight) in enumerate(zip(blocks, self.task_weights, strict=True))
        ]
        return torch.stack(losses, dim=1).sum(dim=1)


def mean_loss(losses: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    """The mean over images of a criterion's losses (one per image, or one per label of
    each image: averaged first), each weighted by its ``sample_weight`` (None: 1)."""
    if losses.ndim > 1:
        losses = losses.mean(dim=tuple(range(1, losses.ndim)))
    if sample_weight is not None:
        losses = losses * sample_weight.to(losses.dtype)
    return losses.mean()


def softmax_entropy(logits):
    """Per image: the entropy of the softmax of its logits."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def label_hits(y_pred, y):
    """Per image: 1 if the top class is the label."""
    return (y_pred.argmax(dim=1) == y).float()


def multilabel_hits(y_pred, y):
    """Per image: the fraction of its labels predicted right (logit > 0)."""
    return ((y_pred > 0).float() == y).float().mean(dim=1)


class TaskHits:
    """Per image: the fraction of its tasks whose top class is the label."""

    def __init__(self, task_sizes):
        self.task_sizes = tuple(task_sizes)

    def __call__(self, y_pred, y):
        blocks = torch.split(y_pred, self.task_sizes, dim=1)
        hits = [block.argmax(dim=1) == y[:, t] for t, block in enumerate(blocks)]
        return torch.stack(hits, dim=1).float().mean(dim=1)

"""The plan of a fine-tune: plain values the estimator resolves and the loop reads.

A ``TrainingPlan`` is composed of small typed parts, each owned by one concern:
the ``Schedule`` (stages, batches, optimizer), the ``Regularisation``, the
``Runtime`` (device, precision, workers, what is shown) and the ``Caching`` of
frozen rows; the objective (``_objectives``) and the adaptation strategy
(``_adaptation``) are objects that answer for themselves. Nothing here reads an
estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import _backbone
from .._images import ImageSource
from ._adaptation import Adaptation
from ._objectives import Objective


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: its name, (parameter names, lr) groups and epochs."""

    name: str
    lr_groups: tuple
    epochs: int

    @property
    def trainable(self) -> set[str]:
        return {n for names, _ in self.lr_groups for n in names}

    def head_only(self, backbone: nn.Module) -> bool:
        """Whether only the classifier trains in this stage."""
        return self.trainable == set(_backbone.classifier_names(backbone))

    def frozen(self, backbone: nn.Module) -> set[str]:
        return {n for n, _ in backbone.named_parameters()} - self.trainable


@dataclass(frozen=True)
class Schedule:
    """The stages and how each steps: batch size, optimizer, early stopping."""

    stages: tuple[Stage, ...]
    batch_size: int
    optimizer: str
    weight_decay: float
    early_stopping: int | None = None
    converge_head: bool = False  # solve the head stage before a fine-tune too (LP-FT)

    @property
    def training(self) -> tuple[Stage, ...]:
        """The stages that train (at least one epoch)."""
        return tuple(s for s in self.stages if s.epochs > 0)


@dataclass(frozen=True)
class Regularisation:
    """timm's regularisers and the BatchNorm policy."""

    augment: object = None  # None, a preset name of _backbone.AUGMENT_POLICIES or a callable
    freeze_batchnorm: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float | None = None

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


@dataclass(frozen=True)
class Runtime:
    """Where and how the work runs, and what it shows."""

    device: torch.device
    precision: str = "float32"
    num_workers: int = 0
    verbose: bool = False
    callbacks: tuple = ()


@dataclass(frozen=True)
class Caching:
    """Frozen rows: the cache folder (``memory``), what names the starting weights in it
    (``identity``: empty for no shared rows) and the memory budget of one fit's rows."""

    memory: object = None
    identity: dict | None = None
    activation_budget: int = 4 * 2**30


@dataclass(frozen=True)
class TrainingPlan:
    """How to train: plain values and small objects, resolved by the estimator."""

    schedule: Schedule
    objective: Objective
    runtime: Runtime
    regularisation: Regularisation = Regularisation()
    caching: Caching = Caching()
    adaptation: Adaptation | None = None


@dataclass(frozen=True)
class TrainingData:
    """The images, encoded targets, optional sample weights and the split."""

    source: ImageSource
    y: np.ndarray
    train_idx: np.ndarray
    valid_idx: np.ndarray
    cfg: dict
    n_outputs: int
    sample_weight: np.ndarray | None = None
    target: ImageSource | None = None  # unlabelled target images (domain adaptation)

    @property
    def positions(self) -> np.ndarray:
        """The images used in training order: training rows, then validation rows."""
        return np.concatenate([self.train_idx, self.valid_idx])


@dataclass(frozen=True)
class TrainingResult:
    """What a fine-tune returns: the trained backbone (in eval mode), one record per
    epoch (one for a solved head stage), whether frozen rows were computed once and
    reused, and the warnings for the caller of ``fit`` (a diverged adversary, a head
    solve that did not converge)."""

    backbone: nn.Module
    history: list
    cached: bool
    warnings: tuple = ()

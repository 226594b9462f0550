"""Domain adaptation strategies: one small object per method (modelled on skada's
``BaseDALoss``), each with its checks, its per-stage extras and its after-training step.

``adaptation_for`` is the one place where ``domain_adaptation``'s string becomes an
object; the training loop asks the object, never the string. A new method is a class
here and a line in ``ADAPTATIONS``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from skorch.callbacks import PassthroughScoring
from torch import nn

from .. import _backbone
from .._device import autocast
from ._alignment import (
    AdversarialLoss,
    DomainAlignment,
    DomainClassifier,
    FeatureLoss,
    adversary_diverged,
    require_skada,
    skada_distance,
)
from ._batchnorm import adapt_batchnorm, batchnorm_layers, input_moments, standardising
from ._datasets import unlabelled_images
from ._net import StageExtras


class Adaptation:
    """A method of adapting to unlabelled target images. The base does nothing: each
    hook is a no-op that a method overrides where it acts."""

    name = ""
    aligns = False  # adds a loss on target batches to the training steps
    adapts_batchnorm = False  # changes the BatchNorm layers, frozen ones included

    def check(self, plan, backbone: nn.Module, data) -> None:
        """Raise, before training, if this method cannot run on this model and data."""

    def stage_extras(self, backbone, stage, target_inputs, steps, batch_size) -> StageExtras:
        raise TypeError(f"domain_adaptation={self.name!r} adds nothing to training steps.")

    def after_stage(self, history) -> Warning | None:
        """A warning about the stage that just ended (``history``: its skorch history)."""
        return None

    def after_training(self, backbone, data, plan, transform) -> list[dict]:
        """Adapt the trained ``backbone`` in place; return records for ``history_``."""
        return []


def _batches(plan) -> dict:
    """The batch options of a pass over images (``run_batches``), from ``plan``."""
    runtime = plan.runtime
    return dict(
        batch_size=plan.schedule.batch_size,
        device=runtime.device,
        num_workers=runtime.num_workers,
    )


def _require_batchnorm(name: str, backbone: nn.Module) -> None:
    if not batchnorm_layers(backbone):
        raise ValueError(
            f"domain_adaptation={name!r} adapts BatchNorm layers to the target images, "
            "and this model has no BatchNorm layer (vision transformers use LayerNorm). "
            "Choose a convolutional model, or domain_adaptation=None."
        )


class AdaBN(Adaptation):
    """After training, BatchNorm statistics that normalise target activations as the
    source's were (``_batchnorm.adapt_batchnorm``)."""

    name = "adabn"
    adapts_batchnorm = True

    def check(self, plan, backbone, data):
        _require_batchnorm(self.name, backbone)

    def after_training(self, backbone, data, plan, transform):
        adapt_batchnorm(backbone, data.source, data.target, transform, **_batches(plan))
        return []


@dataclass(frozen=True)
class Tent(Adaptation):
    """TENT (Wang et al., 2021): after training, minimise the entropy of the predictions
    on the target images, updating only the BatchNorm affine parameters while every
    BatchNorm layer normalises each target batch by its own statistics (moved, as in
    AdaBN, to the moments the source's activations had, which is what a fine-tune with
    frozen statistics trained under); then AdaBN's statistics are kept for prediction.
    Adam at ``lr`` for ``epochs`` passes: the paper's online setting (one pass, Adam at
    1e-3 as for CIFAR-10-C) by default."""

    epochs: int = 1
    lr: float = 1e-3

    name = "tent"
    adapts_batchnorm = True

    def check(self, plan, backbone, data):
        _require_batchnorm(self.name, backbone)
        if plan.objective.entropy is None:
            raise ValueError(
                "domain_adaptation='tent' minimises the entropy of predicted classes, and "
                "real-valued targets have none. Use domain_adaptation='adabn'."
            )

    def after_training(self, backbone, data, plan, transform):
        run = _batches(plan)
        layers = batchnorm_layers(backbone)
        source = input_moments(backbone, layers, data.source, transform, run)
        affine = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
        trainable = {id(p) for p in affine}
        flags = [(p, p.requires_grad) for p in backbone.parameters()]
        for p, _ in flags:
            p.requires_grad_(id(p) in trainable)
        try:
            with standardising(layers, source):  # each target batch normalised by its own
                records = self._minimise_entropy(backbone, affine, data.target, plan, transform)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
        adapt_batchnorm(backbone, data.source, data.target, transform, **run)
        return records

    def _minimise_entropy(self, backbone, affine, target, plan, transform):
        runtime, batch_size = plan.runtime, plan.schedule.batch_size
        loader = torch.utils.data.DataLoader(
            unlabelled_images(target, transform),
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(target) % batch_size == 1,  # a batch of one has no statistics
            num_workers=runtime.num_workers,
        )
        optimizer = torch.optim.Adam(affine, lr=self.lr)
        channels_last = _backbone.prefers_channels_last(backbone)
        backbone.eval()  # dropout off; the hooks give BatchNorm its batch statistics
        records = []
        for _ in range(self.epochs):
            start, total, seen = time.perf_counter(), 0.0, 0
            for x in loader:
                x = x.to(runtime.device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(runtime.device, runtime.precision):
                    logits = backbone(x)
                entropy = plan.objective.entropy(logits.float()).mean()
                optimizer.zero_grad()
                entropy.backward()
                optimizer.step()
                total, seen = total + entropy.item() * len(x), seen + len(x)
            entropy = total / max(seen, 1)
            records.append({"stage": "tent", "target_entropy": entropy, "dur": _since(start)})
        return records


def _since(start: float) -> float:
    return time.perf_counter() - start


@dataclass(frozen=True)
class _Aligning(Adaptation):
    """A loss between the pooled features of source and target batches in every step
    of the stages that train backbone layers, weighted by ``weight``."""

    weight: float = 1.0

    aligns = True

    def check(self, plan, backbone, data):
        require_skada(self.name)
        last = plan.schedule.training[-1:]
        if not last or last[0].head_only(backbone):
            raise ValueError(
                f"domain_adaptation={self.name!r} aligns the features of trainable backbone "
                "layers, and only the head trains (freeze_depth='all', or max_epochs=0). "
                "Lower freeze_depth, or use domain_adaptation='adabn'."
            )
        if len(data.target) < 2:
            raise ValueError(
                f"domain_adaptation={self.name!r} compares feature statistics of target "
                f"batches and needs at least 2 target images; got {len(data.target)}."
            )

    def stage_extras(self, backbone, stage, target_inputs, steps, batch_size):
        loader = torch.utils.data.DataLoader(
            target_inputs,
            batch_size=min(batch_size, len(target_inputs)),
            shuffle=True,
            drop_last=True,
        )
        head = self._domain_head(backbone)
        loss = AdversarialLoss(head) if head is not None else FeatureLoss(self._distance())
        scoring = ("domain_loss", PassthroughScoring("domain_loss", on_train=True))
        alignment = DomainAlignment(loader, loss, self.weight, steps)
        return StageExtras((scoring,), alignment, head)

    def _domain_head(self, backbone):
        return None

    def _distance(self):
        return skada_distance(self.name)


@dataclass(frozen=True)
class FeatureAlignment(_Aligning):
    """Deep CORAL (Sun & Saenko 2016) or DAN's multi-kernel MMD (Long et al. 2015)."""

    distance: str = "coral"  # "coral" or "mmd"

    @property
    def name(self):
        return self.distance

    def check(self, plan, backbone, data):
        if plan.regularisation.mixing:
            raise ValueError(
                f"domain_adaptation={self.name!r} cannot be combined with mixup or cutmix "
                "(the alignment compares unmixed features); set mixup=0 and cutmix=0, or "
                "domain_adaptation='adabn'."
            )
        super().check(plan, backbone, data)


@dataclass(frozen=True)
class Adversarial(_Aligning):
    """DANN (Ganin et al. 2016): a domain classifier trained against the backbone through
    a gradient-reversal layer."""

    name = "dann"

    def _domain_head(self, backbone):
        return DomainClassifier(_backbone.pooled_width(backbone))

    def after_stage(self, history):
        return adversary_diverged(history)


# ``domain_adaptation``'s values, each with the strategy it becomes (given
# ``adaptation_weight``, which only the aligning methods use).
ADAPTATIONS = {
    "adabn": lambda weight: AdaBN(),
    "coral": lambda weight: FeatureAlignment(weight, distance="coral"),
    "mmd": lambda weight: FeatureAlignment(weight, distance="mmd"),
    "dann": lambda weight: Adversarial(weight),
    "tent": lambda weight: Tent(),
}


def adaptation_for(name: str | None, weight: float = 1.0) -> Adaptation | None:
    """The strategy of ``domain_adaptation=name`` (None: no adaptation)."""
    return None if name is None else ADAPTATIONS[name](weight)

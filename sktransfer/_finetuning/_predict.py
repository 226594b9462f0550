"""Prediction of a fitted fine-tuner: the network's outputs for images, averaged over
test-time views, or computed from the cached rows of its frozen layers."""

from __future__ import annotations

import numpy as np
import torch

from .. import _backbone
from .._inference import array_batches, frozen_bottom, run_batches, run_forward
from .._rows import cached_rows, frozen_namespace


def _hflip(x):
    return torch.flip(x, dims=(-1,))


def _vflip(x):
    return torch.flip(x, dims=(-2,))


def _hvflip(x):
    return torch.flip(x, dims=(-2, -1))


def _identity(x):
    return x


# Test-time augmentation: the views of each image whose predictions are averaged.
TTA_VIEWS = {
    None: (_identity,),
    "hflip": (_identity, _hflip),
    "flips": (_identity, _hflip, _vflip, _hvflip),
}


class ViewAverage(torch.nn.Module):
    """``activation(backbone(view(x)))`` averaged over ``views``: a fine-tuner's
    prediction as one module (what prediction runs and what ONNX files hold)."""

    def __init__(self, backbone, views, activation):
        super().__init__()
        self.backbone, self.views, self.activation = backbone, tuple(views), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.activation(self.backbone(view(x)).float()) for view in self.views]
        return sum(outputs) / len(outputs)


def outputs_of_images(network, source, cfg, *, batch_size, device, precision, **run):
    """``network`` (e.g. a ``ViewAverage``) on every image of ``source``."""
    return run_batches(
        network,
        source,
        _backbone.eval_transform(cfg),
        batch_size=batch_size,
        device=device,
        precision=precision,
        channels_last=_backbone.prefers_channels_last(network),
        desc="predicting",
        **run,
    )


def outputs_from_frozen_rows(
    backbone, source, activation, *, frozen, head_only, cfg, caching, batch_size, device,
    precision, num_workers, verbose=False,
):  # fmt: skip
    """``activation`` of the outputs computed from the rows of the frozen layers (the
    parameter names ``frozen``), looked up in the cache of ``caching`` (they never
    changed), so a search scores each image's frozen bottom once; only the top runs."""
    split = _backbone.split_forward(backbone, frozen, cfg["input_size"], head_only=head_only)
    positions = np.arange(len(source))
    compute = frozen_bottom(
        split,
        source,
        positions,
        _backbone.eval_transform(cfg),
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        verbose=verbose,
        desc="predicting: decode, frozen layers",
    )
    names = frozen_namespace(caching.identity, cfg, split.point, device)
    rows = cached_rows(names, source, positions, compute, memory=caching.memory)
    return run_forward(
        lambda a: activation(split.top(a).float()),
        array_batches(rows, batch_size),
        len(rows),
        device=device,
        precision=precision,
        channels_last=_backbone.prefers_channels_last(backbone),
    )

"""What each stage trains on: frozen rows computed once (and cached with ``memory``),
or images decoded and augmented on the fly; targets and weights in training order."""

from __future__ import annotations

import numpy as np
import torch

from .. import _backbone
from .._inference import frozen_bottom, pooled_of_rows
from .._rows import BudgetAllocator, cached_rows, frozen_namespace
from ._datasets import (
    ArrayDataset,
    ImageDataset,
    InputsOnly,
    training_transform,
    unlabelled_images,
)


class StageInputs:
    """The datasets of each stage of ``plan`` on ``data``.

    Without augmentation, the images are decoded and the frozen bottom of the deepest
    stage computed once (``cached``); the head stage's pooled features are derived
    from those rows, not from the images. ``aligning``: target images are needed too.
    ``close()`` deletes rows that spilled to disk.
    """

    def __init__(self, plan, backbone, data, *, aligning: bool = False):
        self.plan, self.backbone, self.data = plan, backbone, data
        self.aligning = aligning
        self.eval_tf = _backbone.eval_transform(data.cfg)
        caching = plan.caching
        self._allocate = BudgetAllocator.beside(caching.memory, caching.activation_budget)
        self.cached = plan.regularisation.augment is None and bool(plan.schedule.training)
        self._arrays = self._frozen_arrays() if self.cached else {}

    def close(self) -> None:
        self._allocate.close()

    def datasets(self, stage):
        """``(split, train, valid)``: the cut of cached rows (None for images) and the
        training and validation datasets (None without a validation set)."""
        if not self.cached:
            return (None, *self._image_datasets())
        split, rows = self._arrays["pooled" if stage.head_only(self.backbone) else "bottom"]
        return (split, *self._array_datasets(rows))

    def target(self) -> torch.utils.data.Dataset:
        """The unlabelled target images as inputs: cached frozen rows, or images through
        the training transform (augmentation included)."""
        if self.cached:
            return self._arrays["target"]
        return unlabelled_images(self.data.target, self._training_transform())

    # ------------------------------------------------------------------ frozen rows

    def _frozen_arrays(self) -> dict:
        backbone, data, stages = self.backbone, self.data, self.plan.schedule.training
        last = stages[-1]
        head_only = last.head_only(backbone)
        split = _backbone.split_forward(
            backbone, last.frozen(backbone), data.cfg["input_size"], head_only=head_only
        )
        positions = data.positions
        backbone.eval()
        bottom = self._rows(split.point, data.source, positions, self._bottom(split, data.source))
        arrays = {"bottom": (split, bottom)}
        if self.aligning:
            arrays["target"] = self._target_rows(split)
        if head_only:
            arrays["pooled"] = arrays["bottom"]
        elif any(s.head_only(backbone) for s in stages):
            head = _backbone.split_forward(backbone, set(), None, head_only=True)
            runtime = self.plan.runtime
            pooled = pooled_of_rows(
                split, bottom, batch_size=self.plan.schedule.batch_size, device=runtime.device
            )
            arrays["pooled"] = (head, self._rows("pooled", data.source, positions, pooled))
        return arrays

    def _target_rows(self, split) -> torch.utils.data.Dataset:
        target = self.data.target
        positions = np.arange(len(target))
        compute = self._bottom(
            split, target, positions, desc="target images: decode, frozen layers"
        )
        rows = self._rows(split.point, target, positions, compute)
        return InputsOnly(ArrayDataset(rows, torch.zeros(len(rows))))

    def _bottom(self, split, source, positions=None, desc="decode, frozen layers"):
        """The frozen bottom's rows, computed once per fit; a bar shows the pass."""
        runtime = self.plan.runtime
        return frozen_bottom(
            split,
            source,
            self.data.positions if positions is None else positions,
            self.eval_tf,
            batch_size=self.plan.schedule.batch_size,
            device=runtime.device,
            num_workers=runtime.num_workers,
            verbose=runtime.verbose,
            desc=desc,
        )

    def _rows(self, point, source, positions, compute) -> np.ndarray:
        caching, device = self.plan.caching, self.plan.runtime.device
        names = None
        if caching.identity:
            names = frozen_namespace(caching.identity, self.data.cfg, point, device)
        return cached_rows(
            names, source, positions, compute, memory=caching.memory, allocate=self._allocate
        )

    # --------------------------------------------------------------------- datasets

    def _array_datasets(self, arrays: np.ndarray):
        n_train = len(self.data.train_idx)
        y, w = self._targets()
        train = ArrayDataset(arrays[:n_train], y[:n_train], _part(w, slice(0, n_train)))
        valid = None
        if len(self.data.valid_idx):
            valid = ArrayDataset(arrays[n_train:], y[n_train:], _part(w, slice(n_train, None)))
        return train, valid

    def _image_datasets(self):
        data = self.data
        y, w = self._targets()
        n_train = len(data.train_idx)
        train = ImageDataset(
            data.source.subset(data.train_idx),
            self._training_transform(),
            y[:n_train],
            _part(w, slice(0, n_train)),
        )
        valid = None
        if len(data.valid_idx):
            valid = ImageDataset(
                data.source.subset(data.valid_idx),
                self.eval_tf,
                y[n_train:],
                _part(w, slice(n_train, None)),
            )
        return train, valid

    def _training_transform(self):
        return training_transform(self.data.cfg, self.plan.regularisation.augment, self.eval_tf)

    def _targets(self):
        """Targets and sample weights in the order train rows, then validation rows."""
        data = self.data
        order = data.positions
        y = torch.as_tensor(data.y[order], dtype=self.plan.objective.target_dtype)
        w = None
        if data.sample_weight is not None:
            w = torch.as_tensor(data.sample_weight[order], dtype=torch.float32)
        return y, w


def _part(w, rows):
    return None if w is None else w[rows]

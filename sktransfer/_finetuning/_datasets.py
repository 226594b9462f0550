"""Datasets of a fine-tune: cached rows or decoded images, with targets and weights,
and the preprocessing of training images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .. import _backbone
from .._images import ImageSource


def _item(x, y, w, i):
    if w is None:
        return x, y[i]
    return {"x": x, "sample_weight": w[i]}, y[i]


class ArrayDataset(torch.utils.data.Dataset):
    """Rows of an array (in memory or memory-mapped) with their targets and weights."""

    def __init__(self, rows: np.ndarray, y, w=None):
        self.rows, self.y, self.w = rows, y, w

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return _item(torch.from_numpy(np.array(self.rows[i])), self.y, self.w, i)


class ImageDataset(torch.utils.data.Dataset):
    """Transformed images with their targets and weights, decoded on the fly."""

    def __init__(self, source: ImageSource, transform: Callable, y, w=None):
        self.source, self.transform, self.y, self.w = source, transform, y, w

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            x = self.transform(self.source.load(i))
        except NotAnImageError as exc:
            raise exc.for_image(self.source.describe(i)) from None
        return _item(x, self.y, self.w, i)


class InputsOnly(torch.utils.data.Dataset):
    """The inputs of a dataset of (input, target) pairs (unlabelled target images)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def unlabelled_images(source: ImageSource, transform: Callable) -> InputsOnly:
    """The images of ``source`` through ``transform``, as inputs without targets."""
    return InputsOnly(ImageDataset(source, transform, torch.zeros(len(source))))


def training_transform(cfg: dict, augment, preprocess: Callable) -> Callable:
    """The preprocessing of training images: ``preprocess`` (the model's), after the
    augmentation (None, a preset name of timm's policies or a PIL callable)."""
    if augment is None:
        return preprocess
    if isinstance(augment, str):
        return _backbone.train_transform(cfg, augment)
    return Compose(augment, preprocess)


class Compose:
    """A user's PIL augmentation followed by the model's preprocessing (picklable)."""

    def __init__(self, augment, preprocess):
        self.augment, self.preprocess = augment, preprocess

    def __call__(self, image):
        augmented = self.augment(image)
        if not isinstance(augmented, Image.Image):
            raise NotAnImageError(self.augment, augmented)
        return self.preprocess(augmented)


class NotAnImageError(TypeError):
    """The ``augment`` callable returned something else than a PIL image; the dataset,
    which knows which image it was, reports it (``for_image``)."""

    def __init__(self, augment, returned):
        super().__init__(augment, returned)
        self.augment, self.returned = augment, returned

    def for_image(self, name: str) -> TypeError:
        return TypeError(
            f"The augment callable {_name_of(self.augment)} returned a "
            f"{_name_of(type(self.returned))} for {name}: it must map a PIL image to a PIL "
            "image (the model's own resizing and normalisation follow it). Return "
            "PIL.Image.fromarray(array) for an array, or use PIL-based transforms (e.g. "
            "torchvision's RandomHorizontalFlip, without ToTensor)."
        )


def _name_of(obj) -> str:
    """``module.qualname`` of a function or class (the class of another callable)."""
    if not hasattr(obj, "__qualname__"):
        obj = type(obj)
    module = getattr(obj, "__module__", None)
    return obj.__qualname__ if module in (None, "builtins") else f"{module}.{obj.__qualname__}"

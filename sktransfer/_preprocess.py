"""A model's evaluation preprocessing in numpy and PIL: no torch, no timm.

``Preprocess(data_config)`` turns an RGB PIL image into the float32 array of shape
``(3, height, width)`` that timm's evaluation transform (``timm.data.create_transform(
**data_config, is_training=False)``) makes of it: the same resize (PIL's, with the same
sizes and resampling filter), the same centre crop or padding (torchvision's rounding),
the same scaling to [0, 1] and normalisation, in float32. The tests hold it to timm's
transform for every crop mode and interpolation over many image shapes. Serving without
torch preprocesses with it, and the class activation maps read their geometry off it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image

DEFAULT_CROP_PCT = 0.875  # timm's, where a data config gives none
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """timm's evaluation transform of one data config, as plain values.

    Parameters
    ----------
    input_size : tuple of int
        ``(channels, height, width)`` of the model's input.
    interpolation : str
        One of ``nearest``, ``bilinear``, ``bicubic``, ``box``, ``hamming``, ``lanczos``.
    crop_pct : float
        The fraction of the resized image that the crop keeps.
    crop_mode : str
        ``center`` (resize the shorter side, crop the middle), ``squash`` (resize each
        side, crop) or ``border`` (resize the longer side, pad with the mean colour).
    mean, std : tuple of float
        Per channel, in units of pixels scaled to [0, 1].
    """

    input_size: tuple
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple
    std: tuple
    accepts_grey: ClassVar[bool] = True  # mode L images too (see ``__call__``)

    @classmethod
    def of(cls, data_config: dict) -> Preprocess:
        """The preprocessing a data config (an estimator's ``data_config_``) states."""
        return cls(
            input_size=tuple(int(v) for v in data_config["input_size"]),
            interpolation=data_config.get("interpolation", "bilinear"),
            crop_pct=float(data_config.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode=data_config.get("crop_mode") or "center",
            mean=tuple(float(v) for v in data_config["mean"]),
            std=tuple(float(v) for v in data_config["std"]),
        )

    @property
    def crop(self) -> tuple[int, int]:
        """``(height, width)`` of the model's input."""
        return self.input_size[1], self.input_size[2]

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(width, height)`` that an image of ``size`` (width, height) is resized to,
        before the crop: torchvision's and timm's arithmetic, to the pixel."""
        width, height = size
        scale_h, scale_w = (math.floor(v / self.crop_pct) for v in self.crop)
        if self.crop_mode == "squash":
            return scale_w, scale_h
        if self.crop_mode == "center" and scale_h == scale_w:  # torchvision's Resize(int)
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        # timm's ResizeKeepRatio: the shorter side fits (center), or the longer (border)
        ratio_h, ratio_w = height / scale_h, width / scale_w
        longest = 1.0 if self.crop_mode == "border" else 0.0
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        return round(width * 1.0 / ratio), round(height * 1.0 / ratio)

    def crop_offsets(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(left, top)`` where the crop starts in the resized image of an image of
        ``size`` (width, height); negative where the crop pads it."""
        return self._offsets(self.resized_size(size))

    def _offsets(self, resized: tuple[int, int]) -> tuple[int, int]:
        crop_h, crop_w = self.crop
        return crop_offset(resized[0], crop_w), crop_offset(resized[1], crop_h)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The model's input for one RGB image (or greyscale, mode L, converted to RGB
        once resized: the same pixels for a third of the work): float32, ``(3, height,
        width)``."""
        resized = self.resized_size(image.size)
        if resized != image.size:
            image = image.resize(resized, _RESAMPLE[self.interpolation])
        if image.mode != "RGB":
            image = image.convert("RGB")
        left, top = self._offsets(resized)
        crop_h, crop_w = self.crop
        if (left, top) != (0, 0) or image.size != (crop_w, crop_h):
            canvas = Image.new("RGB", (crop_w, crop_h), self._fill())
            canvas.paste(image, (-left, -top))
            image = canvas
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def _fill(self) -> tuple[int, int, int]:
        """What padding adds: black, or in ``border`` mode the mean colour (timm's)."""
        if self.crop_mode == "border":
            return tuple(round(255 * v) for v in self.mean)
        return (0, 0, 0)


def crop_offset(resized: int, crop: int) -> int:
    """Where a centre crop (torchvision's and timm's rounding) starts; negative where
    the image is padded to the crop."""
    if resized >= crop:
        return int(round((resized - crop) / 2.0))
    return -((crop - resized) // 2)

"""Numpy arrays as images: where the channel axis is, and how pixels scale to [0, 255].

Layouts: a stack is ``(n, h, w)`` (greyscale), ``(n, h, w, c)`` or ``(n, c, h, w)`` with
``c`` in {1, 3, 4}; a 3-D stack that could be one image without its batch axis raises.
Pixel scaling, by dtype: uint16 arrays are 16-bit images in [0, 65535] (what 16-bit files
decode to); other integer arrays hold [0, 255]; float arrays within [-0.01, 1.01] are
[0, 1] images (resizing overshoot clipped), float arrays whose largest value is 2 or more
are [0, 255], and anything between raises. The rule applies to a whole array, never pixel
by pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CHANNELS = (1, 3, 4)
SIXTEEN_BIT_MAX = 65535
_OVERSHOOT = 0.01  # tolerated around [0, 1] for float images (resizing overshoots)
_AS_UINT16 = (
    "; if they are 16-bit images, pass them as uint16 (X.astype(np.uint16)), which is "
    "read as [0, 65535]."
)


def _layout(shape) -> str | None:
    """The layout of one image's shape ("hw", "hwc" or "chw"), or None if none fits."""
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        if shape[-1] in CHANNELS:
            return "hwc"
        if shape[0] in CHANNELS:
            return "chw"
    return None


def stack_layout(X: np.ndarray) -> str:
    if X.ndim not in (3, 4):
        raise ValueError(
            f"Expected an array of images with 3 dimensions (n, h, w) or 4 dimensions "
            f"(n, h, w, c) / (n, c, h, w); got {X.ndim} dimensions, shape {X.shape}."
        )
    if X.ndim == 3:
        _check_unambiguous_stack(X.shape)
    layout = _layout(X.shape[1:])
    if layout is None:
        raise ValueError(
            f"Cannot find the channel axis of an array of shape {X.shape}: expected "
            "(n, h, w, c) or (n, c, h, w) with c in {1, 3, 4}."
        )
    return layout


def _check_unambiguous_stack(shape: tuple) -> None:
    """Raise if a 3-D array may be one image without its batch axis rather than a stack
    of greyscale images: its last axis is 1, 3 or 4 (h, w, c) or its first 3 or 4 (c, h, w)."""
    n, h, w = shape
    colour = {1: "greyscale", 3: "colour", 4: "RGBA"}
    readings = []
    if w in CHANNELS:
        readings.append(f"one {colour[w]} image (h, w, c) of {n}x{h}")
    if n in (3, 4):
        readings.append(f"one {colour[n]} image (c, h, w) of {h}x{w}")
    if not readings:
        return
    raise ValueError(
        f"Ambiguous array of shape {shape}: it reads as {' or '.join(readings)} without "
        f"its batch axis, or as {n} greyscale images of {h}x{w}. If it is one image, add "
        f"the batch axis: X[None] (or pass [X]). If it is {n} greyscale images, add a "
        "channel axis to make the stack unambiguous: X[..., None]."
    )


def image_layout(img: np.ndarray, i: int) -> str:
    layout = _layout(img.shape)
    if layout is None:
        raise ValueError(
            f"Image {i} has shape {img.shape}; expected (h, w), (h, w, c) or (c, h, w) "
            "with c in {1, 3, 4}."
        )
    return layout


def pixel_scale(X: np.ndarray, where: str) -> float:
    """The factor that maps ``X`` to [0, 255], or raise if its values do not fit the rule."""
    if X.dtype.kind == "b" or X.dtype.kind not in "uif":
        raise TypeError(
            f"{where} has dtype {X.dtype}; expected uint8, another integer type or float."
        )
    if X.dtype == np.uint8:
        return 1.0
    if is_sixteen_bit(X.dtype):
        return 255.0 / SIXTEEN_BIT_MAX  # by its type, as a 16-bit file: never by its values
    if X.dtype.kind == "f":
        finite = np.isfinite(X)
        if not finite.all():
            raise ValueError(
                f"{where} contains NaN or infinite pixel values (first at index "
                f"{_index(np.argwhere(~finite)[0])}). Replace or drop those images."
            )
    lo, hi = float(X.min()), float(X.max())
    if X.dtype.kind == "f" and lo >= -_OVERSHOOT:
        if hi <= 1.0 + _OVERSHOOT:
            return 255.0
        if hi < 2.0:
            raise ValueError(
                f"{where} has float pixel values in [{lo:g}, {hi:g}] (the largest at index "
                f"{_index(np.unravel_index(np.argmax(X), X.shape))}): too large for a [0, 1] "
                f"image, even allowing {_OVERSHOOT:g} of resizing overshoot, and too small "
                "for a plausible [0, 255] image. If the images are in [0, 1], clip them: "
                "np.clip(X, 0, 1); if they are in [0, 255], convert them to uint8."
            )
    if lo >= 0.0 and hi <= 255.0:
        return 1.0
    if X.dtype.kind == "f":
        raise ValueError(
            f"{where} has float pixel values in [{lo:g}, {hi:g}]; expected [0, 255] or, "
            "for floats, [0, 1]. Rescale the images first."
        )
    fits_16_bits = lo >= 0 and hi <= SIXTEEN_BIT_MAX
    raise ValueError(
        f"{where} has integer pixel values in [{lo:g}, {hi:g}]; expected [0, 255] for "
        f"{X.dtype} pixels. Rescale the images first{_AS_UINT16 if fits_16_bits else '.'}"
    )


def is_sixteen_bit(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is uint16, in either byte order (16-bit big-endian PIL images
    give ``>u2``)."""
    return dtype.kind == "u" and dtype.itemsize == 2


def _index(index) -> tuple:
    return tuple(int(k) for k in index)


def to_pil(img: np.ndarray, layout: str, scale: float) -> Image.Image:
    if layout == "chw":
        img = np.moveaxis(img, 0, -1)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img * scale), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    img = Image.fromarray(np.ascontiguousarray(img))
    return img if img.mode == "RGB" else img.convert("RGB")

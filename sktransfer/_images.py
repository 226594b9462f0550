"""Any accepted image input -> lazily decoded, transformed batches.

Accepted inputs (shared by every estimator of sktransfer):

- a numpy array of shape ``(n, h, w)`` (greyscale), ``(n, h, w, c)`` or ``(n, c, h, w)``
  with ``c`` in {1, 3, 4};
- a list or tuple of PIL images, or of numpy arrays ``(h, w)``, ``(h, w, c)``,
  ``(c, h, w)``, of any sizes;
- a list, tuple, numpy array or pandas Series of file paths (``str`` or ``Path``), or a
  one-column DataFrame of paths.

Pixel scaling: integer arrays hold values in [0, 255]. Float arrays whose values all lie
in [0, 1] are scaled by 255; float arrays with larger values are taken as already in
[0, 255]. The rule is applied to the whole array (or to each image of a list), so a dark
image never gets rescaled differently from a bright one. Anything else raises. Greyscale
and RGBA (alpha dropped) become RGB. Files are opened only when their batch is needed.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

_CHANNELS = (1, 3, 4)


class ImageSource:
    """A sequence of images: ``load(i)`` gives an RGB PIL image, ``key(i)`` a cache key."""

    kind = "images"

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def key(self, i: int) -> bytes:
        raise NotImplementedError

    def subset(self, indices) -> SubsetSource:
        return SubsetSource(self, np.asarray(indices, dtype=np.int64))


class SubsetSource(ImageSource):
    def __init__(self, parent: ImageSource, indices: np.ndarray):
        self.parent, self.indices = parent, indices

    def __len__(self):
        return len(self.indices)

    def load(self, i):
        return self.parent.load(int(self.indices[i]))

    def key(self, i):
        return self.parent.key(int(self.indices[i]))


class ArraySource(ImageSource):
    """A stacked numpy array of images, all of one size."""

    kind = "array"

    def __init__(self, images: np.ndarray):
        self.layout = _stack_layout(images)
        self.images = images
        self.scale = _pixel_scale(images, where="the input array")

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return _to_pil(self.images[i], self.layout, self.scale)

    def key(self, i):
        return _hash_array(self.images[i], f"{self.layout}|{self.scale}")


class ListSource(ImageSource):
    """A list of in-memory images (PIL images or numpy arrays) of any sizes."""

    def __init__(self, images: Sequence, kind: str):
        self.images = list(images)
        self.kind = kind
        if kind == "array":
            self.layouts, self.scales = [], []
            for i, img in enumerate(self.images):
                self.layouts.append(_image_layout(img, i))
                self.scales.append(_pixel_scale(img, where=f"image {i}"))

    def __len__(self):
        return len(self.images)

    def load(self, i):
        img = self.images[i]
        if self.kind == "array":
            return _to_pil(img, self.layouts[i], self.scales[i])
        return _pil_to_rgb(img, f"Image {i}")

    def key(self, i):
        img = self.images[i]
        if self.kind == "array":
            return _hash_array(img, f"{self.layouts[i]}|{self.scales[i]}")
        digest = hashlib.blake2b(img.tobytes(), digest_size=16)
        digest.update(f"{img.mode}|{img.size}".encode())
        return digest.digest()


class FileSource(ImageSource):
    """Image files, opened lazily. Keys are (absolute path, size, modification time)."""

    kind = "path"

    def __init__(self, paths: Sequence):
        self.paths = [os.fspath(p) for p in paths]
        self._keys = None

    def __len__(self):
        return len(self.paths)

    def load(self, i):
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img.load()
                # high bit depths are checked by the array rule below, outside this try
                decoded = img.copy() if img.mode in _HIGH_DEPTH_MODES else img.convert("RGB")
        except FileNotFoundError as exc:
            raise ValueError(f"Image {i} ({path!r}) does not exist.") from exc
        except UnidentifiedImageError as exc:
            raise ValueError(
                f"Image {i} ({path!r}) is not an image file that PIL can decode."
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"Image {i} ({path!r}) is truncated or corrupt: {exc}") from exc
        return _pil_to_rgb(decoded, f"Image {i} ({path!r})")

    def key(self, i):
        if self._keys is None:
            self._keys = self._stat_keys()
        return self._keys[i]

    def check_exist(self) -> None:
        self._keys = self._stat_keys()

    def _stat_keys(self) -> list[bytes]:
        keys = []
        for i, path in enumerate(self.paths):
            try:
                st = os.stat(path)
            except FileNotFoundError as exc:
                raise ValueError(f"Image {i} ({path!r}) does not exist.") from exc
            if not os.path.isfile(path):
                raise ValueError(f"Image {i} ({path!r}) is not a file.")
            keys.append(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
        return keys


# --------------------------------------------------------------------------- as_images


def as_images(X) -> ImageSource:
    """Validate ``X`` and wrap it in an :class:`ImageSource`.

    Nothing is decoded yet; files are only checked to exist.
    """
    if isinstance(X, ImageSource):
        return X
    X = _unwrap_pandas(X)
    if isinstance(X, np.ndarray) and X.dtype != object and X.dtype.kind not in "US":
        if X.size == 0 or len(X) == 0:
            raise ValueError("Expected at least one image, got an empty array.")
        return ArraySource(X)
    if isinstance(X, str | os.PathLike | Image.Image):
        raise TypeError(
            f"Expected a collection of images, got a single {type(X).__name__}. "
            "Wrap it in a list: [image]."
        )
    if isinstance(X, np.ndarray):
        if X.ndim != 1:
            raise ValueError(
                f"Expected a 1-D array of file paths, got an array of shape {X.shape}."
            )
        X = X.tolist()
    if not isinstance(X, list | tuple):
        raise TypeError(
            f"Unsupported input type {type(X).__name__}. Expected a numpy array of images "
            "(n, h, w[, c]) or (n, c, h, w), a list of PIL images or arrays, or a list, "
            "Series or one-column DataFrame of file paths."
        )
    if len(X) == 0:
        raise ValueError("Expected at least one image, got an empty list.")
    kinds = [_element_kind(x, i) for i, x in enumerate(X)]
    first = kinds[0]
    for i, kind in enumerate(kinds):
        if kind != first:
            raise TypeError(
                f"Mixed input types: element 0 is {_KIND_NAMES[first]} but element {i} is "
                f"{_KIND_NAMES[kind]}. Pass only file paths, only PIL images or only arrays."
            )
    if first == "path":
        source = FileSource(X)
        source.check_exist()  # every file is stat'ed now (its cache key), none is opened
        return source
    return ListSource(X, first)


_KIND_NAMES = {"path": "a file path", "pil": "a PIL image", "array": "a numpy array"}


def _element_kind(x, i: int) -> str:
    if isinstance(x, str | os.PathLike):
        return "path"
    if isinstance(x, Image.Image):
        return "pil"
    if isinstance(x, np.ndarray):
        return "array"
    raise TypeError(
        f"Element {i} has unsupported type {type(x).__name__}. Expected a file path "
        "(str or Path), a PIL image or a numpy array."
    )


def _unwrap_pandas(X):
    module = type(X).__module__
    if not module.startswith("pandas"):
        return X
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise ValueError(
                f"Expected a one-column DataFrame of file paths, got {X.shape[1]} columns "
                f"{list(X.columns)}. Select the column of paths first."
            )
        X = X.iloc[:, 0]
    return X.tolist()


def _layout(shape) -> str | None:
    """The layout of one image's shape ("hw", "hwc" or "chw"), or None if none fits."""
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        if shape[-1] in _CHANNELS:
            return "hwc"
        if shape[0] in _CHANNELS:
            return "chw"
    return None


def _stack_layout(X: np.ndarray) -> str:
    if X.ndim not in (3, 4):
        raise ValueError(
            f"Expected an array of images with 3 dimensions (n, h, w) or 4 dimensions "
            f"(n, h, w, c) / (n, c, h, w); got {X.ndim} dimensions, shape {X.shape}."
        )
    layout = _layout(X.shape[1:])
    if layout is None:
        raise ValueError(
            f"Cannot find the channel axis of an array of shape {X.shape}: expected "
            "(n, h, w, c) or (n, c, h, w) with c in {1, 3, 4}."
        )
    return layout


def _image_layout(img: np.ndarray, i: int) -> str:
    layout = _layout(img.shape)
    if layout is None:
        raise ValueError(
            f"Image {i} has shape {img.shape}; expected (h, w), (h, w, c) or (c, h, w) "
            "with c in {1, 3, 4}."
        )
    return layout


def _pixel_scale(X: np.ndarray, where: str) -> float:
    """The factor that maps ``X`` to [0, 255], or raise if its values do not fit the rule."""
    if X.dtype.kind == "b" or X.dtype.kind not in "uif":
        raise TypeError(
            f"{where} has dtype {X.dtype}; expected uint8, another integer type or float."
        )
    if X.dtype == np.uint8:
        return 1.0
    if X.dtype.kind == "f":
        finite = np.isfinite(X)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise ValueError(
                f"{where} contains NaN or infinite pixel values (first at index "
                f"{tuple(int(b) for b in bad)}). Replace or drop those images."
            )
    lo, hi = float(X.min()), float(X.max())
    if X.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return 255.0
    if lo >= 0.0 and hi <= 255.0:
        return 1.0
    kind = "float" if X.dtype.kind == "f" else "integer"
    raise ValueError(
        f"{where} has {kind} pixel values in [{lo:g}, {hi:g}]; expected [0, 255]"
        + (" or, for floats, [0, 1]" if kind == "float" else "")
        + ". Rescale the images first."
    )


def _to_pil(img: np.ndarray, layout: str, scale: float) -> Image.Image:
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


_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _pil_to_rgb(img: Image.Image, where: str) -> Image.Image:
    """RGB from any PIL mode. 16-bit, 32-bit and float images follow the array rule
    (PIL's own conversion would clip them to 255 silently)."""
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_DEPTH_MODES:
        pixels = np.asarray(img)
        return _to_pil(pixels, "hw", _pixel_scale(pixels, where=where))
    return img.convert("RGB")


def _hash_array(img: np.ndarray, tag: str) -> bytes:
    digest = hashlib.blake2b(np.ascontiguousarray(img).data, digest_size=16)
    digest.update(f"{img.dtype}|{img.shape}|{tag}".encode())
    return digest.digest()


# ------------------------------------------------------------------------------ batches


def iter_batches(
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(positions, batch)`` with ``batch`` a stacked tensor of transformed images.

    Only the batches in flight are ever decoded: one without workers, ``num_workers + 1``
    with them (each worker thread decodes a whole batch while the model runs on the
    previous one; PIL and torch release the GIL while they work).
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]

    def load(chunk):
        return torch.stack([transform(source.load(int(i))) for i in chunk])

    if num_workers == 0:
        for chunk in chunks:
            yield chunk, load(chunk)
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(load, chunk)))
            if len(pending) > num_workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()

"""Any accepted image input -> lazily decoded, transformed batches.

Accepted inputs (shared by every estimator of sktransfer):

- a numpy array of shape ``(n, h, w)`` (greyscale), ``(n, h, w, c)`` or ``(n, c, h, w)``
  with ``c`` in {1, 3, 4}. A 3-D array whose last axis is 1, 3 or 4, or whose first axis
  is 3 or 4, could be one image without its batch axis and raises: add the batch axis
  (``X[None]``) for one image, or a channel axis (``X[..., None]``) for a stack of
  greyscale images;
- a list or tuple of PIL images, or of numpy arrays ``(h, w)``, ``(h, w, c)``,
  ``(c, h, w)``, of any sizes;
- a list, tuple, numpy array or pandas Series of file paths (``str`` or ``Path``), or a
  one-column DataFrame of paths;
- a list or tuple of encoded image files held in memory: ``bytes``, ``bytearray`` or
  binary file objects (anything with ``.read()``: ``io.BytesIO``, a web framework's
  upload). A file object is read from where it stands and put back there when it can seek.

A list holds one kind of input only. Pixel scaling goes by type, never by the values of
one image: uint8 arrays hold [0, 255]; 16-bit images hold [0, 65535] and are scaled by
255 / 65535: uint16 arrays, PIL images of modes ``I;16*``, and files whose format stores
16 bits (a 16-bit PNG, TIFF or PGM, whatever PIL's mode for it); other integer arrays,
and PIL images of mode ``I`` that come from no 16-bit format, hold [0, 255] and raise
beyond (their bit depth is not stated: pass 16-bit ones as uint16). Float arrays (and
mode ``F`` images) whose values all lie in [-0.01, 1.01] are [0, 1] images (the overshoot
of resizing is clipped) and are scaled by 255; float arrays whose largest value is 2 or
more are taken as already in [0, 255]. A largest float value between 1.01 and 2 fits
neither and raises. The rule is applied to the whole array (or to each image of a list),
so a dark image never gets rescaled differently from a bright one. Anything else raises.
Greyscale, palette, RGBA (alpha dropped) and every other mode become RGB.

Files and encoded images are decoded only when their batch is needed. Cache keys: a hash
of the pixels for in-memory images (the decoded RGB pixels for PIL images), a hash of the
encoded bytes for ``bytes`` and file objects, and for files their absolute path, size and
modification time, or with ``as_images(X, key="content")`` a hash of their bytes (for
files rewritten in place that keep their size and modification time).
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import io
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._pixels import image_layout, is_sixteen_bit, pixel_scale, stack_layout, to_pil

_KEYS = ("stat", "content")
_READ_LOCK = threading.Lock()  # file objects are read (and sought back) one at a time
_CHUNK = 1 << 20


class UnreadableImageError(ValueError):
    """An image file that cannot be opened, read or decoded.

    A ``ValueError`` (as every bad input), which names the file by its number and path;
    a batch job can catch it to skip the file (``sktransfer embed --skip-bad-images``).

    Parameters
    ----------
    message : str
        What is wrong, naming the image.
    index : int
        The image's number in the input, as ``message`` gives it.
    path : str
        The file's path, as it was given.

    Examples
    --------
    >>> from sktransfer import PretrainedFeatureExtractor, UnreadableImageError
    >>> extractor = PretrainedFeatureExtractor(model="test_efficientnet", weights=None)
    >>> try:
    ...     extractor.fit().transform(["missing.png"])
    ... except UnreadableImageError as error:
    ...     print(error.index, error.path)
    0 missing.png
    """

    def __init__(self, message: str, index: int, path: str):
        super().__init__(message)
        self.index, self.path = index, path

    def __reduce__(self):  # pickles whole: Dask sends a worker's errors back
        return type(self), (str(self), self.index, self.path)


class ImageSource(ABC):
    """A sequence of images: ``load(i)`` gives an RGB PIL image, ``key(i)`` a cache key,
    ``describe(i)`` its name for messages."""

    kind = "images"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, i: int) -> Image.Image: ...

    def decoded(self, i: int) -> Image.Image:
        """Image ``i`` in mode RGB, or L where it decodes to greyscale: the caller
        converts it to RGB after resizing, which is three times cheaper (the pixels are
        the same: each channel is resized alike)."""
        return self.load(i)

    @abstractmethod
    def key(self, i: int) -> bytes: ...

    def describe(self, i: int) -> str:
        """``image 3``, with what else identifies it (a path), to go inside a sentence."""
        return f"image {i}"

    def _where(self, i: int) -> str:
        """``describe`` at the start of a sentence."""
        return _sentence(self.describe(i))

    def subset(self, indices) -> SubsetSource:
        return SubsetSource(self, np.asarray(indices, dtype=np.int64))


class SubsetSource(ImageSource):
    def __init__(self, parent: ImageSource, indices: np.ndarray):
        self.parent, self.indices = parent, indices

    def __len__(self):
        return len(self.indices)

    def load(self, i):
        return self.parent.load(int(self.indices[i]))

    def decoded(self, i):
        return self.parent.decoded(int(self.indices[i]))

    def key(self, i):
        return self.parent.key(int(self.indices[i]))

    def describe(self, i):
        return self.parent.describe(int(self.indices[i]))  # its index in the input


class ArraySource(ImageSource):
    """A stacked numpy array of images, all of one size."""

    kind = "array"

    def __init__(self, images: np.ndarray):
        self.layout = stack_layout(images)
        self.images = images
        self.scale = pixel_scale(images, where="the input array")

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return to_pil(self.images[i], self.layout, self.scale)

    def key(self, i):
        return _hash_array(self.images[i], f"{self.layout}|{self.scale}")


class ListSource(ImageSource):
    """A list of in-memory images (PIL images or numpy arrays) of any sizes.

    PIL images are keyed by their decoded RGB pixels, what is embedded: a palette image
    and its RGB conversion share a key, two palette images with other palettes do not.
    """

    def __init__(self, images: Sequence, kind: str):
        self.images = list(images)
        self.kind = kind
        if kind == "array":
            self.layouts, self.scales = [], []
            for i, img in enumerate(self.images):
                self.layouts.append(image_layout(img, i))
                self.scales.append(pixel_scale(img, where=self.describe(i)))

    def __len__(self):
        return len(self.images)

    def load(self, i):
        img = self.images[i]
        if self.kind == "array":
            return to_pil(img, self.layouts[i], self.scales[i])
        return _pil_to_rgb(img, self._where(i))

    def key(self, i):
        if self.kind == "array":
            return _hash_array(self.images[i], f"{self.layouts[i]}|{self.scales[i]}")
        rgb = self.load(i)
        digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
        digest.update(f"{rgb.size}".encode())
        return digest.digest()


class EncodedSource(ImageSource):
    """Encoded image files in memory (``bytes``, ``bytearray``) or binary file objects,
    decoded lazily. Keys hash the encoded bytes, so the same upload twice is one key."""

    def __init__(self, items: Sequence, kind: str):
        self.items, self.kind = list(items), kind
        self._unseekable = {}  # the bytes of file objects that cannot be read twice

    def __len__(self):
        return len(self.items)

    def load(self, i):
        return self._decode(i, grey=False)

    def decoded(self, i):
        return self._decode(i, grey=True)

    def _decode(self, i: int, grey: bool) -> Image.Image:
        data = self.encoded(i)
        where = _sentence(self.describe(i, data))
        if not data and self.kind == "file":
            raise ValueError(
                f"{where} is empty: nothing is left to read from its position. If it was "
                "read before (to check or store it), seek(0) it first."
            )
        return _decode(io.BytesIO(data), where, grey)

    def key(self, i):
        return _content_key([self.encoded(i)])

    def encoded(self, i: int) -> bytes:
        """The encoded bytes of image ``i``."""
        item = self.items[i]
        if self.kind == "bytes":
            return item
        if i in self._unseekable:
            return self._unseekable[i]
        data, seekable = _read_file_object(item, self._where(i))
        if not seekable:
            self._unseekable[i] = data
        return data

    def describe(self, i: int, data: bytes | None = None) -> str:
        """``image 3 (BytesIO 'upload.png', 120 bytes)``: type, name if any, size if read."""
        item = self.items[i]
        name = getattr(item, "name", None)
        about = [type(item).__name__ + (f" {name!r}" if isinstance(name, str) else "")]
        if data is not None:
            about.append(f"{len(data)} bytes")
        return f"image {i} ({', '.join(about)})"


class FileSource(ImageSource):
    """Image files, opened lazily. Keys are (absolute path, size, modification time), or
    with ``key="content"`` a hash of each file's bytes. ``numbers`` are the indices that
    messages give the files (their positions in a larger input), by default 0, 1, ..."""

    kind = "path"

    def __init__(self, paths: Sequence, key: str = "stat", numbers: Sequence | None = None):
        self.paths = [str(os.fspath(p)) for p in paths]  # numpy's str_ shows badly in messages
        self.keyed_by = key
        self.numbers = None if numbers is None else [int(n) for n in numbers]
        self._keys = None
        self._content_keys = {}

    def keyed(self, key: str) -> FileSource:
        """These files, keyed by ``key`` (``self`` if they already are)."""
        return self if key == self.keyed_by else FileSource(self.paths, key, self.numbers)

    def __len__(self):
        return len(self.paths)

    def load(self, i):
        return self._decode(i, grey=False)

    def decoded(self, i):
        return self._decode(i, grey=True)

    def _decode(self, i: int, grey: bool) -> Image.Image:
        with self._open(i) as f:
            try:
                return _decode(f, self._where(i), grey)
            except ValueError as exc:  # the same message, typed: this file is at fault
                raise self._unreadable(i, str(exc)) from exc

    def key(self, i):
        if self.keyed_by == "content":
            if i not in self._content_keys:
                self._content_keys[i] = self._hash_file(i)
            return self._content_keys[i]
        if self._keys is None:
            self._keys = self._stat_keys()
        return self._keys[i]

    def check_exist(self) -> None:
        self._keys = self._stat_keys()

    def describe(self, i):
        return f"image {self._number(i)} ({self.paths[i]!r})"

    def _number(self, i: int) -> int:
        return i if self.numbers is None else self.numbers[i]

    def _unreadable(self, i: int, message: str) -> UnreadableImageError:
        return UnreadableImageError(message, self._number(i), self.paths[i])

    def _open(self, i: int):
        try:
            return open(self.paths[i], "rb")
        except OSError as exc:
            raise self._unreadable(i, f"{self._where(i)} {_path_problem(exc)}") from exc

    def _hash_file(self, i: int) -> bytes:
        with self._open(i) as f:
            try:
                return _content_key(iter(lambda: f.read(_CHUNK), b""))
            except OSError as exc:
                raise self._unreadable(i, f"{self._where(i)} {_path_problem(exc)}") from exc

    def _stat_keys(self) -> list[bytes]:
        keys = []
        for i, path in enumerate(self.paths):
            try:
                st = os.stat(path)
            except OSError as exc:
                raise self._unreadable(i, f"{self._where(i)} {_path_problem(exc)}") from exc
            if not os.path.isfile(path):
                raise self._unreadable(i, f"{self._where(i)} is not a file.")
            keys.append(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
        return keys


# --------------------------------------------------------------------------- as_images


def as_images(X, key: str = "stat") -> ImageSource:
    """Validate ``X`` and wrap it in an ``ImageSource``.

    Nothing is decoded yet and no file object is read; files are only checked to exist
    (stat'ed).

    Parameters
    ----------
    X : images
        Any accepted input (see the module docstring).
    key : {"stat", "content"}, default="stat"
        How files are keyed in the embedding cache: by absolute path, size and
        modification time, or by a hash of their bytes (read in full, once per file, when
        the key is first needed). Other inputs are always keyed by content.
    """
    if key not in _KEYS:
        raise ValueError(f"key must be 'stat' or 'content', got {key!r}.")
    if isinstance(X, FileSource):
        return X.keyed(key)
    if isinstance(X, ImageSource):
        return X
    X = _unwrap_pandas(X)
    if isinstance(X, np.ndarray) and X.dtype != object and X.dtype.kind not in "US":
        if X.size == 0 or len(X) == 0:
            raise ValueError("Expected at least one image, got an empty array.")
        return ArraySource(X)
    check_not_single(X)
    if isinstance(X, np.ndarray):
        X = _array_of_paths(X)
    if not isinstance(X, list | tuple):
        raise TypeError(
            f"Unsupported input type {type(X).__name__}. Expected a numpy array of images "
            "(n, h, w[, c]) or (n, c, h, w), a list of PIL images or arrays, a list, "
            "Series or one-column DataFrame of file paths, or a list of encoded images "
            "(bytes or file objects)."
        )
    if len(X) == 0:
        raise ValueError("Expected at least one image, got an empty list.")
    kind = _list_kind(X)
    if kind == "path":
        source = FileSource(X, key=key)
        source.check_exist()  # every file is stat'ed now (its cache key), none is opened
        return source
    if kind in ("bytes", "file"):
        return EncodedSource(X, kind)
    return ListSource(X, kind)


def check_not_single(X) -> None:
    """Raise a TypeError if ``X`` is one image (a path, PIL image, encoded bytes or file
    object) rather than a collection of them: a string would be taken as its characters."""
    if isinstance(X, str | os.PathLike | Image.Image | bytes | bytearray) or _is_file(X):
        raise TypeError(
            f"Expected a collection of images, got a single {type(X).__name__}. "
            "Wrap it in a list: [image]."
        )


_KIND_NAMES = {
    "path": "a file path",
    "pil": "a PIL image",
    "array": "a numpy array",
    "bytes": "encoded image bytes",
    "file": "a file object",
}


def _list_kind(X: Sequence) -> str:
    """The one kind of every element of ``X``, or raise if they mix kinds."""
    kinds = [_element_kind(x, i) for i, x in enumerate(X)]
    for i, kind in enumerate(kinds):
        if kind != kinds[0]:
            raise TypeError(
                f"Mixed input types: element 0 is {_KIND_NAMES[kinds[0]]} but element {i} "
                f"is {_KIND_NAMES[kind]}. Pass images of one kind only: file paths, PIL "
                "images, arrays, encoded bytes or file objects."
            )
    return kinds[0]


def _element_kind(x, i: int) -> str:
    if isinstance(x, str | os.PathLike):
        return "path"
    if isinstance(x, Image.Image):
        return "pil"
    if isinstance(x, np.ndarray):
        return "array"
    if isinstance(x, bytes | bytearray):
        return "bytes"
    if _is_file(x):
        return "file"
    raise TypeError(
        f"Element {i} has unsupported type {type(x).__name__}. Expected a file path "
        "(str or Path), a PIL image, a numpy array, encoded image bytes (bytes, "
        "bytearray) or a binary file object (with a read() method)."
    )


def _is_file(x) -> bool:
    return callable(getattr(x, "read", None))


def _array_of_paths(X: np.ndarray) -> list:
    if X.dtype.kind == "S":
        raise TypeError(
            "Got a numpy array of bytes (dtype S): numpy drops their trailing zero bytes, "
            "which corrupts encoded images. Pass a list of bytes objects instead."
        )
    if X.ndim != 1:
        raise ValueError(f"Expected a 1-D array of file paths, got an array of shape {X.shape}.")
    return X.tolist()


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


# ------------------------------------------------------------------- decoding and keys


_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Formats that store at most 16 bits per sample: PIL opens some of their 16-bit greyscale
# files in mode I (32-bit) rather than I;16 (PGM, and PNG in older Pillow releases), yet
# they hold [0, 65535] all the same (PIL scales a PGM's maxval to 65535).
_SIXTEEN_BIT_FORMATS = ("PNG", "PPM")


def _pil_to_rgb(img: Image.Image, where: str) -> Image.Image:
    """RGB from any PIL mode. 16-bit, 32-bit and float images follow the array rule
    (PIL's own conversion would clip them to 255 silently)."""
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(_high_depth_pixels(img), img.mode, where)
    try:
        img.load()  # a lazily opened PIL image fails here, not inside the model's transform
        return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"{where} (a PIL image of mode {img.mode}) cannot be decoded to RGB: {exc}. Check the file "
            "it was opened from, or pass it converted: image.convert('RGB')."
        ) from exc


def _high_depth_pixels(img: Image.Image) -> np.ndarray:
    """The pixels of a 16-bit, 32-bit or float image: uint16 when its mode, or for mode
    ``I`` the format of the file it was read from, says 16 bits."""
    pixels = np.asarray(img)
    if img.mode == "I" and img.format in _SIXTEEN_BIT_FORMATS:
        return pixels.astype(np.uint16)  # [0, 65535], as the format says
    return pixels


def _high_depth_to_rgb(pixels: np.ndarray, mode: str, where: str) -> Image.Image:
    if not is_sixteen_bit(pixels.dtype) and pixels.dtype.kind in "iu":
        where = f"{where} (mode {mode}: 32-bit integers of no stated bit depth)"
    return to_pil(pixels, "hw", pixel_scale(pixels, where=where))


def _decode(fp, where: str, grey: bool = False) -> Image.Image:
    """The RGB image of an open binary file (with ``grey``, a greyscale one stays in
    mode L); every error names ``where``."""
    try:
        with Image.open(fp) as img:
            img.load()
            mode = img.mode
            # high bit depths are read by mode and format (lost by a copy) here, scaled
            # by the array rule below, outside this try
            if mode in _HIGH_DEPTH_MODES:
                decoded = _high_depth_pixels(img)
            elif grey and mode == "L":
                decoded = img.copy()  # closing the file would release img's pixels
            else:
                decoded = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{where} is too large to decode safely: {exc} If you trust it, raise PIL's "
            "limit first: PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None disables the check)."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ValueError(f"{where} is not an image file PIL can decode.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{where} is truncated or corrupt: {exc}") from exc
    if isinstance(decoded, np.ndarray):
        return _high_depth_to_rgb(decoded, mode, where)
    return decoded


def _sentence(name: str) -> str:
    """A name from ``describe`` at the start of a sentence."""
    return name[:1].upper() + name[1:]


def _path_problem(exc: OSError) -> str:
    """What an OSError from stat or open says about a path: the end of a sentence."""
    if isinstance(exc, FileNotFoundError):
        return "does not exist."
    if exc.errno == errno.ELOOP:
        return (
            "is a symbolic link loop (too many levels of symbolic links). Point the link "
            "at a real file or drop it."
        )
    if isinstance(exc, PermissionError):
        return "cannot be read: permission denied. Check the file's permissions."
    return f"cannot be read: {exc.strerror or exc}."


def _read_file_object(f, where: str) -> tuple[bytes, bool]:
    """Everything ``f`` holds from where it stands, and whether it could be put back there."""
    with _READ_LOCK:
        try:
            seekable = f.seekable() if callable(getattr(f, "seekable", None)) else False
            start = f.tell() if seekable else None
            data = f.read()
            if seekable:
                f.seek(start)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{where} cannot be read: {str(exc).rstrip('.')}.") from exc
    if inspect.iscoroutine(data):
        data.close()
        raise TypeError(
            f"{where} has an asynchronous read() (such as FastAPI's UploadFile). Pass the "
            "bytes of `await upload.read()`, or its synchronous file `upload.file`."
        )
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"{where} gave {type(data).__name__} from read(), expected bytes. Open the "
            "file in binary mode ('rb')."
        )
    return bytes(data), seekable


def _content_key(chunks) -> bytes:
    """The key of encoded bytes given in ``chunks``: one function for uploads and for
    files keyed by content, so the same bytes get the same key either way."""
    digest = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        digest.update(chunk)
    return digest.digest()


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
    *,
    stack: Callable = np.stack,
) -> Iterator[tuple[np.ndarray, object]]:
    """Yield ``(positions, batch)`` with ``batch`` the transformed images stacked by
    ``stack`` (``torch.stack`` for tensors; numpy's by default, so that serving without
    torch shares this loop). A ``transform`` whose ``accepts_grey`` is true (the model's
    evaluation preprocessing) gets greyscale images in mode L (``ImageSource.decoded``),
    any other RGB ones.

    Without workers, each batch is decoded when it is needed. With ``num_workers``
    threads, images are decoded one per task, in order, up to ``num_workers`` batches
    ahead of the batch being used: the threads share each batch (so one large batch is
    decoded in parallel too) and work on the next ones while the model runs (PIL, numpy,
    torch and ONNX Runtime release the GIL). Images not yet started when the loop stops
    (an error, or the caller breaking off) are cancelled.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]

    read = source.decoded if getattr(transform, "accepts_grey", False) else source.load

    def load(i):
        return transform(read(int(i)))

    if num_workers == 0:
        for chunk in chunks:
            yield chunk, stack([load(i) for i in chunk])
        return
    limit = (num_workers + 1) * batch_size  # the batch in use and num_workers more
    upcoming = iter(indices)
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        ahead = deque()
        try:
            for chunk in chunks:
                while len(ahead) < limit and (i := next(upcoming, None)) is not None:
                    ahead.append(pool.submit(load, i))
                yield chunk, stack([ahead.popleft().result() for _ in chunk])
        finally:
            for future in ahead:
                future.cancel()

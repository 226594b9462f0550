"""Device and precision resolution, and device-independent pickling of torch objects."""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings

import torch

_PRECISIONS = {
    "float32": None,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device) -> torch.device:
    """Turn ``"auto"``, a string or a :class:`torch.device` into an available device.

    ``"auto"`` picks CUDA, then MPS, then CPU. An explicit device that this machine
    does not have raises, so that a typo never silently runs on the CPU.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device. Expected 'auto', 'cpu', "
            "'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if not device_available(resolved):
        raise ValueError(
            f"device={device!r} was requested but is not available on this machine. "
            "Use device='auto' to pick the best available device, or device='cpu'."
        )
    return resolved


def device_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and (
            device.index is None or device.index < torch.cuda.device_count()
        )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return device.type == "cpu"


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve ``"auto"`` to a concrete precision name for ``device``.

    On GPUs, ``"auto"`` means mixed precision (bfloat16 autocast where the GPU supports
    it, float16 otherwise); on the CPU it means plain float32, which is both exact and,
    on most CPUs, the fastest.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "mps":
        return "float16"
    return "float32"


def autocast(device: torch.device, precision: str):
    """Autocast context for a resolved precision (a no-op for float32)."""
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def loadable_device(saved: torch.device | str) -> torch.device:
    """The device to load an object saved on ``saved``: itself if present, else the CPU."""
    saved = torch.device(saved)
    if device_available(saved):
        return saved
    warnings.warn(
        f"This estimator was saved on device '{saved}', which is not available here; "
        "loading it on the CPU instead.",
        UserWarning,
        stacklevel=3,
    )
    return torch.device("cpu")


class _MapLocationUnpickler(pickle.Unpickler):
    """Unpickle torch storages through ``torch.load(map_location=...)``.

    Tensors pickle their storages as ``torch.storage._load_from_bytes(bytes)``, where the
    bytes remember the device they were saved from. Intercepting that call is how skorch
    loads CUDA-trained nets on CPU-only machines; we use the same mechanism.
    """

    def __init__(self, file, map_location):
        super().__init__(file)
        self.map_location = map_location

    def find_class(self, module, name):
        if module == "torch.storage" and name == "_load_from_bytes":
            map_location = self.map_location

            def _load_from_bytes(data):
                return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)

            return _load_from_bytes
        return super().find_class(module, name)


def dumps_torch(obj) -> bytes:
    """Pickle an object holding torch tensors or modules."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads_torch(data: bytes, map_location: torch.device):
    """Unpickle bytes from :func:`dumps_torch`, placing every tensor on ``map_location``."""
    return _MapLocationUnpickler(io.BytesIO(data), map_location).load()

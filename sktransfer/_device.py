"""Device and precision resolution, and the device to load a saved model on."""

from __future__ import annotations

import contextlib

import torch

from ._warnings import warn

_PRECISIONS = {
    "float32": None,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device) -> torch.device:
    """Turn ``"auto"``, a string or a ``torch.device`` into an available device.

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
    warn(
        f"This estimator was saved on device '{saved}', which is not available here; "
        "loading it on the CPU instead."
    )
    return torch.device("cpu")

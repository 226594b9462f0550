"""Batched, device-aware inference: images or arrays in, rows written into one array.

Each finished batch can be reported to an ``on_rows(positions, rows)`` callback (the
embedding cache stores rows as they come, so an error keeps the batches finished
before it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ._device import autocast
from ._images import ImageSource, iter_batches


def empty_rows(shape) -> np.ndarray:
    """The default allocator of :func:`run_forward`: a float32 array in memory."""
    return np.empty(shape, dtype=np.float32)


def run_batches(
    forward: Callable[[torch.Tensor], torch.Tensor],
    source: ImageSource,
    transform: Callable,
    *,
    positions=None,
    batch_size: int,
    device: torch.device,
    precision: str,
    num_workers: int = 0,
    channels_last: bool = False,
    verbose: bool = False,
    desc: str = "embedding",
    allocate: Callable = empty_rows,
    on_rows: Callable | None = None,
) -> np.ndarray:
    """Run ``forward`` on the images at ``positions`` (all by default), batch by batch.

    The caller puts the model in eval mode; see :func:`run_forward` for the rest.
    """
    positions = np.arange(len(source)) if positions is None else np.asarray(positions)
    batches = (b for _, b in iter_batches(source, transform, batch_size, num_workers, positions))
    return run_forward(
        forward,
        batches,
        len(positions),
        device=device,
        precision=precision,
        channels_last=channels_last,
        verbose=verbose,
        desc=desc,
        n_batches=-(-len(positions) // batch_size),
        allocate=allocate,
        on_rows=on_rows,
    )


def array_batches(rows: np.ndarray, batch_size: int) -> Iterable[torch.Tensor]:
    """Consecutive batches of the rows of an array (in memory or memory-mapped)."""
    for start in range(0, len(rows), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(rows[start : start + batch_size]))


def run_forward(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    n_rows: int,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool = False,
    verbose: bool = False,
    desc: str = "embedding",
    n_batches: int | None = None,
    allocate: Callable = empty_rows,
    on_rows: Callable | None = None,
) -> np.ndarray:
    """Run ``forward`` on each batch under ``torch.inference_mode`` and the precision's
    autocast, and write the float32 outputs, in order, into one array of ``n_rows`` rows.

    The array comes from ``allocate(shape)`` once the first output gives the row shape
    (an in-memory array by default, or a memory map), so results are never concatenated.
    After each batch, ``on_rows(positions, rows)`` (if given) receives its rows and
    their positions in that array.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out, start = None, 0
    with torch.inference_mode(), autocast(device, precision):
        for batch in tqdm(batches, total=n_batches, desc=desc, disable=not verbose):
            if batch.ndim == 4:
                batch = batch.to(device, non_blocking=True, memory_format=memory_format)
            else:
                batch = batch.to(device, non_blocking=True)
            rows = forward(batch).float().cpu().numpy()
            if out is None:
                out = allocate((n_rows, *rows.shape[1:]))
            out[start : start + len(rows)] = rows
            if on_rows is not None:
                on_rows(np.arange(start, start + len(rows)), rows)
            start += len(rows)
    if out is None:
        return np.empty((0, 0), dtype=np.float32)
    return out


class BudgetAllocator:
    """Allocate result arrays in memory up to ``budget`` bytes in all, memory-mapped
    files beyond it (in ``folder``, or a temporary folder), so a large result spills to
    disk instead of running out of memory. ``close()`` deletes the files.
    """

    def __init__(self, budget: int, folder=None):
        self.budget = budget
        self.folder = folder
        self.used = 0
        self.n_files = 0
        self._tmp = None

    def __call__(self, shape) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4
        if self.used + nbytes <= self.budget:
            self.used += nbytes
            return empty_rows(shape)
        if self._tmp is None:
            if self.folder is not None:
                os.makedirs(self.folder, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="sktransfer-", dir=self.folder)
        path = os.path.join(self._tmp.name, f"rows-{self.n_files}.npy")
        self.n_files += 1
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(shape))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(value, name: str) -> int:
    """A size in bytes from an int or a string such as ``"500MB"`` or ``"4GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        number = value.strip().rstrip("bBiIkKmMgGtT ")
        unit = value.strip()[len(number) :].strip().upper()
        try:
            size = float(number)
        except ValueError:
            size = -1.0
        if unit in _UNITS and size >= 0:
            return int(size * _UNITS[unit])
    raise ValueError(
        f"{name}={value!r} is not a size: expected a number of bytes (an int >= 0) or a "
        "string with a unit, such as '500MB' or '4GiB'."
    )

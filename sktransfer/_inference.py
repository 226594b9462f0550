"""Batched, device-aware inference: images or arrays in, rows written into one array.

Each finished batch can be reported to an ``on_rows(positions, rows)`` callback (the
embedding cache stores rows as they come, so an error keeps the batches finished
before it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from . import _backbone
from ._device import autocast
from ._images import ImageSource, iter_batches
from ._progress import image_bar
from ._rows import ComputeRows, collect_rows, empty_rows


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

    The caller puts the model in eval mode; see ``run_forward`` for the rest.
    """
    positions = np.arange(len(source)) if positions is None else np.asarray(positions)
    chunks = iter_batches(source, transform, batch_size, num_workers, positions, stack=torch.stack)
    batches = (b for _, b in chunks)
    return run_forward(
        forward,
        batches,
        len(positions),
        device=device,
        precision=precision,
        channels_last=channels_last,
        verbose=verbose,
        desc=desc,
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
    allocate: Callable = empty_rows,
    on_rows: Callable | None = None,
) -> np.ndarray:
    """Run ``forward`` on each batch under ``torch.inference_mode`` and the precision's
    autocast, and write the float32 outputs, in order, into one array of ``n_rows`` rows.

    The array comes from ``allocate(shape)`` once the first output gives the row shape
    (an in-memory array by default, or a memory map), so results are never concatenated.
    After each batch, ``on_rows(positions, rows)`` (if given) receives its rows and
    their positions in that array. With ``verbose``, a bar named ``desc`` counts the
    images.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def rows_of(batch: torch.Tensor) -> np.ndarray:
        if batch.ndim == 4:
            batch = batch.to(device, non_blocking=True, memory_format=memory_format)
        else:
            batch = batch.to(device, non_blocking=True)
        return forward(batch).float().cpu().numpy()

    bar = image_bar(n_rows, desc, enabled=verbose)
    with bar, torch.inference_mode(), autocast(device, precision):
        rows = map(rows_of, batches)
        return collect_rows(rows, n_rows, allocate=allocate, on_rows=on_rows, bar=bar)


def frozen_bottom(
    split,
    source: ImageSource,
    positions,
    transform,
    *,
    batch_size,
    device,
    num_workers,
    verbose=False,
    desc="frozen layers",
) -> ComputeRows:
    """The rows of ``split``'s frozen bottom on the images at ``positions`` of ``source``
    (with ``verbose``, a bar named ``desc`` counts the images)."""
    channels_last = _backbone.prefers_channels_last(split.model)

    def compute(rows, allocate, on_rows=None):
        return run_batches(
            split.bottom,
            source,
            transform,
            positions=positions[rows],
            batch_size=batch_size,
            device=device,
            precision="float32",
            num_workers=num_workers,
            channels_last=channels_last,
            verbose=verbose,
            desc=desc,
            allocate=allocate,
            on_rows=on_rows,
        )

    return compute


def pooled_of_rows(split, bottom: np.ndarray, *, batch_size, device) -> ComputeRows:
    """The pooled features computed from rows of ``split``'s frozen bottom."""
    channels_last = _backbone.prefers_channels_last(split.model)

    def compute(rows, allocate, on_rows=None):
        return run_forward(
            split.pooled,
            array_batches(_take(bottom, rows), batch_size),
            len(rows),
            device=device,
            precision="float32",
            channels_last=channels_last,
            allocate=allocate,
            on_rows=on_rows,
        )

    return compute


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` without a copy when ``rows`` is all of it, in order."""
    if len(rows) == len(array) and np.array_equal(rows, np.arange(len(array))):
        return array
    return array[rows]

"""Frozen rows: the one owner of what names a cached row, and of how rows are stored.

A row is what a frozen network computes for one image: an embedding of the extractor,
the output of a fine-tuner's frozen bottom at its cut point, or the pooled features of
its head stage. ``namespace`` is the only place that says what, besides the image, a
row depends on; the extractor, ``fit`` and ``predict`` all ask it (through
``frozen_namespace`` for a fine-tuner's cut), so a probe and a head-only fine-tune
share pooled rows and nothing else. ``cached_rows`` looks rows up in the cache or
has a ``ComputeRows`` compute them; ``BudgetAllocator`` says where computed
rows live (memory, then memory-mapped files). numpy only: no torch here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from ._cache import EmbeddingCache, empty_rows, memory_location

Allocate = Callable[[tuple], np.ndarray]
OnRows = Callable[[np.ndarray, np.ndarray], None]


class ComputeRows(Protocol):
    """Computes rows: ``compute(rows, allocate, on_rows)`` returns the rows of the images
    at ``rows`` (indices into the positions it was built for), in one array made by
    ``allocate(shape)``, and reports each finished batch to ``on_rows(indices, values)``
    (indices into ``rows``) when given, so that a cache stores rows as they come."""

    def __call__(
        self, rows: np.ndarray, allocate: Allocate, on_rows: OnRows | None = None
    ) -> np.ndarray: ...


def collect_rows(
    batches: Iterable[np.ndarray],
    n_rows: int,
    *,
    allocate: Allocate = empty_rows,
    on_rows: OnRows | None = None,
    bar=None,
) -> np.ndarray:
    """The rows of ``batches`` written, in order, into one array of ``n_rows`` rows that
    ``allocate(shape)`` makes once the first batch gives the row shape (results are
    never concatenated). Each batch is reported to ``on_rows(positions, rows)`` when
    given, and counted on ``bar`` (a progress bar). No batch at all: an empty array."""
    out, start = None, 0
    for rows in batches:
        if out is None:
            out = allocate((n_rows, *rows.shape[1:]))
        out[start : start + len(rows)] = rows
        if on_rows is not None:
            on_rows(np.arange(start, start + len(rows)), rows)
        start += len(rows)
        if bar is not None:
            bar.update(len(rows))
    return np.empty((0, 0), dtype=np.float32) if out is None else out


def namespace(
    *, model: str, weights: str, data_config: dict, layer, pooling, precision: str, device
) -> dict:
    """Everything besides the image that a cached row depends on."""
    return {
        "model": model,
        "weights": weights,
        "preprocessing": {k: data_config[k] for k in sorted(data_config)},
        "layer": layer,
        "pooling": pooling,
        "precision": precision,
        "device_type": device.type,
    }


def frozen_namespace(identity: dict, data_config: dict, point: str, device) -> dict:
    """The namespace of a fine-tuner's rows at the cut ``point``: its frozen bottom's
    output, or, at ``"pooled"``, the extractor's own pooled features (``identity``: the
    model name and the fingerprint of the starting weights)."""
    return namespace(
        **identity,
        data_config=data_config,
        layer=None if point == "pooled" else f"frozen {point}",
        pooling=None,
        precision="float32",
        device=device,
    )


def cached_rows(
    names: dict | None,
    source,
    positions: np.ndarray,
    compute: ComputeRows,
    *,
    memory,
    allocate: Allocate = empty_rows,
) -> np.ndarray:
    """The rows of the images at ``positions`` of ``source``: looked up under the
    namespace ``names`` in the cache at ``memory``, the missing ones computed by
    ``compute`` (and stored); everything computed when there is no cache or no
    namespace (None)."""
    if memory is None or names is None:
        return compute(np.arange(len(positions)), allocate, None)
    keys = [source.key(int(i)) for i in positions]
    return EmbeddingCache(memory, names).rows(keys, compute, allocate)


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

    @classmethod
    def beside(cls, memory, budget: int) -> BudgetAllocator:
        """An allocator that spills next to the cache at ``memory`` (or to a temporary
        folder without one)."""
        location = memory_location(memory)
        folder = None if location is None else os.path.join(location, "sktransfer", "spill")
        return cls(budget, folder)

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

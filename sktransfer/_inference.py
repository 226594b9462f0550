"""Batched, device-aware inference over an image source."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ._device import autocast
from ._images import ImageSource, iter_batches


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
    verbose: bool = False,
    desc: str = "embedding",
) -> np.ndarray:
    """Run ``forward`` on the images at ``positions`` (all by default), batch by batch.

    The caller puts the model in eval mode; this runs it under ``torch.inference_mode``
    and the precision's autocast, and returns float32 rows in the order of ``positions``.
    """
    positions = np.arange(len(source)) if positions is None else np.asarray(positions)
    chunks = []
    batches = iter_batches(source, transform, batch_size, num_workers, positions)
    n_batches = -(-len(positions) // batch_size)
    with torch.inference_mode(), autocast(device, precision):
        for _, batch in tqdm(batches, total=n_batches, desc=desc, disable=not verbose):
            out = forward(batch.to(device, non_blocking=True))
            chunks.append(out.float().cpu().numpy())
    if not chunks:
        return np.empty((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)

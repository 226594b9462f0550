"""A cache miss on a cache that already holds many shards costs about an uncached call.

A fitted ``PretrainedFeatureExtractor("test_efficientnet", weights=None, image_size=32)``
first fills a fresh cache folder with ``--n-shards`` one-image ``transform`` calls (each
stores its row as one shard, as a service embedding one request at a time does). Then,
in interleaved rounds after a warm-up, it times ``transform`` of one new image (never
seen: a miss that looks up, computes and stores) with ``memory=`` that folder, against
the same call with ``memory=None``, and, for reference, the same image again (a hit).
Each keeps its median time. Target: the miss within 2x the uncached call (before the
bucketed shards, a miss read every shard: 84 ms per call at 1,000 shards against 2 ms
uncached). Exit status 1 on a miss.

    python benchmarks/cache_lookup.py                   # 1,000 shards, 25 rounds, ~15 seconds
    python benchmarks/cache_lookup.py --n-shards 200 --repeats 9
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import report
from _timing import seconds

from sktransfer import PretrainedFeatureExtractor
from sktransfer._cache import SHARD_SUFFIX

MAX_RATIO_TO_UNCACHED = 2.0
UNCACHED = "uncached (memory=None)"
MISS = "miss (memory=folder)"
HIT = "hit (the same image again)"


def one_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-shards", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: thread synchronisation would dominate

    with tempfile.TemporaryDirectory() as folder:
        # One fitted model (random weights), with and without the cache: memory is read
        # by transform only.
        base = PretrainedFeatureExtractor(
            "test_efficientnet", weights=None, image_size=32, device="cpu"
        ).fit()
        cached = copy.copy(base).set_params(memory=folder)

        start = time.perf_counter()
        for i in range(args.n_shards):
            cached.transform(one_image(i))
        fill = time.perf_counter() - start
        n_files = sum(1 for _ in Path(folder).rglob(f"*{SHARD_SUFFIX}"))

        times = {UNCACHED: [], MISS: [], HIT: []}
        new = args.n_shards + 10_000
        for i in range(2 + args.repeats):  # two warm-up rounds, not kept
            image = one_image(new + i)
            rounds = [
                (UNCACHED, lambda: base.transform(image)),  # noqa: B023
                (MISS, lambda: cached.transform(image)),  # noqa: B023
                (HIT, lambda: cached.transform(image)),  # noqa: B023
            ]
            for name, call in rounds:
                elapsed = seconds(call)
                if i >= 2:
                    times[name].append(elapsed)
        np.testing.assert_array_equal(cached.transform(image), base.transform(image))

    medians = {name: statistics.median(t) for name, t in times.items()}
    uncached = medians[UNCACHED]
    print(
        f"cache filled by {args.n_shards} one-image transforms in {fill:.1f} s: "
        f"{n_files} shard files after compaction; {args.repeats} rounds, median"
    )
    print(f"{'transform of one image':<28}{'median ms':>10}{'x uncached':>12}")
    for name, value in medians.items():
        print(f"{name:<28}{value * 1e3:>10.2f}{value / uncached:>12.2f}")
    ratio = medians[MISS] / uncached
    label = (
        f"a miss on a cache of {args.n_shards} one-image transforms takes {ratio:.2f} x "
        f"the uncached call (target <= {MAX_RATIO_TO_UNCACHED})"
    )
    return report([(label, ratio <= MAX_RATIO_TO_UNCACHED)])


if __name__ == "__main__":
    sys.exit(main())

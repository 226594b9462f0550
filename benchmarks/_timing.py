"""Wall-clock time of one call, for the benchmarks' side-by-side rounds."""

from __future__ import annotations

import time


def seconds(call) -> float:
    """The wall-clock seconds that ``call()`` takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start

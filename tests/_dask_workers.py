"""An extractor that Dask worker processes import (from this folder, which is on their
``sys.path``): it counts, in each process, how often it is loaded and how many images it
embeds, and can kill the process that runs it, as a crashing worker would."""

from __future__ import annotations

import os

from sktransfer import PretrainedFeatureExtractor

_COUNTS = {"loads": 0, "embedded": 0}


class CountingExtractor(PretrainedFeatureExtractor):
    """``PretrainedFeatureExtractor`` that counts; with ``kill_switch`` set (an instance
    attribute: the path of a file), the first Dask worker that embeds while the file
    exists removes it and dies."""

    def __setstate__(self, state):
        _COUNTS["loads"] += 1
        super().__setstate__(state)

    def _embed(self, source, positions, on_rows=None):
        _COUNTS["embedded"] += len(positions)
        switch = getattr(self, "kill_switch", None)
        if switch is not None and _on_a_worker() and _claim(switch):
            os._exit(1)
        return super()._embed(source, positions, on_rows)


def counts() -> dict:
    """This process's counts (``client.run(counts)`` gives each worker's)."""
    return dict(_COUNTS)


def reset() -> None:
    _COUNTS.update(loads=0, embedded=0)


def _on_a_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _claim(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True

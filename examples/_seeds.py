"""What the seeded ELPV examples share: their command line and how they summarise."""

from __future__ import annotations

import argparse
import statistics


def seeded_parser(doc: str) -> argparse.ArgumentParser:
    """``--seeds``, ``--image-size`` and ``--threads``; the description is the first
    paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


def mean_sd(values) -> str:
    """``"mean ± sd"`` to three decimals (sd 0 for a single value)."""
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def per_seed(deltas) -> str:
    """Paired differences, one per seed, and their mean: ``"+0.010, -0.002 (mean +0.004)"``."""
    deltas = list(deltas)
    return ", ".join(f"{d:+.3f}" for d in deltas) + f" (mean {statistics.mean(deltas):+.3f})"

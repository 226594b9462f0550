"""A grid search over freeze depth and learning rate, with and without ``memory``.

``GridSearchCV(FineTunedClassifier(...), {"freeze_depth": [0.5, "all"], "lr": [3e-4,
1e-3, 3e-3]}, cv=3)`` on ELPV solar cells (EfficientNet-Lite0 ImageNet weights), once
without a cache and once with ``memory=`` a fresh folder. Each arm runs in its own
process (so its peak RSS is its own), the arms alternate over ``--rounds`` and each keeps
its best wall time. Reported per arm: wall time of the whole search (refit included),
frozen-bottom passes per image (images whose frozen bottom the fits computed, and images
that ``predict`` ran through the whole model, each divided by the number of cells), and
peak RSS.

Targets: with ``memory``, the fits compute each image's frozen activations once per
distinct freeze depth for the whole search (2 passes per image here), and the search is
at least 2x faster end to end than without. Exit status 1 on a miss.

    python benchmarks/grid_search.py              # 300 cells at 96 px
    python benchmarks/grid_search.py --n-images 60 --rounds 1   # a quick look

The pass counts wrap sktransfer's internal inference loop where it runs images
(``sktransfer._inference.run_batches``: the frozen layers, at fit and at a cached
predict; ``sktransfer._finetuning._predict.run_batches``: the whole model, at an uncached
``predict``): instrumentation of this benchmark only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _elpv import elpv_index
from _report import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, PREPROCESSING, WEIGHTS  # noqa: E402

GRID = {"freeze_depth": [0.5, "all"], "lr": [3e-4, 1e-3, 3e-3]}
MIN_SPEEDUP = 2.0


def cells(n: int, seed: int = 0):
    """``n`` ELPV cells drawn at random (stratified by the defect label)."""
    paths, probability, _ = elpv_index()
    y = (probability >= 0.5).astype(int)
    rng = np.random.default_rng(seed)
    n_defect = round(n * y.mean())
    picks = [
        rng.choice(np.flatnonzero(y == 1), n_defect, replace=False),
        rng.choice(np.flatnonzero(y == 0), n - n_defect, replace=False),
    ]
    idx = np.sort(np.concatenate(picks))
    return paths[idx], y[idx]


def run_arm(args) -> dict:
    """One search, in this process; returns its measurements."""
    import torch
    from sklearn.model_selection import GridSearchCV

    import sktransfer._finetuning._predict
    import sktransfer._inference
    from sktransfer import FineTunedClassifier

    torch.set_num_threads(args.threads)
    counts = {"fit": 0, "predict": 0}
    frozen, whole = sktransfer._inference, sktransfer._finetuning._predict
    for module, key in ((frozen, "fit"), (whole, "predict")):
        module.run_batches = _counting(module.run_batches, counts, key)

    X, y = cells(args.n_images)
    with tempfile.TemporaryDirectory(prefix="sktransfer-grid-") as folder:
        clf = FineTunedClassifier(
            MODEL,
            weights=WEIGHTS,
            image_size=args.image_size,
            preprocessing=PREPROCESSING,
            batch_size=args.batch_size,
            device="cpu",
            random_state=0,
            memory=folder if args.arm == "memory" else None,
        )
        start = time.perf_counter()
        search = GridSearchCV(clf, GRID, cv=3, scoring="roc_auc").fit(X, y)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "fit_passes": counts["fit"] / len(X),
        "predict_passes": counts["predict"] / len(X),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "best_params": {k: str(v) for k, v in search.best_params_.items()},
        "best_score": float(search.best_score_),
    }


def _counting(run_batches, counts, key):
    def counting(forward, source, transform, *, positions=None, **kwargs):
        counts[key] += len(source) if positions is None else len(positions)
        return run_batches(forward, source, transform, positions=positions, **kwargs)

    return counting


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs per arm")
    parser.add_argument("--arm", choices=["none", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # a child process: one search, results as JSON on stdout
        print(json.dumps(run_arm(args)))
        return 0

    print(
        f"GridSearchCV {GRID}, cv=3, {args.n_images} ELPV cells at {args.image_size} px, "
        f"batch {args.batch_size}, {args.threads} threads, {MODEL}, float32 on CPU",
        flush=True,
    )
    results = {"none": [], "memory": []}
    for r in range(args.rounds):
        for arm in ("none", "memory") if r % 2 == 0 else ("memory", "none"):
            command = [sys.executable, __file__, "--arm", arm, *sys.argv[1:]]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}, memory={arm}: {results[arm][-1]['seconds']:.0f}s", flush=True)

    best = {arm: min(runs, key=lambda run: run["seconds"]) for arm, runs in results.items()}
    speedup = best["none"]["seconds"] / best["memory"]["seconds"]
    print()
    print(
        "| memory | search s | frozen-bottom passes / image (fits) | full passes / image "
        "(predict) | peak RSS MB | best params | best AUC |"
    )
    print("|---|---|---|---|---|---|---|")
    for arm, run in best.items():
        print(
            f"| {arm} | {run['seconds']:.1f} | {run['fit_passes']:.2f} | "
            f"{run['predict_passes']:.2f} | {run['peak_rss_mb']:.0f} | "
            f"{run['best_params']} | {run['best_score']:.3f} |"
        )
    depths = len(GRID["freeze_depth"])
    checks = [
        (
            f"memory: frozen activations computed once per image per depth ({depths})",
            best["memory"]["fit_passes"] <= depths,
        ),
        (f"memory: search >= {MIN_SPEEDUP}x faster ({speedup:.2f}x)", speedup >= MIN_SPEEDUP),
    ]
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())

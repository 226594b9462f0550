"""Regression on ELPV solar cells: predict the expert-rated defect probability.

The defect probability of an ELPV cell is graded (0, 1/3, 2/3 or 1): a regression target
keeps that order, where a classifier at 0.5 throws it away. For each seed, 700 cells
train and 500 are held out (stratified by grade). Compared, on the same cells:

- the probe: ``PretrainedFeatureExtractor`` + ``RidgeCV`` on the raw embeddings (alpha
  chosen by efficient leave-one-out cross-validation). Not standardised: a few
  post-ReLU6 features are almost always zero in training, and scaling them by their
  tiny standard deviation turns a rare non-zero test value into an outlier of 1,000s;
  the raw embeddings are already on one scale;
- ``FineTunedRegressor`` with its defaults (squared error), and with ``loss="huber"``.

Reported: R² and Spearman's rank correlation on the held-out cells, mean ± sd over
seeds, and the paired difference to the probe.

Run::

    python examples/regression_elpv.py                    # about 8 min on one core
    python examples/regression_elpv.py --seeds 0 --image-size 64

Needs the ``examples`` extra. Everything runs offline on the CPU.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch
from _lite0 import MODEL, PREPROCESSING, WEIGHTS
from _seeds import mean_sd, seeded_parser
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from sktransfer import FineTunedRegressor, PretrainedFeatureExtractor
from sktransfer.datasets import load_elpv


def models(image_size: int, seed: int, cache: str) -> dict:
    common = dict(weights=WEIGHTS, image_size=image_size, preprocessing=PREPROCESSING, device="cpu")
    return {
        "probe (ridge)": make_pipeline(
            PretrainedFeatureExtractor(MODEL, memory=cache, **common),
            RidgeCV(alphas=np.logspace(-3, 4, 15)),
        ),
        "fine-tuned": FineTunedRegressor(MODEL, random_state=seed, **common),
        "fine-tuned, huber": FineTunedRegressor(MODEL, loss="huber", random_state=seed, **common),
    }


def run_seed(args, seed: int, cache: str) -> dict:
    cells = load_elpv()
    y = cells.defect_probability
    train, test = train_test_split(
        np.arange(len(y)), train_size=700, test_size=500, stratify=y, random_state=seed
    )
    results = {}
    for name, model in models(args.image_size, seed, cache).items():
        start = time.perf_counter()
        model.fit(cells.paths[train], y[train])
        predicted = model.predict(cells.paths[test])
        results[name] = {
            "r2": r2_score(y[test], predicted),
            "spearman": spearmanr(y[test], predicted).statistic,
            "seconds": time.perf_counter() - start,
        }
        print(f"seed {seed}, {name}: R² {results[name]['r2']:.3f}", flush=True)
    return results


def main(argv=None) -> None:
    parser = seeded_parser(__doc__)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sktransfer-regression-") as cache:
        results = [run_seed(args, seed, cache) for seed in args.seeds]

    probe = "probe (ridge)"
    print(f"\nELPV defect probability, {MODEL} at {args.image_size} px, seeds {args.seeds}")
    print("| model | R² | Spearman | Δ R² vs probe | fit s |")
    print("|---|---|---|---|---|")
    for name in results[0]:
        rows = [r[name] for r in results]
        delta = statistics.mean(r[name]["r2"] - r[probe]["r2"] for r in results)
        print(
            f"| {name} | {mean_sd(r['r2'] for r in rows)} | "
            f"{mean_sd(r['spearman'] for r in rows)} | "
            f"{'—' if name == probe else f'{delta:+.3f}'} | "
            f"{statistics.mean(r['seconds'] for r in rows):.0f} |"
        )


if __name__ == "__main__":
    main()

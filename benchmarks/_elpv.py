"""ELPV solar-cell images as file paths and 0/1 labels, split for benchmarks.

The cells come from the ``elpv_dataset`` package (read where it is installed, never
copied). A cell is defective (1) when its expert-rated defect probability is at least 0.5
(about 31 % of the 2,624 cells). Only ``labels.csv`` is read: the estimators decode the
image files lazily.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from sktransfer.datasets import load_elpv

DEFECT_THRESHOLD = 0.5


def elpv_index() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absolute image paths, defect probabilities and cell types ("mono"/"poly")."""
    cells = load_elpv()
    return cells.paths, cells.defect_probability, cells.cell_type


def elpv_split(n_train: int = 700, n_test: int = 500, seed: int = 0):
    """A seeded, stratified train/test split of a random subset of the ELPV cells.

    Draws ``n_train + n_test`` cells at random (``numpy.random.default_rng(seed)``,
    without replacement), then splits them with ``train_test_split(stratify=y,
    random_state=seed)`` so both sides keep the defect rate.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarrays
        Image file paths (str) and labels (int, 1 = defective).
    """
    paths, probability, _ = elpv_index()
    y = (probability >= DEFECT_THRESHOLD).astype(int)
    n = n_train + n_test
    if not 0 < n <= len(paths):
        raise ValueError(f"n_train + n_test must lie in [1, {len(paths)}]; got {n}.")
    subset = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
    X_train, X_test, y_train, y_test = train_test_split(
        paths[subset],
        y[subset],
        train_size=n_train,
        test_size=n_test,
        stratify=y[subset],
        random_state=seed,
    )
    return X_train, y_train, X_test, y_test

"""Targets and sample weights of the fine-tuners: validated, with errors that say what
was received and what is expected, and encoded for training."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target


@dataclass(frozen=True)
class Targets:
    """Encoded targets: what the training core needs, and the fitted attributes the
    estimator keeps (``attributes``, e.g. ``{"classes_": ...}``)."""

    y: np.ndarray  # int labels (n,), 0/1 label columns or standardised values (n, k)
    n_outputs: int
    loss: str  # one of _trainer.LOSSES
    stratify: np.ndarray | None = None
    attributes: dict = field(default_factory=dict)


def classification_targets(y, n_images) -> Targets:
    """Class labels (cross-entropy) or a 0/1 indicator matrix (one sigmoid per label)."""
    classes, y_enc, multilabel = encode_labels(y, n_images)
    if multilabel:
        return Targets(
            y_enc,
            y_enc.shape[1],
            "binary_cross_entropy",
            attributes={"classes_": classes, "multilabel_": True},
        )
    return Targets(
        y_enc,
        len(classes),
        "cross_entropy",
        stratify=y_enc,
        attributes={"classes_": classes, "multilabel_": False},
    )


def regression_targets(y, n_images, loss: str, sample_weight=None) -> Targets:
    """Real targets, 1-D or one column per output, standardised per column with the
    sample weights (a zero-weight image does not move the scale; a constant column keeps
    a scale of 1)."""
    values = _real_matrix(y, n_images)
    mean = np.average(values, axis=0, weights=sample_weight)
    scale = np.sqrt(np.average((values - mean) ** 2, axis=0, weights=sample_weight))
    scale[scale == 0] = 1.0
    return Targets(
        ((values - mean) / scale).astype(np.float32),
        values.shape[1],
        loss,
        attributes={
            "n_outputs_": values.shape[1],
            "target_mean_": mean,
            "target_scale_": scale,
            "multioutput_": np.ndim(y) == 2,
        },
    )


def _real_matrix(y, n_images) -> np.ndarray:
    if y is None:
        raise ValueError("FineTunedRegressor needs targets: y is None.")
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"y must hold real numbers, one row per image; it could not be read as "
            f"floats ({exc}). Encode categories as numbers, or use FineTunedClassifier."
        ) from exc
    if values.ndim not in (1, 2) or len(values) != n_images or values.size == 0:
        raise ValueError(
            f"y must have shape ({n_images},) or ({n_images}, n_outputs), one row per "
            f"image; got shape {values.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(values.reshape(n_images, -1)).all(axis=1))
    if len(bad):
        raise ValueError(
            f"y contains NaN or infinite values (first in the row of image {bad[0]}); "
            "every target must be a finite number."
        )
    return values.reshape(n_images, -1)


def check_sample_weight(sample_weight, n_images):
    """Validate ``sample_weight``: None, or n_images finite, non-negative floats."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight)
    if w.ndim == 0 or w.dtype.kind not in "biuf":
        raise ValueError(
            f"sample_weight must be a 1-D array of {n_images} non-negative numbers, one per "
            f"image; got {type(sample_weight).__name__} of dtype {w.dtype} and shape {w.shape}."
        )
    w = w.astype(np.float64)
    if w.ndim != 1 or len(w) != n_images:
        raise ValueError(
            f"sample_weight has shape {np.shape(sample_weight)} but X has {n_images} images; "
            "pass one weight per image."
        )
    bad = np.flatnonzero(~np.isfinite(w))
    if len(bad):
        raise ValueError(
            f"sample_weight contains NaN or infinite values (first at index {bad[0]}); "
            "every weight must be a finite number >= 0."
        )
    bad = np.flatnonzero(w < 0)
    if len(bad):
        raise ValueError(
            f"sample_weight contains negative values (first at index {bad[0]}: "
            f"{w[bad[0]]:g}); weights must be >= 0."
        )
    if not w.sum() > 0:
        raise ValueError("sample_weight sums to zero: at least one image must have weight > 0.")
    return w


def encode_labels(y, n_images):
    """Validate ``y`` and encode it: (classes, encoded targets, is_multilabel)."""
    if y is None:
        raise ValueError("FineTunedClassifier needs labels: y is None.")
    values = np.asarray(y, dtype=object)
    if len(values) != n_images:
        raise ValueError(
            f"X and y have different lengths: {n_images} images but {len(values)} labels."
        )
    # Scan as objects: np.asarray would turn None or NaN among strings into classes.
    for i, v in enumerate(values.ravel()):
        if v is None:
            raise ValueError(f"y contains None (first at index {i}); every image needs a label.")
        if isinstance(v, float | np.floating) and not np.isfinite(v):
            raise ValueError(f"y contains NaN or infinite values (first at index {i}).")
    y_arr = np.asarray(y)
    kind = type_of_target(y_arr, input_name="y")
    if kind == "multilabel-indicator":
        if y_arr.shape[1] < 2:
            raise ValueError("A multilabel y needs at least two label columns.")
        return np.arange(y_arr.shape[1]), y_arr.astype(np.float32), True
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"y looks like a {kind} target; FineTunedClassifier expects class labels "
            "(binary or multiclass, 1-D) or a 2-D 0/1 multilabel indicator matrix."
        )
    encoder = LabelEncoder().fit(y_arr.ravel())
    if len(encoder.classes_) < 2:
        raise ValueError(
            f"y has a single class ({encoder.classes_[0].item()!r}); a classifier needs at "
            "least two classes."
        )
    return encoder.classes_, encoder.transform(y_arr.ravel()), False

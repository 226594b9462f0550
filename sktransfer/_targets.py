"""Targets and sample weights of the fine-tuners: validated, with errors that say what
was received and what is expected, and encoded for training."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field

import numpy as np
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target

from ._finetuning._objectives import (
    CrossEntropy,
    Multilabel,
    MultiTask,
    Objective,
    StandardisedRegression,
)


@dataclass(frozen=True)
class Targets:
    """Encoded targets: what the training core needs, and the fitted attributes the
    estimator keeps (``attributes``, e.g. ``{"classes_": ...}``)."""

    y: np.ndarray  # int labels (n,), 0/1 label columns or standardised values (n, k)
    n_outputs: int
    objective: Objective  # what the fine-tune minimises for this kind of target
    stratify: np.ndarray | None = None
    attributes: dict = field(default_factory=dict)


def classification_targets(y, n_images, task_weights=None, label_smoothing=0.0) -> Targets:
    """Class labels (cross-entropy), a 0/1 indicator matrix (one sigmoid per label), or
    several columns of class labels (one softmax head per column: multi-task)."""
    rows = _check_labels(y, n_images)
    if np.ndim(y) == 2 and _label_columns(np.asarray(y)):
        return _multitask_targets(y, rows, task_weights, label_smoothing)
    if task_weights is not None:
        raise ValueError(
            "task_weights weighs the losses of several label columns (a 2-D y of class "
            "labels); this y is not one. Set task_weights=None."
        )
    return _single_task_targets(y, label_smoothing)


def _label_columns(values: np.ndarray) -> bool:
    """Whether a 2-D ``y`` holds columns of class labels (not a 0/1 indicator matrix):
    labels that are not numbers (strings, mixed columns), or numbers beyond 0/1."""
    if values.dtype.kind not in "biuf":
        return True
    return type_of_target(values, input_name="y") == "multiclass-multioutput"


def _multitask_targets(y, rows: np.ndarray, task_weights, label_smoothing) -> Targets:
    """One softmax head per label column (``rows``: ``y`` checked, as objects); each
    image's loss is the weighted sum of its tasks' cross-entropies."""
    names = _column_names(y, rows.shape[1])
    classes, codes = [], []
    for t, name in enumerate(names):
        column = np.asarray(rows[:, t].tolist())  # each column in its own dtype
        encoder = LabelEncoder().fit(column)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"Label column {name} has a single class ({encoder.classes_[0].item()!r}): "
                "every task needs at least two classes. Drop the column, or add images of "
                "its other classes."
            )
        classes.append(encoder.classes_)
        codes.append(encoder.transform(column))
    sizes = tuple(len(c) for c in classes)
    return Targets(
        np.stack(codes, axis=1).astype(np.int64),
        sum(sizes),
        MultiTask(sizes, _task_weights(task_weights, names), label_smoothing),
        attributes={
            "classes_": classes,
            "multilabel_": False,
            "multitask_": True,
            "task_names_": _task_names(y),
        },
    )


def _task_names(y) -> np.ndarray | None:
    """The column names of a DataFrame ``y``, as strings (None for an array)."""
    columns = getattr(y, "columns", None)
    return None if columns is None else np.asarray([str(c) for c in columns], dtype=object)


def _column_names(y, n_columns) -> list[str]:
    columns = getattr(y, "columns", None)
    if columns is not None:
        return [f"{c!r}" for c in columns]
    return [str(t) for t in range(n_columns)]


def _task_weights(task_weights, names) -> tuple:
    if task_weights is None:
        return (1.0,) * len(names)
    try:
        w = np.asarray(task_weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task_weights must be numbers, one per label column: {exc}") from exc
    if w.shape != (len(names),):
        raise ValueError(
            f"task_weights has shape {w.shape} but y has {len(names)} label columns "
            f"({', '.join(names)}); pass one weight per column."
        )
    if not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError(
            f"task_weights must be finite and >= 0, with at least one > 0; got {w.tolist()}."
        )
    return tuple(float(v) for v in w)


def _single_task_targets(y, label_smoothing) -> Targets:
    classes, y_enc, multilabel = _encode_labels(y)
    if multilabel:
        return Targets(
            y_enc,
            y_enc.shape[1],
            Multilabel(label_smoothing),
            attributes={"classes_": classes, "multilabel_": True, "multitask_": False},
        )
    return Targets(
        y_enc,
        len(classes),
        CrossEntropy(label_smoothing),
        stratify=y_enc,
        attributes={"classes_": classes, "multilabel_": False, "multitask_": False},
    )


def regression_targets(y, n_images, loss: str, sample_weight=None) -> Targets:
    """Real targets, 1-D or one column per output, standardised per column with the
    sample weights (a zero-weight image does not move the scale; a constant column keeps
    a scale of 1)."""
    values = _real_matrix(y, n_images)
    # Moments of values divided by their largest magnitude, so that squares of targets
    # near 1e300 do not overflow (the scale is multiplied back after).
    magnitude = np.abs(values).max(axis=0)
    magnitude[magnitude == 0] = 1.0
    unit = values / magnitude
    mean = np.average(unit, axis=0, weights=sample_weight)
    scale = np.sqrt(np.average((unit - mean) ** 2, axis=0, weights=sample_weight))
    mean, scale = mean * magnitude, np.where(scale == 0, 1.0, scale * magnitude)
    return Targets(
        ((values - mean) / scale).astype(np.float32),
        values.shape[1],
        StandardisedRegression(loss),
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
    _target_array(y)
    if np.iscomplexobj(y):
        raise ValueError(
            "y holds complex numbers; FineTunedRegressor fits real targets. Pass the real "
            "and imaginary parts as two output columns (np.column_stack([y.real, y.imag])), "
            "or the magnitude (np.abs(y))."
        )
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


def split_domains(sample_domain, n_images, masked=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the labelled source images and of the unlabelled target images, in the
    convention of scikit-learn's domain-adaptation library skada: ``sample_domain > 0``
    marks a source domain, ``< 0`` a target domain. Without ``sample_domain``, every row
    is a source, or, given ``masked`` (the rows whose label is masked: ``y == -1`` for
    classes, NaN for real targets), those rows are the target."""
    if sample_domain is None:
        target = np.zeros(n_images, dtype=bool) if masked is None else masked
        return np.flatnonzero(~target), np.flatnonzero(target)
    domains = np.asarray(sample_domain)
    if domains.ndim == 0:
        domains = np.full(n_images, domains)
    if domains.dtype.kind not in "iuf" or domains.shape != (n_images,):
        raise ValueError(
            f"sample_domain must hold one domain number per image ({n_images}): positive "
            f"for source domains, negative for target domains; got {domains.dtype} of "
            f"shape {domains.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(domains) | (domains == 0))
    if len(bad):
        raise ValueError(
            f"sample_domain is {domains[bad[0]]} for the image at index {bad[0]}: a domain "
            "number must be positive (source) or negative (target), never 0 or NaN."
        )
    return np.flatnonzero(domains > 0), np.flatnonzero(domains < 0)


def masked_labels(y, n_images) -> np.ndarray:
    """Rows whose class labels are all -1: unlabelled target images (skada's mask)."""
    return _all_masked(y, n_images, _is_minus_one)


def masked_values(y, n_images) -> np.ndarray:
    """Rows whose real targets are all NaN: unlabelled target images (skada's mask)."""
    return _all_masked(y, n_images, _is_nan)


def _all_masked(y, n_images, is_mask) -> np.ndarray:
    rows = _rows(y, n_images, "y is None: domain adaptation reads the unlabelled rows from y.")
    return np.array([all(is_mask(v) for v in row) for row in rows])


def _is_minus_one(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and v == -1


def _is_nan(v) -> bool:
    return isinstance(v, float | np.floating) and np.isnan(v)


def _rows(y, n_images, if_none: str) -> np.ndarray:
    """``y`` as objects, one row per image (the length checked); ``if_none`` is the
    error when ``y`` is None."""
    if y is None:
        raise ValueError(if_none)
    values = _target_array(y)
    if len(values) != n_images:
        raise ValueError(
            f"X and y have different lengths: {n_images} images but {len(values)} labels."
        )
    return values.reshape(n_images, -1)


_EXPECTED_Y = (
    "an array-like of targets: 1-D (one per image) or 2-D (one row per image, all rows "
    "of the same length)"
)


def _target_array(y) -> np.ndarray:
    """``y`` as an array of objects, checked to be neither a single value nor ragged
    (rows of different lengths), which numpy would reject with an obscure error."""
    try:
        values = np.asarray(y, dtype=object)
    except ValueError as exc:  # nested arrays whose shapes do not broadcast
        raise ValueError(f"y must be {_EXPECTED_Y}; it could not be read as one: {exc}") from exc
    if values.ndim == 0:
        raise ValueError(
            f"y must be {_EXPECTED_Y}; got a single value, {reprlib.repr(y)} ({type(y).__name__})."
        )
    if values.ndim == 1:
        _check_not_ragged(values)
    return values


def _check_not_ragged(values: np.ndarray) -> None:
    """Raise if a 1-D ``y`` holds sequences: rows of different lengths, or rows in a 1-D
    container (a Series of lists)."""
    lengths = [_row_length(v) for v in values]
    if all(n is None for n in lengths):
        return
    odd = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
    if odd is None:
        raise ValueError(
            f"y is a 1-D container of rows (each a {type(values[0]).__name__} of "
            f"{lengths[0]} values); stack them into a 2-D array with one row per image, "
            "e.g. np.stack(list(y))."
        )
    raise ValueError(
        f"y is ragged: the row of image 0 holds {_count(lengths[0])} but the row of image "
        f"{odd} holds {_count(lengths[odd])}. y must be {_EXPECTED_Y}."
    )


def _row_length(v) -> int | None:
    """The length of a row of ``y`` that is a sequence (None for a single value)."""
    if isinstance(v, list | tuple) or (isinstance(v, np.ndarray) and v.ndim > 0):
        return len(v)
    return None


def _count(n: int | None) -> str:
    return "a single value" if n is None else f"{n} value{'s' if n != 1 else ''}"


def take_rows(y, rows: np.ndarray):
    """``y`` (array-like, Series or DataFrame) at ``rows``, keeping its kind (None stays
    None, for the target code to report)."""
    if y is None:
        return None
    if hasattr(y, "iloc"):
        return y.iloc[rows]
    _target_array(y)  # a single value or a ragged y, reported before numpy trips on it
    return np.asarray(y)[rows]


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
    if not w.max() > 0:
        raise ValueError("sample_weight sums to zero: at least one image must have weight > 0.")
    return w / w.max()  # relative weights are what count; 1e308 would overflow a sum


def training_weights(weights, train_idx, n_validation: int):
    """``weights`` scaled to a mean of 1 over the training rows ``train_idx``; raises
    when every training image has weight 0 (the others being the ``n_validation``
    images held out for validation)."""
    if weights is None:
        return None
    mean = weights[train_idx].mean()
    if not mean > 0:
        raise ValueError(
            f"sample_weight is 0 on every one of the {len(train_idx)} training images: the "
            f"images with weight > 0 are all among the {n_validation} held out for "
            "validation, so nothing would train. Give training images a weight > 0, or set "
            "validation_fraction=0."
        )
    return weights / mean


def source_weights(weights, source_rows: np.ndarray, n_target: int):
    """``weights`` of the labelled source rows; raises when they are all 0 (the weight
    being on the ``n_target`` unlabelled target images, whose weights are not used)."""
    if weights is None:
        return None
    weights = weights[source_rows]
    if not weights.max() > 0:
        raise ValueError(
            f"sample_weight is 0 on every one of the {len(source_rows)} labelled source "
            f"images: the images with weight > 0 are all among the {n_target} unlabelled "
            "target images (sample_domain < 0, or a label of -1 / NaN), whose weights are "
            "not used. Give source images a weight > 0."
        )
    return weights


def _check_labels(y, n_images) -> np.ndarray:
    """``y`` as objects, one row per image, after checking its length and that no label
    is None, NaN or infinite (the error names the first image without a label)."""
    rows = _rows(y, n_images, "FineTunedClassifier needs labels: y is None.")
    # Scan as objects: np.asarray would turn None or NaN among strings into classes.
    for i, row in enumerate(rows):
        for v in row:
            if v is None:
                raise ValueError(
                    f"y contains None (first for the image at index {i}); every image needs "
                    "a label."
                )
            if isinstance(v, float | np.floating) and not np.isfinite(v):
                raise ValueError(
                    f"y contains NaN or infinite values (first for the image at index {i})."
                )
    return rows


def _encode_labels(y):
    """Encode checked labels ``y``: (classes, encoded targets, is_multilabel)."""
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

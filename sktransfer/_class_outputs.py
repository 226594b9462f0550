"""From class probabilities to what a classifier returns (labels, label columns, a
score): one place for the fine-tuned classifier and its form served without torch."""

from __future__ import annotations

import numpy as np


def per_task(proba: np.ndarray, classes, multitask: bool):
    """``proba`` as ``predict_proba`` returns it: as is, or with several label columns
    one array per column (scikit-learn's ``MultiOutputClassifier`` convention), its
    columns following ``classes[t]``."""
    if not multitask:
        return proba
    sizes = [len(c) for c in classes]
    return np.split(proba, np.cumsum(sizes)[:-1], axis=1)


class LabelsFromProbabilities:
    """Mixin of classifiers: ``predict`` and ``score`` from ``predict_proba`` and the
    fitted ``classes_``, ``multilabel_`` and ``multitask_``."""

    def predict(self, X, sample_domain=None):
        """Predicted labels: 1-D, a 0/1 indicator matrix for multilabel targets, or one
        column per label column (multi-task). ``sample_domain`` is ignored, as in
        [`predict_proba`][sktransfer.FineTunedClassifier.predict_proba]."""
        proba = self.predict_proba(X)
        if self.multitask_:
            columns = [c[np.argmax(p, axis=1)] for c, p in zip(self.classes_, proba, strict=True)]
            return _side_by_side(columns)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on images ``X``: the mean accuracy of ``predict``, and with several
        label columns the subset accuracy (an image counts when every column is right),
        as ``MultiOutputClassifier.score``.

        Parameters
        ----------
        X : images
        y : array-like of shape (n_images,) or (n_images, n_outputs)
        sample_weight : array-like of shape (n_images,), default=None

        Returns
        -------
        score : float
        """
        if not getattr(self, "multitask_", False):
            return super().score(X, y, sample_weight=sample_weight)
        predicted = self.predict(X)
        truth = np.asarray(y, dtype=object)
        if truth.shape != predicted.shape:
            raise ValueError(
                f"y has shape {truth.shape} but this classifier predicts {predicted.shape[1]} "
                f"label columns for {len(predicted)} images; pass y of shape {predicted.shape}."
            )
        exact = np.ones(len(predicted), dtype=bool)
        for t in range(truth.shape[1]):  # as Python values: 0 == np.int64(0), "0" != 0
            pairs = zip(predicted[:, t].tolist(), truth[:, t].tolist(), strict=True)
            exact &= np.array([p == v for p, v in pairs], dtype=bool)
        return float(np.average(exact, weights=sample_weight))


def _side_by_side(columns: list[np.ndarray]) -> np.ndarray:
    """Label columns side by side, each keeping its own type: one array of their common
    dtype when they share one, else an object array (ints stay ints next to strings)."""
    if len({c.dtype for c in columns}) == 1:
        return np.column_stack(columns)
    out = np.empty((len(columns[0]), len(columns)), dtype=object)
    for t, column in enumerate(columns):
        out[:, t] = column.tolist() if column.dtype.kind in "biuf" else column
    return out

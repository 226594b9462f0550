"""Which images a fitted model gets most wrong: [`most_confused`][sktransfer.inspection.most_confused]
and [`TopLossesDisplay`][sktransfer.inspection.TopLossesDisplay].

matplotlib is an optional dependency (``pip install sktransfer[inspection]``); it is
imported only when something is plotted, never when this module is imported.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.base import is_classifier, is_regressor
from sklearn.utils.validation import check_is_fitted

from ._cam import class_activation_maps, overlay
from ._display import import_pyplot
from ._panels import check_maps, check_positive_int, format_value, panel_axes

_MIN_PROBABILITY = 1e-15  # log loss of a probability of 0 is infinite: clip it, as sklearn


def most_confused(y_true, y_pred, *, min_count=1):
    """Pairs of classes ranked by how often the model takes one for the other.

    As fastai's ``ClassificationInterpretation.most_confused``: the off-diagonal cells of
    the confusion matrix, largest first. Right predictions are left out.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        The true labels.
    y_pred : array-like of shape (n_images,)
        The predicted labels, e.g. ``estimator.predict(X)``.
    min_count : int, default=1
        Pairs seen fewer times are left out.

    Returns
    -------
    pairs : list of tuple
        ``(true_label, predicted_label, count)``, by count (largest first), then by true
        label, then by predicted label. Labels are Python scalars.

    Raises
    ------
    ValueError
        If ``y_true`` or ``y_pred`` is not 1-D, their lengths differ, or ``min_count`` is
        not a positive integer.

    See Also
    --------
    sklearn.metrics.confusion_matrix : Every cell, the right predictions included.
    TopLossesDisplay : The images the model gets most wrong.

    Examples
    --------
    >>> from sktransfer.inspection import most_confused
    >>> y_true = ["cat", "cat", "cat", "dog", "dog", "eel", "eel"]
    >>> y_pred = ["dog", "dog", "cat", "cat", "dog", "dog", "cat"]
    >>> most_confused(y_true, y_pred)
    [('cat', 'dog', 2), ('dog', 'cat', 1), ('eel', 'cat', 1), ('eel', 'dog', 1)]
    >>> most_confused(y_true, y_pred, min_count=2)
    [('cat', 'dog', 2)]
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred must hold one label per image each; got {len(y_true)} true "
            f"labels and {len(y_pred)} predicted labels."
        )
    check_positive_int(min_count, "min_count", "the smallest count of a pair to keep")
    pairs = Counter((t, p) for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True) if t != p)
    kept = [(t, p, count) for (t, p), count in pairs.items() if count >= min_count]
    return sorted(kept, key=lambda pair: (-pair[2], pair[0], pair[1]))


def _labels(y, name):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, one label per image; got an array of shape {y.shape}. "
            "Multilabel and multi-task targets are not supported: pass one task's column, "
            "e.g. y[:, 0]."
        )
    return y


class TopLossesDisplay:
    """The images a fitted model gets most wrong, with their labels and losses.

    Follows scikit-learn's display API: build it with
    [`from_estimator`][sktransfer.inspection.TopLossesDisplay.from_estimator] (which
    computes and plots), or from computed values and call
    [`plot`][sktransfer.inspection.TopLossesDisplay.plot]. One panel per image, titled
    ``true: dog / pred: cat (0.93) / loss 2.67``; with class activation maps, the map is
    drawn over the image.

    Plotting needs matplotlib: ``pip install sktransfer[inspection]``.

    Parameters
    ----------
    images : list of ndarray
        The images shown, uint8 RGB arrays of shape ``(h, w, 3)`` (or ``(h, w)``), of any
        sizes, worst first.
    losses : array-like of shape (n_shown,)
        The loss of each image: log loss for classifiers, squared error for regressors.
    y_true : array-like of shape (n_shown,)
        The true label (or target) of each image.
    y_pred : array-like of shape (n_shown,)
        The predicted label (or value) of each image.
    indices : array-like of shape (n_shown,) or None, default=None
        The position of each image in the estimator's input ``X``.
    probabilities : array-like of shape (n_shown,) or None, default=None
        The probability of the predicted class (classifiers); not shown when None.
    maps : list of ndarray or None, default=None
        A class activation map per image, float arrays in [0, 1] of the image's
        ``(h, w)``, drawn over it; images alone when None.
    estimator_name : str or None, default=None
        Name of the estimator, for the reader; not drawn.

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes
        The panels in reading order, one per image; panels beyond the images are hidden.
    figure_ : matplotlib Figure
        The figure holding the panels.

    See Also
    --------
    most_confused : The pairs of classes the model mixes up most.
    ClassActivationDisplay : Where the model looks, for any images.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktransfer.inspection import TopLossesDisplay
    >>> images = [np.zeros((32, 32, 3), np.uint8), np.full((24, 40, 3), 200, np.uint8)]
    >>> display = TopLossesDisplay(
    ...     images, losses=[2.67, 1.2], y_true=["dog", "cat"], y_pred=["cat", "dog"],
    ...     probabilities=[0.93, 0.7],
    ... ).plot(ncols=3)
    >>> [ax.get_title() for ax in display.ax_ if ax.get_visible()]
    ['true: dog / pred: cat (0.93) / loss 2.67', 'true: cat / pred: dog (0.70) / loss 1.20']
    >>> import matplotlib.pyplot as plt
    >>> plt.close(display.figure_)
    """

    def __init__(
        self,
        images,
        losses,
        y_true,
        y_pred,
        *,
        indices=None,
        probabilities=None,
        maps=None,
        estimator_name=None,
    ):
        self.images = images
        self.losses = losses
        self.y_true = y_true
        self.y_pred = y_pred
        self.indices = indices
        self.probabilities = probabilities
        self.maps = maps
        self.estimator_name = estimator_name

    @classmethod
    def from_estimator(
        cls, estimator, X, y, *, k=9, cam=False, method="gradcam", layer="auto", ncols=3, ax=None
    ):
        """Find the ``k`` images of ``X`` with the largest losses, and plot them.

        Classifiers (anything with ``predict_proba`` and ``classes_``, a Pipeline
        included) are scored by log loss, ``-log(p)`` with ``p`` the probability of the
        true class (clipped at 1e-15); the predicted class is the most probable one, so
        the model runs once. Regressors are scored by squared error. Only the ``k`` images
        shown are decoded for display.

        Parameters
        ----------
        estimator : fitted classifier or regressor
            Takes ``X`` as given: a FineTunedClassifier, a FineTunedRegressor, or a
            Pipeline that begins with a PretrainedFeatureExtractor.
        X : images
            Any image input sktransfer accepts.
        y : array-like of shape (n_images,)
            The true labels (classifiers) or targets (regressors).
        k : int, default=9
            How many images to show, at most the number of images in ``X``.
        cam : bool, default=False
            Draw over each image its class activation map (needs ``grad-cam``): where
            the model looked **for the class it predicted** (for regressors, for its
            output), which shows what misled it. See
            [`class_activation_maps`][sktransfer.inspection.class_activation_maps].
        method : str, default="gradcam"
            The CAM method, when ``cam`` is True.
        layer : str, default="auto"
            The layer the maps are computed at, when ``cam`` is True.
        ncols : int, default=3
            Panels per row.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            At least ``k`` Axes (a single Axes when ``k`` is 1); a new figure when None.

        Returns
        -------
        display : TopLossesDisplay
            The plotted display; ``indices`` holds the positions in ``X``, worst first.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        ValueError
            If ``k`` is not a positive integer or is larger than the number of images,
            ``y`` does not hold one label per image, a label of ``y`` is not among the
            classifier's ``classes_``, or the estimator is multilabel or multi-task.
        TypeError
            If the estimator is a classifier without ``predict_proba``.
        """
        from ._images import as_images

        check_is_fitted(estimator)
        _check_single_task(estimator)
        source = as_images(X)
        _check_k(k, len(source))
        if _is_regression(estimator):
            scored = _regression_losses(estimator, X, y, len(source))
        else:
            scored = _classification_losses(estimator, X, y, len(source))
        losses, y_true, y_pred, probabilities = scored
        indices = np.argsort(-losses, kind="stable")[:k]
        images = [np.asarray(source.load(int(i))) for i in indices]
        y_pred = y_pred[indices]
        maps = _cam_maps(estimator, images, y_pred, probabilities, method, layer) if cam else None
        display = cls(
            images,
            losses[indices],
            y_true[indices],
            y_pred,
            indices=indices,
            probabilities=None if probabilities is None else probabilities[indices],
            maps=maps,
            estimator_name=type(estimator).__name__,
        )
        return display.plot(ax=ax, ncols=ncols)

    def plot(self, *, ax=None, ncols=3):
        """Plot one panel per image, worst first.

        Parameters
        ----------
        ax : matplotlib Axes, array-like of Axes or None, default=None
            At least one Axes per image (a single Axes for one image), used in reading
            order, those left over hidden; a new figure when None.
        ncols : int, default=3
            Panels per row of a new figure; ignored when ``ax`` is given.

        Returns
        -------
        self : TopLossesDisplay
            With ``ax_`` and ``figure_`` set.

        Raises
        ------
        ValueError
            If the values given do not hold one entry per image, ``ncols`` is not a
            positive integer, or ``ax`` holds too few Axes.
        ImportError
            If matplotlib is not installed.
        """
        images = list(self.images)
        titles = self._titles(len(images))
        maps = check_maps(self.maps, images)
        plt = import_pyplot(type(self).__name__, "inspection")
        axes = panel_axes(len(images), ncols, ax, plt)
        for i, (panel, image, title) in enumerate(zip(axes, images, titles, strict=False)):
            panel.imshow(image if maps is None else overlay(image, maps[i]))
            panel.set_title(title, fontsize="small")
        self.ax_, self.figure_ = axes, axes[0].figure
        return self

    def _titles(self, n):
        columns = {"losses": self.losses, "y_true": self.y_true, "y_pred": self.y_pred}
        if self.probabilities is not None:
            columns["probabilities"] = self.probabilities
        columns = {name: _column(values, name, n) for name, values in columns.items()}
        titles = []
        for i in range(n):
            pred = format_value(columns["y_pred"][i])
            if "probabilities" in columns:
                pred += f" ({columns['probabilities'][i]:.2f})"
            true, loss = format_value(columns["y_true"][i]), columns["losses"][i]
            titles.append(f"true: {true} / pred: {pred} / loss {loss:.2f}")
        return titles


def _check_single_task(estimator):
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    for kind in ("multitask", "multilabel"):
        if getattr(estimator, f"{kind}_", False) or getattr(final, f"{kind}_", False):
            raise ValueError(
                f"TopLossesDisplay does not support {kind} classifiers yet: it ranks images "
                "by the loss of one label each. Fit a classifier on one label column to "
                "inspect it."
            )


def _check_k(k, n_images):
    check_positive_int(k, "k", "the number of images to show")
    if k > n_images:
        raise ValueError(f"k={k} but X has {n_images} images; pass k <= {n_images}.")


def _is_regression(estimator):
    if is_regressor(estimator):
        return True
    if hasattr(estimator, "predict_proba"):
        return False
    if is_classifier(estimator):
        raise TypeError(
            f"TopLossesDisplay ranks a classifier's images by log loss, which needs "
            f"predict_proba; {type(estimator).__name__} has none. Use a classifier with "
            "predict_proba (e.g. LogisticRegression, or SVC(probability=True))."
        )
    return True  # no probabilities and not a classifier: score its predictions


def _check_length(y, n_images):
    if len(y) != n_images:
        raise ValueError(
            f"y has {len(y)} entries but X has {n_images} images; pass one label (or "
            "target) per image."
        )


def _classification_losses(estimator, X, y, n_images):
    """Log loss, true labels, predicted labels and their probabilities, per image."""
    y = _labels(y, "y")
    _check_length(y, n_images)
    classes = np.asarray(estimator.classes_)
    columns = _class_columns(y, classes)  # before predicting: a wrong label fails fast
    proba = estimator.predict_proba(X)
    if isinstance(proba, list) or np.ndim(proba) != 2:
        raise ValueError(
            "TopLossesDisplay does not support multi-output classifiers yet: predict_proba "
            "must return one (n_images, n_classes) array."
        )
    proba = np.asarray(proba, dtype=np.float64)
    p_true = proba[np.arange(n_images), columns]
    losses = -np.log(np.clip(p_true, _MIN_PROBABILITY, 1.0))
    predicted = np.argmax(proba, axis=1)
    return losses, y, classes[predicted], proba[np.arange(n_images), predicted]


def _class_columns(y, classes):
    """The column of ``predict_proba`` of each label of ``y``."""
    position = {label: i for i, label in enumerate(classes.tolist())}
    unknown = sorted({label for label in y.tolist() if label not in position}, key=repr)
    if unknown:
        raise ValueError(
            f"y holds labels the classifier does not know: {unknown}; its classes_ are "
            f"{classes.tolist()}. Pass the labels the estimator was fitted on."
        )
    return np.asarray([position[label] for label in y.tolist()], dtype=np.int64)


def _regression_losses(estimator, X, y, n_images):
    """Squared error, true targets and predictions per image (no probabilities)."""
    y = _targets(y, "y")
    _check_length(y, n_images)
    predicted = _targets(estimator.predict(X), "the estimator's predictions")
    return (y - predicted) ** 2, y, predicted, None


def _targets(values, name):
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, one target per image; got an array of shape "
            f"{values.shape}. Multi-output regressors are not supported yet."
        )
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers (a regressor's targets); got {values.dtype}.")
    return values.astype(np.float64)


def _cam_maps(estimator, images, y_pred, probabilities, method, layer):
    """Where the model looked for what it predicted (classifiers), or for its output."""
    target = None if probabilities is None else list(y_pred)
    return class_activation_maps(estimator, images, target=target, method=method, layer=layer)


def _column(values, name, n):
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(
            f"{name} must hold one value per image ({n}); got an array of shape {values.shape}."
        )
    return values

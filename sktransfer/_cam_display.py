"""Where a fitted model looks: [`ClassActivationDisplay`][sktransfer.inspection.ClassActivationDisplay].

matplotlib is an optional dependency (``pip install sktransfer[inspection]``); it is
imported only when something is plotted, never when this module is imported.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import is_regressor

from . import _cam
from ._display import import_pyplot
from ._panels import check_maps, check_positive_int, format_value, panel_axes

_MAP_TITLE = "class activation map"


class ClassActivationDisplay:
    """Class activation maps: where a fitted model looks in each image.

    Follows scikit-learn's display API: build it with
    [`from_estimator`][sktransfer.inspection.ClassActivationDisplay.from_estimator] (which
    computes the maps and plots), or from images and maps and call
    [`plot`][sktransfer.inspection.ClassActivationDisplay.plot]. Each image is drawn with
    its map as a heat map over it (red where the model looked most), or beside it; the
    title names the target explained and the model's score for it.

    Plotting needs matplotlib: ``pip install sktransfer[inspection]``.

    Parameters
    ----------
    images : list of ndarray
        uint8 RGB arrays of shape ``(h, w, 3)`` (or ``(h, w)``), of any sizes.
    maps : list of ndarray
        One map per image, float arrays in [0, 1] of the image's ``(h, w)``.
    targets : array-like of shape (n_images,) or None, default=None
        The target each map explains (a class label, an output index); not shown when
        None.
    scores : array-like of shape (n_images,) or None, default=None
        The model's score for each target: the probability of the class (classifiers),
        the predicted value (regressors); not shown when None.
    score_name : str, default="score"
        What the scores are, shown before each of them: ``"probability"``,
        ``"predicted"``.

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes
        The panels in reading order: one per image with ``overlay=True``, otherwise two
        (the image, then its map); panels beyond them are hidden.
    figure_ : matplotlib Figure
        The figure holding the panels.

    See Also
    --------
    class_activation_maps : The maps alone, as arrays.
    TopLossesDisplay : The images the model gets most wrong, optionally with their maps.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktransfer.inspection import ClassActivationDisplay
    >>> image = np.full((32, 48, 3), 120, np.uint8)
    >>> cam = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    >>> display = ClassActivationDisplay(
    ...     [image], [cam], targets=["cat"], scores=[0.91], score_name="probability"
    ... ).plot(overlay=False)
    >>> [ax.get_title() for ax in display.ax_]
    ['cat: probability 0.91', 'class activation map']
    >>> import matplotlib.pyplot as plt
    >>> plt.close(display.figure_)
    """

    def __init__(self, images, maps, *, targets=None, scores=None, score_name="score"):
        self.images = images
        self.maps = maps
        self.targets = targets
        self.scores = scores
        self.score_name = score_name

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        *,
        target=None,
        method="gradcam",
        layer="auto",
        overlay=True,
        alpha=0.5,
        ncols=None,
        ax=None,
    ):
        """Compute the class activation maps of ``X`` and plot them.

        The maps are those of
        [`class_activation_maps`][sktransfer.inspection.class_activation_maps], which
        lists the estimators it supports. Each image is decoded once, for its map and
        its panel, at its own size.

        Parameters
        ----------
        estimator : fitted estimator
            A FineTunedClassifier, a FineTunedRegressor, a PretrainedFeatureExtractor
            with ``layer="logits"``, or a Pipeline of an extractor and a linear classifier.
        X : images
            Any image input sktransfer accepts; keep it to a few images.
        target : label, list of labels, int or None, default=None
            What to explain: a class label (or one per image) for classifiers, an output
            index for regressors, an ImageNet index for an extractor; None explains the
            predicted class (the first output of a regressor).
        method : str, default="gradcam"
            The CAM method.
        layer : str, default="auto"
            The layer the maps are computed at.
        overlay : bool, default=True
            Draw each map over its image (one panel per image), else beside it.
        alpha : float, default=0.5
            Opacity of the heat map over the image, with ``overlay=True``.
        ncols : int or None, default=None
            Images per row (each takes two panels with ``overlay=False``); None: up to 4
            with ``overlay=True``, up to 2 otherwise.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            At least one Axes per panel; a new figure when None.

        Returns
        -------
        display : ClassActivationDisplay
            The plotted display.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        ValueError, TypeError
            See [`class_activation_maps`][sktransfer.inspection.class_activation_maps].
        """
        explainer = _cam.Explainer(estimator, method=method, layer=layer)
        explanation = explainer.explain(X, target, images=True)
        images = [np.asarray(image) for image in explanation.images]
        display = cls(
            images,
            explanation.maps,
            targets=explanation.targets,
            scores=explanation.scores,
            score_name="predicted" if is_regressor(estimator) else "probability",
        )
        return display.plot(overlay=overlay, alpha=alpha, ncols=ncols, ax=ax)

    def plot(self, *, overlay=True, alpha=0.5, ncols=None, ax=None):
        """Plot each image with its map, over it or beside it.

        Parameters
        ----------
        overlay : bool, default=True
            Draw each map over its image (one panel per image), else beside it (two
            panels per image: the image, titled, then its map).
        alpha : float, default=0.5
            Opacity of the heat map over the image, with ``overlay=True``.
        ncols : int or None, default=None
            Images per row of a new figure (each takes two panels with
            ``overlay=False``); None: up to 4 with ``overlay=True``, up to 2 otherwise.
            Ignored when ``ax`` is given.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            At least one Axes per panel, used in reading order, those left over hidden; a
            new figure when None.

        Returns
        -------
        self : ClassActivationDisplay
            With ``ax_`` and ``figure_`` set.

        Raises
        ------
        ValueError
            If ``maps``, ``targets`` or ``scores`` do not hold one entry per image, a map
            is not at its image's size, ``ncols`` is not a positive integer, or ``ax``
            holds too few Axes.
        ImportError
            If matplotlib is not installed.
        """
        images = list(self.images)
        if self.maps is None:
            raise ValueError("maps is None: a ClassActivationDisplay needs one map per image.")
        maps = check_maps(self.maps, images)
        titles = self._titles(len(images))
        per_image = 1 if overlay else 2
        columns = _panels_per_row(ncols, len(images), overlay) * per_image
        plt = import_pyplot(type(self).__name__, "inspection")
        axes = panel_axes(len(images) * per_image, columns, ax, plt)
        for i, (image, cam, title) in enumerate(zip(images, maps, titles, strict=True)):
            if overlay:
                _draw_overlay(axes[i], image, cam, alpha, title)
            else:
                _draw_side_by_side(axes[2 * i], axes[2 * i + 1], image, cam, title)
        self.ax_, self.figure_ = axes, axes[0].figure
        return self

    def _titles(self, n):
        targets = _optional_column(self.targets, "targets", n)
        scores = _optional_column(self.scores, "scores", n)
        titles = []
        for i in range(n):
            target = "" if targets is None else format_value(targets[i])
            score = "" if scores is None else f"{self.score_name} {scores[i]:.2f}"
            titles.append(": ".join(part for part in (target, score) if part))
        return titles


def _panels_per_row(ncols, n_images, overlay):
    """Images per row: ``ncols``, or up to 4 (overlay) or 2 (side by side)."""
    if ncols is None:
        return min(n_images, 4 if overlay else 2) or 1
    check_positive_int(ncols, "ncols", "the number of images per row")
    return ncols


def _optional_column(values, name, n):
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} must hold one entry per image; got {len(values)} for {n} images.")
    return values


def _draw_overlay(panel, image, cam, alpha, title):
    panel.imshow(_cam.overlay(image, cam, alpha=alpha))
    panel.set_title(title, fontsize="small")


def _draw_side_by_side(image_panel, map_panel, image, cam, title):
    image_panel.imshow(image)
    image_panel.set_title(title, fontsize="small")
    map_panel.imshow(cam, cmap="jet", vmin=0.0, vmax=1.0)
    map_panel.set_title(_MAP_TITLE, fontsize="small")

"""Learning curves of a fitted fine-tuner ([`FineTunedClassifier`][sktransfer.FineTunedClassifier],
[`FineTunedRegressor`][sktransfer.FineTunedRegressor]).

matplotlib is an optional dependency (``pip install sktransfer[plots]``); it is imported
only when something is plotted, never when ``sktransfer`` is imported.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

# panel -> (y-axis label, series keys of ``history_`` plotted on it, legend labels)
_PANELS = {
    "loss": ("Loss", {"train_loss": "train", "valid_loss": "validation"}),
    "accuracy": ("Accuracy", {"train_acc": "train", "valid_acc": "validation"}),
}
_STAGE_LABEL = "fine-tuning starts"


class TrainingHistoryDisplay:
    """Learning curves: per-epoch losses and accuracies of a fitted fine-tuner.

    Follows scikit-learn's display API: build it with
    [`from_estimator`][sktransfer.TrainingHistoryDisplay.from_estimator] (which plots), or from a
    history list and call [`plot`][sktransfer.TrainingHistoryDisplay.plot]. One panel is drawn per
    metric, with epochs on the x axis and a dashed vertical line where the fine-tuning stage starts
    (between the last ``"head"`` epoch and the first ``"finetune"`` epoch).

    Plotting needs matplotlib: ``pip install sktransfer[plots]``.

    Parameters
    ----------
    history : list of dict
        Per-epoch records, as in ``FineTunedClassifier.history_``: ``epoch`` (1-based,
        counted across stages; the record's position when absent), ``stage`` (``"head"``
        or ``"finetune"``), ``train_loss`` and, when recorded, ``train_acc``,
        ``valid_loss`` and ``valid_acc``. Missing keys and ``None`` values are skipped.
    estimator_name : str or None, default=None
        Name shown in the panel titles; no name when None.

    Attributes
    ----------
    ax_ : matplotlib Axes or ndarray of Axes
        The panels: a single Axes when one metric is plotted, an array otherwise.
    figure_ : matplotlib Figure
        The figure holding the panels.
    lines_ : dict
        ``{metric: {series: Line2D}}``, e.g. ``lines_["loss"]["valid_loss"]``; a series
        absent from the history has no entry.
    stage_lines_ : dict
        ``{metric: Line2D}``: the dashed stage boundary of each panel; empty when the
        history has a single stage.

    See Also
    --------
    sklearn.model_selection.LearningCurveDisplay : Scores against training-set size.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sktransfer import TrainingHistoryDisplay
    >>> history = [
    ...     {"epoch": 1, "stage": "head", "train_loss": 0.69, "valid_loss": 0.66,
    ...      "valid_acc": 0.6},
    ...     {"epoch": 2, "stage": "finetune", "train_loss": 0.52, "valid_loss": 0.55,
    ...      "valid_acc": 0.7},
    ...     {"epoch": 3, "stage": "finetune", "train_loss": 0.41, "valid_loss": 0.50,
    ...      "valid_acc": 0.8},
    ... ]
    >>> display = TrainingHistoryDisplay(history).plot()
    >>> sorted(display.lines_["loss"]), sorted(display.lines_["accuracy"])
    (['train_loss', 'valid_loss'], ['valid_acc'])
    >>> float(display.stage_lines_["loss"].get_xdata()[0])
    1.5
    >>> import matplotlib.pyplot as plt
    >>> plt.close(display.figure_)
    """

    def __init__(self, history, *, estimator_name=None):
        self.history = history
        self.estimator_name = estimator_name

    @classmethod
    def from_estimator(cls, estimator, *, ax=None, metrics=None):
        """Plot the learning curves of a fitted estimator from its ``history_``.

        Parameters
        ----------
        estimator : FineTunedClassifier or FineTunedRegressor
            A fitted estimator with a ``history_`` attribute.
        ax : matplotlib Axes, sequence of Axes or None, default=None
            One Axes per metric (a single Axes when ``metrics`` has one metric); a new
            figure with one panel per metric when None.
        metrics : str, sequence of {"loss", "accuracy"} or None, default=None
            None: loss, and accuracy when the history has it (classifiers).
            The panels, in order.

        Returns
        -------
        display : TrainingHistoryDisplay
            The plotted display.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        TypeError
            If it has no ``history_`` (it is not a fine-tuner).
        ValueError
            See [`plot`][sktransfer.TrainingHistoryDisplay.plot].
        """
        check_is_fitted(estimator)
        history = getattr(estimator, "history_", None)
        if history is None:
            raise TypeError(
                f"{cls.__name__}.from_estimator needs an estimator with a history_ "
                f"attribute (a fitted FineTunedClassifier or FineTunedRegressor); got {type(estimator).__name__}."
            )
        display = cls(history, estimator_name=type(estimator).__name__)
        return display.plot(ax=ax, metrics=metrics)

    def plot(self, ax=None, *, metrics=None):
        """Plot the learning curves.

        Parameters
        ----------
        ax : matplotlib Axes, sequence of Axes or None, default=None
            One Axes per metric (a single Axes when ``metrics`` has one metric); a new
            figure with one panel per metric when None.
        metrics : str, sequence of {"loss", "accuracy"} or None, default=None
            None: loss, and accuracy when the history has it (classifiers).
            The panels, in order: ``"loss"`` draws ``train_loss`` and ``valid_loss``,
            ``"accuracy"`` draws ``train_acc`` and ``valid_acc``, those present.

        Returns
        -------
        self : TrainingHistoryDisplay
            With ``ax_``, ``figure_``, ``lines_`` and ``stage_lines_`` set.

        Raises
        ------
        ValueError
            If the history has no epochs, ``metrics`` is invalid, a metric has no values
            in the history, or ``ax`` does not hold one Axes per metric.
        ImportError
            If matplotlib is not installed.
        """
        epochs, records = _check_history(self.history)
        metrics = _check_metrics(metrics, records)
        series = {metric: _metric_series(metric, epochs, records) for metric in metrics}
        boundary = _stage_boundary(epochs, records)
        plt = import_pyplot(type(self).__name__)
        axes = _check_axes(ax, metrics, plt)
        self.lines_, self.stage_lines_ = {}, {}
        for metric, panel in zip(metrics, axes, strict=True):
            self.lines_[metric] = _draw_series(panel, metric, series[metric])
            if boundary is not None:
                self.stage_lines_[metric] = panel.axvline(
                    boundary, color="grey", linestyle="--", label=_STAGE_LABEL
                )
            self._decorate(panel, metric)
        self.ax_ = axes[0] if len(metrics) == 1 else axes
        self.figure_ = axes[0].figure
        return self

    def _decorate(self, panel, metric):
        from matplotlib.ticker import MaxNLocator

        ylabel = _PANELS[metric][0]
        title = ylabel if self.estimator_name is None else f"{self.estimator_name}: {ylabel}"
        panel.set(xlabel="Epoch", ylabel=ylabel, title=title)
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.legend()


def import_pyplot(owner: str, extra: str = "plots"):
    """matplotlib.pyplot, or an ImportError saying that ``owner`` needs it and which
    extra of sktransfer installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{owner} needs matplotlib, which is not installed: pip install sktransfer[{extra}]"
        ) from exc
    return plt


def _check_history(history):
    """Return the epochs (floats) and the records; raise on an empty or malformed history."""
    if isinstance(history, dict) or not hasattr(history, "__len__"):
        raise TypeError(
            f"history must be a list of dicts (one per epoch); got {type(history).__name__}."
        )
    records = list(history)
    if not records:
        raise ValueError(
            "The history is empty: the estimator trained for zero epochs, there is no "
            "learning curve to plot."
        )
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"history[{i}] must be a dict; got {type(record).__name__}.")
    epochs = [record.get("epoch", i + 1) for i, record in enumerate(records)]
    return np.asarray(epochs, dtype=float), records


def _check_metrics(metrics, records):
    if metrics is None:  # accuracy where it was recorded (classifiers), loss always
        recorded = any(r.get(k) is not None for r in records for k in _PANELS["accuracy"][1])
        return ("loss", "accuracy") if recorded else ("loss",)
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in _PANELS]
    if not metrics or unknown or len(set(metrics)) != len(metrics):
        raise ValueError(
            f"metrics must be one or more distinct names among {sorted(_PANELS)}; got {metrics!r}."
        )
    return metrics


def _metric_series(metric, epochs, records):
    """``{series key: (epochs, values)}`` for the keys of ``metric`` found in the records."""
    series = {}
    for key in _PANELS[metric][1]:
        idx = [i for i, r in enumerate(records) if r.get(key) is not None]
        if idx:
            values = np.asarray([records[i][key] for i in idx], dtype=float)
            series[key] = (epochs[idx], values)
    if series:
        return series
    keys = " or ".join(_PANELS[metric][1])
    hint = (
        " valid_acc is recorded when the estimator holds out a validation split: fit it "
        "with validation_fraction > 0, or plot metrics=('loss',)."
        if metric == "accuracy"
        else ""
    )
    raise ValueError(f"The history has no {metric} values ({keys}) to plot.{hint}")


def _stage_boundary(epochs, records):
    """Midpoint between the last head epoch and the first finetune epoch, or None."""
    stages = np.asarray([record.get("stage") for record in records], dtype=object)
    head, finetune = epochs[stages == "head"], epochs[stages == "finetune"]
    if head.size == 0 or finetune.size == 0:
        return None
    return float((head.max() + finetune.min()) / 2)


def _check_axes(ax, metrics, plt):
    """One Axes per metric, as a 1-D object array; a new figure when ``ax`` is None."""
    n = len(metrics)
    if ax is None:
        _, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False, layout="constrained")
        return axes.ravel()
    from matplotlib.axes import Axes

    axes = np.empty(1, dtype=object)
    if isinstance(ax, Axes):
        axes[0] = ax
    else:
        axes = np.asarray(ax, dtype=object).ravel()
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        expected = "a single matplotlib Axes" if n == 1 else f"a sequence of {n} Axes"
        raise ValueError(
            f"ax must be {expected}, one per metric {list(metrics)}; got "
            f"{len(axes)} object(s) of type {sorted({type(a).__name__ for a in axes})}."
        )
    return axes


def _draw_series(panel, metric, series):
    labels = _PANELS[metric][1]
    lines = {}
    for key, (x, y) in series.items():
        (lines[key],) = panel.plot(x, y, marker="o", label=labels[key])
    return lines

"""TrainingHistoryDisplay: learning curves drawn from ``FineTunedClassifier.history_``."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from sktransfer import FineTunedClassifier, TrainingHistoryDisplay

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def make_history(head=1, finetune=2, valid=True, accuracy=True):
    """A hand-built history: ``head`` head epochs then ``finetune`` finetune epochs."""
    history = []
    for i in range(head + finetune):
        record = {
            "epoch": i + 1,
            "stage": "head" if i < head else "finetune",
            "train_loss": 1.0 / (i + 1),
            "dur": 0.1,
        }
        if accuracy:
            record["train_acc"] = 0.5 + 0.01 * i
        if valid:
            record["valid_loss"] = 1.5 / (i + 1)
            record["valid_acc"] = 0.4 + 0.02 * i
        history.append(record)
    return history


def assert_line_is(line, history, key):
    kept = [r for r in history if r.get(key) is not None]
    np.testing.assert_array_equal(line.get_xdata(), [r["epoch"] for r in kept])
    np.testing.assert_array_equal(line.get_ydata(), [r[key] for r in kept])


def test_lines_equal_history():
    history = make_history()
    display = TrainingHistoryDisplay(history).plot()
    assert set(display.lines_) == {"loss", "accuracy"}
    assert set(display.lines_["loss"]) == {"train_loss", "valid_loss"}
    assert set(display.lines_["accuracy"]) == {"train_acc", "valid_acc"}
    for series in display.lines_.values():
        for key, line in series.items():
            assert_line_is(line, history, key)


def test_fitted_attributes_default_axes():
    display = TrainingHistoryDisplay(make_history(), estimator_name="Clf").plot()
    assert isinstance(display.ax_, np.ndarray) and display.ax_.shape == (2,)
    assert all(isinstance(ax, Axes) for ax in display.ax_)
    assert isinstance(display.figure_, Figure)
    assert all(ax.figure is display.figure_ for ax in display.ax_)
    assert [ax.get_ylabel() for ax in display.ax_] == ["Loss", "Accuracy"]
    assert [ax.get_xlabel() for ax in display.ax_] == ["Epoch", "Epoch"]
    assert [ax.get_title() for ax in display.ax_] == ["Clf: Loss", "Clf: Accuracy"]


def test_init_only_stores():
    history = make_history()
    display = TrainingHistoryDisplay(history, estimator_name="x")
    assert display.history is history and display.estimator_name == "x"
    assert not hasattr(display, "ax_")


@pytest.mark.parametrize(("head", "boundary"), [(1, 1.5), (3, 3.5)])
def test_stage_boundary_on_every_panel(head, boundary):
    display = TrainingHistoryDisplay(make_history(head=head)).plot()
    assert set(display.stage_lines_) == {"loss", "accuracy"}
    for metric, ax in zip(("loss", "accuracy"), display.ax_, strict=True):
        line = display.stage_lines_[metric]
        assert list(line.get_xdata()) == [boundary, boundary]
        assert line.get_linestyle() == "--"
        assert line in ax.get_lines()
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "fine-tuning starts" in legend


@pytest.mark.parametrize(("head", "finetune"), [(0, 3), (3, 0)])
def test_single_stage_has_no_boundary(head, finetune):
    display = TrainingHistoryDisplay(make_history(head=head, finetune=finetune)).plot()
    assert display.stage_lines_ == {}
    for ax in display.ax_:
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "fine-tuning starts" not in legend


def test_missing_series_are_absent():
    history = make_history(valid=False)
    display = TrainingHistoryDisplay(history).plot()
    assert set(display.lines_["loss"]) == {"train_loss"}
    assert set(display.lines_["accuracy"]) == {"train_acc"}
    assert_line_is(display.lines_["loss"]["train_loss"], history, "train_loss")


def test_none_values_are_skipped():
    history = make_history(head=2, finetune=2)
    history[1]["valid_loss"] = None
    del history[2]["valid_acc"]
    display = TrainingHistoryDisplay(history).plot()
    np.testing.assert_array_equal(display.lines_["loss"]["valid_loss"].get_xdata(), [1, 3, 4])
    np.testing.assert_array_equal(display.lines_["accuracy"]["valid_acc"].get_xdata(), [1, 2, 4])
    assert_line_is(display.lines_["loss"]["valid_loss"], history, "valid_loss")


def test_single_metric_gives_single_axes():
    display = TrainingHistoryDisplay(make_history()).plot(metrics=("loss",))
    assert isinstance(display.ax_, Axes)
    assert set(display.lines_) == {"loss"} and set(display.stage_lines_) == {"loss"}
    display = TrainingHistoryDisplay(make_history()).plot(metrics="accuracy")
    assert isinstance(display.ax_, Axes) and display.ax_.get_ylabel() == "Accuracy"


def test_metrics_order_follows_argument():
    display = TrainingHistoryDisplay(make_history()).plot(metrics=["accuracy", "loss"])
    assert [ax.get_ylabel() for ax in display.ax_] == ["Accuracy", "Loss"]


def test_given_single_axes():
    fig, ax = plt.subplots()
    display = TrainingHistoryDisplay(make_history()).plot(ax=ax, metrics=("loss",))
    assert display.ax_ is ax and display.figure_ is fig
    assert display.lines_["loss"]["train_loss"] in ax.get_lines()


@pytest.mark.parametrize("container", [list, tuple, np.asarray])
def test_given_sequence_of_axes(container):
    fig, axes = plt.subplots(2, 1)
    display = TrainingHistoryDisplay(make_history()).plot(ax=container(list(axes)))
    assert list(display.ax_) == list(axes) and display.figure_ is fig
    assert display.lines_["accuracy"]["valid_acc"] in axes[1].get_lines()


def test_given_2d_array_of_axes():
    _, axes = plt.subplots(1, 2, squeeze=False)
    display = TrainingHistoryDisplay(make_history()).plot(ax=axes)
    assert list(display.ax_) == list(axes.ravel())


def test_wrong_number_of_axes():
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"ax must be a sequence of 2 Axes, one per metric"):
        TrainingHistoryDisplay(make_history()).plot(ax=ax)
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match=r"ax must be a sequence of 2 Axes.*got 3"):
        TrainingHistoryDisplay(make_history()).plot(ax=axes)
    _, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match=r"ax must be a single matplotlib Axes"):
        TrainingHistoryDisplay(make_history()).plot(ax=axes, metrics="loss")
    with pytest.raises(ValueError, match=r"ax must be a single matplotlib Axes"):
        TrainingHistoryDisplay(make_history()).plot(ax="not an axes", metrics="loss")


def test_zero_epochs():
    with pytest.raises(ValueError, match="trained for zero epochs"):
        TrainingHistoryDisplay([]).plot()


@pytest.mark.parametrize("history", [{"epoch": 1}, 3, [1, 2]])
def test_history_not_a_list_of_dicts(history):
    with pytest.raises(TypeError, match="must be a"):
        TrainingHistoryDisplay(history).plot()


def test_no_accuracy_names_validation_fraction():
    history = make_history(valid=False, accuracy=False)
    with pytest.raises(ValueError, match=r"no accuracy values.*validation_fraction > 0"):
        TrainingHistoryDisplay(history).plot(metrics=("loss", "accuracy"))
    display = TrainingHistoryDisplay(history).plot(metrics=("loss",))
    assert set(display.lines_["loss"]) == {"train_loss"}


def test_default_metrics_are_those_recorded():
    """A regressor records no accuracy: by default it gets the loss panel alone."""
    display = TrainingHistoryDisplay(make_history(accuracy=False, valid=False)).plot()
    assert set(display.lines_) == {"loss"}
    display = TrainingHistoryDisplay(make_history()).plot()
    assert set(display.lines_) == {"loss", "accuracy"}


def test_no_loss():
    history = [{"epoch": 1, "stage": "head", "valid_acc": 0.5}]
    with pytest.raises(ValueError, match="no loss values"):
        TrainingHistoryDisplay(history).plot(metrics="loss")


@pytest.mark.parametrize("metrics", [(), ("loss", "loss"), ("f1",), "auc"])
def test_invalid_metrics(metrics):
    with pytest.raises(ValueError, match=r"metrics must be one or more distinct names"):
        TrainingHistoryDisplay(make_history()).plot(metrics=metrics)


def test_errors_before_drawing():
    """Invalid input raises before a figure is created."""
    with pytest.raises(ValueError):
        TrainingHistoryDisplay(make_history(accuracy=False, valid=False)).plot(
            metrics=("loss", "accuracy")
        )
    assert plt.get_fignums() == []


def test_matplotlib_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install sktransfer\[plots\]"):
        TrainingHistoryDisplay(make_history()).plot()


@pytest.mark.parametrize(
    "module",
    # sktransfer.inspection imports both inspection displays (and sktransfer._cam)
    ["sktransfer", "sktransfer.inspection"],
)
def test_import_does_not_import_matplotlib(module):
    code = f"import sys, {module}; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_estimator_not_fitted():
    with pytest.raises(NotFittedError):
        TrainingHistoryDisplay.from_estimator(FineTunedClassifier("test_efficientnet"))


def test_from_estimator_without_history():
    clf = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(TypeError, match=r"needs an estimator with a history_.*LogisticRegression"):
        TrainingHistoryDisplay.from_estimator(clf)


@pytest.mark.usefixtures("one_torch_thread")
def test_from_fitted_estimator():
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    clf = FineTunedClassifier(
        model="test_efficientnet",
        weights=None,
        image_size=32,
        head_epochs=1,
        max_epochs=2,
        batch_size=8,
        device="cpu",
        random_state=0,
        validation_fraction=0.25,
    ).fit(images, np.array([0, 1] * 8))
    display = TrainingHistoryDisplay.from_estimator(clf)
    assert display.history is clf.history_
    assert display.estimator_name == "FineTunedClassifier"
    assert [r["stage"] for r in clf.history_] == ["head", "finetune", "finetune"]
    assert set(display.lines_["loss"]) == {"train_loss", "valid_loss"}
    recorded = {key for r in clf.history_ for key, value in r.items() if value is not None}
    assert set(display.lines_["accuracy"]) == {"train_acc", "valid_acc"} & recorded
    assert "valid_acc" in display.lines_["accuracy"]
    for series in display.lines_.values():
        for key, line in series.items():
            assert_line_is(line, clf.history_, key)
    assert [list(line.get_xdata()) for line in display.stage_lines_.values()] == [[1.5, 1.5]] * 2
    _, ax = plt.subplots()
    display = TrainingHistoryDisplay.from_estimator(clf, ax=ax, metrics=("loss",))
    assert display.ax_ is ax

"""Inspection displays: most_confused, TopLossesDisplay and ClassActivationDisplay.

Exact behaviour is checked on hand-written probability tables (a stub classifier that
ignores the pixels); tiny fitted fine-tuners and a Pipeline check that real estimators
give the same answers as their own ``predict_proba`` and ``predict``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _finetune_fixtures import colour_images, tiny
from conftest import save_images, tiny_extractor
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sktransfer import FineTunedRegressor, UnreadableImageError, inspection
from sktransfer.inspection import ClassActivationDisplay, TopLossesDisplay, most_confused, overlay

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

LABELS = np.array(["cat", "dog", "eel"])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


class ProbabilityTable(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose ``predict_proba`` is a fixed table: never reads X."""

    def __init__(self, proba=None, classes=("cat", "dog")):
        self.proba = proba
        self.classes = classes

    def fit(self, X=None, y=None):
        self.classes_ = np.asarray(self.classes)
        self.proba_ = np.asarray(self.proba, dtype=float)
        return self

    def predict_proba(self, X):
        assert len(X) == len(self.proba_)
        return self.proba_


class FixedPredictions(RegressorMixin, BaseEstimator):
    """A 'fitted' regressor whose predictions are fixed."""

    def __init__(self, predictions=None):
        self.predictions = predictions

    def fit(self, X=None, y=None):
        self.predictions_ = np.asarray(self.predictions, dtype=float)
        return self

    def predict(self, X):
        assert len(X) == len(self.predictions_)
        return self.predictions_


def images_of(n, seed=0):
    """``n`` distinct uint8 images of their own sizes: (20 + i, 24, 3)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) for i in range(n)]


def visible(display):
    return [ax for ax in display.ax_ if ax.get_visible()]


def titles(display):
    return [ax.get_title() for ax in visible(display)]


def shown(panel):
    """The pixels drawn on a panel."""
    return np.asarray(panel.get_images()[0].get_array())


# Worked example: p(true class) = [0.9, 0.2, 0.4, 0.05, 0.5], so by log loss the
# worst images are 3 (-log 0.05 = 3.00), 1 (1.61), 2 (0.92), 4 (0.69), 0 (0.11).
PROBA = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.5, 0.5]]
Y = np.array(["cat", "cat", "dog", "cat", "dog"])


@pytest.fixture
def table():
    return ProbabilityTable(PROBA).fit()


# -------------------------------------------------------------------------- most_confused


class TestMostConfused:
    def test_ranks_pairs_by_count_then_labels(self):
        y_true = [2, 2, 2, 1, 1, 0, 0, 0, 0]
        y_pred = [0, 0, 2, 0, 2, 1, 2, 1, 2]
        assert most_confused(y_true, y_pred) == [
            (0, 1, 2),
            (0, 2, 2),
            (2, 0, 2),
            (1, 0, 1),
            (1, 2, 1),
        ]

    def test_min_count_drops_rare_pairs(self):
        y_true = [2, 2, 2, 1, 1, 0, 0, 0, 0]
        y_pred = [0, 0, 2, 0, 2, 1, 2, 1, 2]
        assert most_confused(y_true, y_pred, min_count=2) == [(0, 1, 2), (0, 2, 2), (2, 0, 2)]
        assert most_confused(y_true, y_pred, min_count=3) == []

    def test_right_predictions_are_left_out(self):
        assert most_confused(["a", "b"], np.array(["a", "b"])) == []

    def test_labels_are_python_scalars(self):
        (true, pred, count), *_ = most_confused(np.array([3, 4]), np.array([4, 3]))
        assert type(true) is int and type(pred) is int and type(count) is int

    def test_agrees_with_the_confusion_matrix(self):
        from sklearn.metrics import confusion_matrix

        rng = np.random.default_rng(0)
        y_true, y_pred = LABELS[rng.integers(0, 3, 200)], LABELS[rng.integers(0, 3, 200)]
        matrix = confusion_matrix(y_true, y_pred, labels=LABELS)
        expected = {
            (t, p): matrix[i, j]
            for i, t in enumerate(LABELS)
            for j, p in enumerate(LABELS)
            if i != j
        }
        pairs = most_confused(y_true, y_pred)
        assert {(t, p): c for t, p, c in pairs} == expected
        assert [c for *_, c in pairs] == sorted(expected.values(), reverse=True)

    def test_lengths_must_match(self):
        with pytest.raises(ValueError, match="got 3 true labels and 2 predicted labels"):
            most_confused([0, 1, 1], [0, 1])

    def test_two_dimensional_labels_raise(self):
        with pytest.raises(ValueError, match=r"y_true must be 1-D.*shape \(2, 2\).*y\[:, 0\]"):
            most_confused([[0, 1], [1, 0]], [0, 1])

    @pytest.mark.parametrize("min_count", [0, -1, 1.5, True, "2"])
    def test_min_count_must_be_a_positive_integer(self, min_count):
        with pytest.raises(ValueError, match=r"min_count must be a positive integer .*got"):
            most_confused([0, 1], [1, 0], min_count=min_count)


# ----------------------------------------------------------------------- TopLossesDisplay


class TestTopLossesClassifier:
    def test_ranks_images_by_log_loss_of_their_true_class(self, table):
        X = np.stack(images_of(5, seed=1)[:1] * 5)
        display = TopLossesDisplay.from_estimator(table, X, Y, k=3)
        np.testing.assert_array_equal(display.indices, [3, 1, 2])
        np.testing.assert_allclose(display.losses, -np.log([0.05, 0.2, 0.4]))
        np.testing.assert_array_equal(display.y_true, ["cat", "cat", "dog"])
        np.testing.assert_array_equal(display.y_pred, ["dog", "dog", "cat"])
        np.testing.assert_allclose(display.probabilities, [0.95, 0.8, 0.6])
        assert display.maps is None and display.estimator_name == "ProbabilityTable"

    def test_titles_give_labels_probability_and_loss(self, table):
        display = TopLossesDisplay.from_estimator(table, images_of(5), Y, k=3)
        assert titles(display) == [
            "true: cat / pred: dog (0.95) / loss 3.00",
            "true: cat / pred: dog (0.80) / loss 1.61",
            "true: dog / pred: cat (0.60) / loss 0.92",
        ]

    def test_equal_losses_keep_the_order_of_x(self):
        table = ProbabilityTable([[0.5, 0.5], [0.1, 0.9], [0.5, 0.5], [0.1, 0.9]]).fit()
        display = TopLossesDisplay.from_estimator(table, images_of(4), ["cat"] * 4, k=4)
        np.testing.assert_array_equal(display.indices, [1, 3, 0, 2])

    def test_a_probability_of_zero_gives_a_finite_loss(self):
        table = ProbabilityTable([[0.0, 1.0], [1.0, 0.0]]).fit()
        display = TopLossesDisplay.from_estimator(table, images_of(2), ["cat", "cat"], k=1)
        np.testing.assert_allclose(display.losses, [-np.log(1e-15)])

    def test_images_are_those_of_x_at_their_own_size(self, table):
        X = images_of(5)
        display = TopLossesDisplay.from_estimator(table, X, Y, k=3)
        assert len(display.images) == 3
        for image, i in zip(display.images, display.indices, strict=True):
            assert image.dtype == np.uint8
            np.testing.assert_array_equal(image, X[i])
        for panel, image in zip(visible(display), display.images, strict=True):
            np.testing.assert_array_equal(shown(panel), image)

    def test_an_unreadable_image_among_those_shown_names_its_file(self, table, tmp_path):
        paths = save_images(images_of(5), tmp_path)
        paths[1].write_bytes(b"not a png")
        with pytest.raises(UnreadableImageError, match="1.png") as error:
            TopLossesDisplay.from_estimator(table, [str(p) for p in paths], Y, k=2)
        assert error.value.index == 1

    def test_labels_of_any_type(self):
        table = ProbabilityTable([[0.3, 0.7], [0.8, 0.2]], classes=(3, 7)).fit()
        display = TopLossesDisplay.from_estimator(table, images_of(2), [3, 7], k=2)
        assert titles(display) == [
            "true: 7 / pred: 3 (0.80) / loss 1.61",
            "true: 3 / pred: 7 (0.70) / loss 1.20",
        ]


class TestTopLossesPanels:
    @pytest.mark.parametrize(("k", "ncols", "n_axes"), [(4, 3, 6), (9, 3, 9), (2, 3, 2), (5, 1, 5)])
    def test_one_visible_panel_per_image(self, k, ncols, n_axes):
        table = ProbabilityTable(np.tile([[0.6, 0.4]], (9, 1))).fit()
        display = TopLossesDisplay.from_estimator(
            table, images_of(9), ["dog"] * 9, k=k, ncols=ncols
        )
        assert len(display.ax_) == n_axes and len(visible(display)) == k
        assert isinstance(display.figure_, Figure)
        assert all(ax.figure is display.figure_ for ax in display.ax_)
        assert not any(ax.axison for ax in display.ax_)

    def test_draws_on_the_axes_given(self, table):
        _, axes = plt.subplots(2, 2)
        display = TopLossesDisplay.from_estimator(table, images_of(5), Y, k=3, ax=axes)
        assert list(display.ax_) == list(axes.ravel())
        assert [ax.get_visible() for ax in display.ax_] == [True, True, True, False]

    def test_a_single_axes_for_one_image(self, table):
        _, ax = plt.subplots()
        display = TopLossesDisplay.from_estimator(table, images_of(5), Y, k=1, ax=ax)
        assert list(display.ax_) == [ax] and ax.get_title().startswith("true: cat / pred: dog")

    def test_too_few_axes_raise(self, table):
        _, axes = plt.subplots(1, 2)
        with pytest.raises(ValueError, match="at least 3 matplotlib Axes"):
            TopLossesDisplay.from_estimator(table, images_of(5), Y, k=3, ax=axes)

    @pytest.mark.parametrize("ncols", [0, 2.0, None])
    def test_ncols_must_be_a_positive_integer(self, table, ncols):
        with pytest.raises(ValueError, match="ncols must be a positive integer"):
            TopLossesDisplay.from_estimator(table, images_of(5), Y, k=3, ncols=ncols)

    def test_built_from_values_without_probabilities(self):
        display = TopLossesDisplay(
            images_of(2), [1.0, 0.5], y_true=["a", "b"], y_pred=["b", "a"]
        ).plot()
        assert titles(display) == ["true: a / pred: b / loss 1.00", "true: b / pred: a / loss 0.50"]

    def test_init_only_stores(self):
        display = TopLossesDisplay("images", "losses", "true", "pred", maps="maps")
        assert (display.images, display.losses, display.maps) == ("images", "losses", "maps")
        assert not hasattr(display, "ax_")

    def test_values_of_other_lengths_raise(self):
        display = TopLossesDisplay(images_of(2), [1.0], y_true=["a", "b"], y_pred=["b", "a"])
        with pytest.raises(ValueError, match=r"losses must hold one value per image \(2\)"):
            display.plot()

    def test_maps_of_another_size_raise(self):
        display = TopLossesDisplay(
            images_of(1), [1.0], ["a"], ["b"], maps=[np.zeros((5, 5), np.float32)]
        )
        with pytest.raises(ValueError, match=r"maps\[0\] has shape \(5, 5\) but image 0 is"):
            display.plot()


class TestTopLossesRegressor:
    def test_ranks_images_by_squared_error(self):
        regressor = FixedPredictions([100.0, 103.0, 98.5, 110.0]).fit()
        y = np.array([100.0, 100.0, 100.0, 100.0])
        display = TopLossesDisplay.from_estimator(regressor, images_of(4), y, k=3)
        np.testing.assert_array_equal(display.indices, [3, 1, 2])
        np.testing.assert_allclose(display.losses, [100.0, 9.0, 2.25])
        np.testing.assert_allclose(display.y_pred, [110.0, 103.0, 98.5])
        assert display.probabilities is None
        assert titles(display) == [
            "true: 100 / pred: 110 / loss 100.00",
            "true: 100 / pred: 103 / loss 9.00",
            "true: 100 / pred: 98.5 / loss 2.25",
        ]

    def test_a_column_of_targets_is_accepted(self):
        regressor = FixedPredictions([[1.0], [2.0]]).fit()
        display = TopLossesDisplay.from_estimator(regressor, images_of(2), [[1.0], [0.0]], k=1)
        np.testing.assert_array_equal(display.indices, [1])

    def test_multi_output_regressors_raise(self):
        regressor = FixedPredictions([[1.0, 2.0], [2.0, 3.0]]).fit()
        with pytest.raises(ValueError, match="Multi-output regressors are not supported"):
            TopLossesDisplay.from_estimator(regressor, images_of(2), [1.0, 2.0], k=1)

    def test_targets_must_be_numbers(self):
        regressor = FixedPredictions([1.0, 2.0]).fit()
        with pytest.raises(ValueError, match="y must hold numbers"):
            TopLossesDisplay.from_estimator(regressor, images_of(2), ["a", "b"], k=1)


class TestTopLossesErrors:
    @pytest.mark.parametrize("k", [0, -2, 1.5, True, "3"])
    def test_k_must_be_a_positive_integer(self, table, k):
        with pytest.raises(ValueError, match=r"k must be a positive integer \(the number of"):
            TopLossesDisplay.from_estimator(table, images_of(5), Y, k=k)

    def test_k_larger_than_x_says_how_many_images_there_are(self, table):
        with pytest.raises(ValueError, match=r"k=12 but X has 5 images; pass k <= 5\."):
            TopLossesDisplay.from_estimator(table, images_of(5), Y, k=12)

    def test_y_must_hold_one_label_per_image(self, table):
        with pytest.raises(ValueError, match="y has 4 entries but X has 5 images"):
            TopLossesDisplay.from_estimator(table, images_of(5), Y[:4], k=2)

    def test_an_unknown_label_is_named_with_the_classes(self, table):
        y = np.array(["cat", "cat", "fish", "cat", "dog"])
        with pytest.raises(
            ValueError, match=r"does not know: \['fish'\]; its classes_ are \['cat', 'dog'\]"
        ):
            TopLossesDisplay.from_estimator(table, images_of(5), y, k=2)

    def test_two_dimensional_y_raises_for_a_classifier(self, table):
        with pytest.raises(ValueError, match="y must be 1-D"):
            TopLossesDisplay.from_estimator(table, images_of(5), np.c_[Y, Y], k=2)

    @pytest.mark.parametrize("kind", ["multitask", "multilabel"])
    def test_multitask_and_multilabel_classifiers_are_not_supported(self, table, kind):
        setattr(table, f"{kind}_", True)
        with pytest.raises(ValueError, match=f"does not support {kind} classifiers yet"):
            TopLossesDisplay.from_estimator(table, images_of(5), Y, k=2)
        pipeline = make_pipeline(FunctionTransformer(), table)
        with pytest.raises(ValueError, match=f"does not support {kind} classifiers yet"):
            TopLossesDisplay.from_estimator(pipeline, images_of(5), Y, k=2)

    def test_a_classifier_without_predict_proba_raises(self):
        flat = FunctionTransformer(lambda X: np.asarray(X).reshape(len(X), -1) / 255.0)
        X, y = colour_images(np.arange(6) % 2, size=8), np.arange(6) % 2
        ridge = make_pipeline(flat, RidgeClassifier()).fit(X, y)
        with pytest.raises(TypeError, match="needs predict_proba; Pipeline has none"):
            TopLossesDisplay.from_estimator(ridge, X, y, k=2)

    def test_an_unfitted_estimator_raises(self):
        with pytest.raises(NotFittedError):
            TopLossesDisplay.from_estimator(ProbabilityTable(PROBA), images_of(5), Y, k=2)


# ----------------------------------------------------------------- real fitted estimators


@pytest.fixture(scope="module")
def colours():
    """12 colour images (4 per class) and labels with two of them swapped: the model
    learns the colours, so the relabelled images have the largest losses."""
    classes = np.repeat([0, 1, 2], 4)
    y = LABELS[classes]
    wrong = y.copy()
    wrong[[1, 9]] = ["eel", "dog"]
    return colour_images(classes), y, wrong


@pytest.fixture(scope="module")
def classifier(colours, one_torch_thread):
    X, y, _ = colours
    return tiny(freeze_depth="all", head_epochs=3, max_epochs=0, lr=0.05).fit(X, y)


@pytest.fixture(scope="module")
def regressor(colours, one_torch_thread):
    X, _, _ = colours
    targets = np.repeat([100.0, 105.0, 110.0], 4)
    return tiny(FineTunedRegressor, freeze_depth="all", head_epochs=2, max_epochs=0, lr=0.05).fit(
        X, targets
    )


def expected_top(proba, classes, y, k):
    """Indices, losses and predictions of the k worst images, from predict_proba."""
    columns = np.searchsorted(classes, y)
    losses = -np.log(np.clip(proba[np.arange(len(y)), columns], 1e-15, 1))
    order = sorted(range(len(y)), key=lambda i: (-losses[i], i))[:k]
    return order, losses[order], classes[proba.argmax(axis=1)][order]


class TestRealEstimators:
    def test_fine_tuned_classifier(self, classifier, colours):
        X, _, y = colours
        display = TopLossesDisplay.from_estimator(classifier, X, y, k=4)
        proba = classifier.predict_proba(X)
        order, losses, predicted = expected_top(proba, classifier.classes_, y, 4)
        assert set(display.indices[:2]) == {1, 9}  # the relabelled images come first
        np.testing.assert_array_equal(display.indices, order)
        np.testing.assert_allclose(display.losses, losses, rtol=1e-6)
        np.testing.assert_array_equal(display.y_pred, classifier.predict(X)[order])
        np.testing.assert_array_equal(display.y_pred, predicted)
        np.testing.assert_allclose(display.probabilities, proba.max(axis=1)[order], rtol=1e-6)
        np.testing.assert_array_equal(display.y_true, y[order])

    def test_pipeline_of_an_extractor_and_a_linear_classifier(self, tiny_checkpoint, colours):
        X, y, wrong = colours
        extractor = tiny_extractor(weights=tiny_checkpoint)
        pipeline = make_pipeline(extractor, LogisticRegression(C=0.1)).fit(X, y)
        display = TopLossesDisplay.from_estimator(pipeline, X, wrong, k=3)
        order, losses, predicted = expected_top(
            pipeline.predict_proba(X), pipeline.classes_, wrong, 3
        )
        np.testing.assert_array_equal(display.indices, order)
        np.testing.assert_allclose(display.losses, losses, rtol=1e-6)
        np.testing.assert_array_equal(display.y_pred, pipeline.predict(X)[order])

    def test_fine_tuned_regressor(self, regressor, colours):
        X, _, _ = colours
        y = np.full(len(X), 104.0)
        display = TopLossesDisplay.from_estimator(regressor, X, y, k=5)
        errors = (y - regressor.predict(X)) ** 2
        order = sorted(range(len(X)), key=lambda i: (-errors[i], i))[:5]
        np.testing.assert_array_equal(display.indices, order)
        np.testing.assert_allclose(display.losses, errors[order])
        assert display.probabilities is None and len(visible(display)) == 5


# ------------------------------------------------------------------ ClassActivationDisplay


def ramps(images):
    """A map per image at its own size: 0 at the top left, 1 at the bottom right."""
    maps = []
    for image in images:
        h, w = image.shape[:2]
        maps.append(np.add.outer(np.arange(h) / (h - 1), np.arange(w) / (w - 1)).astype("f4") / 2)
    return maps


class TestClassActivationDisplay:
    def test_side_by_side_draws_the_image_then_its_map(self):
        images = images_of(3)
        maps = ramps(images)
        display = ClassActivationDisplay(
            images,
            maps,
            targets=["cat", "dog", "eel"],
            scores=[0.9, 0.456, 1.0],
            score_name="probability",
        ).plot(overlay=False)
        assert len(display.ax_) == 8 and len(visible(display)) == 6  # 2 images per row
        assert titles(display) == [
            "cat: probability 0.90",
            "class activation map",
            "dog: probability 0.46",
            "class activation map",
            "eel: probability 1.00",
            "class activation map",
        ]
        for i, (image, cam) in enumerate(zip(images, maps, strict=True)):
            np.testing.assert_array_equal(shown(display.ax_[2 * i]), image)
            np.testing.assert_array_equal(shown(display.ax_[2 * i + 1]), cam)
        assert display.ax_[1].get_images()[0].get_clim() == (0.0, 1.0)

    @pytest.mark.parametrize(
        ("n", "ncols", "n_axes"), [(1, None, 2), (2, None, 4), (3, 1, 6), (3, 3, 6)]
    )
    def test_side_by_side_panels_per_row(self, n, ncols, n_axes):
        images = images_of(n)
        display = ClassActivationDisplay(images, ramps(images)).plot(overlay=False, ncols=ncols)
        assert len(display.ax_) == n_axes and len(visible(display)) == 2 * n

    def test_titles_without_targets_or_scores(self):
        images = images_of(2)
        display = ClassActivationDisplay(images, ramps(images), targets=[3, 5]).plot(overlay=False)
        assert titles(display)[::2] == ["3", "5"]
        display = ClassActivationDisplay(images, ramps(images), scores=[0.5, 1]).plot(overlay=False)
        assert titles(display)[::2] == ["score 0.50", "score 1.00"]

    def test_init_only_stores(self):
        display = ClassActivationDisplay("images", "maps", targets="t", scores="s")
        assert (display.images, display.maps, display.targets) == ("images", "maps", "t")
        assert not hasattr(display, "ax_")

    def test_errors(self):
        images = images_of(2)
        with pytest.raises(ValueError, match="needs one map per image"):
            ClassActivationDisplay(images, None).plot()
        with pytest.raises(ValueError, match="got 1 maps for 2 images"):
            ClassActivationDisplay(images, ramps(images)[:1]).plot()
        with pytest.raises(
            ValueError, match=r"maps\[0\] has shape \(21, 24\) but image 0 is \(20, 24\)"
        ):
            ClassActivationDisplay(images, ramps(images)[::-1]).plot()
        with pytest.raises(ValueError, match="targets must hold one entry per image; got 3"):
            ClassActivationDisplay(images, ramps(images), targets=[1, 2, 3]).plot()
        with pytest.raises(ValueError, match="ncols must be a positive integer"):
            ClassActivationDisplay(images, ramps(images)).plot(ncols=0)
        with pytest.raises(ValueError, match="at least 4 matplotlib Axes"):
            ClassActivationDisplay(images, ramps(images)).plot(
                overlay=False, ax=plt.subplots(1, 3)[1]
            )

    def test_overlay_draws_the_heat_map_over_each_image(self):
        images = images_of(2)
        maps = ramps(images)
        display = ClassActivationDisplay(images, maps, targets=["a", "b"]).plot(alpha=0.3)
        assert len(display.ax_) == 2 and titles(display) == ["a", "b"]
        for panel, image, cam in zip(display.ax_, images, maps, strict=True):
            np.testing.assert_array_equal(shown(panel), overlay(image, cam, alpha=0.3))

    @pytest.mark.parametrize(("n", "ncols", "n_axes"), [(3, None, 3), (5, None, 8), (5, 2, 6)])
    def test_overlay_panels_per_row(self, n, ncols, n_axes):
        images = images_of(n)
        display = ClassActivationDisplay(images, ramps(images)).plot(ncols=ncols)
        assert len(display.ax_) == n_axes and len(visible(display)) == n


class TestClassActivationFromEstimator:
    def test_classifier_explains_its_predictions(self, classifier, colours):
        X = colours[0][[0, 5, 10]]
        display = ClassActivationDisplay.from_estimator(classifier, X)
        proba = classifier.predict_proba(X)
        np.testing.assert_array_equal(display.targets, classifier.predict(X))
        np.testing.assert_allclose(display.scores, proba.max(axis=1), rtol=1e-5)
        assert len(display.ax_) == 3 and display.score_name == "probability"
        assert titles(display) == [
            f"{label}: probability {p:.2f}"
            for label, p in zip(display.targets, display.scores, strict=True)
        ]
        for image, panel, cam, original in zip(
            display.images, display.ax_, display.maps, X, strict=True
        ):
            np.testing.assert_array_equal(image, original)
            assert cam.shape == image.shape[:2] and 0 <= cam.min() <= cam.max() <= 1
            np.testing.assert_array_equal(shown(panel), overlay(image, cam))

    def test_a_target_for_every_image(self, classifier, colours):
        X = colours[0][[0, 5]]
        display = ClassActivationDisplay.from_estimator(
            classifier, X, target="eel", overlay=False, ncols=1
        )
        assert list(display.targets) == ["eel", "eel"] and len(display.ax_) == 4
        np.testing.assert_allclose(
            display.scores, classifier.predict_proba(X)[:, 2], rtol=1e-5, atol=1e-7
        )

    def test_regressor_shows_its_prediction(self, regressor, colours):
        X = colours[0][[0, 4]]
        display = ClassActivationDisplay.from_estimator(regressor, X)
        assert display.score_name == "predicted"
        np.testing.assert_allclose(display.scores, regressor.predict(X), rtol=1e-5)
        assert titles(display)[0].startswith("0: predicted 10")


class TestTopLossesMaps:
    @pytest.mark.parametrize(
        "cam_params",
        [{}, {"method": "layercam", "layer": "blocks.1"}],
        ids=["default", "layercam"],
    )
    def test_maps_show_where_the_model_looked_for_its_prediction(
        self, classifier, colours, cam_params
    ):
        """The maps are those of the predicted classes, at each image's size, with the
        method and layer asked for (if any), each drawn over its image."""
        X, _, y = colours
        display = TopLossesDisplay.from_estimator(classifier, X, y, k=2, cam=True, **cam_params)
        expected = inspection.class_activation_maps(
            classifier, X[display.indices], target=list(display.y_pred), **cam_params
        )
        for cam, want, image in zip(display.maps, expected, display.images, strict=True):
            assert cam.shape == image.shape[:2]
            np.testing.assert_allclose(cam, want, atol=1e-5)
        for panel, image, cam in zip(display.ax_, display.images, display.maps, strict=True):
            np.testing.assert_array_equal(shown(panel), overlay(image, cam))

    def test_regressor_explains_its_output(self, regressor, colours):
        X = colours[0]
        display = TopLossesDisplay.from_estimator(regressor, X, np.full(12, 104.0), k=2, cam=True)
        expected = inspection.class_activation_maps(regressor, X[display.indices])
        for cam, want in zip(display.maps, expected, strict=True):
            np.testing.assert_allclose(cam, want, atol=1e-5)

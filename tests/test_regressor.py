"""FineTunedRegressor: real targets, standardised inside, in their units outside."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from _finetune_fixtures import DATA_FREE_CHECKS, colour_images, predict_in_fresh_process, tiny
from PIL import Image
from sklearn.base import is_regressor
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils import estimator_checks
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedRegressor, InvalidParameterError, TrainingHistoryDisplay
from sktransfer._backbone import eval_transform

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEVELS = np.array([100.0, 105.0, 110.0])  # one target per colour, far from 0 and 1


def regressor(**params) -> FineTunedRegressor:
    return tiny(FineTunedRegressor, **{"lr": 1e-2, "max_epochs": 3, **params})


def colour_targets(n, seed=0):
    classes = np.arange(n) % 3
    return colour_images(classes, seed=seed), LEVELS[classes]


@pytest.fixture(scope="module")
def data():
    return colour_targets(48)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return regressor().fit(X, y)


class TestPredictions:
    def test_learns_the_target_in_its_units(self, fitted):
        X_test, y_test = colour_targets(30, seed=1)
        assert fitted.score(X_test, y_test) > 0.5
        predicted = fitted.predict(X_test)
        assert predicted.shape == (30,) and predicted.dtype == np.float64
        assert abs(predicted.mean() - LEVELS.mean()) < 2.5

    def test_targets_are_standardised_inside(self, fitted, data):
        _, y = data
        np.testing.assert_allclose(fitted.target_mean_, [y.mean()])
        np.testing.assert_allclose(fitted.target_scale_, [y.std()])
        assert fitted.n_outputs_ == 1 and not fitted.multioutput_

    def test_history_has_losses_and_no_accuracy(self, fitted):
        assert [r["stage"] for r in fitted.history_] == ["head", "finetune", "finetune", "finetune"]
        assert all("train_loss" in r and "train_acc" not in r for r in fitted.history_)

    def test_learning_curve_shows_the_loss(self, fitted):
        pytest.importorskip("matplotlib")
        display = TrainingHistoryDisplay.from_estimator(fitted)
        assert set(display.lines_) == {"loss"}

    def test_tta_averages_the_flipped_views(self, fitted, data):
        X, _ = data
        backbone = fitted.backbone_.eval()
        tf = eval_transform(fitted.data_config_)
        x = torch.stack([tf(Image.fromarray(img)) for img in X])
        with torch.inference_mode():
            outputs = (backbone(x) + backbone(torch.flip(x, (-1,)))) / 2
        expected = outputs[:, 0].numpy() * fitted.target_scale_[0] + fitted.target_mean_[0]
        fitted.set_params(tta="hflip")
        try:
            predicted = fitted.predict(X)
        finally:
            fitted.set_params(tta=None)
        np.testing.assert_allclose(predicted, expected, rtol=1e-5)
        assert not np.allclose(predicted, fitted.predict(X), rtol=1e-7)


class TestTargets:
    @pytest.mark.parametrize("as_frame", [False, True])
    def test_multioutput(self, data, as_frame):
        X, y = data
        Y = np.column_stack([y, -10 * y])
        reg = regressor().fit(X, pd.DataFrame(Y, columns=["a", "b"]) if as_frame else Y)
        predicted = reg.predict(X)
        assert predicted.shape == (48, 2) and reg.multioutput_ and reg.n_outputs_ == 2
        np.testing.assert_allclose(reg.target_mean_, Y.mean(axis=0))
        assert np.corrcoef(predicted[:, 0], predicted[:, 1])[0, 1] < -0.9  # units kept apart
        assert reg.score(X, Y) > 0.5

    def test_a_constant_column_predicts_the_constant(self, data):
        X, y = data
        reg = regressor(max_epochs=1).fit(X, np.column_stack([y, np.full(48, 7.0)]))
        assert reg.target_scale_[1] == 1.0
        np.testing.assert_allclose(reg.predict(X)[:, 1], 7.0, atol=1.0)

    def test_standardisation_follows_the_sample_weights(self, data):
        X, y = data
        y = y.copy()
        y[:6] = 1e6  # wrong targets, weighted out
        w = np.ones(48)
        w[:6] = 0
        reg = regressor(max_epochs=0).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(reg.target_mean_, [y[6:].mean()])
        np.testing.assert_allclose(reg.target_scale_, [y[6:].std()])

    def test_uniform_weights_change_nothing(self, data):
        X, y = data
        plain = regressor().fit(X, y).predict(X)
        weighted = regressor().fit(X, y, sample_weight=np.full(48, 3.0)).predict(X)
        np.testing.assert_allclose(weighted, plain, rtol=1e-5)

    @pytest.mark.parametrize(
        "loss, criterion", [("squared_error", nn.MSELoss), ("huber", nn.HuberLoss)]
    )
    def test_loss_reaches_the_criterion(self, data, loss, criterion):
        X, y = data
        seen = CriterionTypes()
        regressor(loss=loss, max_epochs=1, callbacks=[seen]).fit(X, y)
        assert seen.types_ == [criterion, criterion]  # both stages
        assert seen.reductions_ == ["none", "none"]


class CriterionTypes(Callback):
    def __init__(self):
        self.types_, self.reductions_ = [], []

    def on_train_begin(self, net, **kwargs):
        self.types_.append(type(net.criterion_))
        self.reductions_.append(net.criterion_.reduction)


class TestCache:
    def test_predictions_from_cached_frozen_rows_are_the_same(self, data, tmp_path):
        X, y = data
        cached = regressor(freeze_depth=0.5, memory=tmp_path).fit(X, y)
        plain = regressor(freeze_depth=0.5).fit(X, y)
        assert cached.cached_activations_ and cached.cache_identity_
        np.testing.assert_allclose(cached.predict(X), plain.predict(X), rtol=1e-5, atol=1e-4)


class TestSklearn:
    def test_is_a_regressor(self):
        assert is_regressor(FineTunedRegressor())
        tags = FineTunedRegressor().__sklearn_tags__()
        assert tags.estimator_type == "regressor" and tags.target_tags.multi_output
        assert not tags.input_tags.two_d_array and tags.input_tags.string

    def test_grid_search_and_cross_validation(self, data):
        X, y = data
        search = GridSearchCV(regressor(max_epochs=1), {"lr": [1e-3, 1e-2]}, cv=2).fit(X, y)
        assert search.best_estimator_.predict(X[:3]).shape == (3,)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()  # R², the default
        scores = cross_val_score(regressor(max_epochs=1), X, y, cv=KFold(2))
        assert scores.shape == (2,)

    @pytest.mark.parametrize("check", DATA_FREE_CHECKS)
    def test_data_free_check(self, check):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(estimator_checks, check)("FineTunedRegressor", FineTunedRegressor())

    def test_pickles_predict_the_same_here_and_in_a_fresh_process(self, fitted, data, tmp_path):
        X, _ = data
        loaded = pickle.loads(pickle.dumps(fitted))
        np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
        path = tmp_path / "regressor.pkl"
        path.write_bytes(pickle.dumps(fitted))
        (fresh,) = predict_in_fresh_process(tmp_path, X, [path])
        np.testing.assert_array_equal(fresh, fitted.predict(X))


class TestBadInput:
    @pytest.mark.parametrize(
        "y, match",
        [
            (None, r"FineTunedRegressor needs targets: y is None"),
            (np.array(["a", "b"] * 24), r"y must hold real numbers.*use FineTunedClassifier"),
            (
                np.r_[np.ones(47), np.nan],
                r"NaN or infinite values \(first in the row of image 47\)",
            ),
            (np.ones(47), r"shape \(48,\) or \(48, n_outputs\).*got shape \(47,\)"),
            (np.ones((48, 2, 2)), r"got shape \(48, 2, 2\)"),
        ],
    )
    def test_bad_targets_are_explained(self, data, y, match):
        X, _ = data
        reg = regressor()
        with pytest.raises(ValueError, match=match):
            reg.fit(X, y)
        assert not hasattr(reg, "backbone_")

    def test_unknown_loss(self, data):
        X, y = data
        with pytest.raises(
            InvalidParameterError,
            match=r"'loss' parameter .* must be one of \{'huber', 'squared_error'\}",
        ):
            regressor(loss="absolute").fit(X, y)

    def test_classifier_only_parameters_are_not_accepted(self):
        with pytest.raises(TypeError, match="mixup"):
            FineTunedRegressor(mixup=0.2)

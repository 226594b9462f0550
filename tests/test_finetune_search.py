"""FineTunedClassifier inside scikit-learn: clone, parameters, pipelines, cross-validation,
grid and randomized searches, serial and in worker processes. (Pickled searches are
tested with the other pickles in test_finetune.py.)"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _finetune_fixtures import (
    BackboneSnapshots,
    CountingAugment,
    colour_images,
    tiny,
)
from scipy.stats import loguniform, uniform
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.validation import check_is_fitted

from sktransfer import FineTunedClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ["test_efficientnet", "test_resnet"]


@pytest.fixture(scope="module")
def data():
    y = np.repeat([0, 1, 2], 8)
    return colour_images(y), np.array(["red", "green", "blue"])[y]


def one_epoch(**params):
    """One epoch in all: a search over it stays cheap."""
    return tiny(head_epochs=0, max_epochs=1, **params)


def images_as_list(X):
    return list(X)


# ------------------------------------------------------------------- parameters


class TestParameters:
    def test_get_params_lists_every_init_parameter(self):
        params = tiny().get_params()
        expected = set(inspect.signature(FineTunedClassifier).parameters)
        assert set(params) == expected
        assert params["model"] == "test_efficientnet"
        assert params["weights"] is None

    def test_set_params_returns_self_and_sets(self):
        clf = tiny()
        assert clf.set_params(lr=0.5, freeze_depth="all", model="test_resnet") is clf
        assert (clf.lr, clf.freeze_depth, clf.model) == (0.5, "all", "test_resnet")
        with pytest.raises(ValueError, match="Invalid parameter 'learning_rate'"):
            clf.set_params(learning_rate=0.1)

    def test_clone_of_a_fitted_estimator_is_unfitted(self, data):
        X, y = data
        fitted = one_epoch(freeze_depth="all").fit(X, y)
        copy = clone(fitted)
        assert copy.get_params() == fitted.get_params()
        assert not hasattr(copy, "backbone_")
        with pytest.raises(NotFittedError):
            copy.predict(X)
        check_is_fitted(fitted)

    def test_clone_keeps_callables_and_callbacks_by_value(self):
        clf = tiny(augment=CountingAugment(), callbacks=[BackboneSnapshots()])
        copy = clone(clf)
        assert isinstance(copy.augment, CountingAugment)
        assert isinstance(copy.callbacks[0], BackboneSnapshots)


# ------------------------------------------------------------------ composition


class TestComposition:
    def test_pipeline_matches_the_bare_estimator(self, data):
        X, y = data
        params = dict(freeze_depth="all", head_epochs=3, max_epochs=0, lr=0.05)
        pipe = make_pipeline(FunctionTransformer(images_as_list), tiny(**params))
        pipe.fit(X, y)
        bare = tiny(**params).fit(X, y)
        assert np.array_equal(pipe.predict_proba(X), bare.predict_proba(X))
        np.testing.assert_array_equal(pipe.classes_, bare.classes_)

    def test_pipeline_routes_parameters(self, data):
        pipe = Pipeline([("clf", tiny())])
        pipe.set_params(clf__lr=0.3, clf__freeze_depth=0.5)
        assert pipe.named_steps["clf"].lr == 0.3
        assert pipe.named_steps["clf"].freeze_depth == 0.5

    def test_cross_val_score(self, data):
        X, y = data
        clf = tiny(freeze_depth="all", head_epochs=10, max_epochs=0, lr=0.05)
        scores = cross_val_score(clf, X, y, cv=2, error_score="raise")
        assert scores.shape == (2,)
        assert (scores >= 0.9).all()  # the colours generalise across folds


# ---------------------------------------------------------------------- searches

GRID = {"model": MODELS, "freeze_depth": [0.5, "all"]}
LR_GRID = {"lr": [1e-3, 3e-2], "layer_decay": [0.5, 0.9]}


def _search(search_cls, space, n_jobs, X, y, **kwargs):
    search = search_cls(
        one_epoch(), space, cv=2, n_jobs=n_jobs, error_score="raise", refit=True, **kwargs
    )
    return search.fit(X, y)


@pytest.fixture(scope="module")
def grid_serial(data):
    X, y = data
    return _search(GridSearchCV, GRID, 1, X, y)


def assert_complete_search(search, n_candidates, X):
    results = search.cv_results_
    assert len(results["params"]) == n_candidates
    assert np.isfinite(results["mean_test_score"]).all()
    best = search.best_estimator_
    assert isinstance(best, FineTunedClassifier)
    check_is_fitted(best)
    for name, value in search.best_params_.items():
        assert best.get_params()[name] == value
    assert search.predict(X[:3]).shape == (3,)


class TestSearch:
    def test_grid_over_models_and_freeze_depth(self, grid_serial, data):
        X, _ = data
        assert_complete_search(grid_serial, 4, X)
        resolved = {(p["model"], p["freeze_depth"]) for p in grid_serial.cv_results_["params"]}
        assert resolved == {(m, f) for m in MODELS for f in [0.5, "all"]}
        best = grid_serial.best_estimator_
        assert best.model == grid_serial.best_params_["model"]

    @pytest.mark.parametrize("space", [GRID, LR_GRID], ids=["models", "learning-rates"])
    def test_grid_in_two_worker_processes(self, space, data):
        X, y = data
        search = _search(GridSearchCV, space, 2, X, y)
        assert_complete_search(search, 4, X)

    @pytest.mark.parametrize("n_jobs", [1, 2])
    def test_randomized_search(self, n_jobs, data):
        X, y = data
        space = {
            "model": MODELS,
            "freeze_depth": [0.5, "all"],
            "lr": loguniform(1e-3, 1e-1),
            "layer_decay": uniform(0.5, 0.5),
        }
        search = _search(RandomizedSearchCV, space, n_jobs, X, y, n_iter=2, random_state=0)
        assert_complete_search(search, 2, X)
        for params in search.cv_results_["params"]:
            assert 1e-3 <= params["lr"] <= 1e-1
            assert 0.5 <= params["layer_decay"] <= 1.0

"""Several label columns on one backbone: one head per column, a weighted sum of losses."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from _finetune_fixtures import colour_images, tiny
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from sktransfer._finetuning._objectives import MultiTaskCrossEntropy, TaskHits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WARMTH = np.array(["warm", "cold", "cold"])  # red is warm; green and blue are cold


def two_tasks(n, seed=0):
    colour = np.arange(n) % 3
    return colour_images(colour, seed=seed), np.column_stack([colour, WARMTH[colour]])


def trained(**params):
    return tiny(**{"lr": 1e-2, "max_epochs": 2, **params})


@pytest.fixture(scope="module")
def data():
    return two_tasks(48)


@pytest.fixture(scope="module")
def fitted(data):
    X, Y = data
    return trained().fit(X, Y)


class TestPredictions:
    def test_one_head_per_column(self, fitted):
        assert fitted.multitask_ and not fitted.multilabel_
        assert [list(c) for c in fitted.classes_] == [["0", "1", "2"], ["cold", "warm"]]
        assert fitted.backbone_.get_classifier().out_features == 3 + 2

    def test_predict_is_one_column_per_task(self, fitted):
        X_test, Y_test = two_tasks(30, seed=1)
        predicted = fitted.predict(X_test)
        assert predicted.shape == (30, 2)
        assert (predicted == Y_test).all(axis=1).mean() >= 0.9
        assert fitted.score(X_test, Y_test) == (predicted == Y_test).all(axis=1).mean()

    def test_predict_proba_is_a_list_of_arrays(self, fitted, data):
        X, _ = data
        proba = fitted.predict_proba(X)
        assert [p.shape for p in proba] == [(48, 3), (48, 2)]
        for p in proba:
            np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
        predicted = fitted.predict(X)
        for t, (classes, p) in enumerate(zip(fitted.classes_, proba, strict=True)):
            np.testing.assert_array_equal(predicted[:, t], classes[p.argmax(axis=1)])

    def test_history_records_the_mean_task_accuracy(self, fitted):
        assert all(0 <= r["train_acc"] <= 1 for r in fitted.history_)

    def test_a_dataframe_of_labels(self, data):
        X, Y = data
        frame = pd.DataFrame({"colour": Y[:, 0].astype(int), "warmth": Y[:, 1]})
        clf = trained(max_epochs=1).fit(X, frame)
        np.testing.assert_array_equal(clf.classes_[0], [0, 1, 2])
        assert clf.predict(X[:4]).shape == (4, 2)

    def test_cached_frozen_rows_predict_the_same(self, data, tmp_path):
        X, Y = data
        cached = trained(freeze_depth=0.5, memory=tmp_path).fit(X, Y)
        plain = trained(freeze_depth=0.5).fit(X, Y)
        for a, b in zip(cached.predict_proba(X), plain.predict_proba(X), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    def test_pickle_round_trip(self, fitted, data):
        X, _ = data
        loaded = pickle.loads(pickle.dumps(fitted))
        for a, b in zip(loaded.predict_proba(X), fitted.predict_proba(X), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_grid_search_scores_subset_accuracy(self, data):
        X, Y = data
        search = GridSearchCV(trained(max_epochs=1), {"lr": [1e-3, 1e-2]}, cv=2).fit(X, Y)
        assert 0 <= search.best_score_ <= 1


class TestLoss:
    def test_weighted_sum_of_cross_entropies(self):
        torch.manual_seed(0)
        logits, y = (
            torch.randn(5, 3 + 2),
            torch.stack([torch.arange(5) % 3, torch.arange(5) % 2], 1),
        )
        loss = MultiTaskCrossEntropy((3, 2), (0.25, 2.0))(logits, y)
        expected = 0.25 * torch.nn.functional.cross_entropy(
            logits[:, :3], y[:, 0], reduction="none"
        ) + 2.0 * torch.nn.functional.cross_entropy(logits[:, 3:], y[:, 1], reduction="none")
        torch.testing.assert_close(loss, expected)

    def test_task_hits_average_over_tasks(self):
        y_pred = torch.tensor([[5.0, 0, 0, 1, 0], [0, 5.0, 0, 1, 0]])
        y = torch.tensor([[0, 0], [0, 0]])  # image 0: both right; image 1: second right
        torch.testing.assert_close(TaskHits((3, 2))(y_pred, y), torch.tensor([1.0, 0.5]))

    def test_task_weights_reach_the_criterion(self, data):
        X, Y = data
        seen = TaskWeights()
        trained(max_epochs=1, task_weights=[0.5, 2], callbacks=[seen]).fit(X, Y)
        assert seen.weights_ == [(0.5, 2.0), (0.5, 2.0)]  # both stages


class TaskWeights(Callback):
    def __init__(self):
        self.weights_ = []

    def on_train_begin(self, net, **kwargs):
        self.weights_.append(net.criterion_.task_weights)


class TestBadInput:
    @pytest.mark.parametrize(
        "params, match",
        [
            ({"task_weights": [1.0]}, r"task_weights has shape \(1,\) but y has 2 label columns"),
            ({"task_weights": [1.0, -1.0]}, r"task_weights must be finite and >= 0"),
            ({"task_weights": [0, 0]}, r"at least one > 0"),
            ({"class_weight": "balanced"}, r"multi-task.*class_weight"),
            ({"mixup": 0.2}, r"multi-task.*mixup"),
        ],
    )
    def test_bad_combinations(self, data, params, match):
        X, Y = data
        with pytest.raises(ValueError, match=match):
            trained(**params).fit(X, Y)

    def test_a_column_with_one_class_is_named(self, data):
        X, Y = data
        frame = pd.DataFrame({"colour": Y[:, 0], "site": "A"})
        with pytest.raises(ValueError, match=r"Label column 'site' has a single class \('A'\)"):
            trained().fit(X, frame)

    def test_task_weights_with_one_column(self, data):
        X, Y = data
        with pytest.raises(ValueError, match=r"task_weights weighs the losses of several"):
            trained(task_weights=[1.0]).fit(X, Y[:, 0])

    def test_a_missing_label_names_the_image(self, data):
        X, Y = data
        Y = Y.astype(object)
        Y[7, 1] = None
        with pytest.raises(ValueError, match=r"y contains None \(first for the image at index 7\)"):
            trained().fit(X, Y)

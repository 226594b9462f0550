"""Real pretrained weights on real images: the packaged EfficientNet-Lite0 ImageNet port.

These check what random-weight tests cannot: that the loaded weights and their stated
preprocessing work together (an ImageNet photo is named correctly) and that pretrained
features transfer (they beat random-init features on solar-cell defects, ELPV).
"""

from __future__ import annotations

import pytest
from conftest import save_checkpoint
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor, top_imagenet_labels

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LITE0 = "tf_efficientnet_lite0"
# The file loads by tensor order, so its preprocessing is stated: the TF port's mean = std =
# 0.5, which is also tf_efficientnet_lite0's own (stating it changes no number).
PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def test_china_is_a_palace_church_or_monastery(lite0_weights):
    china = load_sample_images().images[0]  # the Summer Palace, Beijing
    extractor = PretrainedFeatureExtractor(
        LITE0, weights=lite0_weights, layer="logits", preprocessing=PREPROCESSING
    )
    scores = extractor.fit_transform(china[None])
    assert scores.shape == (1, 1000)
    (top3,) = top_imagenet_labels(scores, k=3)
    names = " | ".join(name for name, _ in top3)
    assert any(word in names for word in ("palace", "church", "monastery")), top3


def test_pretrained_features_beat_random_features_on_elpv(lite0_weights, elpv_subset, tmp_path):
    # 100 functional and 100 defective cells; the target is defect probability >= 0.5.
    paths, probs, _ = elpv_subset(100, seed=0)
    y = (probs >= 0.5).astype(int)
    # The random baseline is a fixed random checkpoint rather than weights=None, which
    # draws new weights at every fit: the per-image cache then embeds each image once per
    # weights instead of once per fold.
    random_weights = tmp_path / "random_lite0.pth"
    save_checkpoint(random_weights, LITE0, seed=0)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)

    def score(weights):
        extractor = PretrainedFeatureExtractor(
            LITE0,
            weights=weights,
            image_size=96,
            preprocessing=PREPROCESSING,
            layer=-1,
            batch_size=64,
            memory=str(tmp_path),
        )
        pipe = make_pipeline(extractor, StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        return cross_val_score(pipe, paths, y, cv=cv, scoring="balanced_accuracy").mean()

    pretrained, random = score(lite0_weights), score(random_weights)
    print(f"balanced accuracy: pretrained {pretrained:.3f}, random init {random:.3f}")
    assert pretrained >= random + 0.05
    assert pretrained >= 0.7

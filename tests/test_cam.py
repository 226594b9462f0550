"""Class activation maps (sktransfer.inspection.class_activation_maps): maps line up with
the image's own pixels, targets are read as the estimator's labels, probes are folded
into one network, and every bad input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _finetune_fixtures import colour_images, tiny
from conftest import make_images, save_images, tiny_extractor
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from sktransfer import FineTunedRegressor, PretrainedFeatureExtractor, UnreadableImageError
from sktransfer._backbone import eval_transform
from sktransfer._cam import METHODS, _on_image, explain
from sktransfer.inspection import class_activation_maps

pytest.importorskip("pytorch_grad_cam")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def logits():
    """The tiny model as an ImageNet-shaped classifier (1,000 random logits)."""
    return tiny_extractor(layer="logits", image_size=64, verbose=False).fit()


@pytest.fixture(scope="module")
def classifier():
    y = np.array(["red", "green", "blue"] * 4)
    X = colour_images(np.arange(12) % 3)
    return tiny(max_epochs=2, verbose=False).fit(X, y), X


# --------------------------------------------------------------------------- geometry


def _square_image(size, box):
    """A black image of ``size`` (width, height) with a white box (left, top, right,
    bottom)."""
    image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    left, top, right, bottom = box
    image[top:bottom, left:right] = 255
    return image


@pytest.mark.parametrize(
    "preprocessing",
    [
        {"crop_pct": 0.875},  # centre crop of the shortest side, the default
        {"crop_pct": 1.0},
        {"crop_mode": "squash", "crop_pct": 0.9},
        {"crop_mode": "border", "crop_pct": 1.0},
    ],
)
@pytest.mark.parametrize("size", [(120, 80), (70, 130)])
def test_a_map_goes_back_to_the_pixels_the_model_saw(preprocessing, size):
    """What timm's own transform puts at some place of the model's input, a map at that
    place is laid back on: the white box found in the transformed image, mapped back,
    covers the box of the original (within one pixel at each edge)."""
    model = tiny_extractor(image_size=(48, 64), preprocessing=preprocessing).fit()
    cfg = model.data_config_
    box = (size[0] // 3, size[1] // 3, size[0] // 3 + 20, size[1] // 3 + 25)
    image = _square_image(size, box)
    seen = eval_transform({**cfg, "mean": (0, 0, 0), "std": (1, 1, 1)})(Image.fromarray(image))
    cam = (seen[0].numpy() > 0.5).astype(np.float32)  # the box, as the model saw it
    back = _on_image(cam, cfg, size)
    assert back.shape == (size[1], size[0])
    left, top, right, bottom = box
    hot = back > 0.5
    rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    assert abs(rows[0] - top) <= 1 and abs(rows[-1] - (bottom - 1)) <= 1
    assert abs(cols[0] - left) <= 1 and abs(cols[-1] - (right - 1)) <= 1


def test_the_parts_the_crop_cut_off_are_zero():
    model = tiny_extractor(image_size=32, preprocessing={"crop_pct": 1.0}).fit()
    back = _on_image(np.ones((32, 32), np.float32), model.data_config_, (96, 32))
    # a 96x32 image resized to 96x32 (shortest side 32), then cropped to its middle 32
    assert back[:, :32].max() == 0 and back[:, -32:].max() == 0
    assert back[:, 33:63].min() == pytest.approx(1.0)


def test_maps_have_each_images_own_size_and_lie_in_0_1(logits, tmp_path):
    images = [make_images(1, 90, 120)[0], make_images(1, 50, 40, seed=1)[0]]
    paths = save_images(images, tmp_path)
    maps = class_activation_maps(logits, [str(p) for p in paths])
    assert [m.shape for m in maps] == [(90, 120), (50, 40)]
    assert all(m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 for m in maps)
    assert all(m.max() > 0.99 for m in maps)  # each scaled to its own maximum


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_the_map_finds_the_object_on_a_plain_background(lite0_weights, side):
    """A photo of a cat pasted on a plain grey canvas, left or right of centre: ImageNet
    weights call it a cat, and the Grad-CAM map of that class lies on the cat, not on
    the canvas. Where the cat moves, the map follows."""
    from skimage import data

    model = PretrainedFeatureExtractor(
        "tf_efficientnet_lite0",
        weights=str(lite0_weights),
        layer="logits",
        preprocessing="inception",
        verbose=False,
    ).fit()
    canvas = np.full((300, 500, 3), 128, dtype=np.uint8)
    top, left = 170, 140 if side == "left" else 210
    canvas[top : top + 113, left : left + 150] = np.asarray(
        Image.fromarray(data.chelsea()).resize((150, 113))
    )
    found = explain(model, canvas[None])
    assert found.targets[0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    cam = found.maps[0]
    inside = cam[top : top + 113, left : left + 150].sum() / cam.sum()
    share = 113 * 150 / np.count_nonzero(cam)  # the cat's share of what the model saw
    assert inside > 2 * share
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert top <= peak[0] < top + 113 and left <= peak[1] < left + 150


# --------------------------------------------------------------------------- estimators


def test_a_fine_tuned_classifier_explains_its_predicted_class_by_default(classifier):
    model, X = classifier
    found = explain(model, X[:4])
    assert found.targets == model.predict(X[:4]).tolist()
    proba = model.predict_proba(X[:4])
    picked = proba[np.arange(4), np.searchsorted(model.classes_, found.targets)]
    np.testing.assert_allclose(found.scores, picked, rtol=1e-4)


def test_a_class_label_for_all_images_or_one_per_image(classifier):
    model, X = classifier
    assert explain(model, X[:3], target="blue").targets == ["blue"] * 3
    per_image = ["red", "blue", "green"]
    found = explain(model, X[:3], target=per_image)
    assert found.targets == per_image
    proba = model.predict_proba(X[:3])
    columns = np.searchsorted(model.classes_, per_image)
    np.testing.assert_allclose(found.scores, proba[np.arange(3), columns], rtol=1e-4)
    # the maps differ with the class explained
    red, blue = (class_activation_maps(model, X[:1], target=t)[0] for t in ("red", "blue"))
    assert not np.allclose(red, blue)


def test_an_unknown_label_names_the_known_ones(classifier):
    model, X = classifier
    with pytest.raises(ValueError, match=r"target='purple' is not a class label .*'blue'"):
        class_activation_maps(model, X[:1], target="purple")


def test_one_target_per_image_needs_as_many_targets_as_images(classifier):
    model, X = classifier
    with pytest.raises(ValueError, match="target has 2 entries but X has 3 images"):
        class_activation_maps(model, X[:3], target=["red", "blue"])


def test_a_multitask_classifier_takes_a_task_and_a_label():
    import pandas as pd

    y = pd.DataFrame({"colour": np.arange(12) % 3, "bright": ["no", "yes"] * 6})
    X = colour_images(y["colour"].to_numpy())
    model = tiny(verbose=False).fit(X, y)
    found = explain(model, X[:2], target=("bright", "yes"))
    assert found.targets == ["yes", "yes"]
    np.testing.assert_allclose(found.scores, model.predict_proba(X[:2])[1][:, 1], rtol=1e-4)
    predicted = explain(model, X[:2], target=(0, None)).targets
    assert predicted == model.predict(X[:2])[:, 0].tolist()
    with pytest.raises(ValueError, match=r"2 label columns \(\['colour', 'bright'\]\)"):
        class_activation_maps(model, X[:1])
    with pytest.raises(ValueError, match="task 'size', which this classifier does not have"):
        class_activation_maps(model, X[:1], target=("size", 1))


def test_a_regressor_explains_its_output():
    X = colour_images(np.arange(8) % 2)
    one = tiny(FineTunedRegressor, verbose=False).fit(X, np.arange(8.0))
    found = explain(one, X[:2])
    assert found.targets == [0, 0]
    np.testing.assert_allclose(found.scores, one.predict(X[:2]), rtol=1e-4)
    two = tiny(FineTunedRegressor, verbose=False).fit(X, np.c_[np.arange(8.0), -np.arange(8.0)])
    with pytest.raises(ValueError, match="has 2 outputs: pass the index of the one to explain"):
        class_activation_maps(two, X[:1])
    np.testing.assert_allclose(explain(two, X[:2], target=1).scores, two.predict(X[:2])[:, 1])


def test_an_extractor_explains_its_top_imagenet_class(logits):
    X = make_images(2, 64, 64)
    found = explain(logits, X)
    scores = logits.transform(X)
    assert found.targets == np.argmax(scores, axis=1).tolist()
    with pytest.raises(ValueError, match="target=1000 is not a class label"):
        class_activation_maps(logits, X, target=1000)


def test_an_extractor_of_features_has_no_class_to_explain():
    model = tiny_extractor().fit()
    with pytest.raises(TypeError, match="layer=None: its output is features"):
        class_activation_maps(model, make_images(1))


@pytest.mark.parametrize(
    "middle",
    [[], [StandardScaler()], [StandardScaler(), PCA(5, whiten=True, random_state=0)]],
    ids=["none", "scaler", "scaler+pca"],
)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_probe_is_folded_into_one_network(middle, n_classes):
    """The scaler, PCA and linear model after the extractor become the network's head:
    its softmax is the pipeline's own predict_proba."""
    y = np.arange(18) % n_classes
    X = colour_images(y)
    probe = make_pipeline(tiny_extractor(verbose=False), *middle, LogisticRegression()).fit(X, y)
    found = explain(probe, X[:6])
    proba = probe.predict_proba(X[:6])
    np.testing.assert_allclose(found.scores, proba[np.arange(6), found.targets], atol=1e-5)
    clear = np.ptp(proba, axis=1) > 1e-3  # unscaled tiny features give near-ties
    assert clear.any()
    np.testing.assert_array_equal(np.array(found.targets)[clear], probe.predict(X[:6])[clear])
    assert all(m.shape == (32, 32) for m in found.maps)
    assert not probe[0].backbone_.training  # the fitted extractor is left as it was


def test_a_fitted_search_explains_its_best_estimator():
    y = np.arange(12) % 2
    X = colour_images(y)
    search = GridSearchCV(
        make_pipeline(tiny_extractor(verbose=False), LogisticRegression()),
        {"logisticregression__C": [1.0]},
        cv=2,
    ).fit(X, y)
    np.testing.assert_allclose(
        class_activation_maps(search, X[:1])[0],
        class_activation_maps(search.best_estimator_, X[:1])[0],
    )


def test_what_cannot_be_explained_is_named():
    y = np.arange(8) % 2
    X = colour_images(y)
    normalised = make_pipeline(tiny_extractor(), Normalizer(), LogisticRegression()).fit(X, y)
    with pytest.raises(TypeError, match="a Normalizer step, which cannot be folded"):
        class_activation_maps(normalised, X[:1])
    with pytest.raises(TypeError, match="got LogisticRegression"):
        class_activation_maps(LogisticRegression().fit(np.eye(2), [0, 1]), X[:1])


# ------------------------------------------------------------------------- layers, methods


@pytest.mark.parametrize(
    "model, image_size, layer",
    [
        ("test_efficientnet", 64, "bn2"),
        ("test_resnet", 64, "layer4"),
        ("test_vit", 64, "blocks.5.norm1"),
        # at 32 px, test_resnet's layer4 is 1x1: nothing to lay on an image. auto takes
        # the last layer that still has a grid, layer3 (2x2)
        ("test_resnet", 32, "layer3"),
    ],
)
def test_auto_picks_the_last_spatial_layer(model, image_size, layer):
    from sktransfer._cam import _target_layer, network_of

    extractor = tiny_extractor(model=model, layer="logits", image_size=image_size).fit()
    assert _target_layer(network_of(extractor), "auto").name == layer


def test_a_vision_transformer_map_uses_its_own_patch_grid():
    """At 64 px, test_vit's 16-px patches make a 4x4 grid after its class token, not
    the 10x10 of its default 160 px: the tokens are laid out on the grid of the size
    the model runs at (a wrong grid could not be reshaped)."""
    model = tiny_extractor(model="test_vit", layer="logits", image_size=64).fit()
    maps = class_activation_maps(model, make_images(2, 64, 96))
    assert [m.shape for m in maps] == [(64, 96), (64, 96)]
    assert maps[0].max() > 0.99


def test_a_model_with_no_spatial_layer_is_refused():
    """test_vit at 16 px sees one 16-px patch: its tokens have no grid to lay out."""
    model = tiny_extractor(model="test_vit", layer="logits", image_size=16).fit()
    with pytest.raises(ValueError, match="has no layer with a spatial output at this input size"):
        class_activation_maps(model, make_images(1))


def test_a_named_layer_is_used(logits):
    X = make_images(1, 64, 64)
    a = class_activation_maps(logits, X, layer="blocks.3")[0]
    b = class_activation_maps(logits, X, layer="bn2")[0]
    assert not np.allclose(a, b)


def test_an_unknown_layer_lists_candidates(logits):
    with pytest.raises(ValueError, match=r"layer='blcks.3' .* Did you mean 'blocks.3'\?.*bn2"):
        class_activation_maps(logits, make_images(1), layer="blcks.3")


def test_a_layer_without_a_spatial_output_is_refused(logits):
    with pytest.raises(ValueError, match=r"layer='global_pool' outputs shape \(1, \d+\), not"):
        class_activation_maps(logits, make_images(1), layer="global_pool")


def test_an_unknown_method_gets_the_closest(logits):
    with pytest.raises(ValueError, match=r"method='gradcampp' is not known. Did you mean"):
        class_activation_maps(logits, make_images(1), method="gradcampp")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_maps_and_leaves_the_model_as_it_was(logits, method, capfd):
    before = {k: v.clone() for k, v in logits.backbone_.state_dict().items()}
    maps = class_activation_maps(logits, make_images(2, 64, 64), method=method)
    assert [m.shape for m in maps] == [(64, 64), (64, 64)]
    after = logits.backbone_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in logits.backbone_.parameters())
    assert not logits.backbone_.training
    assert capfd.readouterr().err == ""  # no progress bar per image


def test_a_class_agnostic_method_gives_the_same_map_for_every_class(logits):
    X = make_images(1, 64, 64)
    a, b = (class_activation_maps(logits, X, target=t, method="eigencam")[0] for t in (1, 2))
    np.testing.assert_array_equal(a, b)


def test_an_image_that_does_not_decode_is_named(logits, tmp_path):
    good = save_images(make_images(1), tmp_path)[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UnreadableImageError, match=r"[Ii]mage 1 .*broken.png") as info:
        class_activation_maps(logits, [str(good), str(bad)])
    assert info.value.index == 1

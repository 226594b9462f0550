"""The numpy/PIL preprocessing (``_preprocess.Preprocess``) is timm's evaluation
transform, to the last bit, for every crop mode, interpolation and image shape."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import timm.data
from PIL import Image

from sktransfer._preprocess import Preprocess

SIZES = [(64, 64), (100, 37), (37, 100), (13, 9), (300, 300), (73, 64), (65, 64), (63, 65)]


@pytest.mark.parametrize(
    "crop_mode, interpolation, crop_pct, input_hw",
    list(
        itertools.product(
            ["center", "squash", "border"],
            ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"],
            [0.875, 1.0],
            [(64, 64), (48, 64), (64, 40)],
        )
    ),
)
def test_equals_timms_eval_transform(crop_mode, interpolation, crop_pct, input_hw):
    cfg = {
        "input_size": (3, *input_hw),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    timms = timm.data.create_transform(**cfg, is_training=False)
    ours = Preprocess.of(cfg)
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = timms(image).numpy()
        actual = ours(image)
        assert actual.dtype == np.float32 and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected, err_msg=f"{width}x{height}")


def test_a_config_without_crop_settings_gets_timms_defaults():
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    image = Image.fromarray(np.arange(50 * 40 * 3, dtype=np.uint8).reshape(40, 50, 3))
    expected = timm.data.create_transform(**cfg, is_training=False)(image).numpy()
    np.testing.assert_array_equal(Preprocess.of(cfg)(image), expected)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_a_greyscale_image_resized_before_its_conversion_gives_the_same_pixels(
    crop_mode, interpolation
):
    cfg = {
        "input_size": (3, 48, 64),
        "interpolation": interpolation,
        "crop_pct": 0.9,
        "crop_mode": crop_mode,
        "mean": (0.3, 0.5, 0.7),
        "std": (0.2, 0.3, 0.4),
    }
    timms = timm.data.create_transform(**cfg, is_training=False)
    rng = np.random.default_rng(1)
    for width, height in SIZES:
        grey = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        expected = timms(grey.convert("RGB")).numpy()
        np.testing.assert_array_equal(Preprocess.of(cfg)(grey), expected)

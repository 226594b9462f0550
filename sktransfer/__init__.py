"""sktransfer: pretrained timm backbones as scikit-learn estimators.

The public names load on first use (PEP 562): ``import sktransfer`` and the command
line's ``--help`` import neither torch, timm nor scikit-learn; the first estimator used
does.
"""

# ruff: noqa: F401 (the imports for static tools, below, are not used at run time)

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Each public name and the private module that defines it.
_PUBLIC = {
    "CacheIntegrityWarning": "._cache",
    "CacheReadOnlyWarning": "._cache",
    "FineTunedClassifier": "._classifier",
    "FineTunedRegressor": "._regressor",
    "InconsistentVersionWarning": "._warnings",
    "InvalidParameterError": "._params",
    "PretrainedFeatureExtractor": "._features",
    "PretrainedWeightsError": "._hub",
    "TrainingHistoryDisplay": "._display",
    "UnreadableImageError": "._images",
    "UnstatedPreprocessingWarning": "._warnings",
    "dask_transform": "._distributed",
    "top_imagenet_labels": "._features",
}

__all__ = [*_PUBLIC, "__version__"]
_SUBMODULES = ("datasets", "inspection", "serving")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sktransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBMODULES})


if TYPE_CHECKING:  # what static tools (type checkers, IDEs, griffe) read
    from ._cache import CacheIntegrityWarning, CacheReadOnlyWarning
    from ._classifier import FineTunedClassifier
    from ._display import TrainingHistoryDisplay
    from ._distributed import dask_transform
    from ._features import PretrainedFeatureExtractor, top_imagenet_labels
    from ._hub import PretrainedWeightsError
    from ._images import UnreadableImageError
    from ._params import InvalidParameterError
    from ._regressor import FineTunedRegressor
    from ._warnings import InconsistentVersionWarning, UnstatedPreprocessingWarning

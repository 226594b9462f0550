"""Serve fitted models without torch: ONNX Runtime, numpy and PIL.

``to_onnxruntime`` turns a fitted extractor, classifier, regressor or pipeline into its
serving form; the serving estimators are what it returns. Importing this module, or
loading a serving model from a file, imports neither torch nor timm:
``to_onnxruntime`` imports them when it is called (it exports the network).
"""

from typing import TYPE_CHECKING

from ._serving import ServedClassifier, ServedFeatureExtractor, ServedRegressor

__all__ = ["ServedClassifier", "ServedFeatureExtractor", "ServedRegressor", "to_onnxruntime"]


def __getattr__(name: str):
    if name == "to_onnxruntime":  # torch and timm load only for a conversion
        from ._convert import to_onnxruntime

        return to_onnxruntime
    raise AttributeError(f"module 'sktransfer.serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what static tools (type checkers, IDEs, griffe) read
    from ._convert import to_onnxruntime

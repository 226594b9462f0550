"""Warnings of sktransfer that point at the user's line, and the ones it defines (no
torch: a model served without torch warns with them too)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


class UnstatedPreprocessingWarning(UserWarning):
    """Weights were loaded by tensor order and their preprocessing was not stated.

    A local checkpoint whose key names differ from the architecture's (weights ported
    from another framework or implementation) is matched to it by the order and shapes
    of its tensors, so nothing says which preprocessing (mean, std, interpolation, crop)
    the weights were trained with: sktransfer uses the architecture's own, which may
    not be theirs. State it with the ``preprocessing`` parameter, which silences this
    warning.
    """


def warn(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside sktransfer (as pandas'
    ``find_stack_level`` does), so the warning names the user's line however deep in
    sktransfer it is raised (``message`` may be a warning instance, which brings its
    category)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of this function
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class InconsistentVersionWarning(UserWarning):
    """Loading a model saved with another version of sktransfer, timm or torch (or
    onnxruntime, for a serving model).

    Like scikit-learn's warning of the same name: the model is rebuilt from its stored
    architecture and weights, which usually works across versions, but its predictions
    should be checked, or the model refitted with the current versions.

    Attributes
    ----------
    estimator_name : str
    package : str
        ``"sktransfer"``, ``"timm"`` or ``"torch"`` (``"onnxruntime"`` for a model
        served without torch).
    original_version, current_version : str
    """

    def __init__(self, *, estimator_name, package, original_version, current_version):
        self.estimator_name = estimator_name
        self.package = package
        self.original_version = original_version
        self.current_version = current_version

    def __str__(self):
        return (
            f"Loading {self.estimator_name} saved with {self.package} "
            f"{self.original_version} while {self.package} {self.current_version} is "
            "installed. It is rebuilt from its stored architecture and weights; check its "
            f"predictions, or install {self.package}=={self.original_version}, or refit it."
        )


def warn_on_other_versions(saved: Mapping, current: Mapping, estimator_name: str) -> None:
    """Warn once per package of ``current`` (name -> installed version) that ``saved``
    (the versions a model file records) gives another version of."""
    for package, version in current.items():
        original = saved.get(package)
        if original is not None and original != version:
            warn(
                InconsistentVersionWarning(
                    estimator_name=estimator_name,
                    package=package,
                    original_version=original,
                    current_version=version,
                )
            )

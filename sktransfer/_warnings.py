"""Warnings of sktransfer that point at the user's line, and the ones it defines."""

from __future__ import annotations

import sys
import warnings
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

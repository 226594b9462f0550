"""Look inside a fitted model: the images it gets most wrong, and where it looks.

Named after ``sklearn.inspection``. Class activation maps use pytorch-grad-cam and the
displays matplotlib: ``pip install sktransfer[inspection]``.
"""

from ._cam import class_activation_maps, overlay
from ._cam_display import ClassActivationDisplay
from ._top_losses import TopLossesDisplay, most_confused

__all__ = [
    "ClassActivationDisplay",
    "TopLossesDisplay",
    "class_activation_maps",
    "most_confused",
    "overlay",
]

"""Panels of images for the inspection displays: a grid of Axes, titles' values, and the
checks both displays share. matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np


def check_positive_int(value, name, meaning):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer ({meaning}); got {value!r}.")


def check_maps(maps, images):
    """``maps`` as a list, one per image at the image's own (h, w), or None."""
    if maps is None:
        return None
    maps = list(maps)
    if len(maps) != len(images):
        raise ValueError(
            f"maps must hold one map per image; got {len(maps)} maps for {len(images)} images."
        )
    for i, (cam, image) in enumerate(zip(maps, images, strict=True)):
        if np.shape(cam) != np.shape(image)[:2]:
            raise ValueError(
                f"maps[{i}] has shape {np.shape(cam)} but image {i} is "
                f"{np.shape(image)[:2]} (h, w); a map must be at its image's size."
            )
    return maps


def format_value(value):
    """A label or target for a title: floats to 4 significant digits, others as str."""
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def panel_axes(n_panels, ncols, ax, plt):
    """``n_panels`` Axes in reading order as a 1-D object array, axes off; a new figure of
    ``ncols`` columns when ``ax`` is None. Panels left over are hidden."""
    if n_panels == 0:
        raise ValueError("There are no images to plot: pass at least one image.")
    if ax is None:
        check_positive_int(ncols, "ncols", "the number of panels per row")
        ncols = min(ncols, n_panels)
        nrows = math.ceil(n_panels / ncols)
        _, grid = plt.subplots(
            nrows, ncols, figsize=(3 * ncols, 3.2 * nrows), squeeze=False, layout="constrained"
        )
        axes = grid.ravel()
    else:
        axes = _given_axes(ax, n_panels)
    for i, panel in enumerate(axes):
        panel.set_axis_off()
        panel.set_visible(i < n_panels)
    return axes


def _given_axes(ax, n_panels):
    from matplotlib.axes import Axes

    if isinstance(ax, Axes):
        axes = np.empty(1, dtype=object)
        axes[0] = ax
    else:
        axes = np.asarray(ax, dtype=object).ravel()
    if len(axes) < n_panels or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(
            f"ax must hold at least {n_panels} matplotlib Axes, one per panel; got "
            f"{len(axes)} object(s) of type {sorted({type(a).__name__ for a in axes})}."
        )
    return axes

"""Real image collections as file paths and targets, read where they are installed.

Nothing is downloaded or copied: each loader reads the label file of an installed
package and returns the absolute paths of its images, which every sktransfer estimator
decodes lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_elpv"]


def load_elpv() -> Bunch:
    """The ELPV solar-cell images: 2,624 greyscale 300x300 electroluminescence images of
    solar-cell crops, with an expert-rated defect probability and the cell technology.

    The images come from the ``elpv-dataset`` package (``pip install elpv-dataset``, or
    the ``examples`` extra of sktransfer), licensed CC BY-NC-SA 4.0 by its authors
    (Buerhop-Lutz et al., 2018; Deitsch et al., 2019): read them in place, do not
    redistribute them. Only ``labels.csv`` is read here.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (ndarray of str, absolute image paths, dataset order),
        ``defect_probability`` (ndarray of float: 0, 1/3, 2/3 or 1),
        ``cell_type`` (ndarray of str: ``"mono"`` or ``"poly"``, monocrystalline or
        polycrystalline) and ``DESCR``.

    Raises
    ------
    ImportError
        If ``elpv-dataset`` is not installed.

    Examples
    --------
    >>> from sktransfer.datasets import load_elpv
    >>> cells = load_elpv()  # doctest: +SKIP
    >>> len(cells.paths), sorted(set(cells.cell_type))  # doctest: +SKIP
    (2624, ['mono', 'poly'])
    """
    try:
        import elpv_dataset
    except ImportError as exc:
        raise ImportError(
            "load_elpv needs the elpv-dataset package: pip install elpv-dataset (or "
            "pip install 'sktransfer[examples]')."
        ) from exc
    data_dir = Path(elpv_dataset.__file__).parent / "data"
    labels = np.genfromtxt(
        data_dir / "labels.csv",
        dtype=["U64", "f8", "U4"],
        names=["path", "probability", "type"],
        encoding="utf-8",
    )
    return Bunch(
        paths=np.array([str(data_dir / p) for p in labels["path"]]),
        defect_probability=labels["probability"],
        cell_type=labels["type"],
        DESCR=load_elpv.__doc__.split("\n\n")[0],
    )

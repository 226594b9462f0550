"""Draw the pictures of the documentation's gallery page from real assets.

Usage::

    python scripts/gallery.py OUT_DIR

writes one PNG per figure of ``FIGURES`` into ``OUT_DIR`` (created when missing) and
prints the time each took to standard error. ``mkdocs build`` runs it through
``scripts/mkdocs_hooks.py``; nothing it draws is committed.

Everything is real and offline: EfficientNet-Lite0's ImageNet weights
(``examples/_lite0.py``), ELPV solar cells (``sktransfer.datasets.load_elpv``) and the
photos shipped with scikit-learn and scikit-image. To stay within about two minutes on
two CPU cores, the cells are seen at 128 px, the subsets are small and the fine-tune
is short; the probe and the fine-tune are each fitted once and shared by the figures.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import _lite0  # noqa: E402 (the checkpoint and its preprocessing, examples/_lite0.py)

SEED = 0
CELL_SIZE = 128  # px: ELPV cells are 300x300; 128 px keeps every fit to seconds
PHOTO_SIZE = 224  # px: the photos are classified at Lite0's own ImageNet resolution
DPI = 90
# ELPV's four expert ratings of the defect probability, as class labels in their order.
LEVELS = {0.0: "0", 1 / 3: "1/3", 2 / 3: "2/3", 1.0: "1"}
SKIMAGE_PHOTOS = ("chelsea", "coffee")
SKLEARN_PHOTOS = ("flower.jpg", "china.jpg")

# The file name of each figure, referenced by docs/gallery.md (keep them stable).
FIGURES = (
    "imagenet_top3.png",
    "learning_curves.png",
    "confusion_matrix.png",
    "top_losses.png",
    "top_losses_cam.png",
    "defect_cell_maps.png",
)


@contextmanager
def _timed(name):
    """Print how long the block took to standard error."""
    start = time.perf_counter()
    yield
    print(f"gallery: {name} {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _photos():
    """scikit-image's and scikit-learn's photos, as (name, uint8 RGB array) pairs."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    files = zip(sample.filenames, sample.images, strict=True)
    by_name = {Path(file).name: image for file, image in files}
    photos = [(name, getattr(data, name)()) for name in SKIMAGE_PHOTOS]
    return photos + [(Path(name).stem, by_name[name]) for name in SKLEARN_PHOTOS]


class Gallery:
    """The data and the fitted models the figures share, each made once, on first use.

    Parameters
    ----------
    out_dir : path-like
        Where the PNGs go.
    memory : path-like or None
        The probe's embedding cache: the held-out cells are embedded once, however many
        figures predict them.
    """

    def __init__(self, out_dir, memory):
        self.out_dir = Path(out_dir)
        self.memory = memory

    @functools.cached_property
    def cells(self):
        """The probe's split of ELPV cells: ``(X_train, X_test, y_train, y_test)``.

        300 training and 200 test cells, stratified by the four defect-probability
        levels (labels ``"0"``, ``"1/3"``, ``"2/3"``, ``"1"``); ``X`` are file paths.
        """
        from sklearn.model_selection import train_test_split

        from sktransfer.datasets import load_elpv

        elpv = load_elpv()
        levels = np.array(
            [LEVELS[min(LEVELS, key=lambda v: abs(v - p))] for p in elpv.defect_probability]
        )
        return train_test_split(
            elpv.paths,
            levels,
            train_size=300,
            test_size=200,
            stratify=levels,
            random_state=SEED,
        )

    @functools.cached_property
    def probe(self):
        """Lite0 features at 128 px, standardised, into a logistic regression (4 levels)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X_train, _, y_train, _ = self.cells
        extractor = _lite0.feature_extractor(CELL_SIZE, memory=self.memory)
        extractor.set_params(verbose=False)
        probe = make_pipeline(extractor, StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        with _timed("fit the probe (300 cells)"):
            return probe.fit(X_train, y_train)

    @functools.cached_property
    def finetuned(self):
        """Lite0 fine-tuned on 200 of the probe's training cells: defective or not."""
        from sktransfer import FineTunedClassifier

        X_train, _, y_train, _ = self.cells
        X, y = X_train[:200], _defective(y_train[:200])
        clf = FineTunedClassifier(
            _lite0.MODEL,
            weights=_lite0.WEIGHTS,
            preprocessing=_lite0.PREPROCESSING,
            image_size=CELL_SIZE,
            freeze_depth=0.5,
            head_epochs=2,
            max_epochs=4,
            validation_fraction=0.25,
            random_state=SEED,
            verbose=False,
        )
        with _timed("fit the fine-tune (200 cells)"):
            return clf.fit(X, y)

    def save(self, figure, name):
        """Write ``figure`` to ``out_dir/name`` and close it."""
        import matplotlib.pyplot as plt

        figure.savefig(self.out_dir / name, dpi=DPI, bbox_inches="tight")
        plt.close(figure)

    # One method per figure, named after its file (``imagenet_top3.png`` -> ``imagenet_top3``).

    def imagenet_top3(self):
        """Photos with the three ImageNet labels Lite0 finds most likely."""
        import matplotlib.pyplot as plt

        from sktransfer import top_imagenet_labels

        photos = _photos()
        extractor = _lite0.feature_extractor(PHOTO_SIZE)
        extractor.set_params(layer="logits", verbose=False)
        scores = extractor.fit_transform([image for _, image in photos])
        figure, axes = plt.subplots(
            1, len(photos), figsize=(2.8 * len(photos), 2.9), layout="constrained"
        )
        for ax, (name, image), top in zip(axes, photos, top_imagenet_labels(scores), strict=True):
            ax.imshow(image)
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            # The first of a label's synonyms ("tabby, tabby cat" -> "tabby") keeps it short.
            ax.set_xlabel("\n".join(f"{label.split(',')[0]}: {p:.0%}" for label, p in top))
        figure.suptitle("EfficientNet-Lite0 (ImageNet-1k), top-3 labels at 224 px")
        return figure

    def learning_curves(self):
        """Loss and accuracy per epoch of the fine-tune."""
        import matplotlib.pyplot as plt

        from sktransfer import TrainingHistoryDisplay

        figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
        TrainingHistoryDisplay.from_estimator(self.finetuned, ax=axes)
        figure.suptitle("Fine-tuning Lite0 on 200 ELPV cells at 128 px (150 train, 50 validation)")
        return figure

    def confusion_matrix(self):
        """The probe's confusion matrix on held-out cells, and its most confused pairs."""
        import matplotlib.pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay

        from sktransfer.inspection import most_confused

        _, X_test, _, y_test = self.cells
        y_pred = self.probe.predict(X_test)
        figure, (left, right) = plt.subplots(
            1, 2, figsize=(9, 3.8), width_ratios=[1.1, 1], layout="constrained"
        )
        ConfusionMatrixDisplay.from_predictions(
            y_test, y_pred, labels=list(LEVELS.values()), ax=left, colorbar=False
        )
        left.set_title("Probe on 200 held-out cells")
        left.set_xlabel("Predicted defect probability")
        left.set_ylabel("Rated defect probability")
        pairs = most_confused(y_test, y_pred)[:6]
        for true, predicted, count in pairs:
            print(f"gallery: most confused: {true} -> {predicted}: {count}", file=sys.stderr)
        right.axis("off")
        right.set_title("Most confused (rated, predicted)")
        if pairs:
            table = right.table(
                cellText=[[t, p, str(c)] for t, p, c in pairs],
                colLabels=["rated", "predicted", "cells"],
                loc="upper center",
                cellLoc="center",
            )
            table.scale(1, 1.5)
        return figure

    def _top_losses(self, cam):
        import matplotlib.pyplot as plt

        from sktransfer.inspection import TopLossesDisplay

        _, X_test, _, y_test = self.cells
        figure, axes = plt.subplots(2, 3, figsize=(7.5, 5.4), layout="constrained")
        TopLossesDisplay.from_estimator(self.probe, X_test, y_test, k=6, cam=cam, ax=axes)
        return figure

    def top_losses(self):
        """The six held-out cells the probe is most wrong about."""
        return self._top_losses(cam=False)

    def top_losses_cam(self):
        """The same cells with the Grad-CAM of the predicted class over them."""
        return self._top_losses(cam=True)

    def defect_cell_maps(self):
        """Where each model looks in one held-out defective cell (class activation maps)."""
        import matplotlib.pyplot as plt
        from PIL import Image

        from sktransfer.inspection import ClassActivationDisplay

        with Image.open(self._defective_cell()) as decoded:
            cell = np.asarray(decoded.convert("RGB"))  # decoded once, for the three panels
        figure, (image, left, right) = plt.subplots(1, 3, figsize=(9, 3.4), layout="constrained")
        image.imshow(cell)
        image.set_title("Held-out cell, rated 1")
        image.axis("off")
        ClassActivationDisplay.from_estimator(self.probe, [cell], target="1", ax=left)
        left.set_title("Probe, class 1")
        ClassActivationDisplay.from_estimator(self.finetuned, [cell], target="defective", ax=right)
        right.set_title("Fine-tune, class defective")
        return figure

    def _defective_cell(self):
        """A held-out cell rated defective (1) that both models call defective.

        A class activation map shows the evidence for a class; where a model does not
        predict the class, it is often blank. The first rated cell is the fallback.
        """
        _, X_test, _, y_test = self.cells
        rated = X_test[y_test == "1"]
        agreed = (self.probe.predict(rated) == "1") & (self.finetuned.predict(rated) == "defective")
        return rated[np.argmax(agreed)]  # argmax: the first agreed cell, else the first


def _defective(levels):
    """The binary task of the fine-tune: a defect probability of at least 0.5."""
    return np.where(np.isin(levels, ["2/3", "1"]), "defective", "functional")


def build_gallery(out_dir, names=FIGURES):
    """Draw the figures ``names`` (file names of ``FIGURES``) into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        The folder to write the PNGs to; created when missing.
    names : sequence of str, default=FIGURES
        Which figures to draw.

    Returns
    -------
    paths : list of pathlib.Path
        The PNGs written, in the order of ``names``.

    Raises
    ------
    ValueError
        If a name is not one of ``FIGURES``.
    """
    import matplotlib

    matplotlib.use("Agg")
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise ValueError(f"Unknown figure(s) {unknown}: expected names among {list(FIGURES)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory(prefix="sktransfer-gallery-cache-") as memory:
        gallery = Gallery(out_dir, memory)
        for name in names:
            with _timed(name):
                gallery.save(getattr(gallery, name.removesuffix(".png"))(), name)
            paths.append(out_dir / name)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the PNGs to")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=FIGURES,
        default=FIGURES,
        metavar="NAME",
        help="draw only these figures (file names)",
    )
    args = parser.parse_args(argv)
    with _timed("total"):
        build_gallery(args.out_dir, args.only)


if __name__ == "__main__":
    main()

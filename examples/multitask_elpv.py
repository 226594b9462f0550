"""Multi-task fine-tuning on ELPV solar cells: defects and cell technology, one backbone.

Every ELPV cell has two labels: defective or not (expert-rated probability >= 0.5) and
its technology (monocrystalline or polycrystalline). Does learning the technology as a
second task, on the same backbone with its own head, help the defect task against a
fine-tune on defects alone?

For each seed, 700 cells train and 500 are held out (stratified by defect). Both models
are ``FineTunedClassifier`` with the same defaults and random state; the multi-task one
gets ``y`` with two columns (defect, cell type) and equal ``task_weights``. Reported:
the defect task's ROC AUC and balanced accuracy on the held-out cells (the multi-task
model's first column), and the cell-type accuracy of the multi-task model.

Run::

    python examples/multitask_elpv.py                    # about 7 min on one core
    python examples/multitask_elpv.py --seeds 0 --image-size 64

Needs the ``examples`` extra. Everything runs offline on the CPU.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _lite0 import MODEL, PREPROCESSING, WEIGHTS
from _seeds import mean_sd, per_seed, seeded_parser
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

from sktransfer import FineTunedClassifier
from sktransfer.datasets import load_elpv


def run_seed(args, seed: int) -> dict:
    cells = load_elpv()
    defective = (cells.defect_probability >= 0.5).astype(int)
    train, test = train_test_split(
        np.arange(len(defective)),
        train_size=700,
        test_size=500,
        stratify=defective,
        random_state=seed,
    )
    params = dict(
        weights=WEIGHTS,
        image_size=args.image_size,
        preprocessing=PREPROCESSING,
        random_state=seed,
        device="cpu",
    )
    targets = {
        "defects alone": defective,
        "defects + cell type": np.column_stack([defective, cells.cell_type]),
    }
    results = {}
    for name, y in targets.items():
        start = time.perf_counter()
        clf = FineTunedClassifier(MODEL, **params).fit(cells.paths[train], y[train])
        seconds = time.perf_counter() - start
        proba = clf.predict_proba(cells.paths[test])
        if clf.multitask_:
            defect_proba = proba[0][:, list(clf.classes_[0]).index("1")]
            type_accuracy = accuracy_score(
                cells.cell_type[test], clf.predict(cells.paths[test])[:, 1]
            )
        else:
            defect_proba, type_accuracy = proba[:, 1], float("nan")
        results[name] = {
            "roc_auc": roc_auc_score(defective[test], defect_proba),
            "balanced_accuracy": balanced_accuracy_score(defective[test], defect_proba >= 0.5),
            "cell_type_accuracy": type_accuracy,
            "seconds": seconds,
        }
        print(f"seed {seed}, {name}: defect ROC AUC {results[name]['roc_auc']:.3f}", flush=True)
    return results


def main(argv=None) -> None:
    parser = seeded_parser(__doc__)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [run_seed(args, seed) for seed in args.seeds]

    print(f"\nELPV, {MODEL} at {args.image_size} px, 700 train / 500 test, seeds {args.seeds}")
    print("| targets | defect ROC AUC | defect bal. acc. | cell-type acc. | fit s |")
    print("|---|---|---|---|---|")
    for name in results[0]:
        rows = [r[name] for r in results]
        type_acc = [r["cell_type_accuracy"] for r in rows]
        print(
            f"| {name} | {mean_sd(r['roc_auc'] for r in rows)} | "
            f"{mean_sd(r['balanced_accuracy'] for r in rows)} | "
            f"{'—' if np.isnan(type_acc).all() else mean_sd(type_acc)} | "
            f"{statistics.mean(r['seconds'] for r in rows):.0f} |"
        )
    for metric in ("roc_auc", "balanced_accuracy"):
        deltas = [r["defects + cell type"][metric] - r["defects alone"][metric] for r in results]
        print(f"multi-task minus single-task, defect {metric}: {per_seed(deltas)}")


if __name__ == "__main__":
    main()

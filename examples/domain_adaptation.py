"""Domain adaptation on ELPV solar cells: from one cell technology to the other.

ELPV holds monocrystalline and polycrystalline cells: the same defects on a different
background (polycrystalline cells show a grain texture), a genuine domain shift. Each
direction trains on labelled cells of one technology (the source) and is scored on
held-out cells of the other (the target), whose training cells come without labels.

For each seed and direction: 600 labelled source cells; from the target technology, 400
unlabelled training cells and 400 held-out test cells (disjoint). Hyperparameters are
the defaults, chosen without target labels. Rows:

- probe, source only: ``PretrainedFeatureExtractor`` + ``LogisticRegression`` on the
  source cells;
- probe + CORAL: the same in ``skada.make_da_pipeline`` with ``CORALAdapter`` (source
  features re-coloured to the target's covariance), unlabelled target cells included;
- fine-tune, source only: ``FineTunedClassifier`` on the source cells;
- fine-tune + AdaBN: ``domain_adaptation="adabn"``, unlabelled target cells included;
- fine-tune + deep CORAL, + MMD, + DANN: ``domain_adaptation="coral"``, ``"mmd"`` or
  ``"dann"`` (skada's deep losses on the pooled features of source and target
  batches, weight 1);
- selected by prediction entropy, by soft neighbourhood density: for each split, the
  fine-tune (source only or one of the four methods) that skada's label-free scorer
  (``PredictionEntropyScorer``, ``SoftNeighborhoodDensity``) rates best on the
  unlabelled target training cells, among the fits that did not warn of divergence
  (``ConvergenceWarning``); does choosing without target labels avoid the losses?
- oracle: ``FineTunedClassifier`` on the 400 target training cells *with* their labels
  (what labelling the target would buy).

Reported: ROC AUC on the held-out target cells (mean ± sd over seeds) and the paired
difference to the fine-tune's source-only row.

Run::

    python examples/domain_adaptation.py          # about 35 min on one core
    python examples/domain_adaptation.py --sources mono &   # the two directions in
    python examples/domain_adaptation.py --sources poly     # parallel
    python examples/domain_adaptation.py --seeds 0 --image-size 64

Needs the ``examples`` and ``da`` extras (``skada``). Everything runs offline on the CPU.
"""

from __future__ import annotations

import statistics
import tempfile
import warnings

import numpy as np
import torch
from _lite0 import MODEL, PREPROCESSING, WEIGHTS
from _seeds import mean_sd, seeded_parser
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer.datasets import load_elpv

N_SOURCE, N_TARGET_TRAIN, N_TARGET_TEST = 600, 400, 400


def cells_of(cell_type, cells, rng, n):
    return rng.choice(np.flatnonzero(cells.cell_type == cell_type), n, replace=False)


def direction(cells, source_type, target_type, seed):
    """Source, unlabelled target and held-out target rows (disjoint)."""
    rng = np.random.default_rng(seed)
    source = cells_of(source_type, cells, rng, N_SOURCE)
    target = cells_of(target_type, cells, rng, N_TARGET_TRAIN + N_TARGET_TEST)
    return source, target[:N_TARGET_TRAIN], target[N_TARGET_TRAIN:]


def scores(cells, defective, rows, args, seed, cache) -> dict:
    import skada  # turns scikit-learn's metadata routing on, as skada needs

    source, target, test = rows
    X = cells.paths
    both = np.r_[source, target]
    y_da = np.r_[defective[source], -np.ones(len(target), dtype=int)]
    domain = np.r_[np.ones(len(source), dtype=int), -np.ones(len(target), dtype=int)]
    common = dict(
        weights=WEIGHTS, image_size=args.image_size, preprocessing=PREPROCESSING, device="cpu"
    )

    def probe():
        extractor = PretrainedFeatureExtractor(MODEL, memory=cache, **common)
        return extractor, LogisticRegression(C=0.1, max_iter=2000)

    def fine_tune(**params):
        return FineTunedClassifier(MODEL, random_state=seed, **common, **params)

    models = {
        "probe, source only": (
            skada.make_da_pipeline(*probe()),
            X[source],
            defective[source],
            None,
        ),
        "probe + CORAL": (
            skada.make_da_pipeline(probe()[0], skada.CORALAdapter(), probe()[1]),
            X[both],
            y_da,
            domain,
        ),
        "fine-tune, source only": (fine_tune(), X[source], defective[source], None),
        "fine-tune + AdaBN": (fine_tune(domain_adaptation="adabn"), X[both], y_da, domain),
        "fine-tune + deep CORAL": (fine_tune(domain_adaptation="coral"), X[both], y_da, domain),
        "fine-tune + MMD": (fine_tune(domain_adaptation="mmd"), X[both], y_da, domain),
        "fine-tune + DANN": (fine_tune(domain_adaptation="dann"), X[both], y_da, domain),
        "oracle (labelled target)": (fine_tune(), X[target], defective[target], None),
    }
    scorers, unlabelled = label_free_scorers(), image_array(X[target])
    masked = -np.ones(len(target), dtype=int)  # no labels, all target
    result, label_free = {}, {}
    for name, (model, X_fit, y_fit, sample_domain) in models.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if sample_domain is None:
                model.fit(X_fit, y_fit)
            else:
                model.fit(X_fit, y_fit, sample_domain=sample_domain)
        diverged = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if diverged:
            print(f"  {name}: warned of divergence", flush=True)
        if isinstance(model, FineTunedClassifier):
            proba = model.predict_proba(X[test])[:, 1]
        else:  # a skada pipeline: the test cells are target cells
            proba = model.predict_proba(X[test], sample_domain=-np.ones(len(test)))[:, 1]
        result[name] = roc_auc_score(defective[test], proba)
        if name.startswith("fine-tune") and not diverged:  # a fit that warned is no candidate
            label_free[name] = {
                scorer_name: scorer(model, unlabelled, masked, sample_domain=masked)
                for scorer_name, scorer in scorers.items()
            }
    for scorer_name in scorers:
        chosen = max(label_free, key=lambda name: label_free[name][scorer_name])
        result[f"selected by {scorer_name}"] = result[chosen]
        print(f"  {scorer_name} chose: {chosen}", flush=True)
    result["oracle (labelled target)"] = result.pop("oracle (labelled target)")
    return result


def label_free_scorers() -> dict:
    """skada's scorers that need no target labels, only target predictions."""
    from skada.metrics import PredictionEntropyScorer, SoftNeighborhoodDensity

    return {
        "prediction entropy": PredictionEntropyScorer(),
        "soft neighbourhood density": SoftNeighborhoodDensity(),
    }


def image_array(paths) -> np.ndarray:
    """Greyscale cells as one array: skada's scorers check their input with check_array."""
    return np.stack([np.asarray(Image.open(path).convert("L")) for path in paths])


def main(argv=None) -> None:
    parser = seeded_parser(__doc__)
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=["mono", "poly"],
        default=["mono", "poly"],
        help="source technologies (each adapts to the other)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = load_elpv()
    defective = (cells.defect_probability >= 0.5).astype(int)
    table = {}
    with tempfile.TemporaryDirectory(prefix="sktransfer-da-") as cache:
        for source_type in args.sources:
            target_type = {"mono": "poly", "poly": "mono"}[source_type]
            key = f"{source_type} -> {target_type}"
            for seed in args.seeds:
                rows = direction(cells, source_type, target_type, seed)
                result = scores(cells, defective, rows, args, seed, cache)
                table.setdefault(key, []).append(result)
                print(
                    f"{key}, seed {seed}: "
                    + ", ".join(f"{name} {auc:.3f}" for name, auc in result.items()),
                    flush=True,
                )

    print(
        f"\nELPV defects, ROC AUC on held-out target cells, {MODEL} at {args.image_size} px, "
        f"seeds {args.seeds}"
    )
    for key, results in table.items():
        print(f"\n**{key}**\n\n| method | ROC AUC | Δ vs fine-tune source only |\n|---|---|---|")
        for name in results[0]:
            deltas = [r[name] - r["fine-tune, source only"] for r in results]
            print(
                f"| {name} | {mean_sd(r[name] for r in results)} | {statistics.mean(deltas):+.3f} |"
            )


if __name__ == "__main__":
    main()

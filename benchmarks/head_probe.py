"""Is the head-only candidate as good as a cross-validated linear probe?

``freeze_depth="all"`` is the probe inside the fine-tuner: the guide tells users to put it
in their grid so that cross-validation decides between probe and fine-tune. That is fair
only if the head-only fit is as good a probe as a tuned ``LogisticRegression``. On seeded
ELPV splits (``benchmarks/_elpv.py``, ``n_test=500``) at 128 px, with EfficientNet-Lite0
ImageNet weights, for each training size and seed:

- ``head-only``: ``FineTunedClassifier(MODEL, weights=..., image_size=128,
  freeze_depth="all", random_state=seed)``, nothing else set;
- ``probe``: ``PretrainedFeatureExtractor`` (same model, weights and size) +
  ``StandardScaler`` + ``LogisticRegressionCV`` (10 values of C, 5 stratified folds,
  chosen for ROC AUC);
- for reference, ``head-only stepped (before)``: the same head-only fit with its stage
  stepped by its 5 epochs of AdamW, as ``fit`` did before the stage was solved
  (instrumentation: the benchmark patches the fit's rule, see :func:`patched_rule`).

All three read the pooled features from one ``memory=`` folder under /tmp, so each image is
embedded once. Score: ROC AUC of ``predict_proba`` on the held-out cells. Target, per
size: the head-only mean ROC AUC at most 0.01 below the probe's (or above it). Exit
status 1 on a miss::

    python benchmarks/head_probe.py                    # 300 and 1200 images, seeds 0 1 2

``--full-finetune`` instead fits the default full fine-tunes (``freeze_depth`` 0 and
0.5, default epochs) on 300 training cells and appends them to ``--results``: with the
head stage stepped by its epochs (what ``fit`` does by default before a fine-tuning
stage), or, with ``--converged-head``, solved to convergence first (LP-FT:
``head_epochs="converge"``). ``--table`` prints both::

    python benchmarks/head_probe.py --full-finetune &
    python benchmarks/head_probe.py --full-finetune --converged-head
    python benchmarks/head_probe.py --table

One torch thread per process by default (``--threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from _elpv import elpv_split
from _report import report
from finetune_quality import fine_tune as fitted
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sweep_defaults import feature_extractor

from sktransfer._finetuning import _loop

IMAGE_SIZE = 128
N_TEST = 500
MAX_SHORTFALL = 0.01  # head-only ROC AUC may be at most this much below the probe's
CACHE = Path("/tmp/sktransfer-head-probe-cache")
DEPTHS = (0, 0.5)


def logistic_probe(seed):
    """The probe's model on embeddings: standardised, then a logistic regression whose C
    is searched among 10 values by 5-fold cross-validated ROC AUC (50 fits and a refit)."""
    return make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=10,
            cv=StratifiedKFold(5, shuffle=True, random_state=seed),
            scoring="roc_auc",
            max_iter=5000,
        ),
    )


def probe(split, seed) -> dict:
    X_train, y_train, X_test, y_test = split
    start = time.perf_counter()
    extractor = feature_extractor(IMAGE_SIZE, memory=str(CACHE)).fit(X_train)
    model = logistic_probe(seed).fit(extractor.transform(X_train), y_train)
    seconds = time.perf_counter() - start
    proba = model.predict_proba(extractor.transform(X_test))[:, 1]
    C = float(model[-1].C_[0])
    return {"roc_auc": float(roc_auc_score(y_test, proba)), "C": C, "fit_seconds": seconds}


def fine_tune(split, seed, memory, **params) -> dict:
    X_train, y_train, X_test, y_test = split
    clf, seconds = fitted(split, IMAGE_SIZE, seed, {"memory": memory, **params})
    proba = clf.predict_proba(X_test)[:, list(clf.classes_).index(1)]
    head = [r for r in clf.history_ if r["stage"] == "head"]
    finetune = [r for r in clf.history_ if r["stage"] == "finetune"]
    result = {
        "roc_auc": float(roc_auc_score(y_test, proba)),
        "fit_seconds": seconds,
        "head_train_loss": float(head[-1]["train_loss"]),
        "first_finetune_loss": float(finetune[0]["train_loss"]) if finetune else None,
    }
    if "head_penalty" in head[-1]:
        result["C"] = 1.0 / (head[-1]["head_penalty"] * len(y_train))
    return result


def mean_sd(values) -> str:
    values = list(values)
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


@contextlib.contextmanager
def patched_rule(rule):
    """Instrumentation, not the product: ``rule(plan, backbone, stage, inputs)`` decides
    which stages of the fits inside the block are solved rather than stepped."""
    solvable = _loop.solvable
    _loop.solvable = rule
    try:
        yield
    finally:
        _loop.solvable = solvable


def never(plan, backbone, stage, inputs) -> bool:
    return False


def joined(values, spec=".3g") -> str:
    return " / ".join(format(v, spec) for v in values)


# ------------------------------------------------------------------- head-only vs probe


def compare_probe(sizes, seeds) -> int:
    rows = []
    for n_train in sizes:
        for seed in seeds:
            split = elpv_split(n_train, N_TEST, seed)
            p = probe(split, seed)
            h = fine_tune(split, seed, str(CACHE), freeze_depth="all")
            with patched_rule(never):  # the head stepped by its 5 epochs
                stepped = fine_tune(split, seed, str(CACHE), freeze_depth="all")
            row = {"n_train": n_train, "seed": seed, "probe": p, "head": h, "stepped": stepped}
            print(json.dumps(row), flush=True)
            rows.append(row)
    checks = []
    print(
        "\n| n_train | seeds | probe ROC AUC | head-only ROC AUC | Δ (head − probe) "
        "| Δ by seed | head-only stepped (before) | probe C | head-only C | probe s "
        "| head-only s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n_train in sizes:
        mine = [r for r in rows if r["n_train"] == n_train]
        deltas = [r["head"]["roc_auc"] - r["probe"]["roc_auc"] for r in mine]
        delta = statistics.mean(deltas)
        print(
            f"| {n_train} | {len(mine)} | {mean_sd(r['probe']['roc_auc'] for r in mine)} | "
            f"{mean_sd(r['head']['roc_auc'] for r in mine)} | {mean_sd(deltas)} | "
            f"{joined(deltas, '+.3f')} | "
            f"{mean_sd(r['stepped']['roc_auc'] for r in mine)} | "
            f"{joined(r['probe']['C'] for r in mine)} | "
            f"{joined(r['head'].get('C', float('nan')) for r in mine)} | "
            f"{statistics.mean(r['probe']['fit_seconds'] for r in mine):.1f} | "
            f"{statistics.mean(r['head']['fit_seconds'] for r in mine):.1f} |"
        )
        label = f"{n_train} images: head-only − probe = {delta:+.3f} >= -{MAX_SHORTFALL}"
        checks.append((label, delta >= -MAX_SHORTFALL))
    return report(checks)


# -------------------------------------------------------- full fine-tune: which head stage


def full_finetunes(n_train, seeds, label, results: Path, **params) -> None:
    done = {(r["label"], r["depth"], r["seed"]) for r in _records(results)}
    memory = str(CACHE.with_name(f"{CACHE.name}-finetune"))
    for seed in seeds:
        split = elpv_split(n_train, N_TEST, seed)
        for depth in DEPTHS:
            if (label, depth, seed) in done:
                continue
            result = fine_tune(split, seed, memory, freeze_depth=depth, **params)
            record = {"label": label, "n_train": n_train, "depth": depth, "seed": seed, **result}
            print(json.dumps(record), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")


def full_finetune_table(results: Path) -> None:
    records = _records(results)
    labels = sorted({r["label"] for r in records})
    print(
        "\n| freeze_depth | head stage | seeds | ROC AUC | ROC AUC by seed | head loss "
        "| 1st fine-tune epoch loss | fit s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for depth in DEPTHS:
        for label in labels:
            mine = sorted(
                (r for r in records if (r["label"], r["depth"]) == (label, depth)),
                key=lambda r: r["seed"],
            )
            if not mine:
                continue
            print(
                f"| {depth} | {label} | {len(mine)} | {mean_sd(r['roc_auc'] for r in mine)} | "
                f"{joined((r['roc_auc'] for r in mine), '.3f')} | "
                f"{statistics.mean(r['head_train_loss'] for r in mine):.3f} | "
                f"{statistics.mean(r['first_finetune_loss'] for r in mine):.3f} | "
                f"{statistics.mean(r['fit_seconds'] for r in mine):.0f} |"
            )


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-finetune", action="store_true")
    parser.add_argument("--table", action="store_true", help="the full fine-tune table")
    parser.add_argument("--converged-head", action="store_true")
    parser.add_argument("--n-train", type=int, default=300, help="of the full fine-tunes")
    parser.add_argument("--results", default="/tmp/sktransfer-head-probe-finetune.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    if args.full_finetune:
        label = "converged (LP-FT)" if args.converged_head else "epochs"
        head = {"head_epochs": "converge"} if args.converged_head else {}
        full_finetunes(args.n_train, args.seeds, label, Path(args.results), **head)
    if args.full_finetune or args.table:
        full_finetune_table(Path(args.results))
        return 0
    return compare_probe(args.sizes, args.seeds)


if __name__ == "__main__":
    sys.exit(main())

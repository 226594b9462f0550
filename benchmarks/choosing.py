"""What a probe, a fine-tune and a prediction cost per 1,000 images, on this machine.

The figures of the "Choosing" page (``docs/choosing.md``). On one seeded ELPV split
(``benchmarks/_elpv.py``: ``--n-train`` cells to fit, ``--n-test`` others to predict),
with EfficientNet-Lite0's ImageNet weights and their stated preprocessing
(``examples/_lite0.py``), float32 on the CPU, no cache (``memory=None``), at each
``--sizes``:

- **probe**: ``PretrainedFeatureExtractor`` + ``StandardScaler`` +
  ``LogisticRegressionCV`` as in ``head_probe.py`` (10 values of ``C`` x 5 stratified
  folds, scored by ROC AUC, then a refit on every training image: 51 fits). Timed apart:
  ``fit`` of the extractor (loading the model), the embedding pass of the training
  images (reading and decoding the files, preprocessing, the forward pass) and the
  cross-validated search on the embeddings; the probe's fit is their sum.
- **fine-tune**: ``FineTunedClassifier(freeze_depth=0.5, head_epochs=1,
  max_epochs=--epochs)``, the other parameters at their defaults. An epoch's time is
  its ``history_[i]["dur"]``: the head epoch (on pooled features computed once) and the
  median of the fine-tuning epochs after the first (the first carries one-off
  allocations). "once per fit" is the fit's wall time minus all its epochs: loading the
  model, decoding the images and running the frozen lower half once (no augmentation:
  the frozen activations are cached for the whole fit).
- **predict**: ``predict_proba`` of the fitted probe and fine-tune on the held-out
  images (decoding and the whole forward pass).
- **backbones** (``--backbones``): the embedding pass (decode + forward) of
  ``--n-backbone`` held-out images at 224 px through ``PretrainedFeatureExtractor`` with
  random weights (``weights=None``: the same arithmetic as pretrained ones, and nothing
  to download), next to each model's parameter count without its classifier.

Each measurement runs ``--rounds`` times, interleaved with the others in an order that
rotates each round, and each part keeps its shortest time (noise on a shared machine only
ever adds time). Every time is also given per 1,000 of the images it processed. Targets,
side by side in the run (absolute times on a shared machine mean little):

- at every size, the fine-tune's whole fit costs at least ``MIN_FIT_RATIO`` x the
  probe's per image (it pays a pass like the probe's embedding pass, then its epochs);
- with two sizes or more, a fine-tuning epoch at the largest size costs at least
  ``MIN_SIZE_RATIO`` x one at the smallest (the pixels grow 3.1 x from 128 to 224 px).

Exit status 1 on a miss::

    python benchmarks/choosing.py --threads 2   # about 3 minutes on 2 cores, 7 on busy ones
    python benchmarks/choosing.py --sizes 96 --n-train 100 --n-test 100 --backbones --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import timm
import torch
from _elpv import elpv_split
from _report import report
from _timing import seconds
from finetune_quality import fine_tune
from head_probe import logistic_probe

from sktransfer import PretrainedFeatureExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, feature_extractor  # noqa: E402

FREEZE_DEPTH = 0.5
MIN_SIZE_RATIO = 2.0
MIN_FIT_RATIO = 2.0
BACKBONES = (
    "tf_efficientnet_lite0",
    "efficientnet_b0",
    "resnet50",
    "convnext_tiny",
    "vit_small_patch16_224",
)


def probe_costs(split, size, seed) -> dict:
    """Seconds of the probe's parts (see the module docstring)."""
    X_train, y_train, X_test, _ = split
    extractor = feature_extractor(size).set_params(device="cpu")
    load = seconds(lambda: extractor.fit(X_train))
    begin = time.perf_counter()
    Z_train = extractor.transform(X_train)
    embed = time.perf_counter() - begin
    head = logistic_probe(seed)
    search = seconds(lambda: head.fit(Z_train, y_train))
    predict = seconds(lambda: head.predict_proba(extractor.transform(X_test)))
    return {"load": load, "embed": embed, "search": search, "predict": predict}


def finetune_costs(split, size, epochs, seed) -> dict:
    """Seconds of the fine-tune's parts (see the module docstring)."""
    knobs = {"freeze_depth": FREEZE_DEPTH, "head_epochs": 1, "max_epochs": epochs}
    clf, fit = fine_tune(split, size, seed, {**knobs, "device": "cpu"})
    durations = {"head": [], "finetune": []}
    for record in clf.history_:
        durations[record["stage"]].append(record["dur"])
    return {
        "once": fit - sum(durations["head"]) - sum(durations["finetune"]),
        "head": sum(durations["head"]),
        "epoch": statistics.median(durations["finetune"][1:]),
        "fit": fit,
        "predict": seconds(lambda: clf.predict_proba(split[2])),
    }


def backbone_costs(paths, model, size) -> dict:
    """Seconds of the embedding pass of ``model`` (random weights: the same arithmetic)."""
    extractor = PretrainedFeatureExtractor(model, weights=None, image_size=size, device="cpu")
    extractor.fit(paths)
    return {"embed": seconds(lambda: extractor.transform(paths))}


def parameters(model) -> float:
    """Millions of parameters of timm's ``model`` (pooled features, no classifier)."""
    network = timm.create_model(model, pretrained=False, num_classes=0)
    return sum(p.numel() for p in network.parameters()) / 1e6


def best(runs: list[dict]) -> dict:
    """Each part's shortest time over the rounds: noise only ever adds time."""
    return {part: min(run[part] for run in runs) for part in runs[0]}


def per_1000(value, n) -> str:
    return f"{1000 * value / n:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (>= 2)")
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES))
    parser.add_argument("--n-backbone", type=int, default=100, help="images per backbone")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is not timed).")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    start = time.perf_counter()
    split = elpv_split(args.n_train, args.n_test, args.seed)
    for path in (*split[0], *split[2]):  # the files in the page cache for every method
        Path(path).read_bytes()
    feature_extractor(64).fit_transform(split[0][:8])  # one-off imports and kernels
    print(
        f"ELPV: {args.n_train} cells to fit ({split[1].sum()} defective), "
        f"{args.n_test} to predict; {MODEL} float32 on the CPU, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )

    n, m = args.n_train, args.n_test
    load_before = os.getloadavg()[0]
    measure = {}
    for size in args.sizes:
        measure[size, "probe"] = partial(probe_costs, split, size, args.seed)
        measure[size, "finetune"] = partial(finetune_costs, split, size, args.epochs, args.seed)
    backbone_paths = split[2][: args.n_backbone]
    for model in args.backbones:
        measure["backbone", model] = partial(backbone_costs, backbone_paths, model, 224)
    keys, runs = list(measure), {key: [] for key in measure}
    for r in range(args.rounds):  # interleaved, the order rotating each round
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            runs[key].append(measure[key]())
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - start:.0f} s)")

    rows, probe_fit, finetune_fit, epoch = [], {}, {}, {}
    for size in args.sizes:
        p, f = best(runs[size, "probe"]), best(runs[size, "finetune"])
        probe_fit[size] = (p["load"] + p["embed"] + p["search"]) / n
        finetune_fit[size] = f["fit"] / n
        epoch[size] = f["epoch"] / n
        rows += [
            (size, "probe: load the model (extractor `fit`)", p["load"], n, "per fit"),
            (size, "probe: embedding pass (decode + forward)", p["embed"], n, "per fit"),
            (size, "probe: `LogisticRegressionCV` search (51 fits)", p["search"], n, "per fit"),
            (size, "**probe: whole fit**", p["load"] + p["embed"] + p["search"], n, "per fit"),
            (size, "fine-tune: load, decode, frozen half once", f["once"], n, "per fit"),
            (size, "fine-tune: head epoch (pooled features)", f["head"], n, "per epoch"),
            (size, "fine-tune: fine-tuning epoch (median)", f["epoch"], n, "per epoch"),
            (size, f"**fine-tune: whole fit ({args.epochs} + 1 epochs)**", f["fit"], n, "per fit"),
            (size, "predict: probe (`predict_proba`)", p["predict"], m, "per call"),
            (size, "predict: fine-tune (`predict_proba`)", f["predict"], m, "per call"),
        ]

    print("\n| image size | what | images | seconds | s per 1,000 images | paid |")
    print("|---|---|---|---|---|---|")
    for size, what, value, count, paid in rows:
        print(f"| {size} | {what} | {count} | {value:.1f} | {per_1000(value, count)} | {paid} |")
    if args.backbones:
        print(
            "\n| backbone (random weights, 224 px) | parameters | images | seconds "
            "| s per 1,000 images |"
        )
        print("|---|---|---|---|---|")
        for model in args.backbones:
            value, count = best(runs["backbone", model])["embed"], len(backbone_paths)
            print(
                f"| `{model}` | {parameters(model):.1f} M | {count} | {value:.1f} "
                f"| {per_1000(value, count)} |"
            )
    print(
        f"\nEach part: its shortest time over {args.rounds} round(s). Total "
        f"{time.perf_counter() - start:.0f} s; 1-minute load average {load_before:.1f} "
        f"before the rounds, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)."
    )

    checks = [
        (
            f"{size} px: fine-tune fit {1000 * finetune_fit[size]:.1f} s >= {MIN_FIT_RATIO} x "
            f"probe fit {1000 * probe_fit[size]:.1f} s per 1,000 images",
            finetune_fit[size] >= MIN_FIT_RATIO * probe_fit[size],
        )
        for size in args.sizes
    ]
    small, large = min(args.sizes), max(args.sizes)
    if large > small:
        ratio = epoch[large] / epoch[small]
        checks.append(
            (
                f"fine-tuning epoch {large} px / {small} px = {ratio:.2f} >= {MIN_SIZE_RATIO}",
                ratio >= MIN_SIZE_RATIO,
            )
        )
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())

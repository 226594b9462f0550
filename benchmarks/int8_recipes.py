"""Which INT8 recipe keeps a probe's accuracy: ONNX Runtime's static quantisation, side
by side.

On the split of ``serving.py`` (``benchmarks/_elpv.py``: 700 ELPV cells to fit, 500
held out), EfficientNet-Lite0's pooled features at ``--size`` px (``examples/_lite0.py``)
are exported once and quantised with each recipe below, calibrated on the first
``--n-calibration`` training cells. For each: the cosine of the INT8 features to float32's
on the held-out cells (mean and smallest), and the ROC AUC on them of a
``LogisticRegression`` fitted on the float32 features of the training cells, applied to
float32 and to INT8 features. Every recipe is QDQ with per-channel weights; what varies:

- the activations' and weights' types (S8S8, U8S8, U8U8), ``reduce_range`` (7-bit
  weights, for CPUs without VNNI whose 8-bit products saturate);
- the calibration: the extremes (MinMax) or a percentile of each activation;
- the first convolutions (nearest the input) left in float.

The recipes that leave the first convolutions in float are also checked as
``serving.py`` checks ``to_onnxruntime``'s: the ImageNet classifier at 224 px, top-5 on
photos out of sample. The last row is ``to_onnxruntime``'s recipe. Target: its ROC AUC within
``MAX_AUC_LOSS`` of float32's. Exit status 1 on a miss::

    python benchmarks/int8_recipes.py      # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _elpv import elpv_split
from _report import report
from onnxruntime.quantization import CalibrationMethod, QuantType
from serving import imagenet_top5, int8_form, same_top5
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from sktransfer._convert import CALIBRATION_PERCENTILE, FLOAT_CONVS
from sktransfer.serving import to_onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import feature_extractor  # noqa: E402

MAX_AUC_LOSS = 0.005
MINMAX = {"calibrate_method": CalibrationMethod.MinMax, "extra_options": {}}
UNSIGNED = {"activation_type": QuantType.QUInt8}
RECIPES = {
    "S8S8, MinMax (ONNX Runtime's defaults but signed)": {**MINMAX, "float_convs": 0},
    "U8S8, MinMax": {**MINMAX, **UNSIGNED, "float_convs": 0},
    "U8S8, MinMax, reduce_range": {**MINMAX, **UNSIGNED, "reduce_range": True, "float_convs": 0},
    "U8U8, MinMax": {**MINMAX, **UNSIGNED, "weight_type": QuantType.QUInt8, "float_convs": 0},
    f"S8S8, percentile {CALIBRATION_PERCENTILE}": {"float_convs": 0},
    f"S8S8, MinMax, first {FLOAT_CONVS} convolutions in float": {**MINMAX},
    f"**S8S8, percentile {CALIBRATION_PERCENTILE}, first {FLOAT_CONVS} convolutions in "
    "float (to_onnxruntime's)**": {},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-calibration", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's notes on U8U8 biases
    start = time.perf_counter()
    X_train, y_train, X_test, y_test = elpv_split(700, 500, args.seed)
    extractor = feature_extractor(args.size).set_params(device="cpu", verbose=False).fit()
    float32 = to_onnxruntime(extractor)
    Z_train, Z_test = float32.transform(X_train), float32.transform(X_test)
    head = LogisticRegression(max_iter=2000).fit(Z_train, y_train)
    auc_float = roc_auc_score(y_test, head.predict_proba(Z_test)[:, 1])
    calibration = list(X_train[: args.n_calibration])
    print(
        f"ELPV: 700 cells to fit, 500 held out; Lite0 features at {args.size} px; "
        f"float32 ROC AUC {auc_float:.4f}; {args.n_calibration} calibration cells",
        flush=True,
    )
    print(
        "\n| recipe | cosine mean | cosine min | ROC AUC | change "
        "| ImageNet photos with top-5 changed |"
    )
    print("|---|---|---|---|---|---|")
    auc = {}
    for name, settings in RECIPES.items():
        Z = int8_form(extractor, calibration, settings).transform(X_test)
        cosine = (Z * Z_test).sum(1) / np.linalg.norm(Z, axis=1) / np.linalg.norm(Z_test, axis=1)
        auc[name] = roc_auc_score(y_test, head.predict_proba(Z)[:, 1])
        changed = ""
        if settings.get("float_convs", FLOAT_CONVS) == FLOAT_CONVS:
            top5 = imagenet_top5(args.n_calibration, settings)
            moved = [n for n, f, q, _ in top5 if not same_top5(f, q)]
            changed = f"{len(moved)} of {len(top5)}" + (f" ({', '.join(moved)})" if moved else "")
        print(
            f"| {name} | {cosine.mean():.4f} | {cosine.min():.4f} | {auc[name]:.4f} "
            f"| {auc[name] - auc_float:+.4f} | {changed} |",
            flush=True,
        )
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    chosen = auc[list(RECIPES)[-1]]
    return report(
        [
            (
                f"to_onnxruntime's recipe: ROC AUC {chosen:.4f} within {MAX_AUC_LOSS} of "
                f"float32's {auc_float:.4f}",
                chosen >= auc_float - MAX_AUC_LOSS,
            )
        ]
    )


if __name__ == "__main__":
    sys.exit(main())

"""Serving without torch: throughput, latency, cold start and accuracy, side by side.

On one seeded ELPV split (``benchmarks/_elpv.py``: ``--n-train`` cells to fit,
``--n-test`` held-out files to predict), EfficientNet-Lite0's ImageNet weights with their
stated preprocessing (``examples/_lite0.py``), at ``--size`` px, two models:

- **probe**: ``Pipeline(PretrainedFeatureExtractor, StandardScaler, LogisticRegression)``
  fitted on the training cells;
- **fine-tune**: ``FineTunedClassifier(freeze_depth=0.5, head_epochs=1, max_epochs=1)``.

Each is served five ways: the torch estimator itself, its float32 serving form
(``to_onnxruntime``), its INT8 one (``quantize="int8"``, calibrated on
``--n-calibration`` training cells), and, where OpenVINO is installed, the same two
graphs run by OpenVINO (float32 arithmetic) with the same decoding threads. Measured
for each, on the same held-out files, decoding and resizing included:

- **images/s**: ``predict_proba`` of all the held-out files, ``--rounds`` interleaved
  rounds after a warm-up, best of them (the torch estimator also with
  ``num_workers=1``: decoding in a thread beside the network);
- **latency**: ``predict_proba([path])`` of one file, ``--requests`` requests taking
  turns between the forms; median and 99th percentile;
- **cold start**: a new Python process that loads the joblib file and predicts one file,
  from its start to that prediction (best of 3);
- **ROC AUC** on the held-out cells, and the largest difference of float32's
  probabilities from torch's.

Then the network alone, on a batch of 32 preprocessed tensors (torch eager, ONNX
Runtime and OpenVINO), with the arithmetic each image costs (multiply-adds of the
convolutions and linear layers) and the share of the cores' peak it reaches; one thread
decoding and preprocessing alone, and from both the end-to-end bound of each runtime
(each image costs its decoding on one core and its network on all) beside what the
probe reaches. Then which operators of the INT8 graph run in INT8 and which in float.
Last, the ImageNet check: the extractor with ``layer="logits"`` at 224 px, float32
and INT8, on the colour photos of scikit-image and scikit-learn (each scored by a graph
calibrated on crops of the other half and of other pictures): top-5 labels compared.

Targets: float32 within 1e-4 of torch; INT8 ROC AUC within 0.005 of torch's; INT8
top-5 on the photos unchanged; end to end, INT8 at least 2.5 x and float32 at least
1.8 x the images/s of the torch estimator; cold start at least 3 x faster. Exit status 1
on a miss::

    python benchmarks/serving.py              # about 6 minutes on 2 cores
    python benchmarks/serving.py --n-train 100 --n-test 100 --rounds 1 --requests 20
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import torch
from _elpv import elpv_split
from _report import report
from _timing import seconds
from finetune_quality import fine_tune
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor, _backbone
from sktransfer._convert import quantized
from sktransfer._images import as_images, iter_batches
from sktransfer._preprocess import Preprocess
from sktransfer._serving import decoding_threads
from sktransfer.serving import to_onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, PREPROCESSING, WEIGHTS, feature_extractor  # noqa: E402

FP32_TOLERANCE = 1e-4
MAX_AUC_LOSS = 0.005
MIN_INT8_SPEEDUP = 2.5
MIN_FP32_SPEEDUP = 1.8
MIN_COLD_START_SPEEDUP = 3.0
NETWORK_BATCH = 32

_COLD_START = """
import sys, time
started = float(sys.argv[1])
import joblib
model = joblib.load(sys.argv[2])
model.predict_proba([sys.argv[3]])
print(time.time() - started)
"""


def models(split, size, n_calibration, seed) -> dict:
    """The fitted probe and fine-tune, each in its three forms."""
    X_train, y_train, _, _ = split
    probe = make_pipeline(
        feature_extractor(size).set_params(device="cpu", verbose=False),
        StandardScaler(),
        LogisticRegression(max_iter=2000),
    ).fit(X_train, y_train)
    knobs = {"freeze_depth": 0.5, "head_epochs": 1, "max_epochs": 1, "device": "cpu"}
    finetuned, _ = fine_tune(split, size, seed, {**knobs, "verbose": False})
    calibration = X_train[:n_calibration]
    out = {}
    for name, model in (("probe", probe), ("fine-tune", finetuned)):
        forms = {
            "torch": model,
            "float32": to_onnxruntime(model),
            "int8": to_onnxruntime(model, quantize="int8", calibration=calibration),
        }
        if _has_openvino():
            forms["OpenVINO float32"] = OpenVinoForm(forms["float32"])
            forms["OpenVINO int8"] = OpenVinoForm(forms["int8"])
        out[name] = forms
    return out


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def throughput(forms: dict, X, rounds: int) -> dict:
    """Best seconds of ``predict_proba(X)`` per form, ``rounds`` interleaved rounds."""
    threaded = _with_workers(forms["torch"], 1)
    calls = {form: (lambda m=model: m.predict_proba(X)) for form, model in forms.items()}
    calls["torch, num_workers=1"] = lambda: threaded.predict_proba(X)
    times = {form: [] for form in calls}
    keys = list(calls)
    for call in calls.values():  # warm-up: one-off allocations and kernel choices
        call()
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(seconds(calls[key]))
    return {form: min(values) for form, values in times.items()}


def _with_workers(model, workers: int):
    """A copy of ``model`` whose image estimator decodes in ``workers`` threads (the
    model itself keeps its own ``num_workers``)."""
    copied = copy.deepcopy(model)
    (copied[0] if isinstance(copied, Pipeline) else copied).set_params(num_workers=workers)
    return copied


def latencies(forms: dict, paths, requests: int) -> dict:
    """Seconds of ``predict_proba([path])`` per form, the forms taking turns."""
    out = {form: [] for form in forms}
    for i in range(requests):
        path = [paths[i % len(paths)]]
        for form, model in forms.items():
            out[form].append(seconds(lambda m=model, p=path: m.predict_proba(p)))
    return out


def cold_start(model, path: str, folder: Path, name: str, repeats: int = 3) -> float:
    """Best seconds from a new process's start to its first prediction."""
    file = folder / f"{name}.joblib"
    joblib.dump(model, file)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    best = float("inf")
    for _ in range(repeats):
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-c", _COLD_START, repr(started), str(file), path],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        best = min(best, float(done.stdout.strip().splitlines()[-1]))
    return best


def multiply_adds(network: torch.nn.Module, input_size) -> int:
    """Multiply-adds of one image through the convolutions and linear layers."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in network.modules()]
    with torch.inference_mode():
        network(torch.zeros(1, *input_size))
    for hook in hooks:
        hook.remove()
    return total


def network_rates(extractor, served: dict, batch: np.ndarray, rounds: int) -> dict:
    """Images/s of the network alone on ``batch`` (preprocessed): torch eager, ONNX
    Runtime float32 and INT8, OpenVINO on the same graphs where it is installed."""
    tensor = torch.from_numpy(batch)
    if _backbone.prefers_channels_last(extractor.backbone_):
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    runs = {"torch eager": lambda: extractor._forward(tensor)}
    for form, model in served.items():
        session, name = model.session, model.input_name_
        runs[f"ONNX Runtime {form}"] = lambda s=session, n=name: s.run(None, {n: batch})
        compiled = _openvino(model.onnx_model_)
        if compiled is not None:
            runs[f"OpenVINO {form}"] = lambda c=compiled: c(batch)
    best = {}
    with torch.inference_mode():
        for call in runs.values():
            call()  # warm-up
        for _ in range(rounds):
            for key, call in runs.items():
                best[key] = min(best.get(key, float("inf")), seconds(call))
    return {key: len(batch) / value for key, value in best.items()}


def _openvino(graph: bytes):
    if not _has_openvino():
        return None
    import openvino

    core = openvino.Core()
    config = {  # float32 arithmetic (its default here is bfloat16), one request at a time
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.onnx"
        path.write_bytes(graph)
        return core.compile_model(core.read_model(str(path)), "CPU", config)


class OpenVinoForm:
    """A serving form run by OpenVINO instead of ONNX Runtime: the same graph, the same
    preprocessing and decoding threads, then the pipeline's scikit-learn steps."""

    def __init__(self, served):
        self.served = served
        self.first = served[0] if isinstance(served, Pipeline) else served
        self.compiled = _openvino(self.first.onnx_model_)

    def predict_proba(self, X):
        preprocess = Preprocess(**self.first.preprocessing_)
        batches = iter_batches(as_images(X), preprocess, 32, decoding_threads(None))
        rows = np.concatenate([self.compiled(batch)[0] for _, batch in batches])
        return self.served[1:].predict_proba(rows) if self.first is not self.served else rows


def peak_gmacs(cores: int) -> tuple[str, float, float, float]:
    """What the CPU's flags allow: its vector units, its clock as the kernel reports it
    (GHz; a boost clock may be higher) and the peak float32 and int8 multiply-adds per
    second (G) of ``cores`` cores, counting two FMA (or VNNI dot-product) units per core
    of the widest vector the flags list: per cycle, 32 float32 and 128 int8 multiply-adds
    with AVX-512 and AVX-512 VNNI, 16 and 64 with AVX2 (int8 through vpmaddubsw)."""
    text = Path("/proc/cpuinfo").read_text()
    flags = set(
        next((ln.split(":")[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    )
    mhz = [float(ln.split(":")[1]) for ln in text.splitlines() if ln.startswith("cpu MHz")]
    ghz = max(mhz) / 1000 if mhz else float("nan")
    wide = "avx512f" in flags
    vnni = "avx512_vnni" in flags
    units = ("AVX-512" if wide else "AVX2") + (" + AVX-512 VNNI" if vnni else "")
    fp32 = 32 if wide else 16
    int8 = 128 if vnni else 64
    return units, ghz, fp32 * ghz * cores, int8 * ghz * cores


CALIBRATION_PICTURES = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel")


def photos() -> dict[str, np.ndarray]:
    """The colour photos of scikit-image and scikit-learn, by name."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    found = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images, strict=True):
        found[Path(filename).stem] = image
    return found


def imagenet_top5(n_calibration: int, settings=None) -> list[tuple[str, list, list, float]]:
    """Top-5 ImageNet classes of each photo, float32 and INT8 (at 224 px), and the
    float32 logit of the 5th class less that of the 6th (how near a tie). The INT8
    graph that scores a photo never saw it: the photos are split in two halves, and
    each half is scored by a graph calibrated on crops of the other half and of
    scikit-image's other colour pictures. ``settings``: another INT8 recipe than
    ``to_onnxruntime``'s (arguments of ``_convert.quantized``)."""
    from skimage import data

    extractor = PretrainedFeatureExtractor(
        MODEL, weights=WEIGHTS, preprocessing=PREPROCESSING, layer="logits", verbose=False
    ).fit()
    float32 = to_onnxruntime(extractor)
    scored = photos()
    others = [getattr(data, name)() for name in CALIBRATION_PICTURES]
    names = list(scored)
    rows = []
    for fold in (names[0::2], names[1::2]):
        seen = [scored[n] for n in names if n not in fold] + others
        int8 = int8_form(extractor, _photo_crops(seen, n_calibration), settings)
        X = [scored[n] for n in fold]
        logits = float32.transform(X)
        order = [np.argsort(-z, axis=1) for z in (logits, int8.transform(X))]
        for i, n in enumerate(fold):
            fifth, sixth = logits[i, order[0][i, 4]], logits[i, order[0][i, 5]]
            rows.append((n, order[0][i, :5].tolist(), order[1][i, :5].tolist(), fifth - sixth))
    return rows


def same_top5(float32: list, int8: list) -> bool:
    """Whether INT8 keeps a photo's top-1 class and its set of top-5 classes."""
    return float32[0] == int8[0] and set(float32) == set(int8)


def int8_form(extractor, calibration, settings=None):
    """``to_onnxruntime(extractor, quantize="int8", ...)``, or with ``settings`` the
    float32 form whose graph is quantised with that recipe instead."""
    if settings is None:
        return to_onnxruntime(extractor, quantize="int8", calibration=calibration)
    preprocess = Preprocess.of(extractor.data_config_)
    graph = quantized(extractor._onnx_graph(), as_images(calibration), preprocess, **settings)
    served = to_onnxruntime(extractor)
    served.onnx_model_ = graph.SerializeToString()
    return served


def _photo_crops(images: list, n: int) -> list:
    """``n`` random crops (40-100 % of each side) of ``images``, flipped half the time."""
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1)), int(w * rng.uniform(0.4, 1))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = image[top : top + ch, left : left + cw]
        crops.append(Image.fromarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def float_ops(graph: bytes) -> dict[str, list[int]]:
    """Per operator type of a QDQ graph: how many run in INT8 (every input from a
    DequantizeLinear, every output into a QuantizeLinear) and how many in float."""
    import onnx

    model = onnx.load_from_string(graph)
    weights = {w.name for w in model.graph.initializer}
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    counts: dict[str, list[int]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        inputs = [i for i in node.input if i and i not in weights]
        quantised = all(producer.get(i) == "DequantizeLinear" for i in inputs) and all(
            consumers.get(o) and set(consumers[o]) == {"QuantizeLinear"} for o in node.output
        )
        counts.setdefault(node.op_type, [0, 0])[0 if quantised else 1] += 1
    return counts


def decode_rate(paths, preprocess: Preprocess, rounds: int) -> float:
    """Images/s of one thread decoding and preprocessing ``paths`` as serving does."""
    source = as_images(list(paths))

    def run():
        for i in range(len(source)):
            preprocess(source.decoded(i))

    return len(source) / min(seconds(run) for _ in range(rounds))


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=700)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-calibration", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--requests", type=int, default=200, help="single-image requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # ONNX Runtime's threads, and children's
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    start = time.perf_counter()
    split = elpv_split(args.n_train, args.n_test, args.seed)
    X_test, y_test = split[2], split[3]
    for path in (*split[0], *X_test):  # the files in the page cache for every form
        Path(path).read_bytes()
    print(
        f"ELPV: {args.n_train} cells to fit ({split[1].sum()} defective), {args.n_test} "
        f"held-out files; {MODEL} at {args.size} px, {args.threads} thread(s)",
        flush=True,
    )
    fitted = models(split, args.size, args.n_calibration, args.seed)
    print(f"fitted and converted ({time.perf_counter() - start:.0f} s)", flush=True)
    load_before = os.getloadavg()[0]

    rows, checks, end_to_end = [], [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name, forms in fitted.items():
            rates = throughput(forms, X_test, args.rounds)
            end_to_end[name] = {form: len(X_test) / value for form, value in rates.items()}
            waits = latencies(forms, X_test, args.requests)
            probabilities = {form: m.predict_proba(X_test)[:, 1] for form, m in forms.items()}
            colds = {
                form: cold_start(forms[form], X_test[0], Path(folder), f"{name}-{form}")
                for form in ("torch", "float32", "int8")
            }
            gap = float(np.abs(probabilities["float32"] - probabilities["torch"]).max())
            auc = {form: roc_auc_score(y_test, p) for form, p in probabilities.items()}
            for form in rates:
                base = form.split(",")[0]
                rows.append(
                    (
                        name,
                        form,
                        len(X_test) / rates[form],
                        rates["torch"] / rates[form],
                        waits.get(form),
                        colds.get(form),
                        auc[base],
                    )
                )
            checks += [
                (
                    f"{name}: float32 probabilities within {gap:.1e} <= {FP32_TOLERANCE:g} of torch",
                    gap <= FP32_TOLERANCE,
                ),
                (
                    f"{name}: INT8 ROC AUC {auc['int8']:.4f} within {MAX_AUC_LOSS} of torch "
                    f"{auc['torch']:.4f}",
                    auc["int8"] >= auc["torch"] - MAX_AUC_LOSS,
                ),
                (
                    f"{name}: INT8 {rates['torch'] / rates['int8']:.2f} x >= {MIN_INT8_SPEEDUP} x "
                    "torch images/s",
                    rates["torch"] / rates["int8"] >= MIN_INT8_SPEEDUP,
                ),
                (
                    f"{name}: float32 {rates['torch'] / rates['float32']:.2f} x >= "
                    f"{MIN_FP32_SPEEDUP} x torch images/s",
                    rates["torch"] / rates["float32"] >= MIN_FP32_SPEEDUP,
                ),
                (
                    f"{name}: cold start {colds['torch'] / colds['float32']:.1f} x >= "
                    f"{MIN_COLD_START_SPEEDUP} x faster than torch's",
                    colds["torch"] / colds["float32"] >= MIN_COLD_START_SPEEDUP,
                ),
            ]

    print(
        "\n| model | form | images/s | x torch | latency p50 (ms) | latency p99 (ms) "
        "| cold start (s) | ROC AUC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, form, rate, speedup, wait, cold, auc in rows:
        p50 = "" if wait is None else f"{1000 * percentile(wait, 50):.1f}"
        p99 = "" if wait is None else f"{1000 * percentile(wait, 99):.1f}"
        cold_text = "" if cold is None else f"{cold:.2f}"
        print(
            f"| {name} | {form} | {rate:.0f} | {speedup:.2f} | {p50} | {p99} | {cold_text} "
            f"| {auc:.4f} |"
        )

    probe = fitted["probe"]
    extractor = probe["torch"][0]
    served = {form: probe[form][0] for form in ("float32", "int8")}
    preprocess = Preprocess.of(extractor.data_config_)
    batch = np.stack([preprocess(Image.open(p).convert("RGB")) for p in X_test[:NETWORK_BATCH]])
    rates = network_rates(extractor, served, batch, args.rounds)
    macs = multiply_adds(extractor.backbone_, extractor.data_config_["input_size"])
    units, ghz, peak_fp32, peak_int8 = peak_gmacs(args.threads)
    print(
        f"\nThe network alone, batch of {NETWORK_BATCH} preprocessed {args.size} px images: "
        f"{macs / 1e6:.0f} M multiply-adds per image; peak of {args.threads} core(s) "
        f"({units}) at {ghz:.2f} GHz: {peak_fp32:.0f} G float32, {peak_int8:.0f} G int8 "
        "multiply-adds/s"
    )
    decoding = decode_rate(X_test[:200], preprocess, args.rounds)
    print(
        f"Decoding and preprocessing alone, one thread: {decoding:.0f} images/s. End to end "
        f"on {args.threads} cores, a runtime can reach at most {args.threads} / (1 / "
        "decoding + cores / network) images/s (each image's core-seconds: decoding on one "
        "core, the network on all)."
    )
    print(
        "\n| runtime | network images/s | G multiply-adds/s | share of peak "
        "| end-to-end bound | probe end to end | share of bound |"
    )
    print("|---|---|---|---|---|---|---|")
    served_forms = {"ONNX Runtime float32": "float32", "ONNX Runtime int8": "int8"}
    served_forms.update({f"OpenVINO {f}": f"OpenVINO {f}" for f in ("float32", "int8")})
    for key, rate in rates.items():
        achieved = rate * macs / 1e9
        peak = peak_int8 if "int8" in key else peak_fp32
        bound = args.threads / (1 / decoding + args.threads / rate)
        actual = end_to_end["probe"].get(served_forms.get(key, "torch"))
        print(
            f"| {key} | {rate:.0f} | {achieved:.1f} | {100 * achieved / peak:.0f} % "
            f"| {bound:.0f} | {actual:.0f} | {100 * actual / bound:.0f} % |"
        )

    print("\n| operator (INT8 probe graph) | INT8 | float |")
    print("|---|---|---|")
    for op, (quantised, floating) in sorted(float_ops(served["int8"].onnx_model_).items()):
        print(f"| {op} | {quantised} | {floating} |")

    top5 = imagenet_top5(args.n_calibration)
    print(
        "\n| photo | top-5 float32 | top-5 INT8 | same top-1 and top-5 set "
        "| float32 logit, 5th - 6th |"
    )
    print("|---|---|---|---|---|")
    changed = []
    for name, f, q, margin in top5:
        same = same_top5(f, q)
        changed += [] if same else [f"{name}, 5th - 6th {margin:.3f}"]
        print(f"| {name} | {f} | {q} | {'yes' if same else 'no'} | {margin:.3f} |")
    checks.append(
        (
            f"ImageNet logits at 224 px, INT8: top-1 and top-5 set unchanged on "
            f"{len(top5) - len(changed)} of {len(top5)} photos"
            + (f" (changed: {', '.join(changed)})" if changed else ""),
            not changed,
        )
    )
    print(
        f"\nImages/s: best of {args.rounds} interleaved round(s); latency over "
        f"{args.requests} requests; cold start best of 3. Total "
        f"{time.perf_counter() - start:.0f} s; 1-minute load average {load_before:.1f} "
        f"before the rounds, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores)."
    )
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())

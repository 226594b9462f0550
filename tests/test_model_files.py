"""Model files: fitted state stored as data (pickle, joblib, skops), versions recorded,
ONNX export checked against onnxruntime, and a refit that fails keeps the working model."""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import pickletools
import threading
import warnings
import zipfile

import joblib
import numpy as np
import pytest
import torch
from _finetune_fixtures import (
    assert_eight_threads_predict_the_sequential_results,
    outputs,
    predict_in_fresh_process,
    tiny,
)
from conftest import ANIMALS, make_images, tiny_extractor
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback

from sktransfer import (
    FineTunedClassifier,
    FineTunedRegressor,
    InconsistentVersionWarning,
    PretrainedFeatureExtractor,
)

skops_io = pytest.importorskip("skops.io")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    X = make_images(12, 36, 36, seed=30)
    extractor = tiny_extractor(weights=str(tiny_checkpoint))  # a Path would be a pathlib type
    steps = [("features", extractor), ("clf", LogisticRegression())]
    return Pipeline(steps).fit(X, np.arange(12) % 3), X


@pytest.fixture(scope="module")
def regressor(animal_colours):
    X, y = animal_colours
    targets = np.column_stack([np.searchsorted(ANIMALS, y) * 10.0, np.arange(len(y))])
    return tiny(FineTunedRegressor).fit(X, targets)


@pytest.fixture(scope="module")
def best_estimator(animal_colours):
    search = GridSearchCV(tiny(head_epochs=0), {"lr": [1e-3, 1e-2]}, cv=2, error_score="raise")
    return search.fit(*animal_colours).best_estimator_


# ------------------------------------------------------------------ pickle stream


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_MEMO_GETS = {"BINGET", "LONG_BINGET", "GET"}
_MEMO_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}


def pickled_globals(data: bytes) -> set[str]:
    """Every ``module.name`` that a pickle stream imports (GLOBAL and STACK_GLOBAL
    opcodes; the strings of STACK_GLOBAL are followed through the memo), and those of
    the pickles nested in it as bytes (how torch modules used to be stored)."""
    found, memo, pushed = set(), {}, []
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, bytes) and arg[:1] == b"\x80":
            with contextlib.suppress(ValueError):  # raw array data, not a pickle
                found |= pickled_globals(arg)
        if op.name in _STRINGS:
            pushed.append(arg)
        elif op.name in _MEMO_GETS:
            pushed.append(memo.get(arg))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in _MEMO_PUTS:
            memo[arg] = pushed[-1] if pushed else None
        else:
            if op.name == "STACK_GLOBAL":
                found.add(f"{pushed[-2]}.{pushed[-1]}")
            elif op.name == "GLOBAL":
                found.add(arg.replace(" ", "."))
            pushed.append(None)  # any other opcode breaks a run of strings
    return found


class TestStateAsData:
    @pytest.mark.parametrize("name", ["pipe", "hflip_classifier", "regressor", "best_estimator"])
    def test_pickle_references_no_timm_torch_or_skorch_class(self, name, request):
        model = request.getfixturevalue(name)
        model = model[0] if isinstance(model, tuple) else model
        imported = pickled_globals(pickle.dumps(model))
        assert any(g.startswith("sktransfer.") for g in imported)
        roots = {g.split(".")[0] for g in imported}
        allowed = {"sktransfer", "numpy", "sklearn", "builtins", "copyreg", "_codecs", "pathlib"}
        assert roots <= allowed, roots  # pathlib: the checkpoint path given as `weights`

    def test_the_scanner_sees_torch_modules_even_nested(self):
        module = pickle.dumps(torch.nn.Linear(2, 2))
        assert "torch.nn.modules.linear.Linear" in pickled_globals(module)
        assert "torch.nn.modules.linear.Linear" in pickled_globals(pickle.dumps({"m": module}))

    def test_versions_are_stored(self, hflip_classifier):
        import timm

        import sktransfer

        state = hflip_classifier.__getstate__()
        assert state["_sktransfer_versions"] == {
            "sktransfer": sktransfer.__version__,
            "timm": timm.__version__,
            "torch": str(torch.__version__),
        }
        assert "_sktransfer_versions" not in vars(pickle.loads(pickle.dumps(hflip_classifier)))

    @pytest.mark.parametrize("package", ["sktransfer", "timm", "torch"])
    def test_other_versions_warn_and_still_load(self, hflip_classifier, animal_colours, package):
        state = hflip_classifier.__getstate__()
        state["_sktransfer_versions"][package] = "0.0.1"
        loaded = FineTunedClassifier.__new__(FineTunedClassifier)
        with pytest.warns(InconsistentVersionWarning, match=f"saved with {package} 0.0.1") as rec:
            loaded.__setstate__(state)
        assert rec[0].message.original_version == "0.0.1"
        assert rec[0].message.estimator_name == "FineTunedClassifier"
        np.testing.assert_array_equal(
            loaded.predict(animal_colours[0]), hflip_classifier.predict(animal_colours[0])
        )

    def test_same_versions_do_not_warn(self, hflip_classifier):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pickle.loads(pickle.dumps(hflip_classifier))

    def test_files_of_the_earlier_format_are_refused_clearly(self, hflip_classifier):
        """Fitted state without recorded versions is the format before data-only
        files (torch objects inside): it used to fail later, with an AttributeError."""
        state = hflip_classifier.__getstate__()
        del state["_sktransfer_versions"]
        with pytest.raises(ValueError, match="saved by an earlier sktransfer.*Refit it"):
            FineTunedClassifier.__new__(FineTunedClassifier).__setstate__(state)

    def test_an_architecture_this_timm_lacks_is_named(self, hflip_classifier):
        state = hflip_classifier.__getstate__()
        state["backbone_"]["architecture"]["name"] = "efficientnet_renamed_in_timm_9"
        with pytest.raises(ValueError, match="'efficientnet_renamed_in_timm_9', which timm"):
            FineTunedClassifier.__new__(FineTunedClassifier).__setstate__(state)

    def test_weights_that_no_longer_fit_are_named(self, hflip_classifier):
        state = hflip_classifier.__getstate__()
        tensors = state["backbone_"]["tensors"]
        tensors.pop(next(iter(tensors)))
        with pytest.raises(ValueError, match="saved weights do not fit timm"):
            FineTunedClassifier.__new__(FineTunedClassifier).__setstate__(state)

    def test_unfitted_estimators_store_only_parameters(self):
        state = tiny().__getstate__()
        assert "_sktransfer_versions" not in state
        assert pickle.loads(pickle.dumps(tiny())).get_params() == tiny().get_params()


# --------------------------------------------------------------------------- skops


def skops_round_trip(model):
    data = skops_io.dumps(model)
    untrusted = skops_io.get_untrusted_types(data=data)
    return skops_io.loads(data, trusted=untrusted), untrusted


class TestSkops:
    def test_pipeline_of_extractor_and_logistic_regression(self, pipe):
        model, X = pipe
        loaded, untrusted = skops_round_trip(model)
        assert untrusted == ["sktransfer._features.PretrainedFeatureExtractor"]
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
        np.testing.assert_array_equal(loaded[0].transform(X), model[0].transform(X))

    @pytest.mark.parametrize("name", ["hflip_classifier", "regressor", "best_estimator"])
    def test_fine_tuners(self, name, request, animal_colours):
        model = request.getfixturevalue(name)
        loaded, untrusted = skops_round_trip(model)
        assert untrusted == [f"sktransfer.{_module(model)}.{type(model).__name__}"]
        np.testing.assert_array_equal(
            outputs(loaded, animal_colours[0]), outputs(model, animal_colours[0])
        )
        assert loaded.history_ == model.history_

    def test_a_tampered_file_runs_no_code(self, hflip_classifier, tmp_path):
        path = tmp_path / "clf.skops"
        skops_io.dump(hflip_classifier, path)
        tampered = tmp_path / "tampered.skops"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == "schema.json":
                    schema = json.loads(data)
                    schema["__module__"], schema["__class__"] = "os", "system"
                    data = json.dumps(schema).encode()
                dst.writestr(item, data)
        assert "os.system" in skops_io.get_untrusted_types(file=tampered)
        trusted = ["sktransfer._classifier.FineTunedClassifier"]
        with pytest.raises(Exception, match="Untrusted types found"):
            skops_io.load(tampered, trusted=trusted)

    def test_skops_files_load_in_a_fresh_process(
        self, hflip_classifier, pipe, tmp_path, animal_colours
    ):
        X = animal_colours[0]
        files = [tmp_path / "clf.skops", tmp_path / "pipe.skops"]
        skops_io.dump(hflip_classifier, files[0])
        skops_io.dump(pipe[0], files[1])
        got = predict_in_fresh_process(tmp_path, X, files)
        np.testing.assert_array_equal(got[0], hflip_classifier.predict_proba(X))
        np.testing.assert_array_equal(got[1], pipe[0].predict_proba(X))


def _module(model):
    return type(model).__module__.split(".")[-1]


# ---------------------------------------------------------------------------- ONNX


def preprocess(images, meta) -> np.ndarray:
    """The serving page's recipe: PIL images -> the ONNX input, from the metadata alone
    (resize the shorter side to size / crop_pct, centre-crop, scale, normalise)."""
    cfg = meta["preprocessing"]
    _, height, width = cfg["input_size"]
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[cfg["interpolation"]]
    batch = []
    for img in images:
        short = math.floor(height / cfg["crop_pct"])
        w, h = img.size
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.convert("RGB").resize(size, resample)
        left, top = round((size[0] - width) / 2), round((size[1] - height) / 2)
        img = img.crop((left, top, left + width, top + height))
        x = np.asarray(img, dtype=np.float32) / 255
        batch.append(((x - cfg["mean"]) / cfg["std"]).transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def run_onnx(path, images):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path))
    meta = json.loads(session.get_modelmeta().custom_metadata_map["sktransfer"])
    (output,) = session.run([meta["output"]], {meta["input"]: preprocess(images, meta)})
    return output, meta


def assert_close_to(actual, desired):
    scale = max(float(np.abs(desired).max()), 1e-3)
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.slow
class TestOnnx:
    def test_extractor(self, pipe, tmp_path):
        extractor, X = pipe[0][0], pipe[1]
        images = [Image.fromarray(x) for x in X[:5]]
        path = extractor.export_onnx(tmp_path / "features.onnx")
        got, meta = run_onnx(path, images)
        assert meta["output"] == "features" and meta["estimator"] == "PretrainedFeatureExtractor"
        assert got.shape == (5, extractor.n_features_out_)
        assert_close_to(got, extractor.transform(images))

    def test_extractor_of_intermediate_blocks(self, tmp_path):
        extractor = tiny_extractor(layer=[1, 2], pooling="max").fit()
        images = [Image.fromarray(x) for x in make_images(3, 40, 40)]
        got, meta = run_onnx(extractor.export_onnx(tmp_path / "blocks.onnx"), images)
        assert meta["layer"] == [1, 2] and meta["pooling"] == "max"
        assert_close_to(got, extractor.transform(images))

    def test_classifier_with_tta(self, hflip_classifier, animal_colours, tmp_path):
        images = [Image.fromarray(x) for x in animal_colours[0]]
        got, meta = run_onnx(hflip_classifier.export_onnx(tmp_path / "clf.onnx"), images)
        assert meta["output"] == "probabilities" and meta["classes"] == [ANIMALS.tolist()]
        assert_close_to(got, hflip_classifier.predict_proba(images))

    def test_multi_task_classifier_blocks_side_by_side(self, animal_colours, tmp_path):
        X, y = animal_colours
        y = np.column_stack([y, np.where(y == "owl", "bird", "mammal")])
        clf = tiny().fit(X, y)
        images = [Image.fromarray(x) for x in X]
        got, meta = run_onnx(clf.export_onnx(tmp_path / "tasks.onnx"), images)
        assert meta["classes"] == [ANIMALS.tolist(), ["bird", "mammal"]]
        assert_close_to(got, np.hstack(clf.predict_proba(images)))

    def test_regressor_in_units_of_y(self, regressor, animal_colours, tmp_path):
        images = [Image.fromarray(x) for x in animal_colours[0]]
        got, meta = run_onnx(regressor.export_onnx(tmp_path / "reg.onnx"), images)
        assert meta["output"] == "predictions" and got.shape == (len(images), 2)
        assert_close_to(got, regressor.predict(images))

    def test_unfitted_estimators_refuse(self, tmp_path):
        from sklearn.exceptions import NotFittedError

        for model in (tiny(), tiny_extractor()):
            with pytest.raises(NotFittedError):
                model.export_onnx(tmp_path / "x.onnx")


# ----------------------------------------------------------------- refits and threads


class TestRefit:
    def test_a_failed_extractor_refit_keeps_the_working_model(self, fitted, images):
        before = fitted.transform(images)
        backbone = fitted.backbone_
        fitted.set_params(layer=[99])
        try:
            with pytest.raises(ValueError, match="out of range"):
                fitted.fit()
        finally:
            fitted.set_params(layer=None)
        assert fitted.backbone_ is backbone
        np.testing.assert_array_equal(fitted.transform(images), before)

    def test_transform_uses_only_fitted_state(self, images):
        extractor = tiny_extractor(layer=[1, 2]).fit()
        before = extractor.transform(images)
        names = extractor.get_feature_names_out()
        extractor.set_params(layer=None, pooling="max")
        np.testing.assert_array_equal(extractor.transform(images), before)
        assert extractor.transform(images).shape[1] == len(names)
        np.testing.assert_array_equal(extractor.get_feature_names_out(), names)

    def test_predict_during_a_refit_sees_the_old_model(self, animal_colours):
        """A thread predicting while another refits never finds a half-built model."""
        X, y = animal_colours
        clf = tiny().fit(X, y)
        expected = clf.predict_proba(X)
        started, release = threading.Event(), threading.Event()

        class Pause(Callback):  # holds the refit in its first stage until released
            def on_train_begin(self, net, **kwargs):
                started.set()
                release.wait(timeout=60)

        clf.set_params(callbacks=[Pause()])
        refit = threading.Thread(target=clf.fit, args=(X, y))
        refit.start()
        started.wait(timeout=60)
        try:
            np.testing.assert_array_equal(clf.predict_proba(X), expected)
        finally:
            release.set()
            refit.join()


class TestThreads:
    @pytest.mark.parametrize("name", ["hflip_classifier", "pipe"])
    def test_eight_threads_predict_exactly_the_sequential_results(self, name, request):
        model = request.getfixturevalue(name)
        model = pickle.loads(pickle.dumps(model[0] if isinstance(model, tuple) else model))
        assert_eight_threads_predict_the_sequential_results(lambda X: outputs(model, X))


def test_joblib_round_trip_of_a_regressor(regressor, animal_colours):
    buffer = io.BytesIO()
    joblib.dump(regressor, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(
        joblib.load(buffer).predict(animal_colours[0]), regressor.predict(animal_colours[0])
    )


@pytest.mark.slow
def test_onnx_of_real_imagenet_weights_on_real_cells(lite0_weights, elpv_subset, tmp_path):
    """EfficientNet-Lite0's ImageNet weights (mean = std = 0.5, bicubic) on greyscale
    300 x 300 ELPV files: the recorded preprocessing is all a service needs."""
    paths, _, _ = elpv_subset(4, seed=0)
    extractor = PretrainedFeatureExtractor(
        "tf_efficientnet_lite0",
        weights=str(lite0_weights),
        image_size=96,
        preprocessing={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},  # the TF port's
    ).fit()
    images = [Image.open(p) for p in paths]
    got, meta = run_onnx(extractor.export_onnx(tmp_path / "lite0.onnx"), images)
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    np.testing.assert_allclose(got, extractor.transform(paths), rtol=1e-4, atol=1e-4)

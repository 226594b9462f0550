"""Serving without torch: ``to_onnxruntime`` and the serving estimators give what the
torch estimators give, take the same inputs, raise the same errors, store as data and
load in a process where torch cannot be imported."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
import torch
from _cli_fixtures import read_csv
from _finetune_fixtures import (
    assert_eight_threads_predict_the_sequential_results,
    colour_images,
    outputs,
    tiny,
)
from conftest import REPO_ROOT, make_images, save_images, tiny_extractor
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import (
    FineTunedRegressor,
    InconsistentVersionWarning,
    PretrainedFeatureExtractor,
    UnreadableImageError,
)
from sktransfer._cli import main
from sktransfer.serving import (
    ServedClassifier,
    ServedFeatureExtractor,
    ServedRegressor,
    to_onnxruntime,
)

skops_io = pytest.importorskip("skops.io")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def probe(animal_colours):
    X, y = animal_colours
    pipe = make_pipeline(tiny_extractor(), StandardScaler(), LogisticRegression(max_iter=500))
    return pipe.fit(X, y)


@pytest.fixture(scope="module")
def regressor(animal_colours):
    X, _ = animal_colours
    y = np.column_stack([np.arange(len(X)) * 10.0, np.arange(len(X)) % 3 - 5.0])
    return tiny(FineTunedRegressor).fit(X, y)


@pytest.fixture(scope="module")
def served_probe(probe):
    return to_onnxruntime(probe)


def assert_close(served, torch_model, X):
    got, want = outputs(served, X), outputs(torch_model, X)
    if isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=TOLERANCE, rtol=0)
    else:
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


class TestSameOutputs:
    def test_extractor_features_and_names(self, animal_colours):
        extractor = tiny_extractor().fit()
        served = to_onnxruntime(extractor)
        assert isinstance(served, ServedFeatureExtractor)
        assert_close(served, extractor, animal_colours[0])
        np.testing.assert_array_equal(
            served.get_feature_names_out(), extractor.get_feature_names_out()
        )
        assert served.n_features_out_ == extractor.n_features_out_

    @pytest.mark.parametrize("model", ["test_vit", "test_resnet"])
    @pytest.mark.parametrize("layer", [None, "logits"])
    def test_other_architectures(self, model, layer, animal_colours):
        extractor = tiny_extractor(model=model, layer=layer, image_size=64).fit()
        assert_close(to_onnxruntime(extractor), extractor, animal_colours[0])

    def test_extractor_of_intermediate_blocks(self, animal_colours):
        extractor = tiny_extractor(layer=[1, -1], pooling="max").fit()
        served = to_onnxruntime(extractor)
        assert_close(served, extractor, animal_colours[0])
        assert (served.layer_, served.pooling_) == ([1, -1], "max")

    def test_pipeline_keeps_its_scikit_learn_steps(self, probe, served_probe, animal_colours):
        assert isinstance(served_probe[0], ServedFeatureExtractor)
        assert [name for name, _ in served_probe.steps] == [name for name, _ in probe.steps]
        assert served_probe[1] is not probe[1]  # copied: the original pipeline is untouched
        assert_close(served_probe, probe, animal_colours[0])
        np.testing.assert_array_equal(
            served_probe.predict(animal_colours[0]), probe.predict(animal_colours[0])
        )
        np.testing.assert_array_equal(served_probe.classes_, probe.classes_)

    def test_classifier_with_its_tta(self, hflip_classifier, animal_colours):
        served = to_onnxruntime(hflip_classifier)
        assert isinstance(served, ServedClassifier)
        assert_close(served, hflip_classifier, animal_colours[0])
        np.testing.assert_array_equal(
            served.predict(animal_colours[0]), hflip_classifier.predict(animal_colours[0])
        )
        np.testing.assert_array_equal(served.classes_, hflip_classifier.classes_)
        assert served.score(*animal_colours) == hflip_classifier.score(*animal_colours)

    def test_multi_task_classifier(self, animal_colours):
        X, y = animal_colours
        Y = np.column_stack([y, np.arange(len(y)) % 2])
        classifier = tiny().fit(X, Y)
        served = to_onnxruntime(classifier)
        assert served.multitask_
        assert_close(served, classifier, X)
        np.testing.assert_array_equal(served.predict(X), classifier.predict(X))

    def test_multilabel_classifier(self, animal_colours):
        X, _ = animal_colours
        Y = np.column_stack([np.arange(len(X)) % 2, np.arange(len(X)) % 3 == 0]).astype(int)
        classifier = tiny().fit(X, Y)
        served = to_onnxruntime(classifier)
        assert_close(served, classifier, X)
        np.testing.assert_array_equal(served.predict(X), classifier.predict(X))

    def test_regressor_in_units_of_y(self, regressor, animal_colours):
        served = to_onnxruntime(regressor)
        assert isinstance(served, ServedRegressor)
        assert_close(served, regressor, animal_colours[0])
        assert served.predict(animal_colours[0]).shape == (len(animal_colours[0]), 2)

    def test_a_fitted_search_serves_its_best_estimator(self, animal_colours):
        X, y = animal_colours
        search = GridSearchCV(
            make_pipeline(tiny_extractor(), LogisticRegression(max_iter=500)),
            {"logisticregression__C": [0.1, 1.0]},
            cv=2,
        ).fit(X, y)
        assert_close(to_onnxruntime(search), search.best_estimator_, X)


class TestInputs:
    def test_every_input_kind_gives_the_torch_estimators_result(
        self, served_probe, probe, tmp_path
    ):
        images = make_images(5, 41, 37, seed=5)
        paths = save_images(images, tmp_path)
        encoded = [p.read_bytes() for p in paths]
        kinds = {
            "array": images,
            "paths": [str(p) for p in paths],
            "pil": [Image.fromarray(x) for x in images],
            "bytes": encoded,
            "uploads": [io.BytesIO(b) for b in encoded],
            "greyscale": images[..., 0],
        }
        for kind, X in kinds.items():
            want = probe.predict_proba(X if kind != "uploads" else [io.BytesIO(b) for b in encoded])
            np.testing.assert_allclose(
                served_probe.predict_proba(X), want, atol=TOLERANCE, err_msg=kind
            )

    @pytest.mark.parametrize(
        "bad",
        [
            "undecodable bytes",
            "missing file",
            "one image without its batch axis",
            "floats between 1.01 and 2",
            "32-bit integers beyond 255",
            "mixed kinds",
        ],
    )
    def test_bad_input_raises_what_the_torch_estimator_raises(
        self, bad, served_probe, probe, tmp_path
    ):
        X = {
            "undecodable bytes": [b"\x89PNG not really", b"nothing"],
            "missing file": [str(tmp_path / "missing.png")],
            "one image without its batch axis": make_images(1, 32, 32)[0],
            "floats between 1.01 and 2": np.full((2, 8, 8, 3), 1.5, np.float32),
            "32-bit integers beyond 255": [Image.fromarray(np.full((8, 8), 70000, np.int32))],
            "mixed kinds": [str(tmp_path / "a.png"), make_images(1)[0]],
        }[bad]
        with pytest.raises(Exception) as from_torch:
            probe.predict(X)
        with pytest.raises(type(from_torch.value)) as served:
            served_probe.predict(X)
        assert str(served.value) == str(from_torch.value)

    def test_an_unreadable_file_is_named_by_index_and_path(self, served_probe, tmp_path):
        paths = save_images(make_images(2), tmp_path)
        paths[1].write_bytes(b"not an image")
        with pytest.raises(UnreadableImageError) as error:
            served_probe.predict(paths)
        assert (error.value.index, error.value.path) == (1, str(paths[1]))


class TestFiles:
    def test_pickle_and_joblib_store_the_graph_as_bytes(
        self, served_probe, animal_colours, tmp_path
    ):
        extractor = served_probe[0]
        assert isinstance(extractor.onnx_model_, bytes)
        want = served_probe.predict_proba(animal_colours[0])
        joblib.dump(served_probe, tmp_path / "probe.joblib")
        for loaded in (
            pickle.loads(pickle.dumps(served_probe)),
            joblib.load(tmp_path / "probe.joblib"),
        ):
            np.testing.assert_array_equal(loaded.predict_proba(animal_colours[0]), want)

    def test_versions_are_recorded_and_others_warn(self, served_probe):
        state = served_probe[0].__getstate__()
        versions = state["_sktransfer_versions"]
        assert set(versions) == {"sktransfer", "onnxruntime"}
        assert "_made_session" not in state  # the session is made again where it loads
        for package in versions:
            old = dict(state, _sktransfer_versions={**versions, package: "0.0.1"})
            loaded = ServedFeatureExtractor.__new__(ServedFeatureExtractor)
            with pytest.warns(InconsistentVersionWarning, match=f"saved with {package} 0.0.1"):
                loaded.__setstate__(old)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pickle.loads(pickle.dumps(served_probe))

    def test_skops_lists_only_sktransfer_types(
        self, served_probe, hflip_classifier, animal_colours, tmp_path
    ):
        for name, model in (("probe", served_probe), ("clf", to_onnxruntime(hflip_classifier))):
            path = tmp_path / f"{name}.skops"
            skops_io.dump(model, path)
            untrusted = skops_io.get_untrusted_types(file=path)
            assert all(t.startswith("sktransfer.") for t in untrusted), untrusted
            loaded = skops_io.load(path, trusted=untrusted)
            np.testing.assert_array_equal(
                loaded.predict_proba(animal_colours[0]), model.predict_proba(animal_colours[0])
            )

    def test_a_process_where_torch_cannot_be_imported_loads_and_predicts(
        self, served_probe, animal_colours, tmp_path
    ):
        joblib.dump(served_probe, tmp_path / "probe.joblib")
        np.save(tmp_path / "X.npy", animal_colours[0])
        code = (
            "import importlib.abc, sys\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'timm', 'torchvision', 'skorch'):\n"
            "            raise ImportError(f'{name} is not installed here')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import joblib, numpy as np\n"
            f"model = joblib.load({str(tmp_path / 'probe.joblib')!r})\n"
            f"proba = model.predict_proba(np.load({str(tmp_path / 'X.npy')!r}))\n"
            f"np.save({str(tmp_path / 'proba.npy')!r}, proba)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')]\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(
            np.load(tmp_path / "proba.npy"), served_probe.predict_proba(animal_colours[0])
        )

    def test_importing_the_serving_module_imports_no_torch(self):
        code = "import sys, sktransfer.serving; print(sorted(m for m in sys.modules if m.startswith(('torch', 'timm'))))"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"


class TestThreads:
    def test_eight_threads_predict_exactly_the_sequential_results(self, served_probe):
        model = pickle.loads(pickle.dumps(served_probe))
        assert_eight_threads_predict_the_sequential_results(model.predict_proba)

    def test_intra_op_threads_follow_omp_num_threads_or_the_parameter(
        self, served_probe, monkeypatch
    ):
        model = pickle.loads(pickle.dumps(served_probe))[0]
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert model.session.get_session_options().intra_op_num_threads == 3
        model.set_params(intra_op_num_threads=1)
        assert model.session.get_session_options().intra_op_num_threads == 1

    @pytest.mark.parametrize("workers", [0, 1, 3])
    def test_preprocessing_threads_change_nothing(self, served_probe, animal_colours, workers):
        model = clone(served_probe[0]).set_params(num_workers=workers, batch_size=4)
        vars(model).update({k: v for k, v in vars(served_probe[0]).items() if k.endswith("_")})
        np.testing.assert_array_equal(
            model.transform(animal_colours[0]), served_probe[0].transform(animal_colours[0])
        )


class TestContract:
    def test_parameters_clone_and_tags(self, served_probe):
        extractor = served_probe[0]
        assert set(extractor.get_params()) == {
            "batch_size",
            "num_workers",
            "intra_op_num_threads",
            "verbose",
        }
        assert clone(extractor).get_params() == extractor.get_params()
        tags = extractor.__sklearn_tags__()
        assert tags.input_tags.string and not tags.input_tags.two_d_array

    def test_a_bad_parameter_is_named(self, served_probe, animal_colours):
        model = pickle.loads(pickle.dumps(served_probe))[0].set_params(batch_size=0)
        with pytest.raises(ValueError, match="'batch_size' parameter of ServedFeatureExtractor"):
            model.transform(animal_colours[0])

    def test_a_served_pipeline_refits_its_head_without_torch(self, served_probe, animal_colours):
        X, y = animal_colours
        refitted = pickle.loads(pickle.dumps(served_probe)).fit(X, y[::-1])
        assert (refitted.predict(X) == y[::-1]).mean() > (refitted.predict(X) == y).mean()

    def test_a_served_classifier_does_not_train(self, hflip_classifier, animal_colours):
        with pytest.raises(TypeError, match="Fit the torch estimator, then convert it again"):
            to_onnxruntime(hflip_classifier).fit(*animal_colours)

    @pytest.mark.parametrize(
        "model",
        [LogisticRegression(), make_pipeline(StandardScaler(), LogisticRegression())],
    )
    def test_other_estimators_are_refused(self, model):
        with pytest.raises(TypeError, match="to_onnxruntime converts a fitted"):
            to_onnxruntime(model)

    def test_an_unfitted_estimator_is_refused(self):
        unfitted = PretrainedFeatureExtractor("test_efficientnet", weights=None)
        with pytest.raises(NotFittedError):
            to_onnxruntime(unfitted)

    def test_a_layer_that_does_not_export_is_named(self, animal_colours):
        classifier = tiny().fit(*animal_colours)

        class DataDependent(torch.nn.Module):
            def forward(self, x):
                return x if x.sum() > 0 else -x

        classifier.backbone_.conv_head = torch.nn.Sequential(
            classifier.backbone_.conv_head, DataDependent()
        )
        with pytest.raises(ValueError) as error:
            to_onnxruntime(classifier)
        message = str(error.value)
        assert "its layer 'backbone_.conv_head.1' (" in message
        assert "DataDependent" in message and "Rewrite that layer" in message
        assert classifier.predict(animal_colours[0]).shape == (len(animal_colours[0]),)


class TestInt8:
    def test_needs_enough_calibration_images(self, probe, animal_colours):
        with pytest.raises(ValueError, match="needs calibration images"):
            to_onnxruntime(probe, quantize="int8")
        with pytest.raises(ValueError, match="got 18 calibration images; it needs at least 32"):
            to_onnxruntime(probe, quantize="int8", calibration=animal_colours[0])
        with pytest.raises(ValueError, match="used by quantize='int8' only"):
            to_onnxruntime(probe, calibration=animal_colours[0])
        with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
            to_onnxruntime(probe, quantize="int4")

    def test_a_quantised_graph_holds_int8_weights_and_predicts_alike(self, probe, animal_colours):
        import onnx

        calibration = colour_images(np.arange(48) % 3, seed=7)
        served = to_onnxruntime(probe, quantize="int8", calibration=calibration)
        assert served[0].quantization_ == "int8"
        ops = {node.op_type for node in onnx.load_from_string(served[0].onnx_model_).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        np.testing.assert_array_equal(
            served.predict(animal_colours[0]), probe.predict(animal_colours[0])
        )


class TestCommandLine:
    def test_predict_accepts_a_serving_model_file(self, served_probe, probe, tmp_path, capsys):
        paths = save_images(make_images(4, seed=3), tmp_path / "images")
        joblib.dump(served_probe, tmp_path / "served.joblib")
        joblib.dump(probe, tmp_path / "torch.joblib")
        for name in ("served", "torch"):
            args = ["predict", str(tmp_path / f"{name}.joblib"), str(tmp_path / "images")]
            assert main([*args, "--out", str(tmp_path / f"{name}.csv")]) == 0
        served, torch_rows = read_csv(tmp_path / "served.csv"), read_csv(tmp_path / "torch.csv")
        assert [r["path"] for r in served] == [r["path"] for r in torch_rows]
        assert [r["prediction"] for r in served] == [r["prediction"] for r in torch_rows]
        assert len(paths) == len(served)

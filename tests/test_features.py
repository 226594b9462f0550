"""PretrainedFeatureExtractor: outputs, the sklearn API, validation, the cache, pickling."""

from __future__ import annotations

import functools
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import (
    TINY_MODEL,
    TINY_SIZE,
    assert_same_embedding,
    make_images,
    save_checkpoint,
    tiny_extractor,
)
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks

from sktransfer import (
    InvalidParameterError,
    PretrainedFeatureExtractor,
    _backbone,
    top_imagenet_labels,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CUDA = torch.cuda.is_available()


@functools.cache
def feature_widths(model):
    """Channels of each feature level (block) of ``model``."""
    return [info["num_chs"] for info in timm.create_model(model).feature_info]


@functools.cache
def num_features(model):
    """Width of the pooled pre-logits features of ``model``."""
    return timm.create_model(model).num_features


# ------------------------------------------------------------------------------ outputs


class TestOutputs:
    @pytest.mark.parametrize(
        ("model", "params", "width"),
        [
            ("test_efficientnet", {}, num_features("test_efficientnet")),
            ("test_efficientnet", {"layer": "logits"}, 1000),
            ("test_efficientnet", {"layer": 2}, feature_widths("test_efficientnet")[2]),
            ("test_efficientnet", {"layer": -1}, feature_widths("test_efficientnet")[-1]),
            (
                "test_efficientnet",
                {"layer": [0, 2, 4]},
                sum(feature_widths("test_efficientnet")[i] for i in (0, 2, 4)),
            ),
            (
                "test_efficientnet",
                {"layer": (1, -1), "pooling": "avgmax"},
                sum(feature_widths("test_efficientnet")[i] for i in (1, -1)),
            ),
            ("test_resnet", {}, num_features("test_resnet")),
            (
                "test_resnet",
                {"layer": [1, 3], "pooling": "max"},
                sum(feature_widths("test_resnet")[i] for i in (1, 3)),
            ),
            ("test_convnext", {"pooling": "max"}, num_features("test_convnext")),
            ("test_vit", {"pooling": "token"}, 64),
            ("test_vit", {"pooling": "avg"}, 64),
            ("test_vit", {"layer": 3, "pooling": "token"}, 64),
            ("test_vit", {"layer": [0, -1]}, 128),
        ],
        ids=lambda v: repr(v) if isinstance(v, dict) else str(v),
    )
    def test_shape_and_dtype(self, images, model, params, width):
        extractor = tiny_extractor(model=model, **params).fit()
        out = extractor.transform(images[:3])
        assert out.shape == (3, width)
        assert out.dtype == np.float32
        assert extractor.n_features_out_ == width
        assert np.isfinite(out).all() and out.std() > 0

    @pytest.mark.parametrize("model", ["test_efficientnet", "test_resnet", "test_convnext"])
    def test_each_pooling_of_pooled_features(self, tiny_checkpoint, images, model):
        # At 64 pixels the last feature map is 2x2 (at 32 it is 1x1 and every pooling agrees).
        weights = tiny_checkpoint if model == TINY_MODEL else None
        outs = {}
        for pooling in (None, "avg", "max", "avgmax"):
            with torch.random.fork_rng():
                torch.manual_seed(0)
                extractor = tiny_extractor(
                    model=model, weights=weights, pooling=pooling, image_size=64
                ).fit()
            outs[pooling] = extractor.transform(images[:2])
            assert outs[pooling].shape == (2, extractor.n_features_out_)
            assert outs[pooling].dtype == np.float32
        np.testing.assert_array_equal(outs[None], outs["avg"])  # CNNs average by default
        assert not np.allclose(outs["max"], outs["avg"])
        if model == "test_convnext":  # its head normalises the pooled features
            assert not np.allclose(outs["avgmax"], outs["avg"])
        else:
            np.testing.assert_allclose(
                outs["avgmax"], 0.5 * (outs["avg"] + outs["max"]), rtol=1e-4, atol=1e-6
            )

    def test_poolings_of_blocks(self, tiny_checkpoint, images):
        outs = {
            p: tiny_extractor(weights=tiny_checkpoint, layer=2, pooling=p)
            .fit()
            .transform(images[:2])
            for p in ("avg", "max", "avgmax")
        }
        assert not np.allclose(outs["avg"], outs["max"])
        np.testing.assert_allclose(
            outs["avgmax"], 0.5 * (outs["avg"] + outs["max"]), rtol=1e-5, atol=1e-7
        )

    def test_negative_layer_counts_from_the_top(self, tiny_checkpoint, images):
        last = tiny_extractor(weights=tiny_checkpoint, layer=-1).fit().transform(images)
        top = tiny_extractor(weights=tiny_checkpoint, layer=4).fit().transform(images)
        np.testing.assert_array_equal(last, top)

    def test_logits_are_the_model_output(self, tiny_checkpoint, images):
        extractor = tiny_extractor(weights=tiny_checkpoint, layer="logits").fit()
        scores = extractor.transform(images[:1])
        x = _backbone.eval_transform(extractor.data_config_)(Image.fromarray(images[0]))[None]
        with torch.inference_mode():
            expected = extractor.backbone_(x).numpy()
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("precision", ["float32", "bfloat16"])
    def test_precision_keeps_float32_output(self, fitted, tiny_checkpoint, images, precision):
        out = tiny_extractor(weights=tiny_checkpoint, precision=precision).fit().transform(images)
        assert out.dtype == np.float32
        reference = fitted.transform(images)
        # bfloat16 keeps about 3 significant digits; the embeddings stay strongly correlated.
        assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.95

    def test_fit_transform_equals_fit_then_transform(self, tiny_checkpoint, images):
        a = tiny_extractor(weights=tiny_checkpoint).fit_transform(images)
        b = tiny_extractor(weights=tiny_checkpoint).fit(images).transform(images)
        np.testing.assert_array_equal(a, b)


class TestFeatureNames:
    def test_n_features_out_and_names(self, fitted, images):
        names = fitted.get_feature_names_out()
        assert fitted.n_features_out_ == fitted.transform(images[:1]).shape[1] == len(names)
        assert names[0] == "pretrainedfeatureextractor0"
        assert names[-1] == f"pretrainedfeatureextractor{fitted.n_features_out_ - 1}"

    def test_set_output_pandas(self, tiny_checkpoint, images):
        extractor = tiny_extractor(weights=tiny_checkpoint).set_output(transform="pandas").fit()
        out = extractor.transform(images[:2])
        assert isinstance(out, pd.DataFrame)
        assert list(out.columns) == list(extractor.get_feature_names_out())
        np.testing.assert_array_equal(
            out.to_numpy(), extractor.set_output(transform="default").transform(images[:2])
        )

    def test_set_output_pandas_keeps_the_index_of_a_dataframe_of_paths(
        self, tiny_checkpoint, image_files
    ):
        frame = pd.DataFrame({"path": [str(p) for p, _ in image_files]}, index=list("abcde"))
        out = (
            tiny_extractor(weights=tiny_checkpoint)
            .set_output(transform="pandas")
            .fit_transform(frame)
        )
        assert list(out.index) == list("abcde")


# --------------------------------------------------------------------------- sklearn API


class TestEstimatorAPI:
    def test_not_fitted(self, images):
        extractor = tiny_extractor()
        with pytest.raises(NotFittedError):
            extractor.transform(images)
        with pytest.raises(NotFittedError):
            extractor.get_feature_names_out()

    def test_init_only_stores_parameters(self, monkeypatch):
        def boom(*args, **kwargs):
            raise AssertionError("a model was created in __init__")

        monkeypatch.setattr(_backbone, "create_backbone", boom)
        monkeypatch.setattr(timm, "create_model", boom)
        params = {
            "model": "no_such_model",
            "weights": "/no/such/file.pth",
            "layer": "helloworld",
            "pooling": "helloworld",
            "image_size": -3,
            "preprocessing": {"mean": "grey"},
            "batch_size": 0,
            "device": "tpu:7",
            "precision": "float8",
            "num_workers": -1,
            "memory": 3.5,
            "cache_key": "inode",
            "verbose": "loud",
        }
        extractor = PretrainedFeatureExtractor(**params)
        assert extractor.get_params() == params
        assert not [k for k in vars(extractor) if k.endswith("_")]

    def test_clone_get_params_set_params(self, fitted, images):
        cloned = clone(fitted)
        assert cloned.get_params() == fitted.get_params()
        assert not hasattr(cloned, "backbone_")
        cloned.set_params(layer=1, batch_size=2)
        assert cloned.get_params()["layer"] == 1
        out = cloned.fit().transform(images[:3])
        assert out.shape == (3, feature_widths(TINY_MODEL)[1])
        assert fitted.layer is None  # the original is untouched

    def test_set_params_inside_a_pipeline(self, tiny_checkpoint):
        pipe = Pipeline(
            [("features", tiny_extractor(weights=tiny_checkpoint)), ("clf", LogisticRegression())]
        )
        pipe.set_params(features__layer=[1, 2], features__pooling="max")
        assert pipe.get_params()["features__layer"] == [1, 2]

    def test_model_is_in_eval_mode(self, tiny_checkpoint, images):
        extractor = tiny_extractor(weights=tiny_checkpoint).fit()
        assert not any(m.training for m in extractor.backbone_.modules())
        first = extractor.transform(images)
        assert not any(m.training for m in extractor.backbone_.modules())
        np.testing.assert_array_equal(extractor.transform(images), first)

    @pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
    def test_independent_of_batch_size(self, fitted, images, batch_size):
        reference = fitted.transform(images)
        out = clone(fitted).set_params(batch_size=batch_size).fit().transform(images)
        np.testing.assert_allclose(out, reference, atol=1e-5)
        assert_same_embedding(out, reference)

    def test_independent_of_workers(self, fitted, images):
        out = clone(fitted).set_params(batch_size=2, num_workers=2).fit().transform(images)
        np.testing.assert_array_equal(
            out, clone(fitted).set_params(batch_size=2).fit().transform(images)
        )

    def test_independent_of_what_was_embedded_before(self, tiny_checkpoint, images):
        fresh = tiny_extractor(weights=tiny_checkpoint).fit().transform(images[3:])
        used = tiny_extractor(weights=tiny_checkpoint).fit()
        used.transform(make_images(8, seed=99))
        used.transform(images[:3])
        np.testing.assert_array_equal(used.transform(images[3:]), fresh)

    def test_verbose_shows_progress(self, tiny_checkpoint, images, capsys):
        tiny_extractor(weights=tiny_checkpoint, verbose=True, batch_size=2).fit().transform(images)
        assert "embedding" in capsys.readouterr().err

    def test_weights_none_is_reproducible(self, images):
        # Random-init baselines must not change from one fit to the next: sklearn expects
        # fit to be idempotent, and the cache keys embeddings by the weights' hash.
        a = tiny_extractor().fit()
        b = tiny_extractor().fit()
        assert a.weights_fingerprint_ == b.weights_fingerprint_
        np.testing.assert_array_equal(a.transform(images), b.transform(images))


DATA_FREE_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
    "check_transformers_unfitted",
    "check_get_feature_names_out_error",
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_sklearn_data_free_check(check):
    # Image estimators get no common checks from parametrize_with_checks (it stops at
    # input_tags.two_d_array=False); these are the ones that need no 2-D data.
    getattr(estimator_checks, check)("PretrainedFeatureExtractor", tiny_extractor())


def test_tags():
    tags = tiny_extractor().__sklearn_tags__()
    assert not tags.input_tags.two_d_array
    assert tags.input_tags.three_d_array and tags.input_tags.string
    assert tags.requires_fit


# ---------------------------------------------------------------------------- validation


class TestValidatedAtFit:
    """Invalid parameters construct fine and raise, with a sentence, at fit."""

    @pytest.mark.parametrize(
        ("params", "error", "match"),
        [
            (
                {"pooling": "token"},
                ValueError,
                r"pooling='token' is not supported by model 'test_efficientnet'",
            ),
            (
                {"pooling": "token", "layer": 2},
                ValueError,
                r"pooling='token' needs a model with a class token; 'test_efficientnet' has none",
            ),
            ({"pooling": "median"}, InvalidParameterError, r"The 'pooling' parameter"),
            (
                {"layer": 5},
                ValueError,
                r"layer=5 is out of range: 'test_efficientnet' has 5 blocks, so block indices must lie in \[-5, 4\]",
            ),
            ({"layer": [0, -6]}, ValueError, r"layer=\[0, -6\] is out of range"),
            (
                {"layer": []},
                ValueError,
                r"layer=\[\] is not valid: expected None, 'logits', an int or a non-empty list",
            ),
            ({"layer": [1, "a"]}, ValueError, r"layer=\[1, 'a'\] is not valid"),
            ({"layer": "last"}, InvalidParameterError, r"The 'layer' parameter"),
            ({"image_size": 0}, InvalidParameterError, r"The 'image_size' parameter"),
            (
                {"image_size": (32,)},
                ValueError,
                r"image_size=\(32,\) is not valid: expected a positive int or a \(height, width\) pair",
            ),
            ({"image_size": [32, 0]}, ValueError, r"image_size=\[32, 0\] is not valid"),
            ({"image_size": "big"}, InvalidParameterError, r"The 'image_size' parameter"),
            ({"batch_size": 0}, InvalidParameterError, r"The 'batch_size' parameter"),
            ({"num_workers": -1}, InvalidParameterError, r"The 'num_workers' parameter"),
            ({"precision": "float8"}, InvalidParameterError, r"The 'precision' parameter"),
            ({"device": "tpu"}, ValueError, r"device='tpu' is not a valid torch device"),
            (
                {"device": "mps"}
                if not torch.backends.mps.is_available()
                else {"device": "cuda:99"},
                ValueError,
                "not available",
            ),
            (
                {"weights": "/no/such/file.pth"},
                FileNotFoundError,
                r"weights='/no/such/file\.pth' is not a file",
            ),
            ({"memory": 3.5}, InvalidParameterError, r"The 'memory' parameter"),
        ],
        ids=lambda v: repr(v) if isinstance(v, dict) else "",
    )
    def test_invalid(self, params, error, match):
        extractor = tiny_extractor(**params)  # does not raise
        with pytest.raises(error, match=match):
            extractor.fit()

    @pytest.mark.skipif(CUDA, reason="CUDA is available here")
    @pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
    def test_unavailable_cuda(self, device):
        with pytest.raises(ValueError, match=r"was requested but is not available on this machine"):
            tiny_extractor(device=device).fit()

    @pytest.mark.parametrize(
        "image_size",
        [np.int64(TINY_SIZE), (np.int64(TINY_SIZE), np.int64(TINY_SIZE))],
        ids=["int64", "int64-pair"],
    )
    def test_numpy_integer_image_size(self, images, image_size):
        # Integral sizes pass parameter validation, e.g. from np.arange in a parameter grid.
        out = tiny_extractor(image_size=image_size).fit().transform(images[:1])
        assert out.shape == (1, 256)


# ------------------------------------------------------------------------ top-k labels


class TestTopImagenetLabels:
    def test_shape_order_and_probabilities(self):
        scores = np.random.default_rng(0).normal(size=(3, 1000))
        scores[0, 817] = 50.0
        labels = top_imagenet_labels(scores, k=5)
        assert len(labels) == 3 and all(len(row) == 5 for row in labels)
        assert labels[0][0][0] == "sports car, sport car" and labels[0][0][1] > 0.99
        for row, s in zip(labels, scores, strict=True):
            probs = [p for _, p in row]
            assert probs == sorted(probs, reverse=True)
            assert all(isinstance(name, str) and name for name, _ in row)
            expected = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(probs, np.sort(expected)[::-1][:5])

    def test_default_k_and_lists(self):
        labels = top_imagenet_labels([[0.0] * 999 + [1.0]])
        assert len(labels[0]) == 3
        assert labels[0][0][0] == "toilet tissue, toilet paper, bathroom tissue"

    @pytest.mark.parametrize("shape", [(1000,), (2, 10), (2, 1001), (1, 2, 1000)])
    def test_wrong_shape(self, shape):
        with pytest.raises(
            ValueError, match=r"Expected ImageNet-1k scores of shape \(n_images, 1000\), got"
        ):
            top_imagenet_labels(np.zeros(shape))

    @pytest.mark.parametrize("k", [-1, 1.5])
    def test_invalid_k(self, k):
        with pytest.raises((ValueError, TypeError), match=r"\bk\b"):
            top_imagenet_labels(np.zeros((1, 1000)), k=k)


# --------------------------------------------------------------------------------- cache


class TestCache:
    @pytest.mark.parametrize("random_init", [False, True], ids=["checkpoint", "weights-None"])
    def test_grid_search_embeds_each_distinct_image_once(
        self, tmp_path, tiny_checkpoint, embed_calls, random_init
    ):
        distinct = make_images(24, 32, 32, seed=10)
        X = np.concatenate([distinct, distinct[:6]])  # 30 rows, 6 of them repeated
        y = np.arange(30) % 2  # repeats keep their label
        weights = None if random_init else tiny_checkpoint
        pipe = Pipeline(
            [
                ("features", tiny_extractor(weights=weights, memory=str(tmp_path))),
                ("clf", LogisticRegression(max_iter=1000)),
            ]
        )
        search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=5).fit(X, y)
        assert len(search.cv_results_["mean_test_score"]) == 3
        assert sum(embed_calls) == len(distinct)

    def test_cached_equals_uncached_exactly(self, tmp_path, tiny_checkpoint, images, embed_calls):
        uncached = tiny_extractor(weights=tiny_checkpoint).fit().transform(images)
        cached = tiny_extractor(weights=tiny_checkpoint, memory=str(tmp_path)).fit()
        first = cached.transform(images)
        second = clone(cached).fit().transform(images)
        assert embed_calls == [len(images), len(images)]  # uncached, then one miss; then hits
        np.testing.assert_array_equal(first, uncached)
        np.testing.assert_array_equal(second, uncached)

    def test_repeats_within_one_call(self, tmp_path, fitted, images, embed_calls):
        extractor = clone(fitted).set_params(memory=str(tmp_path)).fit()
        X = np.concatenate([images, images[::-1], images[:2]])
        out = extractor.transform(X)
        assert embed_calls == [len(images)]
        np.testing.assert_array_equal(out[len(images) : 2 * len(images)], out[: len(images)][::-1])

    def test_memory_accepts_a_path_object(self, tmp_path, fitted, images, embed_calls):
        extractor = clone(fitted).set_params(memory=tmp_path).fit()
        extractor.transform(images)
        extractor.transform(images)
        assert embed_calls == [len(images)]

    def test_memory_accepts_joblib_memory(self, tmp_path, fitted, images, embed_calls):
        extractor = clone(fitted).set_params(memory=joblib.Memory(tmp_path, verbose=0)).fit()
        extractor.transform(images)
        extractor.transform(images)
        assert embed_calls == [len(images)]

    def test_disabled_memory_embeds_every_time(self, fitted, images, embed_calls):
        extractor = clone(fitted).set_params(memory=joblib.Memory(None)).fit()
        extractor.transform(images)
        extractor.transform(images)
        assert embed_calls == [len(images), len(images)]

    @pytest.fixture
    def populated(self, tmp_path, tiny_checkpoint, images):
        # At 64 pixels the last feature map is 2x2, so avg and max pooling differ.
        base = {"weights": tiny_checkpoint, "image_size": 64, "memory": str(tmp_path / "cache")}
        reference = tiny_extractor(**base).fit().transform(images)
        return base, reference

    @pytest.mark.parametrize(
        ("change", "same_embedding"),
        [
            ({"layer": 2}, False),
            ({"layer": "logits"}, False),
            ({"pooling": "max"}, False),
            ({"image_size": 72}, False),
            ({"weights": "other"}, False),
            ({"model": "test_efficientnet.r160_in1k"}, True),  # same weights, other name
            ({"precision": "bfloat16"}, False),
        ],
        ids=lambda v: repr(v) if isinstance(v, dict) else "",
    )
    def test_each_key_part_misses(
        self, populated, tmp_path, images, embed_calls, change, same_embedding
    ):
        base, reference = populated
        embed_calls.clear()
        tiny_extractor(**base).fit().transform(images)
        assert embed_calls == []  # populated: a plain hit
        if change.get("weights") == "other":
            change = {"weights": tmp_path / "other.pth"}
            save_checkpoint(change["weights"], TINY_MODEL, seed=1)
        changed = tiny_extractor(**{**base, **change}).fit()
        out = changed.transform(images)
        assert embed_calls == [len(images)]
        assert np.array_equal(out, reference) == same_embedding
        changed.transform(images)
        assert embed_calls == [len(images)]  # and the new entry hits in turn

    @pytest.mark.parametrize("change", [{"batch_size": 2}, {"num_workers": 1}, {"verbose": True}])
    def test_runtime_knobs_still_hit(self, populated, images, embed_calls, change):
        base, reference = populated
        embed_calls.clear()
        out = tiny_extractor(**base, **change).fit().transform(images)
        assert embed_calls == []
        np.testing.assert_array_equal(out, reference)

    def test_same_picture_as_file_and_array_are_separate_entries(
        self, tmp_path, fitted, images, embed_calls
    ):
        paths = []
        for i, image in enumerate(images[:2]):
            paths.append(tmp_path / f"{i}.png")
            Image.fromarray(image).save(paths[-1])
        extractor = clone(fitted).set_params(memory=str(tmp_path / "cache")).fit()
        from_arrays = extractor.transform(images[:2])
        from_files = extractor.transform(paths)
        assert embed_calls == [2, 2]
        np.testing.assert_array_equal(from_files, from_arrays)

    def test_modified_file_is_embedded_again(self, tmp_path, fitted, embed_calls):
        folder = tmp_path / "files"
        folder.mkdir()
        arrays = list(make_images(4, 40, 40, seed=20))
        paths = [folder / f"{i}.png" for i in range(4)]
        for path, array in zip(paths, arrays, strict=True):
            Image.fromarray(array).save(path)
        extractor = clone(fitted).set_params(memory=str(tmp_path / "cache")).fit()
        before = extractor.transform(paths)
        extractor.transform(paths)
        assert embed_calls == [4]

        # Rewrite file 2 with other content (a new size and modification time).
        new = make_images(1, 44, 36, seed=21)[0]
        stat = os.stat(paths[2])
        Image.fromarray(new).save(paths[2])
        os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        after = extractor.transform(paths)
        assert embed_calls == [4, 1]
        np.testing.assert_array_equal(after[[0, 1, 3]], before[[0, 1, 3]])
        np.testing.assert_array_equal(after[2], clone(fitted).fit().transform([new])[0])

    def test_touched_file_with_same_size_is_embedded_again(self, tmp_path, fitted, embed_calls):
        path = tmp_path / "a.png"
        Image.fromarray(make_images(1, seed=22)[0]).save(path)
        extractor = clone(fitted).set_params(memory=str(tmp_path / "cache")).fit()
        extractor.transform([path])
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        extractor.transform([path])
        assert embed_calls == [1, 1]

    def test_namespace_is_recorded(self, tmp_path, fitted, images):
        extractor = clone(fitted).set_params(memory=str(tmp_path)).fit()
        extractor.transform(images[:1])
        (meta,) = (tmp_path / "sktransfer" / "embeddings").glob("*/namespace.json")
        text = meta.read_text()
        assert extractor.weights_fingerprint_ in text and TINY_MODEL in text


# ----------------------------------------------------------------------------- pickling


FRESH_PROCESS = textwrap.dedent(
    """
    import pickle, sys, warnings
    from pathlib import Path

    import joblib
    import numpy as np
    import torch

    folder = Path(sys.argv[1])
    assert not torch.cuda.is_available()
    X = np.load(folder / "X.npy")
    for pipe in (pickle.loads((folder / "pipe.pkl").read_bytes()), joblib.load(folder / "pipe.joblib")):
        extractor = pipe.steps[0][1]
        assert extractor.device_ == torch.device("cpu")
        assert not any(m.training for m in extractor.backbone_.modules())
        np.testing.assert_array_equal(extractor.transform(X), np.load(folder / "features.npy"))
        np.testing.assert_array_equal(pipe.predict_proba(X), np.load(folder / "proba.npy"))
        np.testing.assert_array_equal(pipe.predict(X), np.load(folder / "predict.npy"))
    print("fresh process: identical")
    """
)


def state_dict_bytes(module):
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@pytest.fixture(scope="module")
def fitted_pipe(one_torch_thread, tiny_checkpoint):
    X = make_images(12, 36, 36, seed=30)
    y = np.arange(12) % 3
    pipe = Pipeline(
        [
            ("features", tiny_extractor(weights=tiny_checkpoint)),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    )
    return pipe.fit(X, y), X


class TestPickle:
    def test_round_trip_in_process(self, fitted_pipe):
        pipe, X = fitted_pipe
        restored = pickle.loads(pickle.dumps(pipe))
        extractor = restored.steps[0][1]
        assert extractor.device_ == torch.device("cpu")
        assert not any(m.training for m in extractor.backbone_.modules())
        np.testing.assert_array_equal(restored.predict_proba(X), pipe.predict_proba(X))
        np.testing.assert_array_equal(restored[0].transform(X), pipe[0].transform(X))

    def test_size_is_about_the_weights(self, fitted_pipe, tmp_path):
        pipe, _ = fitted_pipe
        weights = state_dict_bytes(pipe[0].backbone_)
        raw = pickle.dumps(pipe)
        joblib.dump(pipe, tmp_path / "pipe.joblib")
        for size in (len(raw), (tmp_path / "pipe.joblib").stat().st_size):
            assert weights < size < 1.5 * weights + 200_000, (size, weights)

    def test_unfitted_round_trip(self):
        extractor = pickle.loads(pickle.dumps(tiny_extractor(layer=[1, 2])))
        assert extractor.get_params()["layer"] == [1, 2] and not hasattr(extractor, "backbone_")

    def test_deepcopy_of_fitted(self, fitted, images):
        import copy

        copied = copy.deepcopy(fitted)
        assert copied.backbone_ is not fitted.backbone_
        np.testing.assert_array_equal(copied.transform(images), fitted.transform(images))

    @pytest.mark.slow
    def test_loads_in_a_fresh_process(self, fitted_pipe, tmp_path):
        pipe, X = fitted_pipe
        X = np.concatenate([X, make_images(5, 36, 36, seed=31)])
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "features.npy", pipe[0].transform(X))
        np.save(tmp_path / "proba.npy", pipe.predict_proba(X))
        np.save(tmp_path / "predict.npy", pipe.predict(X))
        (tmp_path / "pipe.pkl").write_bytes(pickle.dumps(pipe))
        joblib.dump(pipe, tmp_path / "pipe.joblib")
        script = tmp_path / "load.py"
        script.write_text(FRESH_PROCESS)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),  # as here: same kernels
        }
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "fresh process: identical" in result.stdout

    @pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
    def test_cuda_pickle_loads_on_cpu(self, tiny_checkpoint, images, monkeypatch):
        extractor = tiny_extractor(weights=tiny_checkpoint).fit()
        expected = extractor.transform(images)
        extractor.device_ = torch.device("cuda")  # as if fitted on a GPU with device="cuda"
        extractor.set_params(device="cuda")
        raw = pickle.dumps(extractor)
        joblib_file = io.BytesIO()
        joblib.dump(extractor, joblib_file)
        # The estimator loads it on the CPU, says so, and gives identical outputs.
        with pytest.warns(UserWarning, match="saved on device 'cuda', which is not available here"):
            restored = pickle.loads(raw)
        assert restored.device_ == torch.device("cpu")
        assert restored.precision_ == "float32"
        assert all(p.device.type == "cpu" for p in restored.backbone_.parameters())
        np.testing.assert_array_equal(restored.transform(images), expected)
        joblib_file.seek(0)
        with pytest.warns(UserWarning, match="not available here"):
            restored = joblib.load(joblib_file)
        np.testing.assert_array_equal(restored.transform(images), expected)

    @pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
    def test_device_auto_resolves_where_loaded(self, images):
        # device="auto" means the best device of the machine that runs the model (a Dask
        # worker, a service): a model fitted on a GPU loads on this CPU without a warning.
        extractor = tiny_extractor().fit()
        expected = extractor.transform(images)
        extractor.device_ = torch.device("cuda")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            restored = pickle.loads(pickle.dumps(extractor))
        assert restored.device_ == torch.device("cpu")
        np.testing.assert_array_equal(restored.transform(images), expected)

"""Frozen layers are never paid for twice: one pass per fit, and with ``memory`` one pass
per image for a whole search, shared with PretrainedFeatureExtractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _finetune_fixtures import colour_images, tiny
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from skorch.callbacks import Callback

import sktransfer._inference
from sktransfer import PretrainedFeatureExtractor
from sktransfer._cache import count_rows
from sktransfer._images import ArraySource

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def colours():
    y = np.repeat([0, 1, 2], 8)
    return colour_images(y), y


@pytest.fixture
def bottom_rows(monkeypatch):
    """How many images each run of the frozen bottom over images got (in this process)."""
    calls = []
    original = sktransfer._inference.run_batches

    def counting(forward, source, transform, *, positions, **kwargs):
        calls.append(len(positions))
        return original(forward, source, transform, positions=positions, **kwargs)

    monkeypatch.setattr(sktransfer._inference, "run_batches", counting)
    return calls


@pytest.fixture
def decoded(monkeypatch):
    """How many images were decoded."""
    calls = []
    original = ArraySource.load

    def counting(self, i):
        calls.append(i)
        return original(self, i)

    monkeypatch.setattr(ArraySource, "load", counting)
    return calls


def stored_rows(memory) -> dict:
    """Rows stored in the cache folder, per namespace layer."""
    counts = {}
    for folder in (Path(memory) / "sktransfer" / "embeddings").iterdir():
        layer = json.loads((folder / "namespace.json").read_text())["layer"]
        n = count_rows(folder)
        counts[layer] = counts.get(layer, 0) + n
    return counts


class TestOnePassPerFit:
    @pytest.mark.parametrize("freeze_depth", [0, 2, "all"])
    def test_images_are_decoded_once_for_both_stages(self, colours, decoded, freeze_depth):
        X, y = colours
        clf = tiny(freeze_depth=freeze_depth, head_epochs=2, max_epochs=2)
        clf.fit(X, y)
        assert clf.cached_activations_
        assert sorted(decoded) == list(range(len(X)))

    def test_validation_images_are_decoded_in_the_same_pass(self, colours, bottom_rows):
        X, y = colours
        tiny(freeze_depth=2, validation_fraction=0.25).fit(X, y)
        assert bottom_rows == [len(X)]

    def test_head_stage_sees_the_pretrained_embeddings(self, colours, tiny_checkpoint):
        X, y = colours
        extractor = PretrainedFeatureExtractor(
            "test_efficientnet", weights=tiny_checkpoint, image_size=32, device="cpu"
        )
        expected = extractor.fit_transform(X)
        seen = FirstHeadBatch()
        tiny(weights=tiny_checkpoint, freeze_depth=2, batch_size=24, callbacks=[seen]).fit(X, y)
        # shuffled: compare as sets of rows
        got = seen.x_[np.lexsort(seen.x_.T)]
        want = expected[np.lexsort(expected.T)]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


class FirstHeadBatch(Callback):
    """The inputs of the first training batch of the head stage."""

    def on_batch_begin(self, net, batch, training=False, **kwargs):
        if training and not hasattr(self, "x_"):
            self.x_ = batch[0].numpy()


class TestMemory:
    def test_cached_fit_equals_uncached_fit(self, colours, tmp_path):
        X, y = colours
        plain = tiny(freeze_depth=2).fit(X, y).predict_proba(X)
        first = tiny(freeze_depth=2, memory=tmp_path).fit(X, y).predict_proba(X)
        second = tiny(freeze_depth=2, memory=tmp_path).fit(X, y).predict_proba(X)
        np.testing.assert_array_equal(first, plain)
        np.testing.assert_array_equal(second, plain)

    def test_namespaces_name_the_cut_point(self, colours, tmp_path):
        X, y = colours
        tiny(freeze_depth=2, memory=tmp_path).fit(X, y)
        assert stored_rows(tmp_path) == {"frozen after blocks.0": 24, None: 24}

    @pytest.mark.parametrize("freeze_depth", [2, "all"])
    def test_grid_search_computes_each_image_once(
        self, colours, tmp_path, bottom_rows, freeze_depth
    ):
        X, y = colours
        clf = tiny(weights=None, freeze_depth=freeze_depth, memory=tmp_path)
        GridSearchCV(clf, {"lr": [1e-3, 3e-3]}, cv=3).fit(X, y)
        assert sum(bottom_rows) == len(X)  # 6 fits and the refit

    def test_grid_search_in_two_processes_computes_each_image_once(self, colours, tmp_path):
        X, y = colours
        clf = tiny(freeze_depth=2, memory=tmp_path)
        GridSearchCV(clf, {"lr": [1e-3, 3e-3]}, cv=3, n_jobs=2).fit(X, y)
        assert stored_rows(tmp_path) == {"frozen after blocks.0": 24, None: 24}

    def test_head_only_fine_tune_reads_the_extractors_embeddings(
        self, colours, tmp_path, tiny_checkpoint, bottom_rows
    ):
        X, y = colours
        probe = make_pipeline(
            PretrainedFeatureExtractor(
                "test_efficientnet", weights=tiny_checkpoint, image_size=32, memory=tmp_path
            ),
            LogisticRegression(),
        )
        probe.fit(X, y)
        tiny(weights=tiny_checkpoint, freeze_depth="all", memory=tmp_path).fit(X, y)
        assert bottom_rows == []
        assert stored_rows(tmp_path) == {None: 24}

    def test_extractor_reads_the_fine_tuners_embeddings(
        self, colours, tmp_path, tiny_checkpoint, monkeypatch
    ):
        X, y = colours
        tiny(weights=tiny_checkpoint, freeze_depth=2, memory=tmp_path).fit(X, y)
        embedded = []
        monkeypatch.setattr(
            PretrainedFeatureExtractor, "_embed", lambda self, s, p: embedded.append(p)
        )
        extractor = PretrainedFeatureExtractor(
            "test_efficientnet", weights=tiny_checkpoint, image_size=32, memory=tmp_path
        )
        assert extractor.fit_transform(X).shape == (24, extractor.n_features_out_)
        assert embedded == []

    def test_other_weights_miss(self, colours, tmp_path, bottom_rows):
        X, y = colours
        tiny(freeze_depth=2, memory=tmp_path, random_state=0).fit(X, y)
        tiny(freeze_depth=2, memory=tmp_path, random_state=1).fit(X, y)  # other random init
        assert bottom_rows == [24, 24]


class TestPredictFromFrozenRows:
    @pytest.mark.parametrize("freeze_depth", [0, 2, "all"])
    def test_equals_the_whole_model(self, colours, tmp_path, freeze_depth):
        X, y = colours
        clf = tiny(freeze_depth=freeze_depth, memory=tmp_path).fit(X[:16], y[:16])
        cached = clf.predict_proba(X)
        clf.set_params(memory=None)
        np.testing.assert_allclose(cached, clf.predict_proba(X), rtol=1e-5, atol=1e-6)

    def test_new_images_are_computed_once(self, colours, tmp_path, bottom_rows):
        X, y = colours
        clf = tiny(freeze_depth=2, memory=tmp_path).fit(X[:16], y[:16])
        assert bottom_rows == [16]
        first = clf.predict_proba(X)
        second = clf.predict_proba(X)
        assert bottom_rows == [16, 8]
        np.testing.assert_array_equal(first, second)

    def test_tta_runs_the_whole_model(self, colours, tmp_path, bottom_rows):
        X, y = colours
        clf = tiny(freeze_depth=2, memory=tmp_path, tta="hflip").fit(X, y)
        clf.predict_proba(X)
        assert bottom_rows == [24]  # the fit's pass only

    def test_memory_set_after_fit_is_not_used(self, colours, tmp_path, bottom_rows):
        X, y = colours
        clf = tiny(freeze_depth=2).fit(X, y)
        assert clf.cache_identity_ == {}
        clf.set_params(memory=tmp_path).predict_proba(X)
        assert bottom_rows == [24]
        assert not (tmp_path / "sktransfer").exists()

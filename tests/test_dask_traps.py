"""Inputs and methods on which :func:`sktransfer.dask_transform` must give what the eager
method gives, or refuse as it does: a method that returns a list of arrays (one per label
column of a multi-task classifier), and a single path given where a collection is
expected. Runs on Dask's local scheduler, and once on an in-process distributed client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _finetune_fixtures import colour_images, tiny
from conftest import save_images, tiny_extractor

from sktransfer import dask_transform

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOUR = np.arange(12) % 3
WARMTH = np.array(["warm", "cold", "cold"])[COLOUR]  # 2 classes
SHADE = np.array(["red", "green", "blue"])[COLOUR]  # 3 classes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colours")
    return [str(p) for p in save_images(colour_images(COLOUR), folder)]


@pytest.fixture(scope="module", params=["3-and-2-classes", "2-and-2-classes"])
def multitask(request, files):
    """A classifier of two label columns: 3 and 2 classes (ragged probabilities), or 2
    and 2 (probabilities that numpy would stack into one 3-D array)."""
    first = SHADE if request.param.startswith("3") else WARMTH
    return tiny().fit(files, np.column_stack([first, WARMTH]))


class TestMethodsThatReturnLists:
    def test_predict_proba_is_a_list_of_dask_arrays_like_the_eager_one(self, multitask, files):
        X = files + files[:3]  # repeated paths are computed once and taken again
        eager = multitask.predict_proba(X)
        lazy = dask_transform(multitask, X, method="predict_proba", chunk_size=5)
        assert isinstance(lazy, list) and len(lazy) == len(eager) == 2
        for part, expected in zip(lazy, eager, strict=True):
            assert isinstance(part, da.Array)
            assert part.shape == expected.shape == (15, expected.shape[1])
            assert part.chunks == ((5, 5, 5), (expected.shape[1],))
            assert part.dtype == expected.dtype
        computed = dask.compute(*lazy)
        for part, got, expected in zip(lazy, computed, eager, strict=True):
            assert got.shape == part.shape
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    def test_each_block_has_its_declared_shape(self, multitask, files):
        lazy = dask_transform(multitask, files, method="predict_proba", chunk_size=5)
        for part in lazy:
            for i, rows in enumerate(part.chunks[0]):
                assert part.blocks[i].compute().shape == (rows, part.shape[1])

    def test_predict_of_several_label_columns_stays_one_array(self, multitask, files):
        lazy = dask_transform(multitask, files, method="predict", chunk_size=5)
        assert isinstance(lazy, da.Array) and lazy.shape == (12, 2)
        np.testing.assert_array_equal(lazy.compute(), multitask.predict(files))

    def test_on_a_distributed_client(self, multitask, files):
        distributed = pytest.importorskip("distributed")
        with distributed.Client(
            processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0"
        ):
            lazy = dask_transform(multitask, files, method="predict_proba", chunk_size=8)
            computed = dask.compute(*lazy)
        for got, expected in zip(computed, multitask.predict_proba(files), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


class TestASinglePath:
    @pytest.mark.parametrize("single", [str, Path], ids=["str", "Path"])
    def test_is_refused_as_transform_refuses_it(self, files, single):
        extractor = tiny_extractor().fit()
        with pytest.raises(TypeError) as eager:
            extractor.transform(single(files[0]))
        with pytest.raises(TypeError, match=r"got a single \w+\. Wrap it in a list") as lazy:
            dask_transform(extractor, single(files[0]))
        assert str(lazy.value) == str(eager.value)

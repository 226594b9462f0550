"""sktransfer on a real Dask cluster: a ``distributed.LocalCluster`` of two worker
processes (one thread each) that this module starts and stops itself.

Embedding: :func:`sktransfer.dask_transform` gives what ``transform`` gives, each distinct
image embedded once across the cluster, the model sent once per worker, the cache shared,
missing files named, a killed worker's tasks retried. Searches: ``GridSearchCV`` and
``RandomizedSearchCV`` under joblib's dask backend give exactly the serial results.
"""

from __future__ import annotations

import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _dask_workers import CountingExtractor, counts, reset
from _finetune_fixtures import colour_images, tiny
from conftest import TINY_MODEL, TINY_SIZE, save_images
from scipy.stats import loguniform
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from sktransfer import dask_transform
from sktransfer._cache import count_rows
from sktransfer._distributed import connect, iter_blocks

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
joblib = pytest.importorskip("joblib")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

N_IMAGES = 40
CHUNK = 8  # = the batch size: each task runs the batches a local transform runs


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def worker_counts(client):
    """A function giving the counts of :mod:`_dask_workers` from zero at the start of
    the test: images embedded on the workers and in this process, loads per worker."""
    client.run(reset)
    reset()

    def total():
        per_worker = client.run(counts)
        return {
            "workers": sum(c["embedded"] for c in per_worker.values()),
            "here": counts()["embedded"],
            "loads": {w: c["loads"] for w, c in per_worker.items()},
        }

    return total


@pytest.fixture(scope="module")
def labels():
    return np.repeat([0, 1, 2, 3], N_IMAGES // 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory, labels):
    folder = tmp_path_factory.mktemp("colours")
    return [str(p) for p in save_images(colour_images(labels), folder)]


def counting_extractor(**params):
    params = {"weights": None, "image_size": TINY_SIZE, "batch_size": CHUNK, **params}
    return CountingExtractor(TINY_MODEL, **params).fit()


@pytest.fixture(scope="module")
def extractor():
    return counting_extractor()


@pytest.fixture(scope="module")
def expected(extractor, files):
    return extractor.transform(files)


def as_kind(files, kind):
    if kind == "list":
        return files
    if kind == "dask array":
        return da.from_array(np.array(files, dtype=object), chunks=7)
    frame = dd.from_pandas(pd.DataFrame({"path": files}), npartitions=3)
    return frame["path"] if kind == "dask series" else frame


# ---------------------------------------------------------------------- embedding


class TestEmbedding:
    @pytest.mark.parametrize("kind", ["list", "dask array", "dask series", "dask frame"])
    def test_gives_what_transform_gives(self, client, extractor, files, expected, kind):
        result = dask_transform(extractor, as_kind(files, kind), chunk_size=CHUNK)
        assert isinstance(result, da.Array)
        assert result.shape == expected.shape
        assert result.chunks == ((CHUNK,) * (N_IMAGES // CHUNK), (expected.shape[1],))
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result.compute(), expected)

    def test_each_distinct_image_once_and_the_model_once_per_worker(
        self, client, extractor, files, expected, worker_counts
    ):
        order = np.random.default_rng(0).permutation(3 * N_IMAGES) % N_IMAGES
        result = dask_transform(extractor, [files[i] for i in order], chunk_size=CHUNK)
        computed = result.compute()
        done = worker_counts()
        assert done["workers"] == N_IMAGES  # not 3 * N_IMAGES
        assert done["loads"] == dict.fromkeys(client.scheduler_info()["workers"], 1)
        assert result.chunks[0] == (CHUNK,) * (3 * N_IMAGES // CHUNK)
        np.testing.assert_array_equal(computed, expected[order])

    def test_a_worker_given_the_model_again_keeps_the_copy_it_loaded(
        self, client, extractor, files, expected, worker_counts
    ):
        # Dask's Active Memory Manager drops the replicas of the model that no task
        # waits for yet; a worker that needs it later fetches it again
        result = dask_transform(extractor, files, chunk_size=CHUNK)
        holders = dict.fromkeys(client.scheduler_info()["workers"], 1)
        assert worker_counts()["loads"] == holders  # sent to every worker
        client.amm.run_once()
        deadline = time.monotonic() + 30
        while len(kept := set().union(*client.who_has().values())) > 1:
            assert time.monotonic() < deadline, "the memory manager dropped no replica"
            time.sleep(0.05)
        (dropped,) = set(holders) - kept
        np.testing.assert_array_equal(result.compute(workers=[dropped]), expected)
        assert worker_counts()["loads"] == holders  # each still once

    def test_predict_proba_of_a_probe_pipeline(self, client, files, labels):
        probe = make_pipeline(counting_extractor(), LogisticRegression(max_iter=200))
        probe.fit(files, labels)
        result = dask_transform(probe, files, method="predict_proba", chunk_size=CHUNK)
        assert result.shape == (N_IMAGES, 4)
        np.testing.assert_array_equal(result.compute(), probe.predict_proba(files))
        labels_out = dask_transform(probe, files, method="predict", chunk_size=CHUNK)
        assert labels_out.shape == (N_IMAGES,)
        np.testing.assert_array_equal(labels_out.compute(), probe.predict(files))

    def test_the_cache_is_shared_by_the_workers(
        self, client, files, expected, worker_counts, tmp_path
    ):
        cached = counting_extractor(memory=str(tmp_path))
        first = dask_transform(cached, files, chunk_size=CHUNK).compute()
        assert worker_counts()["workers"] == N_IMAGES
        (namespace,) = (tmp_path / "sktransfer" / "embeddings").iterdir()
        assert count_rows(namespace) == N_IMAGES
        again = dask_transform(cached, files[::-1], chunk_size=CHUNK).compute()
        assert worker_counts()["workers"] == N_IMAGES  # every row from the cache
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(again, expected[::-1])

    def test_a_file_missing_on_the_workers_is_named(self, client, extractor, files, tmp_path):
        missing = str(tmp_path / "gone.png")
        result = dask_transform(extractor, [*files, missing], chunk_size=CHUNK)
        with pytest.raises(
            ValueError,
            match=rf"Image {N_IMAGES} \('.*gone\.png'\) does not exist\. \(on Dask worker tcp://",
        ):
            result.compute()

    def test_a_killed_worker_is_replaced_and_the_result_is_complete(
        self, client, files, expected, tmp_path
    ):
        dying = counting_extractor()
        switch = tmp_path / "kill-switch"
        switch.touch()
        dying.kill_switch = str(switch)  # pickled with it: the first worker to embed dies
        result = dask_transform(dying, files, chunk_size=CHUNK).compute()
        assert not switch.exists()  # a worker did die
        np.testing.assert_array_equal(result, expected)
        client.wait_for_workers(2, timeout=60)

    @pytest.mark.parametrize("window", [1, None])
    def test_blocks_stream_in_order(self, client, extractor, files, expected, window):
        result = dask_transform(extractor, files, chunk_size=CHUNK)
        blocks = list(iter_blocks(result, client, window=window))
        assert [len(b) for b in blocks] == [CHUNK] * (N_IMAGES // CHUNK)
        np.testing.assert_array_equal(np.concatenate(blocks), expected)

    @pytest.mark.parametrize(
        ("X", "error", "match"),
        [
            (np.array([["a.png", "b.png"]]), ValueError, r"1-D collection .* shape \(1, 2\)"),
            ([], ValueError, "at least one image path"),
            ([Path("a.png"), 3], TypeError, "Image 1 is a int, not a file path"),
        ],
        ids=["2-D", "empty", "not a path"],
    )
    def test_inputs_that_are_not_paths(self, extractor, X, error, match):
        with pytest.raises(error, match=match):
            dask_transform(extractor, X)

    def test_a_frame_of_several_columns_is_refused(self, extractor, files):
        frame = pd.DataFrame({"path": files, "label": 0})
        with pytest.raises(ValueError, match=r"one-column DataFrame .* X\['path'\]"):
            dask_transform(extractor, frame)

    def test_in_memory_images_are_refused(self, extractor):
        with pytest.raises(TypeError, match="Image 0 is a ndarray, not a file path"):
            dask_transform(extractor, list(colour_images(np.arange(2))))

    def test_a_scheduler_that_does_not_answer(self):
        with socket.socket() as s:  # a port that nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionError, match=r"No Dask scheduler answered at .* 1 s"):
            connect(f"tcp://127.0.0.1:{port}", timeout=1)


# ---------------------------------------------------------------------- searches


def on_the_cluster(client, search, X, y):
    """``search`` fitted with joblib's dask backend, and the workers that ran its fits.
    ``X`` and ``y`` are scattered to every worker first, so that the scheduler spreads
    the fits rather than keeping them where the data is."""
    with (
        distributed.get_task_stream(client) as tasks,
        joblib.parallel_config(backend="dask", scatter=[X, y]),
    ):
        search.set_params(n_jobs=-1).fit(X, y)
    return search, {task["worker"] for task in tasks.data}


def assert_same_search(serial, spread, X):
    for key, values in serial.cv_results_.items():
        if "test_score" in key or key == "params":
            assert list(spread.cv_results_[key]) == list(values), key
    assert spread.best_params_ == serial.best_params_
    np.testing.assert_array_equal(spread.predict_proba(X), serial.predict_proba(X))
    reloaded = pickle.loads(pickle.dumps(spread))
    np.testing.assert_array_equal(reloaded.predict_proba(X), serial.predict_proba(X))


class TestSearches:
    def test_grid_search_of_the_fine_tuner(self, client, labels):
        X, y = colour_images(labels[::2]), labels[::2]

        def search():
            grid = {"freeze_depth": [0.5, "all"], "lr": [1e-3, 3e-2]}
            fine_tuner = tiny(device="auto", head_epochs=0, max_epochs=1)
            return GridSearchCV(fine_tuner, grid, cv=3, error_score="raise")

        serial = search().fit(X, y)
        spread, workers = on_the_cluster(client, search(), X, y)
        assert len(workers) == 2
        assert_same_search(serial, spread, X)

    def test_randomized_search_of_the_probe_shares_the_cache(
        self, client, files, labels, tmp_path, worker_counts, tiny_checkpoint
    ):
        def search(memory):
            extractor = counting_extractor(weights=tiny_checkpoint, memory=memory)
            probe = make_pipeline(extractor, LogisticRegression(max_iter=200))
            space = {"logisticregression__C": loguniform(1e-2, 1e2)}
            return RandomizedSearchCV(probe, space, n_iter=4, cv=3, random_state=0)

        before = worker_counts()
        spread, workers = on_the_cluster(client, search(str(tmp_path)), files, labels)
        after = worker_counts()
        assert len(workers) == 2
        # once each, over the 12 fits on the workers and the refit here
        assert after["workers"] - before["workers"] == N_IMAGES
        assert after["here"] == before["here"]
        # The serial search reads the rows that the workers stored: the same numbers
        # (a row computed in another batch differs in its last bits).
        with threadpool_limits(1):  # BLAS on one thread, as on the workers
            serial = search(str(tmp_path)).fit(files, labels)
        assert worker_counts()["here"] == after["here"]
        assert_same_search(serial, spread, files)

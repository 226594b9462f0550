"""Traps of the embedding cache's folder: a ``memory=`` that names a file, a training
cache folder that travels with a saved model into a service, and workers that wait for
each other's whole batch.

The two-process tests run the first worker in a spawned process whose ``compute`` waits
on an event this process sets; a timer sets it too, late, only so that a regression
fails instead of hanging. They assert on the order of events, never on durations.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import threading
import warnings

import numpy as np
import pytest
from _finetune_fixtures import colour_images, tiny
from conftest import TINY_MODEL, make_images, save_images, tiny_extractor

import sktransfer._locks
from sktransfer import CacheReadOnlyWarning, InvalidParameterError
from sktransfer._cache import EmbeddingCache, count_rows
from sktransfer._cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMESPACE = {"model": "traps", "layer": None}
GUARD_S = 120  # only ever reached when a worker waits for rows it does not need


def row(key: bytes) -> np.ndarray:
    """The row that every worker computes for ``key``."""
    return np.frombuffer(hashlib.blake2b(key).digest(), dtype=np.uint8).astype(np.float32)


def rows_of(keys) -> np.ndarray:
    return np.stack([row(k) for k in keys])


def digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


class Recorded:
    """A ``compute`` that records the keys it is asked for, and runs ``during`` first."""

    def __init__(self, keys, during=lambda: None):
        self.keys, self.during, self.calls = keys, during, []

    def __call__(self, positions, allocate, on_rows):
        self.calls.append([self.keys[i] for i in positions])
        self.during()
        return rows_of([self.keys[i] for i in positions])


def dumps_pickle(model) -> bytes:
    return pickle.dumps(model)


def dumps_skops(model) -> bytes:
    return pytest.importorskip("skops.io").dumps(model)


def loads(data: bytes, how: str):
    if how == "pickle":
        return pickle.loads(data)
    skops_io = pytest.importorskip("skops.io")
    return skops_io.loads(data, trusted=skops_io.get_untrusted_types(data=data))


# ------------------------------------------------------------- 1. memory names a file


class TestMemoryNamingAFile:
    @pytest.mark.parametrize("inside", [False, True])
    def test_the_extractor_refuses_it(self, tmp_path, inside):
        afile = tmp_path / "embeddings.npy"
        afile.write_bytes(b"not a folder")
        memory = afile / "cache" if inside else afile
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            with pytest.raises(InvalidParameterError) as error:
                tiny_extractor(memory=str(memory)).fit()
        assert str(afile) in str(error.value)
        assert "not a folder" in str(error.value)
        assert not [w for w in record if issubclass(w.category, CacheReadOnlyWarning)]
        assert afile.read_bytes() == b"not a folder"

    def test_transform_refuses_it(self, tmp_path, fitted, images):
        afile = tmp_path / "afile"
        afile.write_text("x")
        extractor = pickle.loads(pickle.dumps(fitted)).set_params(memory=afile)
        with pytest.raises(InvalidParameterError, match=r"memory=.*afile.* names a file"):
            extractor.transform(images)

    def test_a_fine_tuner_refuses_it(self, tmp_path):
        afile = tmp_path / "afile"
        afile.write_text("x")
        y = np.repeat([0, 1], 4)
        with pytest.raises(InvalidParameterError, match=r"names a file, not a folder"):
            tiny(memory=afile).fit(colour_images(y), y)

    def test_the_command_line_refuses_it(self, tmp_path, tiny_checkpoint, capsys):
        root = tmp_path / "images"
        save_images(make_images(2, 32, 32), root)
        afile = tmp_path / "afile"
        afile.write_text("x")
        args = ["embed", str(root), "--out", str(tmp_path / "e.npy"), "--model", TINY_MODEL]
        args += ["--weights", str(tiny_checkpoint), "--image-size", "32"]
        assert main([*args, "--cache", str(afile), "--no-progress"]) == 2
        assert "names a file, not a folder" in capsys.readouterr().err
        assert not (tmp_path / "e.npy").exists()


# ------------------------------------------ 2. a loaded model writes no cache folder


@pytest.fixture
def training_and_service(tmp_path, monkeypatch):
    """Two empty folders; the test starts in ``training``."""
    training, service = tmp_path / "training", tmp_path / "service"
    training.mkdir()
    service.mkdir()
    monkeypatch.chdir(training)
    return training, service


class TestLoadedModelWritesNoCache:
    @pytest.mark.parametrize("how", ["pickle", "skops"])
    def test_extractor(self, training_and_service, monkeypatch, images, how):
        training, service = training_and_service
        extractor = tiny_extractor(memory="cache").fit()
        expected = extractor.transform(images)
        assert count_rows(_namespace(training / "cache")) == len(images)
        data = dumps_pickle(extractor) if how == "pickle" else dumps_skops(extractor)

        monkeypatch.chdir(service)
        np.testing.assert_array_equal(loads(data, how).transform(images), expected)
        assert list(service.iterdir()) == []

    @pytest.mark.parametrize("how", ["pickle", "skops"])
    def test_fine_tuner(self, training_and_service, monkeypatch, how):
        training, service = training_and_service
        y = np.repeat([0, 1, 2], 4)
        X = colour_images(y)
        clf = tiny(freeze_depth=2, memory="cache").fit(X, y)
        expected = clf.predict_proba(X), clf.predict(X)
        assert (training / "cache" / "sktransfer").is_dir()
        data = dumps_pickle(clf) if how == "pickle" else dumps_skops(clf)

        monkeypatch.chdir(service)
        loaded = loads(data, how)
        np.testing.assert_array_equal(loaded.predict_proba(X), expected[0])
        np.testing.assert_array_equal(loaded.predict(X), expected[1])
        assert list(service.iterdir()) == []

    def test_where_the_folder_exists_it_is_used(self, training_and_service, images, embed_calls):
        extractor = tiny_extractor(memory="cache").fit()
        expected = extractor.transform(images)
        embed_calls.clear()
        loaded = pickle.loads(pickle.dumps(extractor))  # in the training folder
        np.testing.assert_array_equal(loaded.transform(images), expected)
        assert embed_calls == []  # every row read from the cache that fit created

    def test_a_service_names_its_own_folder(
        self, training_and_service, monkeypatch, images, embed_calls
    ):
        _, service = training_and_service
        data = pickle.dumps(tiny_extractor(memory="cache").fit())
        monkeypatch.chdir(service)
        loaded = pickle.loads(data)

        loaded.set_params(memory="missing").transform(images)
        assert list(service.iterdir()) == []  # a folder that does not exist: not created
        (service / "served").mkdir()
        embed_calls.clear()
        first = loaded.set_params(memory="served").transform(images)
        second = loaded.transform(images)
        assert embed_calls == [len(images)]  # the second call read the first one's rows
        np.testing.assert_array_equal(first, second)
        assert count_rows(_namespace(service / "served")) == len(images)


def _namespace(memory):
    (folder,) = (memory / "sktransfer" / "embeddings").iterdir()
    return folder


# ------------------------------------- 3. workers wait only for the rows they need


def compute_in_child(folder, keys, started, release, computed):
    """A worker (in a spawned process) computing the rows of ``keys``: its ``compute``
    says it started, then waits for ``release``; reports the keys it computed."""

    def compute(positions, allocate, on_rows):
        started.set()
        release.wait(GUARD_S * 2)
        computed.put([keys[i] for i in positions])
        return rows_of([keys[i] for i in positions])

    EmbeddingCache(folder, NAMESPACE).rows(keys, compute)


class ChildWorker:
    """The child worker of a test; ``release`` lets its compute finish (and is set by
    a timer after ``GUARD_S``, so that a worker that waited for it fails the test
    instead of hanging)."""

    def __init__(self, folder, keys):
        ctx = multiprocessing.get_context("spawn")
        self.started, self.release, self.computed = ctx.Event(), ctx.Event(), ctx.Queue()
        args = (str(folder), keys, self.started, self.release, self.computed)
        self.process = ctx.Process(target=compute_in_child, args=args)
        self.guard = threading.Timer(GUARD_S, self.release.set)

    def __enter__(self):
        self.process.start()
        assert self.started.wait(GUARD_S * 3), "the child worker never started computing"
        self.guard.start()
        return self

    def __exit__(self, *exc):
        self.guard.cancel()
        self.release.set()
        self.process.join(GUARD_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class TestWorkersWaitOnlyForTheRowsTheyNeed:
    def test_a_worker_computes_other_rows_while_one_computes_its_own(self, tmp_path):
        held, other = [b"a1", b"a2", b"a3"], [b"b1", b"b2"]
        with ChildWorker(tmp_path, held) as child:
            computed = Recorded(other)
            out = EmbeddingCache(tmp_path, NAMESPACE).rows(other, computed)
            released_before = child.release.is_set()  # by the guard, had it waited
        assert not released_before  # done while the child held its rows
        assert computed.calls == [other]
        np.testing.assert_array_equal(out, rows_of(other))
        assert child.process.exitcode == 0
        assert child.computed.get(timeout=GUARD_S) == held
        found = EmbeddingCache(tmp_path, NAMESPACE).lookup(held + other)
        np.testing.assert_array_equal(
            np.stack([found[k] for k in held + other]), rows_of(held + other)
        )

    def test_a_worker_waits_for_a_row_being_computed_and_reads_it(self, tmp_path):
        held, wanted = [b"a1", b"shared"], [b"shared", b"b1"]
        with ChildWorker(tmp_path, held) as child:
            released_before = []

            def release_the_child():  # once this worker computes its own row
                released_before.append(child.release.is_set())
                child.release.set()

            computed = Recorded(wanted, during=release_the_child)
            out = EmbeddingCache(tmp_path, NAMESPACE).rows(wanted, computed)
        assert released_before == [False]  # its own row computed while the child held
        assert computed.calls == [[b"b1"]]  # the shared row was read, not computed
        np.testing.assert_array_equal(out, rows_of(wanted))
        assert child.process.exitcode == 0
        assert child.computed.get(timeout=GUARD_S) == held

    def test_a_claim_that_nobody_holds_is_ignored_and_removed(self, tmp_path):
        keys = [b"a", b"b"]
        cache = EmbeddingCache(tmp_path, NAMESPACE)
        claims = cache.folder / "claims"
        claims.mkdir(parents=True)
        stale = claims / "0123.claim"  # left by a worker that died
        stale.write_bytes(b"".join(digest(k) for k in keys))
        computed = Recorded(keys)
        np.testing.assert_array_equal(cache.rows(keys, computed), rows_of(keys))
        assert computed.calls == [keys]
        assert not stale.exists()
        assert list(claims.iterdir()) == []  # its own claim dropped too

    def test_without_posix_locks_rows_are_computed_and_stored(self, tmp_path, monkeypatch):
        monkeypatch.setattr(sktransfer._locks, "fcntl", None)  # as on Windows
        keys = [b"a", b"b"]
        computed = Recorded(keys)
        EmbeddingCache(tmp_path, NAMESPACE).rows(keys, computed)
        out = EmbeddingCache(tmp_path, NAMESPACE).rows(keys, computed)
        assert computed.calls == [keys]
        np.testing.assert_array_equal(out, rows_of(keys))
        assert not (EmbeddingCache(tmp_path, NAMESPACE).folder / "claims").exists()


def test_no_claim_outlives_its_call(tmp_path):
    keys = [f"k{i}".encode() for i in range(40)]

    def fails_half_way(positions, allocate, on_rows):
        on_rows(np.arange(20), rows_of(keys[:20]))
        raise RuntimeError("stopped half way")

    cache = EmbeddingCache(tmp_path, NAMESPACE)
    with pytest.raises(RuntimeError, match="half way"):
        cache.rows(keys, fails_half_way)
    assert list((cache.folder / "claims").iterdir()) == []
    computed = Recorded(keys)
    np.testing.assert_array_equal(cache.rows(keys, computed), rows_of(keys))
    assert computed.calls == [keys[20:]]

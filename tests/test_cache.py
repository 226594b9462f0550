"""The per-image embedding cache: plain-array shards with checksums, bucketed lookups,
rows stored batch by batch, read-only folders."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import pickle
import stat
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from conftest import assert_same_embedding, make_images, tiny_extractor
from PIL import Image

import sktransfer._cache
from sktransfer import PretrainedFeatureExtractor
from sktransfer._cache import (
    MERGE_AT,
    CacheIntegrityWarning,
    CacheReadOnlyWarning,
    EmbeddingCache,
    count_rows,
)
from sktransfer._images import as_images
from sktransfer._inference import frozen_bottom, run_forward
from sktransfer._rows import cached_rows, frozen_namespace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMESPACE = {"model": "test", "layer": None}


def digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


def keys_in_bucket(bucket: int, n: int, prefix: str = "k") -> list[bytes]:
    """``n`` keys whose digest starts with ``bucket`` (found by trying names in turn)."""
    keys, i = [], 0
    while len(keys) < n:
        key = f"{prefix}{i}".encode()
        if digest(key)[0] == bucket:
            keys.append(key)
        i += 1
    return keys


def cache_files(memory) -> list[Path]:
    """Every file of the cache that holds rows (whatever its format), sorted."""
    root = Path(memory) / "sktransfer" / "embeddings"
    skip = {"namespace.json", ".lock"}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip)


def rows_for(keys, seed=0, width=8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(keys), width)).astype(np.float32)


class Computed:
    """A ``compute`` for :meth:`EmbeddingCache.rows` that records the rows it computes
    (and returns them all at once, reporting no batch)."""

    def __init__(self, table: dict):
        self.table, self.calls = table, []

    def __call__(self, keys):
        def compute(positions, allocate, on_rows):
            self.calls.append([keys[i] for i in positions])
            return np.stack([self.table[keys[i]] for i in positions])

        return compute


@pytest.fixture
def forward_calls(monkeypatch):
    """Batch sizes that the extractor's backbone ran on (installed after ``fit``)."""
    calls = []
    original = PretrainedFeatureExtractor._forward

    def counting(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(PretrainedFeatureExtractor, "_forward", counting)
    return calls


@pytest.fixture
def opened(monkeypatch):
    """Files under a folder that are opened (by numpy, joblib or anything else)."""
    paths = []
    original = builtins.open

    def counting(file, *args, **kwargs):
        paths.append(Path(os.fspath(file)) if isinstance(file, str | os.PathLike) else file)
        return original(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return paths


# ------------------------------------------------------------------------ integrity


def _random_bytes(path: Path, row: bytes) -> bytes:
    return np.random.default_rng(0).bytes(path.stat().st_size)


def _truncated(path: Path, row: bytes) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


def _flipped_bit(path: Path, row: bytes) -> bytes:
    data = bytearray(path.read_bytes())
    at = bytes(data).index(row) + len(row) // 2
    data[at] ^= 0x10
    return bytes(data)


def _npy_file(path: Path, row: bytes) -> bytes:
    with open(path, "wb") as f:
        np.save(f, np.zeros((1, 8), np.float32))
    return path.read_bytes()


def _empty(path: Path, row: bytes) -> bytes:
    return b""


def _foreign_npz(path: Path, row: bytes) -> bytes:
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(3))
    return path.read_bytes()


class TestIntegrity:
    @pytest.mark.parametrize(
        "damage", [_random_bytes, _truncated, _empty, _flipped_bit, _npy_file, _foreign_npz]
    )
    def test_damaged_shard_is_skipped_recomputed_and_set_aside(self, tmp_path, damage):
        keys = [b"a", b"b"]
        table = dict(zip(keys, rows_for(keys), strict=True))
        cache = EmbeddingCache(tmp_path, NAMESPACE)
        cache.store(keys[:1], rows_for(keys)[:1])
        (shard,) = cache_files(tmp_path)
        shard.write_bytes(damage(shard, table[b"a"].tobytes()))

        computed = Computed(table)
        with pytest.warns(CacheIntegrityWarning, match=r"(?s)Skipped .*recomputed") as record:
            out = EmbeddingCache(tmp_path, NAMESPACE).rows(keys, computed(keys))
        assert str(shard) in str(record[0].message)
        np.testing.assert_array_equal(out, np.stack([table[k] for k in keys]))
        assert computed.calls == [keys]  # the damaged row was recomputed, never served
        assert Path(f"{shard}.damaged").exists()

        with warnings.catch_warnings():  # set aside: no warning again, and a plain hit
            warnings.simplefilter("error")
            again = EmbeddingCache(tmp_path, NAMESPACE).rows(keys, computed(keys))
        np.testing.assert_array_equal(again, out)
        assert len(computed.calls) == 1

    def test_reordered_rows_are_never_served(self, tmp_path):
        keys = keys_in_bucket(7, 2)  # one shard holds both rows
        rows = rows_for(keys)
        EmbeddingCache(tmp_path, NAMESPACE).store(keys, rows)
        (shard,) = cache_files(tmp_path)
        first, second = rows[0].tobytes(), rows[1].tobytes()
        data = shard.read_bytes()
        assert data.count(first + second) == 1
        shard.write_bytes(data.replace(first + second, second + first))

        with pytest.warns(CacheIntegrityWarning, match="recomputed"):
            found = EmbeddingCache(tmp_path, NAMESPACE).lookup(keys)
        assert found == {}

    def test_rows_reordered_in_a_sound_archive_fail_the_checksum(self, tmp_path):
        keys = keys_in_bucket(7, 2)
        EmbeddingCache(tmp_path, NAMESPACE).store(keys, rows_for(keys))
        (shard,) = cache_files(tmp_path)
        with np.load(shard) as data:
            arrays = dict(data)
        arrays["rows"] = arrays["rows"][::-1].copy()  # the zip's own CRCs now match
        with open(shard, "wb") as f:
            np.savez(f, **arrays)
        with pytest.warns(CacheIntegrityWarning, match="checksum does not match"):
            assert EmbeddingCache(tmp_path, NAMESPACE).lookup(keys) == {}

    def test_flipped_bit_in_a_transform_is_recomputed(self, tmp_path, fitted, images):
        extractor = _with_memory(fitted, tmp_path)
        reference = extractor.transform(images)
        for shard in cache_files(tmp_path):
            data = shard.read_bytes()
            row = next(r.tobytes() for r in reference if r.tobytes() in data)
            shard.write_bytes(_flipped_bit(shard, row))
        with pytest.warns(CacheIntegrityWarning):
            out = extractor.transform(images)
        np.testing.assert_array_equal(out, reference)

    def test_pickles_in_the_folder_never_run(self, tmp_path, fitted, images):
        extractor = _with_memory(fitted, tmp_path)
        extractor.transform(images)
        marker = tmp_path / "pickle-ran"
        payload = pickle.dumps(_RunsOnLoad(str(marker)))
        (namespace,) = (tmp_path / "sktransfer" / "embeddings").iterdir()
        folders = [namespace, *(p for p in namespace.iterdir() if p.is_dir())]
        for folder in folders:
            for name in ("evil.joblib", "evil.pkl", "evil.npz", "evil.npy"):
                (folder / name).write_bytes(payload)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheIntegrityWarning)
            out = extractor.transform(np.concatenate([images, make_images(2, seed=5)]))
        assert not marker.exists()
        assert out.shape == (len(images) + 2, fitted.n_features_out_)

    def test_shards_are_plain_arrays_in_their_key_bucket(self, tmp_path, fitted, images):
        _with_memory(fitted, tmp_path).transform(images)
        shards = [p for p in cache_files(tmp_path) if p.suffix == ".npz"]
        assert shards
        stored = 0
        for shard in shards:
            with np.load(shard, allow_pickle=False) as data:
                assert sorted(data.files) == ["checksum", "keys", "rows"]
                keys, rows = data["keys"], data["rows"]
            assert keys.dtype == np.uint8 and keys.shape[1] == 16
            assert rows.dtype == np.float32 and rows.shape == (len(keys), fitted.n_features_out_)
            assert {f"{k[0]:02x}" for k in keys} == {shard.parent.name}
            stored += len(keys)
        assert stored == len(images)

    def test_old_joblib_shards_are_ignored(self, tmp_path, fitted, images):
        extractor = _with_memory(fitted, tmp_path)
        extractor.transform(images[:1])
        (namespace,) = (tmp_path / "sktransfer" / "embeddings").iterdir()
        key = as_images(images[1:2]).key(0)
        wrong = np.ones((1, fitted.n_features_out_), np.float32)
        joblib.dump({"keys": [key], "rows": wrong}, namespace / "old.joblib")  # 0.1 format
        out = extractor.transform(images[1:2])
        np.testing.assert_array_equal(out, fitted.transform(images[1:2]))


class _RunsOnLoad:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _with_memory(fitted, memory) -> PretrainedFeatureExtractor:
    """A copy of the shared fitted extractor with ``memory`` set (memory is read by
    ``transform`` only, so no refit); its folder is created, as ``fit`` would (prediction
    uses only a cache folder that exists)."""
    extractor = PretrainedFeatureExtractor.__new__(PretrainedFeatureExtractor)
    extractor.__dict__.update(fitted.__dict__)
    if isinstance(memory, str | os.PathLike) and "://" not in os.fspath(memory):
        Path(memory).mkdir(parents=True, exist_ok=True)
    return extractor.set_params(memory=memory)


# ------------------------------------------------------------------------ lookup cost


class TestLookupCost:
    def test_a_lookup_opens_only_the_shards_of_the_buckets_asked(self, tmp_path, opened):
        asked = keys_in_bucket(0x2A, 1, prefix="asked")
        neighbours = keys_in_bucket(0x2A, 40, prefix="near")
        others = [f"other{i}".encode() for i in range(200)]
        for i, key in enumerate([*neighbours, *others]):  # one shard per call
            EmbeddingCache(tmp_path, NAMESPACE).store([key], rows_for([key], seed=i))
        opened.clear()
        assert EmbeddingCache(tmp_path, NAMESPACE).lookup(asked) == {}
        shards = sorted(p for p in opened if tmp_path in p.parents)
        assert len(shards) == 4  # of the 240 shards written, 40 of them in its bucket
        in_bucket = sorted((EmbeddingCache(tmp_path, NAMESPACE).folder / "2a").glob("*.npz"))
        assert shards == in_bucket  # the 40 rows of its bucket merged into 16, 16, 4 and 4

    def test_compaction_keeps_every_row_and_few_shards(self, tmp_path):
        keys = keys_in_bucket(0x07, 70)
        rows = rows_for(keys)
        for i, key in enumerate(keys):
            EmbeddingCache(tmp_path, NAMESPACE).store([key], rows[i : i + 1])
        cache = EmbeddingCache(tmp_path, NAMESPACE)
        shards = list((cache.folder / "07").iterdir())
        sizes = sorted(int(p.name.split("-")[0]) for p in shards)
        assert MERGE_AT == 4
        assert sizes == [1, 1, 4, 64]  # size-tiered: 64 + 4 + 1 + 1, big shards left be
        assert all(p.suffix == ".npz" for p in shards)  # no temporary file left behind
        found = cache.lookup(keys)
        np.testing.assert_array_equal(np.stack([found[k] for k in keys]), rows)
        assert count_rows(cache.folder) == len(keys)

    def test_rows_asked_again_once_claimed_read_only_new_shards(self, tmp_path, opened):
        stored, asked = keys_in_bucket(5, 2)
        EmbeddingCache(tmp_path, NAMESPACE).store([stored], rows_for([stored]))
        (shard,) = cache_files(tmp_path)
        opened.clear()
        table = {asked: rows_for([asked])[0]}
        EmbeddingCache(tmp_path, NAMESPACE).rows([asked], Computed(table)([asked]))
        reads = [p for p in opened if tmp_path in p.parents and p.suffix not in (".tmp", "")]
        assert reads == [shard]  # once, not again once the row is claimed


# ---------------------------------------------------------------------- progress


class TestStoredAsBatchesFinish:
    @pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
    def test_an_error_keeps_the_batches_before_it(self, tmp_path, fitted, monkeypatch, error):
        extractor = _with_memory(fitted, tmp_path).set_params(batch_size=2)
        images = make_images(8, 32, 32, seed=3)
        original = PretrainedFeatureExtractor._forward
        batches = []

        def third_batch_fails(self, x):
            batches.append(len(x))
            if len(batches) == 3:
                raise error("stopped at the third batch")
            return original(self, x)

        monkeypatch.setattr(PretrainedFeatureExtractor, "_forward", third_batch_fails)
        with pytest.raises(error, match="third batch"):
            extractor.transform(images)
        monkeypatch.undo()
        calls = []
        monkeypatch.setattr(
            PretrainedFeatureExtractor,
            "_forward",
            lambda self, x: calls.append(len(x)) or original(self, x),
        )
        extractor.transform(images[:4])
        assert calls == []  # the two batches before the error were stored
        out = extractor.transform(images)
        assert calls == [2, 2]  # only the rest is computed
        uncached = _with_memory(fitted, None).set_params(batch_size=2)
        np.testing.assert_array_equal(out, uncached.transform(images))

    def test_a_corrupt_file_keeps_the_files_before_it(self, tmp_path, fitted, forward_calls):
        paths = []
        for i, image in enumerate(make_images(6, 32, 32, seed=4)):
            paths.append(tmp_path / f"{i}.png")
            Image.fromarray(image).save(paths[-1])
        paths[5].write_bytes(b"not a png")
        extractor = _with_memory(fitted, tmp_path / "cache").set_params(batch_size=2)
        with pytest.raises(ValueError, match=r"Image 5 .*5\.png"):
            extractor.transform(paths)
        forward_calls.clear()
        out = extractor.transform(paths[:4])
        assert forward_calls == []
        np.testing.assert_array_equal(out, fitted.transform(paths[:4]))

    def test_fine_tuners_frozen_rows_are_kept_before_an_error(self, tmp_path):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
        split = _FakeSplit(model)
        source = as_images(make_images(7, 8, 8, seed=6))
        positions = np.arange(7)
        compute = frozen_bottom(
            split,
            source,
            positions,
            _to_tensor,
            batch_size=2,
            device=torch.device("cpu"),
            num_workers=0,
        )
        split.fail_at = 3
        names = frozen_namespace(
            {"model": "fake", "weights": "w"},
            {"input_size": (3, 8, 8)},
            "after fake",
            torch.device("cpu"),
        )
        with pytest.raises(RuntimeError, match="third"):
            cached_rows(names, source, positions, compute, memory=tmp_path)
        (namespace,) = (tmp_path / "sktransfer" / "embeddings").iterdir()
        assert count_rows(namespace) == 4
        split.fail_at, split.calls = None, 0
        rows = cached_rows(names, source, positions, compute, memory=tmp_path)
        assert split.calls == 2  # the 3 remaining images, in batches of 2
        with torch.inference_mode():
            expected = model(torch.stack([_to_tensor(source.load(i)) for i in range(7)]))
        np.testing.assert_allclose(rows, expected.numpy(), rtol=1e-5, atol=1e-6)

    def test_run_forward_reports_each_batch(self):
        reported = []
        batches = [torch.ones(2, 3), 2 * torch.ones(2, 3), 3 * torch.ones(1, 3)]
        out = run_forward(
            lambda x: x,
            batches,
            5,
            device=torch.device("cpu"),
            precision="float32",
            on_rows=lambda positions, rows: reported.append((positions.tolist(), rows[:, 0])),
        )
        assert [p for p, _ in reported] == [[0, 1], [2, 3], [4]]
        np.testing.assert_array_equal(np.concatenate([r for _, r in reported]), out[:, 0])


class _FakeSplit:
    """A frozen bottom that raises at its ``fail_at``-th batch."""

    def __init__(self, model):
        self.model, self.calls, self.fail_at = model, 0, None

    def bottom(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("stopped at the third batch")
        return self.model(x)


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255)


# ---------------------------------------------------------------------- read-only


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only: ``chmod -R a-w``, and (so that it bites as root too) any
    write, rename, removal or new folder under it raises PermissionError."""
    frozen = []

    def is_under(path) -> bool:
        path = Path(os.fspath(path)).absolute()
        return any(root == path or root in path.parents for root in frozen)

    def refuse(original, n_paths=1):
        def guarded(*args, **kwargs):
            if any(is_under(p) for p in args[:n_paths] if isinstance(p, str | os.PathLike)):
                raise PermissionError(13, "Read-only folder (test)", os.fspath(args[0]))
            return original(*args, **kwargs)

        return guarded

    original_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and isinstance(file, str | os.PathLike):
            if is_under(file):
                raise PermissionError(13, "Read-only folder (test)", os.fspath(file))
        return original_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    for name in ("mkdir", "makedirs", "remove", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, refuse(getattr(os, name)))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, refuse(getattr(os, name), n_paths=2))

    def freeze(folder: Path):
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        frozen.append(folder.absolute())

    yield freeze
    monkeypatch.undo()
    for folder in frozen:
        for path in [folder, *folder.rglob("*")]:
            with contextlib.suppress(OSError):
                path.chmod(path.stat().st_mode | stat.S_IWUSR)


class TestReadOnlyFolder:
    def test_hits_served_misses_computed_not_stored(self, tmp_path, fitted, images, read_only):
        memory = tmp_path / "cache"
        extractor = _with_memory(fitted, memory)
        reference = fitted.transform(images)
        extractor.transform(images[:3])
        before = cache_files(memory)
        read_only(memory)

        calls = []
        original = PretrainedFeatureExtractor._embed
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(
                PretrainedFeatureExtractor,
                "_embed",
                lambda self, s, p, *a: calls.append(len(p)) or original(self, s, p, *a),
            )
            with pytest.warns(CacheReadOnlyWarning, match="not stored"):
                out = extractor.transform(images)
            np.testing.assert_array_equal(out, reference)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # warned once
                extractor.transform(images)
        assert calls == [3, 3]  # the three hits served, the misses computed each time
        assert cache_files(memory) == before

    def test_an_empty_read_only_location_computes_everything(
        self, tmp_path, fitted, images, read_only
    ):
        memory = tmp_path / "cache"
        memory.mkdir()
        read_only(memory)
        with pytest.warns(CacheReadOnlyWarning):
            out = _with_memory(fitted, memory).transform(images)
        np.testing.assert_array_equal(out, fitted.transform(images))
        assert list(memory.iterdir()) == []

    def test_a_damaged_shard_in_a_read_only_folder_is_skipped(self, tmp_path, read_only):
        keys = [b"a"]
        EmbeddingCache(tmp_path, NAMESPACE).store(keys, rows_for(keys))
        (shard,) = cache_files(tmp_path)
        shard.write_bytes(b"garbage")
        read_only(tmp_path)
        with pytest.warns(CacheIntegrityWarning, match="could not be renamed"):
            assert EmbeddingCache(tmp_path, NAMESPACE).lookup(keys) == {}
        assert shard.exists()


# ------------------------------------------------------------------ keys and namespace


class TestKeysAndNamespace:
    def test_content_keys_see_a_file_rewritten_in_place(self, fitted, tmp_path):
        before, after = make_images(2, 32, 32, seed=5)
        path = tmp_path / "cell.bmp"  # lossless, and both versions have the same size
        Image.fromarray(before).save(path)
        times = (path.stat().st_atime_ns, path.stat().st_mtime_ns)
        by_stat = _with_memory(fitted, tmp_path / "cache")
        by_content = _with_memory(fitted, tmp_path / "cache").set_params(cache_key="content")
        stale = by_stat.transform([path])
        by_content.transform([path])

        Image.fromarray(after).save(path)
        os.utime(path, ns=times)  # same path, size and modification time
        np.testing.assert_array_equal(by_stat.transform([path]), stale)  # the trusted stat
        assert_same_embedding(by_content.transform([path]), fitted.transform(after[None]))

    def test_a_parameter_set_after_fit_files_no_row_under_its_namespace(self, tmp_path, images):
        memory, size = tmp_path / "cache", 96  # at 32 px the last map is 1x1: max = avg
        averaged = tiny_extractor(memory=memory, image_size=size).fit()
        averaged.set_params(pooling="max")  # without a refit: still average pooling
        averaged.transform(images)
        max_pooled = tiny_extractor(pooling="max", memory=memory, image_size=size).fit()
        expected = tiny_extractor(pooling="max", image_size=size).fit().transform(images)
        assert not np.allclose(expected, averaged.transform(images))
        np.testing.assert_array_equal(max_pooled.transform(images), expected)

    @pytest.mark.parametrize("url", ["s3://bucket/cache", "file:///tmp/cache"])
    def test_a_url_is_refused_with_what_to_do(self, fitted, images, url):
        with pytest.raises(ValueError, match=r"is a URL; .* Mount the bucket as a folder"):
            _with_memory(fitted, url).transform(images)


def test_warnings_are_user_warnings():
    assert issubclass(CacheIntegrityWarning, UserWarning)
    assert issubclass(CacheReadOnlyWarning, UserWarning)
    assert sktransfer._cache.SHARD_SUFFIX == ".npz"

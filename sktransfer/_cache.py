"""Per-image embedding cache: shards of plain arrays in a folder, bucketed by key.

Each image is looked up by its own key, inside a namespace that fingerprints everything
else the embedding depends on: the model name, a hash of its weights, the preprocessing,
the layer, the pooling and the precision. Change any of those and every lookup misses.
The fine-tuner caches the output of its frozen bottom the same way (the layer names the
cut point), and its pooled features under the very namespace of the extractor, so a
probe and a head-only fine-tune share them. Hashing a whole input array, as
``Pipeline(memory=...)`` does, is never needed: a fold that contains images seen in any
earlier fold pays only for the new ones.

Layout. A namespace lives in ``<memory location>/sktransfer/embeddings/<digest>/``:
``namespace.json`` (the namespace, for humans), a ``.lock`` file and bucket folders
``00`` to ``ff``. A row is stored in the bucket of the first byte of its key's digest
(16-byte blake2b of the key), in a shard: an ``.npz`` file of three plain arrays, the
digests (``keys``, uint8 of shape (n, 16)), the ``rows`` (float32 of shape (n, ...)) and
a ``checksum``. A lookup opens only the shards of the buckets of the keys asked, and a
bucket holds few shards: once a size tier of a bucket (shards of 1-3 rows, 4-15, 16-63,
...) counts 4 shards they are merged into one of the next tier (size-tiered compaction,
so a row is rewritten about log4(rows per bucket) times, big shards rarely). Rows are
stored as each batch finishes, so an error or Ctrl-C loses at most the batch in flight.
Every file is written to a temporary name and renamed into place (``os.replace``), under
a lock that parallel workers (cross-validation, grid searches, Dask) share, held for the
write only. A worker claims the rows it computes and waits only for rows that another
worker is computing, then reads them (``_locks``): no row is computed twice, and no
worker waits for rows it does not need.

Who creates the folder. ``fit`` may create the ``memory`` folder; prediction never does:
it uses the cache only where the folder exists (``existing_memory``), so a model
loaded elsewhere writes nothing there. A path that names a file (or lies inside one) is
refused: the cache needs a folder.

Trust model. A key says which image a row belongs to: for in-memory images a hash of
their pixels (with dtype, shape, layout and pixel scale); for files, by default, their
absolute path, size and modification time (a file rewritten in place with the same size
and modification time would be served its old row), or, where the caller opts in, a
hash of the file's bytes. The checksum of a shard (blake2b over
its keys, the rows' dtype and shape and the row bytes, in that order) detects damage,
truncation and reordered rows: a damaged, unreadable or foreign shard is skipped with a
[`CacheIntegrityWarning`][sktransfer.CacheIntegrityWarning], its rows are recomputed, never served,
and the file is renamed ``*.damaged`` when the folder is writable, so the warning does not come
back. The checksum authenticates nothing: whoever can write into the folder can forge a
shard, with a matching checksum, whose rows will be served, so the folder must be
trusted for writing. Reading it never executes code, though: only ``.npz`` files inside
bucket folders are read, with ``np.load(allow_pickle=False)``; nothing is unpickled.

A read-only folder (a service mounting a cache) serves its hits; misses are computed and
returned but not stored, with one [`CacheReadOnlyWarning`][sktransfer.CacheReadOnlyWarning]. Shards
of earlier sktransfer versions (joblib pickles, ``*.joblib`` files next to ``namespace.json``) are
ignored, never read: delete them to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _locks
from ._params import InvalidParameterError
from ._warnings import warn

SHARD_SUFFIX = ".npz"
DAMAGED_SUFFIX = ".damaged"
DIGEST_SIZE = 16
TIER_BASE = 4  # size tiers of shards: 1-3 rows, 4-15, 16-63, ...
MERGE_AT = 4  # shards of one tier merged into one once there are this many
_CHECKSUM = {"digest_size": 32, "person": b"sktransfer-rows1"}

# (kind, folder or file) of the warnings already given in this process
_warned: set[tuple[str, str]] = set()


class CacheIntegrityWarning(UserWarning):
    """A file of the embedding cache was damaged, unreadable or foreign: it was skipped
    (its rows are recomputed, never served)."""


class CacheReadOnlyWarning(UserWarning):
    """The embedding cache folder cannot be written: hits are served, misses computed but
    not stored."""


class DamagedShard(Exception):
    """A file in a bucket folder that is not a valid shard of this cache."""


def empty_rows(shape) -> np.ndarray:
    """The default allocator of computed rows: a float32 array in memory."""
    return np.empty(shape, dtype=np.float32)


class EmbeddingCache:
    """Look up and store embeddings of single images under a namespace.

    Parameters
    ----------
    memory : str, path-like or joblib.Memory
        Where to keep the cache (only the location of a ``joblib.Memory`` is used).
        ``joblib.Memory(None)`` disables caching.
    namespace : dict
        Everything besides the image that the embedding depends on (JSON-serialisable).
    """

    def __init__(self, memory, namespace: dict):
        location = memory_location(memory)
        self.enabled = location is not None
        self.namespace = namespace
        text = json.dumps(namespace, sort_keys=True, default=str)
        self.digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        self.folder = (
            Path(location) / "sktransfer" / "embeddings" / self.digest if location else None
        )
        self._writable = None  # found out at the first store

    # ------------------------------------------------------------------ reading

    def lookup(self, keys: list[bytes], read: set | None = None) -> dict[bytes, np.ndarray]:
        """The cached rows of ``keys`` that exist (a dict from key to 1-D array).

        Opens only the shards of the buckets of ``keys``, except those in ``read``
        (shards never change once written, so a caller that already read them for
        these keys skips them); adds the shards it opens to ``read``. Damaged shards
        are set aside.
        """
        if not self.enabled or not self.folder.is_dir():
            return {}
        read = set() if read is None else read
        wanted = defaultdict(dict)  # bucket -> {digest: key}
        for key in set(keys):
            digest = key_digest(key)
            wanted[digest[0]][digest] = key
        found = {}
        for bucket, digests in wanted.items():
            for digest, row in self._lookup_bucket(bucket, digests, read).items():
                found[digests[digest]] = row
        return found

    def _lookup_bucket(self, bucket: int, digests: dict, read: set) -> dict[bytes, np.ndarray]:
        found, listing = {}, True
        while listing:  # again when a shard went: merged, since the listing, into a new one
            listing = False
            for path in self._shards(bucket):
                if path in read:
                    continue
                read.add(path)
                try:
                    _, hits = read_shard(path, bucket, wanted=set(digests) - set(found))
                except FileNotFoundError:
                    listing = True
                    continue
                except DamagedShard as exc:
                    self._set_aside(path, exc)
                    continue
                found.update(hits)
                if len(found) == len(digests):
                    return found
        return found

    def _shards(self, bucket: int) -> list[str]:
        return self._shards_in(self.folder, bucket)

    @staticmethod
    def _shards_in(folder, bucket: int) -> list[str]:
        """The shard files of a bucket, the largest first (most likely to hold a key)."""
        bucket_folder = os.path.join(folder, f"{bucket:02x}")
        try:
            names = os.listdir(bucket_folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [n for n in names if n.endswith(SHARD_SUFFIX) and not n.startswith(".")]
        names.sort(key=lambda name: -_n_rows(name))
        return [os.path.join(bucket_folder, name) for name in names]

    def _set_aside(self, path: str, reason: Exception) -> None:
        """Warn about a damaged file and rename it, so that it is never read again."""
        aside = path + DAMAGED_SUFFIX
        try:
            os.replace(path, aside)
            fate = f"It was renamed {os.path.basename(aside)!r}."
        except FileNotFoundError:  # another worker set it aside first
            return
        except OSError as exc:
            fate = f"It could not be renamed aside ({exc}); delete it to silence this warning."
        _warn_once(
            "damaged",
            path,
            f"Skipped the embedding cache file {path!r}: {reason}. Its rows will be "
            f"recomputed, never served from it. {fate}",
            CacheIntegrityWarning,
        )

    # ------------------------------------------------------------------ writing

    def store(self, keys: list[bytes], rows: np.ndarray) -> None:
        """Store ``rows`` (one per key), holding the folder's lock while it writes;
        nothing when disabled or the folder is read-only."""
        if self.enabled and len(keys):
            with self._lock(len(keys)):
                self._store(keys, rows)

    def _store(self, keys: list[bytes], rows: np.ndarray) -> None:
        """Write one shard per bucket of ``keys`` and compact those buckets (the caller
        holds the lock)."""
        if not self._can_write(len(keys)):
            return
        by_bucket = defaultdict(dict)  # bucket -> {digest: row index}, first of repeats
        for i, key in enumerate(keys):
            digest = key_digest(key)
            by_bucket[digest[0]].setdefault(digest, i)
        try:
            self._write_namespace()
            for bucket, items in sorted(by_bucket.items()):
                digests = np.frombuffer(b"".join(items), dtype=np.uint8).reshape(-1, DIGEST_SIZE)
                self._write_shard(bucket, digests, np.asarray(rows[list(items.values())]))
                self._compact(bucket)
        except OSError as exc:
            self._read_only(exc, len(keys))

    def _can_write(self, n_rows: int) -> bool:
        if self._writable is None:
            existing = _nearest_existing(self.folder)
            self._writable = os.access(existing, os.W_OK | os.X_OK)
            if not self._writable:
                self._read_only(PermissionError(f"{existing} is not writable"), n_rows)
        return self._writable

    def _read_only(self, exc: OSError, n_rows: int) -> None:
        self._writable = False
        _warn_once(
            "read-only",
            str(self.folder),
            f"The embedding cache folder {str(self.folder)!r} cannot be written ({exc}): "
            f"cached rows are served, but the {n_rows} rows computed now (and later misses "
            "in this folder) are not stored. Make the folder writable, or pass another "
            "memory= folder, to cache them.",
            CacheReadOnlyWarning,
        )

    def _write_namespace(self) -> None:
        meta = os.path.join(self.folder, "namespace.json")
        if not os.path.exists(meta):
            os.makedirs(self.folder, exist_ok=True)
            text = json.dumps(self.namespace, indent=2, sort_keys=True, default=str)
            _atomic_write(meta, lambda f: f.write(text.encode()))

    def _write_shard(self, bucket: int, digests: np.ndarray, rows: np.ndarray) -> str:
        folder = os.path.join(self.folder, f"{bucket:02x}")
        os.makedirs(folder, exist_ok=True)
        rows = np.ascontiguousarray(rows)
        path = os.path.join(folder, f"{len(digests)}-{uuid.uuid4().hex}{SHARD_SUFFIX}")
        archive = io.BytesIO()  # a zip built in memory, then written at once: faster
        np.savez(archive, keys=digests, rows=rows, checksum=shard_checksum(digests, rows))
        _atomic_write(path, lambda f: f.write(archive.getbuffer()))
        return path

    def _compact(self, bucket: int) -> None:
        """Merge the shards of the smallest size tier that has ``MERGE_AT`` of them,
        until none has (the caller holds the lock)."""
        while True:
            tiers = defaultdict(list)
            for path in self._shards(bucket):
                tiers[_tier(_n_rows(os.path.basename(path)))].append(path)
            full = [paths for _, paths in sorted(tiers.items()) if len(paths) >= MERGE_AT]
            if not full or not self._merge(bucket, full[0]):
                return

    def _merge(self, bucket: int, paths: list[str]) -> bool:
        """One shard from ``paths`` (damaged ones set aside); False if nothing changed."""
        parts = []
        for path in paths:
            try:
                parts.append(read_shard(path, bucket))
            except FileNotFoundError:
                continue
            except DamagedShard as exc:
                self._set_aside(path, exc)
        if len({(rows.dtype, rows.shape[1:]) for _, rows in parts}) > 1:
            return False  # rows of different shapes in one namespace: leave them be
        if len(parts) > 1:
            keys = np.concatenate([k for k, _ in parts])
            rows = np.concatenate([r for _, r in parts])
            _, first = np.unique(_as_void(keys), return_index=True)  # drop repeated keys
            first.sort()
            self._write_shard(bucket, keys[first], rows[first])
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        return not all(os.path.exists(path) for path in paths)

    # ------------------------------------------------------------------ both

    def rows(
        self, keys: list[bytes], compute: Callable, allocate: Callable = empty_rows
    ) -> np.ndarray:
        """The rows of ``keys``: cached ones looked up, the others computed once each by
        ``compute(positions, allocate, on_rows)`` (positions into ``keys``) and stored;
        ``compute`` reports each finished batch to ``on_rows(index, rows)`` (index into
        ``positions``), or returns rows it did not report, which are stored then.

        Rows are stored as each batch finishes, so an exception keeps those computed
        before it. Workers sharing the folder claim the rows they compute: this call
        computes the missing rows that no other worker is computing, then waits for the
        others to store theirs and reads them, so no row is computed twice and no lock is
        held while computing. (So ``compute`` must not itself wait for rows of this
        cache that another worker computes: two such workers would wait for each other.)
        """
        read = set()
        found = self.lookup(keys, read)
        missing = _first_positions(keys, found)
        if not missing and keys:
            return _assemble(keys, found, allocate)
        if not self.enabled or not keys:
            return compute(np.arange(len(keys)), allocate, None)
        while missing:
            with self._claim(keys, missing) as (mine, busy):
                # a worker that stored some of them since the lookup has dropped its claim
                found.update(self.lookup([keys[i] for i in mine], read))
                mine = [i for i in mine if keys[i] not in found]
                if mine:
                    rows = self._compute_and_store(compute, mine, keys, allocate)
                    if len(mine) == len(keys):
                        return rows  # computed in order, in the caller's array: no copy
                    found.update(zip([keys[i] for i in mine], rows, strict=True))
            _locks.wait_for(set(busy.values()))
            found.update(self.lookup([keys[i] for i in busy], read))
            missing = [i for i in busy if keys[i] not in found]  # their worker failed
        return _assemble(keys, found, allocate)

    def _compute_and_store(self, compute, positions, keys, allocate) -> np.ndarray:
        new_keys = [keys[i] for i in positions]
        stored = np.zeros(len(new_keys), dtype=bool)

        def on_rows(index, batch):
            self.store([new_keys[i] for i in index], batch)
            stored[index] = True

        rows = compute(np.array(positions, dtype=np.int64), allocate, on_rows)
        rest = np.flatnonzero(~stored)  # rows that no batch loop reported
        if len(rest):
            self.store([new_keys[i] for i in rest], rows[rest])
        return rows

    @contextlib.contextmanager
    def _claim(self, keys, positions: list[int]):
        """Claim the rows of ``keys`` at ``positions`` that no other worker is computing,
        until the block ends; yields ``(mine, busy)``: the positions claimed, and a dict
        from the others' positions to the claim file of the worker computing each. Where
        nothing can be claimed (a read-only folder, no POSIX locks), every position is
        ``mine``."""
        digests = {i: key_digest(keys[i]) for i in positions}
        claim, busy = None, {}
        with self._lock(len(positions)) as locked:
            if locked:
                claimed = _locks.claimed_rows(self.folder / "claims")
                busy = {i: claimed[d] for i, d in digests.items() if d in claimed}
                free = [d for i, d in digests.items() if i not in busy]
                try:
                    claim = _locks.Claim(self.folder / "claims", free) if free else None
                except OSError as exc:
                    self._read_only(exc, len(free))
        try:
            yield [i for i in positions if i not in busy], busy
        finally:
            if claim is not None:
                claim.drop()

    @contextlib.contextmanager
    def _lock(self, n_rows: int):
        """Hold the folder's lock (to write ``n_rows`` rows, or claim them); yields False
        (no lock) where none can be taken: a read-only folder, or no POSIX locks."""
        locked = _locks.can_lock() and self._can_write(n_rows)
        with contextlib.ExitStack() as held:
            if locked:
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    held.enter_context(_locks.folder_lock(self.folder / ".lock"))
                except OSError as exc:
                    self._read_only(exc, n_rows)
                    locked = False
            yield locked


def memory_location(memory) -> str | None:
    """The folder of ``memory`` (a path, or a ``joblib.Memory`` whose location is used),
    or None. Unlike ``check_memory``, creates nothing (the folder may be read-only).

    Raises [`InvalidParameterError`][sktransfer.InvalidParameterError] for a path that names a file,
    or lies inside one: the cache needs a folder.
    """
    if memory is None or isinstance(memory, str | os.PathLike):
        location = None if memory is None else _local_folder(os.fspath(memory))
    elif hasattr(memory, "cache"):
        location = getattr(memory, "location", None)
        location = None if location is None else os.fspath(location)
    else:
        raise ValueError(
            f"memory={memory!r} is not valid: expected None, a folder (str or path-like) "
            "or a joblib.Memory."
        )
    if location is not None:
        _check_not_a_file(location)
    return location


def existing_memory(memory):
    """``memory`` where its folder exists, else None: the cache that prediction uses.
    Prediction never creates a cache folder (``fit`` does), so that a model loaded
    elsewhere, with a path that means another folder there, writes nothing."""
    location = memory_location(memory)
    return memory if location is not None and os.path.isdir(location) else None


def create_folder(memory) -> None:
    """Create the folder of ``memory`` (``fit`` does, for prediction to use it); one
    [`CacheReadOnlyWarning`][sktransfer.CacheReadOnlyWarning] where it cannot be created."""
    location = memory_location(memory)
    if location is None or os.path.isdir(location):
        return
    try:
        os.makedirs(location, exist_ok=True)
    except OSError as exc:
        _warn_once(
            "read-only",
            location,
            f"The embedding cache folder {location!r} cannot be created ({exc}): rows are "
            "computed, not cached. Make its parent folder writable, or pass another "
            "memory= folder, to cache them.",
            CacheReadOnlyWarning,
        )


def _nearest_existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (what a folder would be created in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_not_a_file(location: str) -> None:
    """Raise if ``location``, or the nearest of its parents that exists, is no folder."""
    given = Path(location).absolute()
    existing = _nearest_existing(given)
    if existing.is_dir():
        return
    where = f"memory={location!r}" + ("" if str(given) == location else f" ({str(given)!r})")
    what = "names a file" if existing == given else f"lies inside the file {str(existing)!r}"
    raise InvalidParameterError(
        f"{where} {what}, not a folder: the embedding cache keeps its rows in a folder. "
        "Pass the path of a folder (one that exists, or one that can be created), or "
        "memory=None to cache nothing."
    )


def _local_folder(location: str) -> str:
    """``location``, unless it is a URL: the cache needs a filesystem with atomic renames
    and locks, which object stores lack."""
    if "://" in location:
        raise ValueError(
            f"memory={location!r} is a URL; the embedding cache needs a folder of a "
            "filesystem that renames files atomically and has locks (a local disk, or "
            "shared storage such as NFS mounted at the same path on every worker). "
            "Mount the bucket as a folder, or give a folder on shared storage."
        )
    return location


# ---------------------------------------------------------------------- shards


def count_rows(folder) -> int:
    """How many distinct keys the sound shards of a namespace folder hold (for tests
    and diagnostics; damaged shards are not counted, nor set aside)."""
    digests = set()
    for bucket in range(256):
        for path in EmbeddingCache._shards_in(folder, bucket):
            with contextlib.suppress(DamagedShard, FileNotFoundError):
                keys, _ = read_shard(path, bucket)
                digests.update(k.tobytes() for k in keys)
    return len(digests)


def key_digest(key: bytes) -> bytes:
    """The fixed-width digest that a shard stores for ``key``; its first byte is the
    key's bucket."""
    return hashlib.blake2b(key, digest_size=DIGEST_SIZE).digest()


def shard_checksum(digests: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """blake2b over the dtype and shape of the rows, the keys and the row bytes."""
    h = hashlib.blake2b(**_CHECKSUM)
    h.update(f"{rows.dtype.str}|{rows.shape}|".encode())
    h.update(np.ascontiguousarray(digests).data)
    h.update(np.ascontiguousarray(rows).data)
    return np.frombuffer(h.digest(), dtype=np.uint8)


def read_shard(path: str, bucket: int, wanted: set[bytes] | None = None):
    """A shard's verified ``(keys, rows)``, or with ``wanted`` (digests) its keys and a
    dict from those of ``wanted`` it holds to their rows (rows read and verified only
    when one is there).

    Raises ``DamagedShard`` for anything but a sound shard of ``bucket``, and
    ``FileNotFoundError`` if the file went away.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # any failure to parse means it is not a shard we wrote
        # (numpy's message for a file it does not recognise suggests unpickling it)
        raise DamagedShard(f"it is not a readable .npz archive ({type(exc).__name__})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DamagedShard("it is a .npy array, not an .npz archive")
    with data:
        if set(data.files) != {"keys", "rows", "checksum"}:
            raise DamagedShard(f"it holds the arrays {sorted(data.files)}, not a shard's")
        try:
            keys = data["keys"]
            if wanted is not None:
                hits = np.flatnonzero(np.isin(_as_void(keys), _as_void(_digest_array(wanted))))
                if not len(hits):
                    _check_keys(keys, bucket)
                    return keys, {}
            rows, checksum = data["rows"], data["checksum"]
        except DamagedShard:
            raise
        except Exception as exc:
            raise DamagedShard(f"its arrays cannot be read ({type(exc).__name__})") from exc
    _verify(keys, rows, checksum, bucket)
    if wanted is None:
        return keys, rows
    return keys, {keys[i].tobytes(): rows[i].copy() for i in hits}


def _verify(keys, rows, checksum, bucket: int) -> None:
    _check_keys(keys, bucket)
    if rows.dtype.kind not in "fiu" or rows.ndim < 1 or len(rows) != len(keys):
        raise DamagedShard(
            f"its rows ({rows.dtype}, shape {rows.shape}) do not match its {len(keys)} keys"
        )
    expected = shard_checksum(keys, rows)
    if checksum.dtype != np.uint8 or not np.array_equal(checksum, expected):
        raise DamagedShard("its checksum does not match its contents (damaged or reordered)")


def _check_keys(keys, bucket: int) -> None:
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != DIGEST_SIZE:
        raise DamagedShard(f"its keys are not {DIGEST_SIZE}-byte digests")
    if len(keys) and not np.all(keys[:, 0] == bucket):
        raise DamagedShard(f"it holds keys of other buckets than {bucket:02x}")


def _digest_array(digests) -> np.ndarray:
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, DIGEST_SIZE)


def _as_void(keys: np.ndarray) -> np.ndarray:
    """Each row of digests as one comparable, sortable scalar."""
    return np.ascontiguousarray(keys).view(np.dtype((np.void, DIGEST_SIZE))).ravel()


def _n_rows(name: str) -> int:
    """The row count a shard's name starts with (1 for a name that does not)."""
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() and int(head) > 0 else 1


def _tier(n_rows: int) -> int:
    tier = 0
    while n_rows >= TIER_BASE:
        n_rows //= TIER_BASE
        tier += 1
    return tier


def _atomic_write(path: str, write: Callable) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it into place."""
    tmp = os.path.join(os.path.dirname(path), f".{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _warn_once(kind: str, where: str, message: str, category) -> None:
    if (kind, where) not in _warned:
        _warned.add((kind, where))
        warn(message, category)


# ---------------------------------------------------------------------- rows


def _first_positions(keys, found) -> list[int]:
    """Positions of the first occurrence of each key not in ``found``."""
    first = {}
    for i, key in enumerate(keys):
        if key not in found:
            first.setdefault(key, i)
    return list(first.values())


def _assemble(keys, found, allocate) -> np.ndarray:
    out = allocate((len(keys), *next(iter(found.values())).shape))
    for i, key in enumerate(keys):
        out[i] = found[key]
    return out

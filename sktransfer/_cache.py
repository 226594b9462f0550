"""Per-image embedding cache on a joblib ``Memory`` location.

Each image is looked up by its own key (content hash for in-memory images; absolute path,
size and modification time for files), inside a namespace that fingerprints everything
else the embedding depends on: the model name, a hash of its weights, the preprocessing,
the layer, the pooling and the precision. Change any of those and every lookup misses.

The fine-tuner caches the output of its frozen bottom the same way (the layer names the
cut point), and its pooled features under the very namespace of the extractor, so a
probe and a head-only fine-tune share them.

Embeddings are written in shards, one per ``transform`` call, with an atomic rename, so
parallel cross-validation workers can share one cache folder safely. Hashing a whole
input array, as ``Pipeline(memory=...)`` does, is never needed: a fold that contains
images seen in any earlier fold pays only for the new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
from sklearn.utils.validation import check_memory

from ._inference import empty_rows


def cache_namespace(
    *, model: str, weights: str, data_config: dict, layer, pooling, precision: str, device
) -> dict:
    """Everything besides the image that a cached row depends on."""
    return {
        "model": model,
        "weights": weights,
        "preprocessing": {k: data_config[k] for k in sorted(data_config)},
        "layer": layer,
        "pooling": pooling,
        "precision": precision,
        "device_type": device.type,
    }


class EmbeddingCache:
    """Look up and store embeddings of single images under a namespace.

    Parameters
    ----------
    memory : str, path-like or joblib.Memory
        Where to keep the cache. ``joblib.Memory(None)`` disables caching.
    namespace : dict
        Everything besides the image that the embedding depends on (JSON-serialisable).
    """

    def __init__(self, memory, namespace: dict):
        memory = check_memory(os.fspath(memory) if isinstance(memory, os.PathLike) else memory)
        location = getattr(memory, "location", None)
        self.enabled = location is not None
        self.namespace = namespace
        text = json.dumps(namespace, sort_keys=True, default=str)
        self.digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        self.folder = (
            Path(location) / "sktransfer" / "embeddings" / self.digest if location else None
        )

    def lookup(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached rows of ``keys`` that exist (a dict from key to 1-D array)."""
        if not self.enabled or not self.folder.is_dir():
            return {}
        wanted = set(keys)
        found = {}
        for shard in sorted(self.folder.glob("*.joblib")):
            try:
                data = joblib.load(shard)
            except (OSError, EOFError, ValueError):  # a shard being written, or damaged
                continue
            for key, row in zip(data["keys"], data["rows"], strict=True):
                if key in wanted:
                    found[key] = row
            if len(found) == len(wanted):
                break
        return found

    def store(self, keys: list[bytes], rows: np.ndarray) -> None:
        if not self.enabled or not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "namespace.json"
        if not meta.exists():
            meta.write_text(json.dumps(self.namespace, indent=2, sort_keys=True, default=str))
        name = uuid.uuid4().hex
        tmp = self.folder / f".{name}.tmp"
        joblib.dump({"keys": list(keys), "rows": np.ascontiguousarray(rows)}, tmp)
        os.replace(tmp, self.folder / f"{name}.joblib")

    def rows(
        self, keys: list[bytes], compute: Callable, allocate: Callable = empty_rows
    ) -> np.ndarray:
        """The rows of ``keys``: cached ones looked up, the others computed once each by
        ``compute(positions, allocate)`` (positions into ``keys``) and stored.

        Parallel workers sharing the folder take a lock while they compute, and look up
        again under it, so no row is computed twice across a grid search.
        """
        found = self.lookup(keys)
        missing = _first_positions(keys, found)
        if missing and self.enabled:
            with self._lock():
                found.update(self.lookup([keys[i] for i in missing]))
                missing = _first_positions(keys, found)
                if missing:
                    rows = compute(np.array(missing, dtype=np.int64), allocate)
                    new_keys = [keys[i] for i in missing]
                    self.store(new_keys, rows)
                    if len(missing) == len(keys):
                        return rows  # computed in order, in the caller's array: no copy
                    found.update(zip(new_keys, rows, strict=True))
        elif missing:
            return compute(np.arange(len(keys)), allocate)
        shape = (len(keys), *next(iter(found.values())).shape)
        out = allocate(shape)
        for i, key in enumerate(keys):
            out[i] = found[key]
        return out

    @contextlib.contextmanager
    def _lock(self):
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): workers may duplicate work
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _first_positions(keys, found) -> list[int]:
    """Positions of the first occurrence of each key not in ``found``."""
    first = {}
    for i, key in enumerate(keys):
        if key not in found:
            first.setdefault(key, i)
    return list(first.values())

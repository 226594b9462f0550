"""Per-image embedding cache on a joblib ``Memory`` location.

Each image is looked up by its own key (content hash for in-memory images; absolute path,
size and modification time for files), inside a namespace that fingerprints everything
else the embedding depends on: the model name, a hash of its weights, the preprocessing,
the layer, the pooling and the precision. Change any of those and every lookup misses.

Embeddings are written in shards, one per ``transform`` call, with an atomic rename, so
parallel cross-validation workers can share one cache folder safely. Hashing a whole
input array, as ``Pipeline(memory=...)`` does, is never needed: a fold that contains
images seen in any earlier fold pays only for the new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import joblib
import numpy as np
from sklearn.utils.validation import check_memory


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

"""A fitted estimator over image files on a Dask cluster: lazy, partition by partition.

[`dask_transform`][sktransfer.dask_transform] turns file paths (a list, an array, a dask array or a
dask DataFrame column) into a lazy dask array of what the estimator's ``transform`` (or
``predict``, ``predict_proba``, ...) gives. Dask schedules everything: this module only
builds the graph. Three things make it fit image work:

- **Each distinct path once.** Paths are deduplicated on the client before they are cut
  into partitions (the paths themselves are small: they are gathered there); rows of
  repeated paths are taken from the one computed row.
- **The model once per worker.** The fitted estimator is scattered to every worker (or,
  without a distributed client, put in the graph as one task), instead of once per task,
  and a worker that dies leaves copies for the retries of its tasks. Dask's Active Memory
  Manager drops the copies that no task waits for yet, and a worker that needs one later
  fetches it again: each process keeps the models it loaded last (two), so it takes
  its own copy rather than loading the model a second time. The model travels as data
  (see the serving guide), and a ``device="auto"`` estimator loads on the worker's own
  best device.
- **Messages name the input.** A file that a worker cannot read is named by its index in
  ``X`` and its path, with the worker's address.

The per-image cache works across workers when its folder is one that every worker sees
at the same path (a local folder for workers of one machine, shared storage otherwise):
its lock makes workers that compute the same row wait for each other.
"""

from __future__ import annotations

import copy
import os
import pickle
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._images import FileSource, check_not_single
from ._options import CHUNK_SIZE

_PROBE = np.zeros((1, 32, 32, 3), dtype=np.uint8)


def dask_transform(estimator, X, *, method="transform", chunk_size=CHUNK_SIZE):
    """Apply a fitted estimator to image files on Dask: a lazy dask array.

    Parameters
    ----------
    estimator : fitted estimator
        A [`PretrainedFeatureExtractor`][sktransfer.PretrainedFeatureExtractor], a fine-tuner, or a
        fitted ``Pipeline`` that starts with one. Sent to each worker once.
    X : list, ndarray, pandas or dask collection of file paths
        A 1-D dask array, a dask (or pandas) Series or one-column DataFrame of paths, or
        any sequence of them (a single path raises: wrap it in a list). The paths are
        gathered on the client to be deduplicated; the files are read on the workers
        only, so they need not exist on the client.
    method : str, default="transform"
        The method to apply: ``"transform"``, ``"predict"``, ``"predict_proba"``, ...
    chunk_size : int, default=256
        Distinct images per partition (per task).

    Returns
    -------
    result : dask.array.Array or list of dask.array.Array
        One row per path of ``X``, in order, computed when asked (``.compute()``,
        ``.to_zarr(...)``, ``dask.array.store``). Without a distributed client it
        runs on Dask's local scheduler. Where the eager method returns a list of arrays
        (``predict_proba`` of a classifier with several label columns: one array per
        column), a list of dask arrays, one per element, each with one row per path;
        compute them together (``dask.compute(*result)``) so that each partition runs
        once for all of them.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from sktransfer import PretrainedFeatureExtractor, dask_transform
    >>> folder, paths = tempfile.mkdtemp(), []
    >>> for i in range(3):
    ...     paths.append(os.path.join(folder, f"image_{i}.png"))
    ...     Image.new("RGB", (32, 32), (80 * i, 0, 0)).save(paths[-1])
    >>> extractor = PretrainedFeatureExtractor("test_efficientnet", weights=None).fit()
    >>> embeddings = dask_transform(extractor, paths + paths[:1], chunk_size=2)
    >>> embeddings.shape, embeddings.chunks[0]
    ((4, 256), (2, 2))
    >>> np.allclose(embeddings.compute(), extractor.transform(paths + paths[:1]), atol=1e-6)
    True
    """
    _dask_array()  # without dask, say so before any work
    check_is_fitted(estimator)
    if not hasattr(estimator, method):
        raise AttributeError(
            f"{type(estimator).__name__} has no method {method!r}: pass method='transform', "
            "'predict', 'predict_proba' or another method it has."
        )
    if not isinstance(chunk_size, Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is not valid: expected an int >= 1.")
    paths = paths_of(X)
    distinct, first, inverse = _deduplicate(paths)
    meta = output_meta(estimator, method)
    sizes, model = _chunk_sizes(len(distinct), int(chunk_size)), _shipped(estimator)
    if isinstance(meta, list):  # one lazy array per element of the list
        parts = _lazy_parts(distinct, first, sizes, model, method, meta)
    else:
        parts = [_lazy_array(distinct, first, sizes, model, method, meta)]
    if len(distinct) != len(paths):
        parts = [part[inverse].rechunk({0: int(chunk_size)}) for part in parts]
    return parts if isinstance(meta, list) else parts[0]


def paths_of(X) -> np.ndarray:
    """The paths of ``X`` as a 1-D object array of str (dask collections computed)."""
    check_not_single(X)  # a string would be taken as its characters
    if hasattr(X, "__dask_graph__"):
        X = X.compute()
    if hasattr(X, "columns"):  # a one-column DataFrame
        if len(X.columns) != 1:
            raise ValueError(
                f"Expected a one-column DataFrame of file paths, got columns {list(X.columns)}."
                " Select the column of paths: X['path']."
            )
        X = X.iloc[:, 0]
    if isinstance(X, np.ndarray) and X.ndim != 1:
        raise ValueError(f"Expected a 1-D collection of file paths, got shape {X.shape}.")
    values = list(X)
    if len(values) == 0:
        raise ValueError("Expected at least one image path, got none.")
    for i, path in enumerate(values):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"Image {i} is a {type(path).__name__}, not a file path: dask_transform "
                "reads images on the workers, from paths (str or path-like). Save "
                "in-memory images to files, or call the estimator directly."
            )
    return np.array([os.fspath(p) for p in values], dtype=object)


def output_meta(estimator, method: str) -> np.ndarray | list[np.ndarray]:
    """An empty array of the shape (past the first axis) and dtype that ``method``
    gives, or a list of them where it gives a list of arrays (one per label column),
    from a run on one blank image by a copy of ``estimator`` without its cache (the
    client may not see the cache folder, and the blank image is not worth a row)."""
    probe = copy.deepcopy(estimator)
    caches = [k for k in probe.get_params(deep=True) if k.rsplit("__", 1)[-1] == "memory"]
    probe.set_params(**dict.fromkeys(caches))
    out = getattr(probe, method)(_PROBE)
    if isinstance(out, list | tuple):
        return [_empty_like_rows(np.asarray(part)) for part in out]
    return _empty_like_rows(np.asarray(out))


def _empty_like_rows(out: np.ndarray) -> np.ndarray:
    return np.empty((0, *out.shape[1:]), dtype=out.dtype)


def iter_blocks(array, client, window: int | None = None) -> Iterator[np.ndarray]:
    """The blocks of a 1- or 2-D dask ``array`` along its first axis, in order, as
    numpy arrays: at most ``window`` blocks at once in flight on the distributed
    ``client`` (default: twice its worker threads), so results stream and memory stays
    bounded."""
    blocks = [array.blocks[i] for i in range(array.numblocks[0])]
    window = window or 2 * max(1, sum(client.nthreads().values()))
    futures = client.compute(blocks[:window])
    for i in range(len(blocks)):
        if i + window < len(blocks):
            futures.append(client.compute(blocks[i + window]))
        yield futures[i].result()
        futures[i] = None  # release it on the worker


def connect(address: str, timeout: float = 10.0):
    """A ``distributed.Client`` of the scheduler at ``address``, or a
    ``ConnectionError`` that says how to start one after ``timeout`` seconds."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise ImportError(
            "Running on a Dask cluster needs dask.distributed: pip install 'sktransfer[dask]'."
        ) from exc
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"No Dask scheduler answered at {address!r} within {timeout:g} s ({exc}). "
            "Start one with `dask scheduler` (it prints its address, tcp://HOST:8786) and "
            "workers with `dask worker tcp://HOST:8786`, or leave the scheduler out to "
            "run in this process."
        ) from exc


# ---------------------------------------------------------------------- on the workers


def _apply_block(paths: np.ndarray, numbers: np.ndarray, *, model, method: str):
    """``method`` of the estimator of ``model`` (a ``_Model``) on the files ``paths``
    (``numbers``: their indices in the user's input, for messages). Runs on a worker."""
    return np.asarray(_run(paths, numbers, model, method))


def _apply_block_parts(paths: np.ndarray, numbers: np.ndarray, *, model, method: str):
    """``_apply_block`` for a method that gives a list of arrays: a tuple of them,
    each checked to hold one row per image."""
    parts = tuple(np.asarray(part) for part in _run(paths, numbers, model, method))
    for t, part in enumerate(parts):
        if part.ndim == 0 or len(part) != len(paths):
            name = type(model.estimator).__name__
            raise ValueError(
                f"{name}.{method} gave {part.shape} for element {t} of its list on "
                f"{len(paths)} images: dask_transform needs one row per image."
            )
    return parts


def _run(paths: np.ndarray, numbers: np.ndarray, model, method: str):
    source = FileSource(list(paths), numbers=numbers)
    try:
        source.check_exist()
    except ValueError as exc:  # the type that a local transform raises
        raise ValueError(
            f"{exc} (on Dask worker {_worker_address()}). Every worker reads the images at "
            "the paths given: put them on storage that all workers mount at the same path."
        ) from exc
    return getattr(model.estimator, method)(source)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "(local scheduler)"


# ---------------------------------------------------------------------- on the client


def _deduplicate(paths: np.ndarray):
    """The distinct paths in order of first appearance, the indices of those first
    appearances, and for each path the position of its distinct path."""
    _, first, inverse = np.unique(paths.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return paths[first[order]], first[order], rank[inverse.ravel()]


def _lazy_array(distinct, first, sizes, model, method: str, meta: np.ndarray):
    """What ``method`` gives for the ``distinct`` paths, partition by partition."""
    da = _dask_array()
    chunks = (tuple(sizes),)
    return da.map_blocks(
        _apply_block,
        da.from_array(distinct, chunks=chunks),
        da.from_array(first, chunks=chunks),
        model=model,
        method=method,
        dtype=meta.dtype,
        chunks=chunks + tuple((n,) for n in meta.shape[1:]),
        new_axis=list(range(1, meta.ndim)) or None,
        meta=meta,
    )


def _lazy_parts(distinct, first, sizes, model, method: str, metas: list[np.ndarray]):
    """One lazy array per element of the list that ``method`` gives: each partition
    runs once, and each array takes its element (rows in order, own shape and dtype)."""
    import dask

    da = _dask_array()
    apply = dask.delayed(_apply_block_parts, nout=len(metas))
    columns, start = [[] for _ in metas], 0
    for n in sizes:
        block = apply(
            distinct[start : start + n], first[start : start + n], model=model, method=method
        )
        for column, part, meta in zip(columns, block, metas, strict=True):
            column.append(da.from_delayed(part, (n, *meta.shape[1:]), meta=meta))
        start += n
    return [da.concatenate(column) for column in columns]


def _chunk_sizes(n: int, chunk_size: int) -> list[int]:
    sizes = [chunk_size] * (n // chunk_size)
    return sizes + [n % chunk_size] if n % chunk_size else sizes


def _shipped(estimator):
    """``estimator`` as something a dask graph can depend on, sent once per worker."""
    model = _Model(estimator, uuid.uuid4().hex)
    client = _client()
    if client is not None:
        # on every worker: one that dies leaves copies for its tasks' retries
        return client.scatter(model, hash=False, broadcast=True)
    import dask

    return dask.delayed(model, name=f"sktransfer-model-{model.token}", traverse=False)


class _Model:
    """A fitted estimator as the tasks of one ``dask_transform`` receive it. Pickled, it
    travels as its token and the estimator's bytes; unpickled in a process that already
    holds the estimator of that token, it is that estimator again, not a second load."""

    def __init__(self, estimator, token: str):
        self.estimator, self.token = estimator, token

    def __reduce__(self):
        import cloudpickle  # a dependency of dask, as pickle with dask's reach

        return _arrived, (self.token, cloudpickle.dumps(self.estimator))


_KEPT = 2  # the models that a process keeps after its tasks end, the last received
_received: OrderedDict[str, object] = OrderedDict()
_receiving = threading.Lock()


def _arrived(token: str, payload: bytes) -> _Model:
    """The ``_Model`` of ``token`` in this process: loaded from ``payload`` only when
    this process does not hold it already."""
    with _receiving:
        estimator = _received.pop(token, None)
        if estimator is None:
            estimator = pickle.loads(payload)
        _received[token] = estimator
        while len(_received) > _KEPT:
            _received.popitem(last=False)
    return _Model(estimator, token)


def _client():
    """The current distributed client, or None (none running, or no distributed)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _dask_array():
    try:
        import dask.array as da
    except ImportError as exc:
        raise ImportError(
            "dask_transform needs dask: pip install 'sktransfer[dask]' (dask[array] and "
            "distributed)."
        ) from exc
    return da

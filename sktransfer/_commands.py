"""The work of the ``sktransfer`` sub-commands: list the images, load or fit the model, run
it chunk by chunk, write the output (see :mod:`sktransfer._cli` for the parser).

The command line imports this module (and with it torch, timm and scikit-learn) only
once the options are parsed, so that ``--help`` and mistakes in the options answer at
once.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._classifier import FineTunedClassifier
from ._distributed import connect, dask_transform, iter_blocks
from ._features import PretrainedFeatureExtractor
from ._images import FileSource
from ._regressor import FineTunedRegressor
from .datasets import NoImagesError, load_image_folder

EMBEDDING_FORMATS = (".npy", ".parquet")
PREDICTION_FORMATS = (".csv",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
MODEL_SUFFIXES = (".skops", *PICKLE_SUFFIXES)
IMAGE_ESTIMATORS = (PretrainedFeatureExtractor, FineTunedClassifier, FineTunedRegressor)


class UsageError(ValueError):
    """A command line that cannot run as given (exit status 2)."""


# ---------------------------------------------------------------------- embed


def run_embed(args) -> int:
    """``sktransfer embed``: check the output, list the images, fit, embed, write."""
    started = time.perf_counter()
    out = _output_path(args.out, EMBEDDING_FORMATS)
    root, paths = _list_images(args.root, args.extensions)
    extractor = PretrainedFeatureExtractor(**_extractor_params(args)).fit()
    names = [str(name) for name in extractor.get_feature_names_out()]
    opener = _NpyRows if out.suffix.lower() == ".npy" else _ParquetRows
    with _scheduler(args) as client:
        blocks = _blocks(extractor, paths, ("transform",), args.chunk_size, client)
        with _replacing(out, lambda tmp: opener(tmp, len(paths), names)) as rows:
            _write_all(rows, blocks, _relative(paths, root), args, "embedding")
    seconds = time.perf_counter() - started
    print(
        f"Embedded {len(paths)} images ({len(names)} features each) into {out} in {seconds:.1f} s."
    )
    return 0


def _extractor_params(args) -> dict:
    return {
        "model": args.model,
        "weights": args.weights,
        "layer": args.layer,
        "pooling": args.pooling,
        "image_size": args.image_size,
        "preprocessing": args.preprocessing,
        "batch_size": args.batch_size,
        "device": args.device,
        "memory": args.cache,
    }


# ---------------------------------------------------------------------- predict


def run_predict(args) -> int:
    """``sktransfer predict``: check the output, list the images, load, predict, write."""
    started = time.perf_counter()
    out = _output_path(args.out, PREDICTION_FORMATS)
    _check_model_suffix(args.model_file)
    root, paths = _list_images(args.root, args.extensions)
    model = _load_model(args.model_file)
    _check_predicts(model, args.model_file)
    _check_reads_images(model, args.model_file)
    _override(model, args.batch_size, args.device)
    classes = _proba_classes(model)
    methods = ("predict",) if classes is None else ("predict", "predict_proba")
    if classes is not None and _labels_are_argmax(model):
        methods = ("predict_proba",)  # one pass: predict is argmax of these, exactly
    with _scheduler(args) as client:
        blocks = _blocks(model, paths, methods, args.chunk_size, client)
        if methods == ("predict_proba",):
            blocks = ((classes[np.argmax(p, axis=1)], p) for (p,) in blocks)
        with _replacing(out, lambda tmp: _CsvRows(tmp, classes, _task_names(model))) as rows:
            _write_all(rows, blocks, _relative(paths, root), args, "predicting")
    seconds = time.perf_counter() - started
    print(f"Predicted {len(paths)} images into {out} in {seconds:.1f} s.")
    return 0


def _check_model_suffix(path: str) -> None:
    if Path(path).suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(
            f"Cannot tell the format of the model file {path!r}: expected a name ending in "
            f"{', '.join(MODEL_SUFFIXES)} (skops.io.dump, pickle or joblib.dump)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The model file {path} does not exist or is not a file.")


def _load_model(path: str):
    try:
        return _read_model_file(path)
    except (ImportError, OSError, UsageError):
        raise
    except Exception as exc:  # what a file that is no model raises depends on its bytes
        raise UsageError(
            f"Cannot load the model file {path} ({type(exc).__name__}: {exc}). Expected a "
            "fitted model saved with skops.io.dump (.skops) or joblib.dump / pickle.dump."
        ) from exc


def _read_model_file(path: str):
    if Path(path).suffix.lower() != ".skops":
        import joblib  # a dependency; loads plain pickles too

        return joblib.load(path)
    sio = _skops_io()
    untrusted = sio.get_untrusted_types(file=path)
    others = [name for name in untrusted if not _is_ours(name)]
    if others:
        raise UsageError(
            f"The skops file {path} names types that are neither sktransfer's nor trusted "
            f"by skops: {', '.join(others)}. The command line does not load them; check "
            "them, then load the file in Python: skops.io.load(path, trusted=[...])."
        )
    return sio.load(path, trusted=untrusted)


def _is_ours(type_name: str) -> bool:
    return type_name.split(".", 1)[0] == "sktransfer"


def _skops_io():
    try:
        import skops.io
    except ImportError as exc:
        raise ImportError(
            "Loading a .skops model needs skops: pip install 'sktransfer[skops]'."
        ) from exc
    return skops.io


def _check_predicts(model, path: str) -> None:
    if not hasattr(model, "predict"):
        raise UsageError(
            f"The model in {path} is a {type(model).__name__}, which has no predict method. "
            "For a PretrainedFeatureExtractor, use `sktransfer embed`; otherwise save a "
            "fitted classifier, regressor or Pipeline that ends with one."
        )


def _check_reads_images(model, path: str) -> None:
    if not _reads_images(model):
        raise UsageError(
            f"The model in {path} is a {type(model).__name__}, which does not read images: "
            "`sktransfer predict` expects a fitted sktransfer estimator (FineTunedClassifier, "
            "FineTunedRegressor) or a Pipeline whose first step is one (such as a "
            "PretrainedFeatureExtractor followed by a classifier). Save the whole fitted "
            "pipeline, not only its last step."
        )


def _reads_images(model) -> bool:
    """Whether ``model`` takes images: an sktransfer estimator, a Pipeline whose first
    step does, or a fitted search whose best estimator does."""
    if isinstance(model, IMAGE_ESTIMATORS):
        return True
    steps = getattr(model, "steps", None)
    if isinstance(steps, list) and steps:
        return _reads_images(steps[0][1])
    best = getattr(model, "best_estimator_", None)
    return best is not None and _reads_images(best)


def _task_names(model) -> list[str] | None:
    """The names of the label columns that ``model`` (or a Pipeline's last step) keeps
    from the DataFrame ``y`` it was fitted on (``task_names_``), or None."""
    steps = getattr(model, "steps", None)
    final = steps[-1][1] if isinstance(steps, list) and steps else model
    names = getattr(final, "task_names_", None)
    return None if names is None else [str(name) for name in names]


def _override(model, batch_size, device) -> None:
    """Set ``batch_size`` and ``device`` (when given) on the sktransfer estimators of
    ``model`` (itself, or the steps of a Pipeline), moving fitted ones to ``device``."""
    options = {"batch_size": batch_size, "device": device}
    given = {name: value for name, value in options.items() if value is not None}
    if not given:
        return
    estimators = _sktransfer_estimators(model)
    if not estimators:
        raise UsageError(
            f"--batch-size and --device apply to sktransfer estimators, and this "
            f"{type(model).__name__} holds none: leave them out."
        )
    for estimator in estimators:
        estimator.set_params(**given)
        if "device" in given and hasattr(estimator, "backbone_"):
            estimator.to_device(given["device"])  # a ValueError when this machine lacks it


def _sktransfer_estimators(model) -> list:
    candidates = [model, *model.get_params(deep=True).values()]
    found = {id(c): c for c in candidates if type(c).__module__.split(".")[0] == "sktransfer"}
    return list(found.values())


def _labels_are_argmax(model) -> bool:
    """Whether ``model.predict`` is exactly the class of highest ``predict_proba``: a
    single-label fine-tuned classifier."""
    return isinstance(model, FineTunedClassifier) and not (model.multitask_ or model.multilabel_)


def _proba_classes(model):
    """The classes of ``model``'s ``predict_proba`` columns, or None (no such method, or
    several label columns)."""
    if not hasattr(model, "predict_proba"):
        return None
    classes = getattr(model, "classes_", None)
    return classes if isinstance(classes, np.ndarray) and classes.ndim == 1 else None


# ---------------------------------------------------------------------- inputs


def _output_path(out: str, formats: tuple[str, ...]) -> Path:
    """``out`` as an absolute path, after checking its format and folder."""
    path = Path(out).expanduser().absolute()
    if path.suffix.lower() not in formats:
        raise UsageError(
            f"--out {out!r}: cannot write {path.suffix or 'a file without a suffix'}; "
            f"the supported formats are {', '.join(formats)}. Name the output accordingly."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"--out {out!r}: the folder {path.parent} does not exist. Create it first "
            f"(mkdir -p {path.parent}) or write elsewhere."
        )
    if path.is_dir():
        raise IsADirectoryError(f"--out {out!r} is a folder: pass the path of a file in it.")
    if path.suffix.lower() == ".parquet":
        _pyarrow()  # a missing extra shows before anything runs
    return path


def _list_images(root: str, extensions: tuple[str, ...]) -> tuple[str, list[str]]:
    try:
        paths = load_image_folder(root, labelled=False, extensions=extensions).paths.tolist()
    except NoImagesError as exc:  # the command line names its flag, not the parameter
        option = "--extensions (such as --extensions .tif,.bmp)"
        raise NoImagesError(exc.root, exc.extensions, exc.others, option) from None
    return os.path.abspath(root), paths


def _relative(paths, root: str) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


# ---------------------------------------------------------------------- running


@contextlib.contextmanager
def _scheduler(args):
    """A Dask client for ``--dask-scheduler`` while the job runs (nothing without it)."""
    if args.dask_scheduler is None:
        yield None
        return
    with connect(args.dask_scheduler, timeout=args.dask_timeout) as client:
        yield client


def _blocks(model, paths: list[str], methods: tuple[str, ...], chunk_size: int, client):
    """For each chunk of ``paths`` in order, a tuple: what each of ``methods`` gives; on
    the Dask ``client``'s cluster, or in this process when it is None."""
    if client is not None:
        arrays = [dask_transform(model, paths, method=m, chunk_size=chunk_size) for m in methods]
        yield from zip(*(iter_blocks(a, client) for a in arrays), strict=True)
        return
    for start in range(0, len(paths), chunk_size):
        stop = min(start + chunk_size, len(paths))
        # numbered as in the whole folder, so that errors name the image's index there
        source = FileSource(paths[start:stop], numbers=range(start, stop))
        yield tuple(np.asarray(getattr(model, m)(source)) for m in methods)


def _write_all(rows, blocks, names: list[str], args, desc: str) -> None:
    done = 0
    with tqdm(total=len(names), unit="image", desc=desc, disable=args.no_progress) as bar:
        for outputs in blocks:
            n = len(outputs[0])
            rows.write(names[done : done + n], *outputs)
            done += n
            bar.update(n)


@contextlib.contextmanager
def _replacing(target: Path, open_rows):
    """The rows opened by ``open_rows`` on a temporary file next to ``target``, renamed
    to ``target`` when the block ends without an error, removed otherwise."""
    # created by the writer, so with the permissions any new file gets (mkstemp's are 0600)
    tmp = str(target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        rows = open_rows(tmp)
        try:
            yield rows
        finally:
            rows.close()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------- output files


class _NpyRows:
    """The float32 matrix of a ``.npy`` file: its header, then each block's rows as
    they come (in order), written straight to the file."""

    def __init__(self, path: str, n_rows: int, names: list[str]):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close)
        header = {"descr": "<f4", "fortran_order": False, "shape": (n_rows, len(names))}
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, paths: list[str], block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())

    def close(self) -> None:
        self.file.close()


class _ParquetRows:
    """A Parquet table: ``path``, then one float32 column per feature; one row group
    per block."""

    def __init__(self, path: str, n_rows: int, names: list[str]):
        pa, pq = _pyarrow()
        self.pa = pa
        self.schema = pa.schema([("path", pa.string())] + [(n, pa.float32()) for n in names])
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, paths: list[str], block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        columns = [self.pa.array(paths, self.pa.string())]
        columns += [self.pa.array(column) for column in np.ascontiguousarray(block.T)]
        table = self.pa.Table.from_arrays(columns, schema=self.schema)
        self.writer.write_table(table, row_group_size=len(paths))

    def close(self) -> None:
        self.writer.close()


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(
            "Writing .parquet needs pyarrow: pip install 'sktransfer[parquet]', or write "
            ".npy instead."
        ) from exc
    return pyarrow, pyarrow.parquet


class _CsvRows:
    """Predictions as CSV: ``path``, ``prediction`` (for 2-D ones, the ``task_names``
    when given and distinct, else ``prediction_<j>``), then ``proba_<class>`` per class;
    the header is written with the first block."""

    def __init__(self, path: str, classes, task_names=None):
        self.file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.csv = csv.writer(self.file)
        self.classes = classes
        self.task_names = task_names
        self.header = None

    def write(self, paths: list[str], predictions: np.ndarray, proba=None) -> None:
        if self.header is None:
            self.header = self._header(predictions)
            self.csv.writerow(self.header)
        columns = [predictions.reshape(len(paths), -1)]
        if proba is not None:
            columns.append(np.asarray(proba))
        for path, *cells in zip(paths, *(c.tolist() for c in columns), strict=True):
            self.csv.writerow([path, *(v for cell in cells for v in cell)])

    def _header(self, predictions: np.ndarray) -> list[str]:
        if predictions.ndim == 1:
            names = ["prediction"]
        else:
            names = [f"prediction_{j}" for j in range(predictions.shape[1])]
        probas = [] if self.classes is None else [f"proba_{c}" for c in self.classes]
        tasks = self.task_names
        if predictions.ndim == 2 and tasks is not None and len(tasks) == len(names):
            others = ["path", *probas]
            if len(set(tasks)) == len(tasks) and not set(tasks) & set(others):
                names = tasks  # a column named "path" would make the file ambiguous
        return ["path", *names, *probas]

    def close(self) -> None:
        self.file.close()

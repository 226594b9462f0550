"""The work of the ``sktransfer`` sub-commands: list the images, load or fit the model, run
it chunk by chunk, write the output (see ``sktransfer._cli`` for the parser).

The command line imports this module (and with it torch, timm and scikit-learn) only
once the options are parsed, so that ``--help`` and mistakes in the options answer at
once.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from . import _cam
from ._backbone import imagenet_label_names
from ._classifier import FineTunedClassifier
from ._distributed import connect, dask_transform, iter_blocks
from ._features import PretrainedFeatureExtractor, top_imagenet_labels
from ._images import FileSource, UnreadableImageError
from ._progress import image_bar, watching
from ._regressor import FineTunedRegressor
from ._serving import ServedClassifier, ServedEstimator
from .datasets import NoImagesError, load_image_folder

EMBEDDING_FORMATS = (".npy", ".parquet")
TOP_K_FORMATS = (".csv", ".parquet")
PREDICTION_FORMATS = (".csv",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
MODEL_SUFFIXES = (".skops", *PICKLE_SUFFIXES)
IMAGE_ESTIMATORS = (
    PretrainedFeatureExtractor,
    FineTunedClassifier,
    FineTunedRegressor,
    ServedEstimator,
)
INDEX_COLUMNS = ["path", "overlay", "target", "score"]


class UsageError(ValueError):
    """A command line that cannot run as given (exit status 2)."""


# ---------------------------------------------------------------------- embed


def run_embed(args) -> int:
    """``sktransfer embed``: check the output, list the images, fit, embed, write."""
    started = time.perf_counter()
    if args.top_k is None:
        out = _output_path(args.out, EMBEDDING_FORMATS)
    else:
        out = _output_path(args.out, TOP_K_FORMATS, " with --top-k")
    suffix = out.suffix.lower()
    root, paths = _list_images(args.root, args.extensions)
    if suffix == ".npy":
        _check_one_a_line(paths)
    extractor = PretrainedFeatureExtractor(**_extractor_params(args)).fit()
    if args.top_k is not None:
        _check_imagenet_scores(extractor, args.model)
    columns = _column_names(extractor)
    skipped = _run_job(
        args,
        extractor,
        ("transform",),
        paths,
        root,
        out=out,
        sidecars=[_sidecar(out, ".paths.txt")] if suffix == ".npy" else [],
        open_rows=functools.partial(_embedding_rows, suffix, columns, args.top_k),
    )
    seconds = time.perf_counter() - started
    each = f"{len(columns)} features" if args.top_k is None else f"top {args.top_k} labels"
    print(
        f"Embedded {len(paths) - len(skipped or ())} images ({each} each) into {out} in "
        f"{seconds:.1f} s{_skipped_note(skipped, _sidecar(out, '.skipped.csv'))}."
    )
    return 0


def _embedding_rows(suffix: str, columns: list[str], top_k, *files: str):
    """The writer of an output of ``suffix`` on the temporary ``files`` (with the
    ``.paths.txt`` beside a ``.npy``): the ``top_k`` labels, or the ``columns``."""
    if top_k is not None:
        return _TopLabelRows(*files, top_k, suffix)
    if suffix == ".npy":
        return _NpyRows(*files, columns)
    return _ParquetRows(*files, columns)


def _column_names(extractor) -> list[str]:
    """The names of the output columns: for the logits of a model with 1000 outputs, the
    ImageNet-1k classes (a name that two classes share gets the class index: ``crane
    (134)``); else the extractor's feature names."""
    if extractor.layer_ != "logits" or extractor.n_features_out_ != 1000:
        return [str(name) for name in extractor.get_feature_names_out()]
    names = imagenet_label_names()
    shared = {name for name, count in Counter(names).items() if count > 1}
    return [f"{name} ({j})" if name in shared else name for j, name in enumerate(names)]


def _check_imagenet_scores(extractor, model: str) -> None:
    n = extractor.n_features_out_
    if n != 1000:
        raise UsageError(
            f"--top-k names ImageNet-1k classes, and {model} gives {n} class scores, not "
            "1000. Pick a model with an ImageNet-1k head (such as efficientnet_b0.ra_in1k), "
            f"or leave out --top-k to write its {n} scores."
        )


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
        "verbose": False,  # the command line shows one bar for the whole job
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
    task_names = _task_names(model)

    def open_rows(tmp):
        rows = _CsvRows(tmp, classes, task_names)
        return _ArgmaxRows(rows, classes) if methods == ("predict_proba",) else rows

    skipped = _run_job(args, model, methods, paths, root, out=out, open_rows=open_rows)
    seconds = time.perf_counter() - started
    print(
        f"Predicted {len(paths) - len(skipped or ())} images into {out} in {seconds:.1f} s"
        f"{_skipped_note(skipped, _sidecar(out, '.skipped.csv'))}."
    )
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


def _is_ours(name: str) -> bool:
    """Whether the dotted ``name`` (of a type, or a module) is sktransfer's."""
    return name.split(".", 1)[0] == "sktransfer"


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
    ``model``, moving fitted ones to ``device``, and ``verbose=False`` (the command line
    shows one bar for the whole job)."""
    options = {"batch_size": batch_size, "device": device}
    given = {name: value for name, value in options.items() if value is not None}
    estimators = _sktransfer_estimators(model)
    if given and not estimators:
        raise UsageError(
            f"--batch-size and --device apply to sktransfer estimators, and this "
            f"{type(model).__name__} holds none: leave them out."
        )
    served = [e for e in estimators if isinstance(e, ServedEstimator)]
    if "device" in given and served:
        raise UsageError(
            f"--device does not apply to a {type(served[0]).__name__}, which runs on the CPU "
            "with ONNX Runtime: leave it out."
        )
    for estimator in estimators:
        estimator.set_params(verbose=False, **given)
        if "device" in given and hasattr(estimator, "backbone_"):
            estimator.to_device(given["device"])  # a ValueError when this machine lacks it


def _sktransfer_estimators(model) -> list:
    """The sktransfer estimators in ``model``: itself, its parameters (the steps of a
    Pipeline), and those of a fitted search's ``best_estimator_``, which predicts."""
    candidates = [model, *model.get_params(deep=True).values()]
    best = getattr(model, "best_estimator_", None)
    if best is not None:
        candidates += _sktransfer_estimators(best)
    found = {id(c): c for c in candidates if _is_ours(type(c).__module__)}
    return list(found.values())


def _labels_are_argmax(model) -> bool:
    """Whether ``model.predict`` is exactly the class of highest ``predict_proba``: a
    single-label fine-tuned classifier."""
    classifiers = (FineTunedClassifier, ServedClassifier)
    return isinstance(model, classifiers) and not (model.multitask_ or model.multilabel_)


def _proba_classes(model):
    """The classes of ``model``'s ``predict_proba`` columns, or None (no such method, or
    several label columns)."""
    if not hasattr(model, "predict_proba"):
        return None
    classes = getattr(model, "classes_", None)
    return classes if isinstance(classes, np.ndarray) and classes.ndim == 1 else None


# ---------------------------------------------------------------------- explain


def run_explain(args) -> int:
    """``sktransfer explain``: list the images, check the output folder, load, explain
    chunk by chunk, write an overlay per image, then the index."""
    started = time.perf_counter()
    _check_model_suffix(args.model_file)
    root, paths = _list_images(args.root, args.extensions)
    folder = _output_folder(args.out, root)
    _cam.import_grad_cam()  # a missing extra shows before the model loads
    model = _load_model(args.model_file)
    outputs = _explainable(model, args.model_file)
    target = _target(args.target, outputs, args.model_file)
    _override(model, args.batch_size, args.device)
    explainer = _cam.Explainer(model, method=args.method, layer=args.layer)  # once, not per chunk
    skipped = _explain_job(args, explainer, target, paths, root, folder)
    seconds = time.perf_counter() - started
    print(
        f"Explained {len(paths) - len(skipped or ())} images ({args.method}) into {folder} "
        f"in {seconds:.1f} s{_skipped_note(skipped, folder / 'skipped.csv')}."
    )
    return 0


def _output_folder(out: str, root: str) -> Path:
    """``--out`` as an absolute path, after checking that it can be a folder of
    overlays: not a file, its parent existing, outside ``root``."""
    folder = Path(os.path.abspath(os.path.expanduser(out)))
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"--out {out!r} is a file: pass a folder (it is created if missing)."
        )
    if not folder.parent.is_dir():
        raise FileNotFoundError(
            f"--out {out!r}: the folder {folder.parent} does not exist. Create it first "
            f"(mkdir -p {folder.parent}) or write elsewhere."
        )
    real, real_root = Path(os.path.realpath(folder)), Path(os.path.realpath(root))
    if real == real_root or real_root in real.parents:
        raise UsageError(
            f"--out {out!r} lies inside ROOT ({root}), so a later run would list the "
            "overlays as images. Write them to a folder outside ROOT."
        )
    return folder


def _explainable(model, path: str):
    """The outputs of the network that explains ``model`` (``sktransfer._cam.Outputs``);
    a ``UsageError`` for a model that cannot be explained."""
    try:
        explained = _cam.network_of(model)
    except TypeError as exc:
        raise UsageError(f"Cannot explain the model in {path}: {exc}") from exc
    n_tasks = len(explained.outputs.labels)
    if n_tasks > 1:
        raise UsageError(
            f"The model in {path} predicts {n_tasks} label columns, and `sktransfer "
            "explain` explains one class: in Python, pass target=(task, label) to "
            "sktransfer.inspection.class_activation_maps."
        )
    return explained.outputs


def _target(text: str | None, outputs, path: str):
    """The label of ``outputs`` (``sktransfer._cam.Outputs``) that ``--target`` names, as
    the model's own value; None (the predicted class) without ``--target``."""
    try:
        if text is None:
            outputs.check_predicted()
            return None
        return outputs.label_named(text)
    except ValueError as exc:
        raise UsageError(f"{exc} Model: {path}.") from exc


def _explain_job(args, explainer, target, paths, root, folder: Path):
    """Explain the images ``paths`` (under ``root``) a batch at a time: each
    overlay into a staging folder inside ``folder``, moved into place at the end, then
    ``index.csv`` (and with ``--skip-bad-images``, ``skipped.csv``) renamed into place
    last. Returns the skipped images as ``(position, error)`` pairs (None without
    ``--skip-bad-images``)."""
    names = _relative(paths, root)
    overlays = [f"{name}.png" for name in names]
    skipped = [] if args.skip_bad_images else None
    report = folder / "skipped.csv"
    sidecars = [report] if skipped is not None else []
    compute = functools.partial(explainer.explain, target=target, images=True)
    chunks = _local_chunks(compute, paths, explainer.batch_size, skipped)
    shown = not args.no_progress and watching()
    with (
        _created(folder),
        _replacing(folder / "index.csv", *sidecars) as tmps,
        _staged(folder) as stage,
        image_bar(len(paths), "explaining", enabled=shown) as bar,
    ):
        with contextlib.closing(_CsvTable(tmps[0], INDEX_COLUMNS)) as index:
            for span, kept, result in chunks:
                if result is not None:
                    _write_overlays(stage, [overlays[i] for i in kept], result, args.alpha)
                    index.write(
                        [
                            [names[i] for i in kept],
                            [overlays[i] for i in kept],
                            result.targets,
                            result.scores.tolist(),
                        ]
                    )
                bar.update(len(span))
        if skipped is not None:
            _list_skipped(skipped, paths, root, names, tmps[-1])
    if skipped is None:
        _forget(report)
    return skipped


def _write_overlays(stage: Path, names: list[str], explanation, alpha: float) -> None:
    """Each map of ``explanation`` over its image, as a PNG at ``stage / name``."""
    for name, image, cam in zip(names, explanation.images, explanation.maps, strict=True):
        path = stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_cam.overlay(image, cam, alpha=alpha)).save(path, format="PNG")


@contextlib.contextmanager
def _created(folder: Path):
    """``folder``, made when missing, and removed again (when empty) if the block that
    made it fails."""
    made = not folder.exists()
    folder.mkdir(exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def _staged(folder: Path):
    """A hidden temporary folder inside ``folder`` whose files move to the same paths in
    ``folder`` (replacing earlier ones) when the block ends without an error; it is
    removed in any case."""
    stage = folder / f".explain.{uuid.uuid4().hex[:12]}.tmp"
    stage.mkdir()
    try:
        yield stage
        for file in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = folder / file.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------- inputs


def _output_path(out: str, formats: tuple[str, ...], when: str = "") -> Path:
    """``out`` as an absolute path, after checking its format (the ``formats`` supported
    ``when``) and folder."""
    path = Path(out).expanduser().absolute()
    if path.suffix.lower() not in formats:
        raise UsageError(
            f"--out {out!r}: cannot write {path.suffix or 'a file without a suffix'}; "
            f"the supported formats{when} are {', '.join(formats)}. Name the output "
            "accordingly."
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


def _check_one_a_line(paths: list[str]) -> None:
    """Refuse file names that would break the one-path-a-line ``.paths.txt``."""
    odd = next((p for p in paths if "\n" in p or "\r" in p), None)
    if odd is not None:
        raise UsageError(
            f"The image file name {odd!r} holds a line break, so FILE.paths.txt cannot "
            "list it one a line beside a .npy output. Write a .parquet output (its 'path' "
            "column holds any name), or rename the file."
        )


def _sidecar(out: Path, ending: str) -> Path:
    """The file beside ``out`` that ``ending`` names: ``e.npy`` -> ``e.paths.txt``."""
    return out.with_suffix(ending)


# ---------------------------------------------------------------------- running


def _run_job(args, model, methods, paths, root, *, out: Path, sidecars=(), open_rows):
    """Run ``methods`` of ``model`` on the images ``paths`` (under ``root``) chunk by
    chunk, into the rows that ``open_rows`` opens on temporary files for ``out`` and its
    ``sidecars``, renamed onto them at the end; with ``--skip-bad-images``, list the
    images that cannot be read in ``FILE.skipped.csv`` and return them as ``(position,
    error)`` pairs (else None)."""
    names = _relative(paths, root)
    desc = {"embed": "embedding", "predict": "predicting"}[args.command]
    skipped = [] if args.skip_bad_images else None
    report = _sidecar(out, ".skipped.csv")
    targets = [out, *sidecars, *([report] if skipped is not None else [])]
    with _scheduler(args) as client, _replacing(*targets) as tmps:
        blocks = _blocks(model, paths, methods, args.chunk_size, client, skipped)
        with contextlib.closing(open_rows(*tmps[: 1 + len(sidecars)])) as rows:
            _write_all(rows, blocks, names, args, desc)
        if skipped is not None:
            _list_skipped(skipped, paths, root, names, tmps[-1])
    if skipped is None:
        _forget(report)
    return skipped


def _list_skipped(skipped: list, paths: list[str], root: str, names: list[str], tmp) -> None:
    """Write the skipped images (``path,error``) to ``tmp``, after checking some are left."""
    _check_some_left(skipped, paths, root)
    with contextlib.closing(_CsvTable(tmp, ["path", "error"])) as listed:
        listed.write([[names[i] for i, _ in skipped], [e for _, e in skipped]])


def _forget(report: Path) -> None:
    """Remove an earlier run's list of skipped images: it would describe another output."""
    with contextlib.suppress(OSError):
        os.remove(report)


def _check_some_left(skipped: list, paths: list[str], root: str) -> None:
    if len(skipped) == len(paths):
        raise UsageError(
            f"None of the {len(paths)} images under {root} can be read, so nothing was "
            f"written. The first: {skipped[0][1]}"
        )


def _skipped_note(skipped, report: Path) -> str:
    """The end of the summary line for ``--skip-bad-images``: how many images were
    skipped, listed in ``report``."""
    if skipped is None:
        return ""
    images = "image" if len(skipped) == 1 else "images"
    return f"; skipped {len(skipped)} unreadable {images} (listed in {report})"


@contextlib.contextmanager
def _scheduler(args):
    """A Dask client for ``--dask-scheduler`` while the job runs (nothing without it)."""
    if args.dask_scheduler is None:
        yield None
        return
    with connect(args.dask_scheduler, timeout=args.dask_timeout) as client:
        yield client


def _blocks(model, paths: list[str], methods: tuple[str, ...], chunk_size: int, client, skipped):
    """For each chunk of ``paths`` in order: its positions in ``paths``, the positions of
    its rows, and a tuple of what each of ``methods`` gives for them (None when no row is
    left); on the Dask ``client``'s cluster, or in this process when it is None. With a
    list ``skipped``, the images that cannot be read are appended to it as ``(position,
    error)`` and have no row; without it, the first one raises."""
    if client is not None:
        arrays = [dask_transform(model, paths, method=m, chunk_size=chunk_size) for m in methods]
        start = 0
        for outputs in zip(*(iter_blocks(a, client) for a in arrays), strict=True):
            span = range(start, start + len(outputs[0]))
            yield span, span, outputs
            start = span.stop
        return
    compute = functools.partial(_call_methods, model, methods)
    yield from _local_chunks(compute, paths, chunk_size, skipped)


def _local_chunks(compute, paths: list[str], chunk_size: int, skipped):
    """For each chunk of ``paths`` in order, in this process: its positions in
    ``paths``, the positions of the images read, and what ``compute`` gives for them
    (``_run_chunk``; None when no image is left)."""
    for start in range(0, len(paths), chunk_size):
        span = range(start, min(start + chunk_size, len(paths)))
        kept = list(span)
        result = _run_chunk(compute, paths, kept, skipped)  # may shorten kept
        yield span, kept, result


def _call_methods(model, methods: tuple[str, ...], source) -> tuple:
    """What each of ``methods`` of ``model`` gives for the images ``source``."""
    return tuple(np.asarray(getattr(model, m)(source)) for m in methods)


def _run_chunk(compute, paths: list[str], kept: list[int], skipped):
    """What ``compute`` gives for the images at positions ``kept`` (a ``FileSource``).
    With a list ``skipped``, an image that cannot be read is appended to it, removed
    from ``kept`` and the chunk runs again without it (bad images are rare; a cache
    keeps the rows already computed); None when no image is left."""
    while kept:
        # numbered as in the whole folder, so that errors name the image's index there
        source = FileSource([paths[i] for i in kept], numbers=kept)
        try:
            return compute(source)
        except UnreadableImageError as exc:
            if skipped is None or exc.index not in kept:
                raise
            skipped.append((exc.index, str(exc)))
            kept.remove(exc.index)
    return None


def _write_all(rows, blocks, names: list[str], args, desc: str) -> None:
    """Write the rows of each block; one bar counts the images where a person watches."""
    shown = not args.no_progress and watching()
    with image_bar(len(names), desc, enabled=shown) as bar:
        for span, kept, outputs in blocks:
            if kept:
                rows.write([names[i] for i in kept], *outputs)
            bar.update(len(span))


@contextlib.contextmanager
def _replacing(target: Path, *sidecars: Path):
    """Temporary paths next to ``target`` and its ``sidecars``, renamed onto them (the
    sidecars first) when the block ends without an error, removed otherwise."""
    # created by the writers, so with the permissions any new file gets (mkstemp's are 0600)
    tag = uuid.uuid4().hex[:12]
    targets = [target, *sidecars]
    tmps = [str(t.parent / f".{t.name}.{tag}.tmp") for t in targets]
    try:
        yield tmps
        for tmp, path in reversed(list(zip(tmps, targets, strict=True))):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise


# ---------------------------------------------------------------------- output files


class _NpyRows:
    """The float32 matrix of a ``.npy`` file (its header, then each block's rows as they
    come, in order, written straight to the file), and the path of each row, one a line,
    in a text file beside it."""

    def __init__(self, path: str, paths_file: str, names: list[str]):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close)
        self.paths = open(paths_file, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self.n_columns, self.n_rows = len(names), 0
        self._write_header()
        self.data_start = self.file.tell()

    def _write_header(self) -> None:
        shape = (self.n_rows, self.n_columns)
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, paths: list[str], block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        self.paths.writelines(f"{path}\n" for path in paths)
        self.n_rows += len(block)

    def close(self) -> None:
        """Write the final row count into the header, in place: numpy pads the header
        so that the count can take up to 21 digits without moving the data."""
        with self.file, self.paths:
            self.file.seek(0)
            self._write_header()
            if self.file.tell() != self.data_start:  # a numpy without that padding
                raise RuntimeError("The .npy header changed size when its row count was set.")


class _ParquetTable:
    """A Parquet file of the columns ``fields`` (``(name, pyarrow type)`` pairs), written
    one row group per block of columns."""

    def __init__(self, path: str, fields: list[tuple[str, str]]):
        pa, pq = _pyarrow()
        self.pa = pa
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in fields])
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, columns: list) -> None:
        arrays = [self.pa.array(c, f.type) for c, f in zip(columns, self.schema, strict=True)]
        table = self.pa.Table.from_arrays(arrays, schema=self.schema)
        self.writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        self.writer.close()


class _ParquetRows(_ParquetTable):
    """Embeddings as Parquet: ``path``, then one float32 column per feature."""

    def __init__(self, path: str, names: list[str]):
        super().__init__(path, [("path", "string")] + [(name, "float32") for name in names])

    def write(self, paths: list[str], block: np.ndarray) -> None:
        block = np.ascontiguousarray(np.asarray(block, dtype=np.float32).T)
        super().write([paths, *block])


class _CsvTable:
    """A CSV file of the columns ``header``, written block of columns by block; with
    ``header=None``, the caller writes it (``write_header``) before the first block."""

    def __init__(self, path: str, header: list[str] | None = None):
        self.file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.csv = csv.writer(self.file)
        if header is not None:
            self.write_header(header)

    def write_header(self, header: list[str]) -> None:
        self.csv.writerow(header)

    def write(self, columns: list) -> None:
        self.csv.writerows(zip(*columns, strict=True))

    def close(self) -> None:
        self.file.close()


class _TopLabelRows:
    """The ``k`` most likely ImageNet-1k labels of each image and their softmax
    probabilities, as timm's inference script writes them: ``path``, ``label_1`` ...
    ``label_k``, ``score_1`` ... ``score_k``; in a ``kind`` file (``.csv`` or
    ``.parquet``)."""

    def __init__(self, path: str, k: int, kind: str):
        self.k = k
        labels = [f"label_{j}" for j in range(1, k + 1)]
        scores = [f"score_{j}" for j in range(1, k + 1)]
        if kind != ".parquet":
            self.table = _CsvTable(path, ["path", *labels, *scores])
        else:
            fields = [(name, "string") for name in ["path", *labels]]
            self.table = _ParquetTable(path, fields + [(name, "float64") for name in scores])

    def write(self, paths: list[str], logits: np.ndarray) -> None:
        top = top_imagenet_labels(logits, self.k)
        labels = [[row[j][0] for row in top] for j in range(self.k)]
        scores = [[row[j][1] for row in top] for j in range(self.k)]
        self.table.write([paths, *labels, *scores])

    def close(self) -> None:
        self.table.close()


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


class _ArgmaxRows:
    """Writes ``rows`` (a ``_CsvRows``) from class probabilities alone, the prediction
    being the class of highest probability."""

    def __init__(self, rows, classes: np.ndarray):
        self.rows, self.classes = rows, classes

    def write(self, paths: list[str], proba: np.ndarray) -> None:
        self.rows.write(paths, self.classes[np.argmax(proba, axis=1)], proba)

    def close(self) -> None:
        self.rows.close()


class _CsvRows:
    """Predictions as CSV: ``path``, ``prediction`` (for 2-D ones, the ``task_names``
    when given and distinct, else ``prediction_<j>``), then ``proba_<class>`` per class;
    the header is written with the first block."""

    def __init__(self, path: str, classes, task_names=None):
        self.table = _CsvTable(path)
        self.classes = classes
        self.task_names = task_names
        self.header = None

    def write(self, paths: list[str], predictions: np.ndarray, proba=None) -> None:
        if self.header is None:
            self.header = self._header(predictions)
            self.table.write_header(self.header)
        columns = [paths, *predictions.reshape(len(paths), -1).T.tolist()]
        if proba is not None:
            columns += np.asarray(proba).T.tolist()
        self.table.write(columns)

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
        self.table.close()

"""The ``sktransfer`` command line: batch jobs on a folder of images, without Python.

Two sub-commands, each a thin layer over the estimators:

- ``sktransfer embed ROOT --model M --out FILE`` embeds every image under ``ROOT`` with a
  :class:`PretrainedFeatureExtractor` (its options are the extractor's parameters) into
  a ``.npy`` matrix or a ``.parquet`` table;
- ``sktransfer predict MODEL_FILE ROOT --out FILE.csv`` writes what a saved model
  (``.skops``, or a pickle) predicts for every image under ``ROOT``.

Rows follow ``load_image_folder(ROOT, labelled=False).paths`` (sorted file order). The
images run chunk by chunk, in this process or, with ``--dask-scheduler``, on a Dask
cluster (:func:`sktransfer.dask_transform`), and each finished chunk is written at once
into a temporary file next to the output, renamed into place at the end: memory stays
bounded, and a failed run leaves no half-written file and an earlier output untouched.

Mistakes of the user (a wrong option, folder, file or image) print
``sktransfer: error: ...`` and exit with status 2, never a traceback; a failing
environment (no scheduler answering, a missing optional package, a full disk) exits
with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._backbone import POOLINGS, PREPROCESSING_PRESETS
from ._classifier import FineTunedClassifier
from ._distributed import connect, dask_transform, iter_blocks
from ._features import PretrainedFeatureExtractor
from ._images import FileSource
from ._regressor import FineTunedRegressor
from .datasets import IMAGE_EXTENSIONS, NoImagesError, load_image_folder

EXIT_USAGE = 2  # the user's mistake: options, folders, files, images
EXIT_FAILURE = 1  # the environment's: no scheduler, a missing package, a full disk
EMBEDDING_FORMATS = (".npy", ".parquet")
PREDICTION_FORMATS = (".csv",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
MODEL_SUFFIXES = (".skops", *PICKLE_SUFFIXES)
IMAGE_ESTIMATORS = (PretrainedFeatureExtractor, FineTunedClassifier, FineTunedRegressor)

_EXTRACTOR = inspect.signature(PretrainedFeatureExtractor).parameters
_CHUNK_SIZE = inspect.signature(dask_transform).parameters["chunk_size"].default

_EXIT_STATUS_HELP = (
    "Exit status: 0 on success; 2 for a wrong option, folder, output path, model file or "
    "image (the message says which); 1 when the environment fails (no Dask scheduler "
    "answers, an optional package is missing, the disk is full); 130 when interrupted."
)


class UsageError(ValueError):
    """A command line that cannot run as given (exit status 2)."""


# ---------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    """Run the ``sktransfer`` command line.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments, without the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 2 for a mistake in the options or the input (wrong option value,
        missing folder, unsupported output format, unreadable image...), 1 when the
        environment fails (no Dask scheduler answers, an optional package is missing,
        an output cannot be written), 130 when interrupted (Ctrl-C; the temporary output
        is removed). Errors print ``sktransfer: error: ...`` on stderr,
        without a traceback. Invalid options exit through argparse (``SystemExit(2)``).

    Examples
    --------
    >>> from sktransfer._cli import main
    >>> main(["embed", "images/", "--out", "embeddings.txt"])  # prints the error on stderr
    2
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # the temporary output is gone already
        print("sktransfer: interrupted", file=sys.stderr)
        return 130
    except ConnectionError as exc:  # an OSError: before the usage errors below
        return _report(exc, EXIT_FAILURE)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        return _report(exc, EXIT_USAGE)
    except (ImportError, OSError) as exc:
        return _report(exc, EXIT_FAILURE)


def _report(exc: BaseException, status: int) -> int:
    print(f"sktransfer: error: {exc}", file=sys.stderr)
    return status


# ---------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``sktransfer`` and its sub-commands (``args.run`` runs one)."""
    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description=_filled(
            "Embed a folder of images with a pretrained timm backbone, or predict with a "
            "saved sktransfer model, without writing Python."
        ),
        epilog=_epilog(
            [
                "sktransfer embed images/ --model efficientnet_b0.ra_in1k --out embeddings.parquet",
                "sktransfer predict model.skops images/ --out predictions.csv",
            ],
            "Run `sktransfer embed --help` or `sktransfer predict --help` for their options.",
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_embed(commands)
    _add_predict(commands)
    return parser


def _filled(text: str) -> str:
    return textwrap.fill(text, width=80)


def _epilog(examples: list[str], *notes: str) -> str:
    """Example command lines, then paragraphs of notes (help text kept as written)."""
    lines = "\n".join(textwrap.indent(example, "  ") for example in examples)
    return "examples:\n" + lines + "\n\n" + "\n\n".join(map(_filled, notes))


def _add_embed(commands) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed every image of a folder into a .npy or .parquet file",
        description=_filled(
            "Embed every image under ROOT (at any depth, sorted by path) with a "
            "PretrainedFeatureExtractor; one output row per image, in that order."
        ),
        epilog=_epilog(
            [
                "sktransfer embed images/ --model efficientnet_b0.ra_in1k --out embeddings.parquet \\\n"
                "    --image-size 224 --batch-size 64 --cache ~/.cache/sktransfer",
                "sktransfer embed images/ --model resnet50.a1_in1k --out embeddings.npy \\\n"
                "    --layer=-2,-1 --dask-scheduler tcp://HOST:8786",
            ],
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("root", metavar="ROOT", help="the folder of images (searched recursively)")
    embed.add_argument(
        "--model",
        default=_EXTRACTOR["model"].default,
        help="a timm model name, with or without a pretrained tag (default: %(default)s)",
    )
    embed.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the output: FILE.npy (the float32 matrix, one row per image) or FILE.parquet "
        "(a 'path' column, relative to ROOT, then one float32 column per feature); its "
        "folder must exist, and an existing FILE is replaced only when the run succeeds",
    )
    embed.add_argument(
        "--weights",
        type=_weights,
        default=_EXTRACTOR["weights"].default,
        metavar="pretrained|none|PATH",
        help="'pretrained': timm's weights from the Hugging Face hub or its local cache; "
        "'none': random weights; PATH: a local checkpoint (default: %(default)s)",
    )
    embed.add_argument(
        "--layer",
        type=_layer,
        default=_EXTRACTOR["layer"].default,
        metavar="SPEC",
        help="what to embed: 'logits' (the class scores), a block index (3) or a comma "
        "list of them (1,2,-1; write --layer=-1,2 when the list starts with a minus), each "
        "pooled and concatenated (default: the pooled pre-logits features)",
    )
    embed.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=_EXTRACTOR["pooling"].default,
        help="global pooling (default: the model's own for pooled features, 'avg' for blocks)",
    )
    embed.add_argument(
        "--image-size",
        type=_image_size,
        default=_EXTRACTOR["image_size"].default,
        metavar="N|HxW",
        help="input size of the model, square (224) or height x width (224x160) "
        "(default: the model's own)",
    )
    embed.add_argument(
        "--preprocessing",
        type=_preprocessing,
        default=_EXTRACTOR["preprocessing"].default,
        metavar="PRESET|JSON",
        help="the preprocessing the weights were trained with: "
        + ", ".join(sorted(PREPROCESSING_PRESETS))
        + " (mean and std), or a JSON object of timm data-config values, "
        '\'{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}\'; state it for a checkpoint '
        "whose tensors load by order (default: the model's own)",
    )
    _add_extensions(embed)
    _add_batch_and_device(embed, _EXTRACTOR["batch_size"].default, _EXTRACTOR["device"].default)
    embed.add_argument(
        "--cache",
        metavar="FOLDER",
        default=_EXTRACTOR["memory"].default,
        help="a folder for the per-image embedding cache: images embedded before (same "
        "file, model and options) are read from it (default: no cache)",
    )
    _add_run_options(embed)
    embed.set_defaults(run=run_embed)


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="predict with a saved model for every image of a folder, into a CSV file",
        description=_filled(
            "Predict with a saved, fitted model (a FineTunedClassifier, FineTunedRegressor, "
            "or a Pipeline that starts with a PretrainedFeatureExtractor) for every image "
            "under ROOT (at any depth, sorted by path); one CSV row per image. A "
            "FineTunedClassifier runs once over the images (its labels are the classes of "
            "highest probability); another classifier runs predict and predict_proba."
        ),
        epilog=_epilog(
            [
                "sktransfer predict model.skops images/ --out predictions.csv",
                "sktransfer predict model.joblib images/ --out predictions.csv --device cuda",
            ],
            "Pickles (.pkl, .pickle, .joblib) run code when they load: only load files you "
            "trust. A .skops file is loaded trusting only sktransfer's own types; a file "
            "that names others is refused.",
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument(
        "model_file",
        metavar="MODEL_FILE",
        help="the saved model: .skops (safe: no code runs), or .pkl, .pickle, .joblib "
        "(these run code when loaded: only load files you trust)",
    )
    predict.add_argument("root", metavar="ROOT", help="the folder of images (searched recursively)")
    predict.add_argument(
        "--out",
        required=True,
        metavar="FILE.csv",
        help="the output CSV: 'path' (relative to ROOT), 'prediction' (for several "
        "outputs, one column each: named after the label columns when the model was "
        "fitted on a DataFrame y whose column names it keeps, else prediction_0, "
        "prediction_1, ...) and, for a classifier, one proba_<class> column per class; "
        "its folder must exist, and an existing file is replaced only when the run succeeds",
    )
    _add_extensions(predict)
    _add_batch_and_device(predict, None, None)
    _add_run_options(predict)
    predict.set_defaults(run=run_predict)


def _add_extensions(parser) -> None:
    parser.add_argument(
        "--extensions",
        type=_extensions,
        default=IMAGE_EXTENSIONS,
        metavar=".EXT,...",
        help="the file name endings of the images to list under ROOT, with their dot, "
        "comma-separated, any case (default: " + ",".join(IMAGE_EXTENSIONS) + ")",
    )


def _add_batch_and_device(parser, batch_size, device) -> None:
    saved = "the saved model's"
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=batch_size,
        metavar="N",
        help=f"images per forward pass (default: {batch_size or saved})",
    )
    parser.add_argument(
        "--device",
        default=device,
        help="'auto' (CUDA, then MPS, then the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps' "
        f"(default: {device or saved})",
    )


def _add_run_options(parser) -> None:
    parser.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster of this scheduler (tcp://HOST:8786); its workers "
        "must see ROOT (and any cache folder) at the same paths. Needs sktransfer[dask] "
        "(default: run in this process)",
    )
    parser.add_argument(
        "--dask-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the scheduler to answer (default: %(default)g)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=_CHUNK_SIZE,
        metavar="N",
        help="images per chunk: each is computed (a Dask task with --dask-scheduler) and "
        "written at once (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not show the progress bar (shown on stderr by default)",
    )


# ---------------------------------------------------------------------- option values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _extensions(text: str) -> tuple[str, ...]:
    endings = tuple(part.strip() for part in text.split(","))
    if not all(len(e) > 1 and e.startswith(".") for e in endings):
        raise argparse.ArgumentTypeError(
            f"expected file name endings with their dot, comma-separated (.tif,.bmp), got {text!r}"
        )
    return endings


def _weights(text: str):
    return None if text.lower() == "none" else text


def _preprocessing(text: str):
    """A preset name, or a JSON object (checked in full by the extractor's ``fit``)."""
    if text in PREPROCESSING_PRESETS:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected one of {sorted(PREPROCESSING_PRESETS)} or a JSON object such as "
            f'\'{{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}\', got {text!r}'
        )
    return value


def _layer(text: str):
    if text == "logits":
        return text
    try:
        blocks = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'logits', a block index (3) or a comma list of them (1,2,-1), got {text!r}"
        ) from None
    return blocks[0] if len(blocks) == 1 else blocks


def _image_size(text: str):
    try:
        sizes = [int(part) for part in text.lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a size in pixels (224) or height x width (224x160), got {text!r}"
        )
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


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

"""The ``sktransfer`` command line: batch jobs on a folder of images, without Python.

Three sub-commands, each a thin layer over the estimators:

- ``sktransfer embed ROOT --model M --out FILE`` embeds every image under ``ROOT`` with a
  ``PretrainedFeatureExtractor`` (its options are the extractor's parameters) into a
  ``.npy`` matrix (with the path of each row in ``FILE.paths.txt``) or a ``.parquet``
  table; with ``--layer logits --top-k K``, the ``K`` most likely ImageNet-1k labels;
- ``sktransfer predict MODEL_FILE ROOT --out FILE.csv`` writes what a saved model
  (``.skops``, or a pickle) predicts for every image under ``ROOT``;
- ``sktransfer explain MODEL_FILE ROOT --out FOLDER`` draws where a saved model looks
  (``sktransfer.inspection``'s class activation maps) over every image under ``ROOT``,
  one PNG each, listed with the class explained and its score in ``FOLDER/index.csv``.

Rows follow ``load_image_folder(ROOT, labelled=False).paths`` (sorted file order). The
images run chunk by chunk, in this process or, with ``--dask-scheduler``, on a Dask
cluster (``sktransfer.dask_transform``), and each finished chunk is written at once
into a temporary file next to the output, renamed into place at the end: memory stays
bounded, and a failed run leaves no half-written file and an earlier output untouched.

Mistakes of the user (a wrong option, folder, file or image) print
``sktransfer: error: ...`` and exit with status 2, never a traceback (a mistyped option
or sub-command gets the closest one suggested); a failing environment (no scheduler
answering, a missing optional package, a full disk) exits with status 1. With
``--skip-bad-images``, image files that cannot be read are listed in ``FILE.skipped.csv``
and left out, instead of stopping the run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap

from ._hub import PretrainedWeightsError
from ._options import (
    CHUNK_SIZE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_MODEL,
    DEFAULT_WEIGHTS,
    IMAGE_EXTENSIONS,
    POOLINGS,
    PREPROCESSING_PRESETS,
)

# sktransfer._cam.METHODS, written out here so that --help imports no torch (a test pins
# the two against each other)
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "ablationcam", "eigencam")

EXIT_USAGE = 2  # the user's mistake: options, folders, files, images
EXIT_FAILURE = 1  # the environment's: no network, no scheduler, a missing package, a full disk

_PICKLE_HELP = (
    "Pickles (.pkl, .pickle, .joblib) run code when they load: only load files you "
    "trust. A .skops file is loaded trusting only sktransfer's own types; a file "
    "that names others is refused."
)
_EXIT_STATUS_HELP = (
    "Exit status: 0 on success; 2 for a wrong option, folder, output path, model file or "
    "image (the message says which); 1 when the environment fails (no Dask scheduler "
    "answers, an optional package is missing, the disk is full); 130 when interrupted."
)


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
        from . import _commands  # torch, timm and scikit-learn: once the options parse

        return getattr(_commands, f"run_{args.command}")(args)
    except KeyboardInterrupt:  # the temporary output is gone already
        print("sktransfer: interrupted", file=sys.stderr)
        return 130
    except (ConnectionError, PretrainedWeightsError) as exc:  # before the usage errors
        return _report(exc, EXIT_FAILURE)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        return _report(exc, EXIT_USAGE)
    except (ImportError, OSError) as exc:
        return _report(exc, EXIT_FAILURE)


def _report(exc: BaseException, status: int) -> int:
    print(f"sktransfer: error: {exc}", file=sys.stderr)
    return status


# ---------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors suggest the closest option or choice to a
    mistyped one (what Python 3.14's ``suggest_on_error`` does, for 3.10 on)."""

    def error(self, message):
        super().error(message + _suggestion(message, self._actions))


class _CommandParser(_Parser):
    """The parser of a sub-command. It reports the arguments it does not know itself
    (the top parser would, without naming the sub-command or knowing its options), and
    the options that do not go together."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        problem = _conflict(namespace)
        if problem:
            self.error(problem)
        return namespace, extras


def _suggestion(message: str, actions) -> str:
    """``; did you mean --model?`` for the mistyped options or choices that ``message``
    names, when ``actions`` (a parser's) have close ones; else an empty string."""
    if "maybe you meant" in message:  # Python's own suggestion (3.14's suggest_on_error)
        return ""
    if message.startswith("unrecognized arguments: "):
        typos = [word.split("=", 1)[0] for word in message.split()[2:] if word[:1] == "-"]
        known = [option for action in actions for option in action.option_strings]
    else:
        typos = re.findall(r"invalid choice: '([^']*)'", message)
        known = [str(choice) for action in actions for choice in action.choices or ()]
    matches = [m for typo in typos for m in difflib.get_close_matches(typo, known, n=1)]
    return f"; did you mean {', '.join(dict.fromkeys(matches))}?" if matches else ""


def _conflict(args) -> str | None:
    """What is wrong with a combination of the sub-command's options, or None."""
    layer = getattr(args, "layer", None)
    if getattr(args, "top_k", None) is not None and layer != "logits":
        spec = ",".join(map(str, layer)) if isinstance(layer, list) else layer
        got = "no --layer (the pre-logits features)" if layer is None else f"--layer={spec}"
        return (
            f"--top-k needs --layer logits (the class scores it ranks), got {got}. Add "
            "--layer logits, or leave out --top-k."
        )
    if args.skip_bad_images and getattr(args, "dask_scheduler", None) is not None:
        return (
            "--skip-bad-images runs in this process only, not with --dask-scheduler: leave "
            "out --dask-scheduler to skip unreadable images, or remove them from ROOT to "
            "run on the cluster."
        )
    return None


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``sktransfer`` and its sub-commands (``args.command`` names one)."""
    parser = _Parser(
        prog="sktransfer",
        description=_filled(
            "Embed a folder of images with a pretrained timm backbone, predict with a "
            "saved sktransfer model, or draw where it looks, without writing Python."
        ),
        epilog=_epilog(
            [
                "sktransfer embed images/ --model efficientnet_b0.ra_in1k --out embeddings.parquet",
                "sktransfer predict model.skops images/ --out predictions.csv",
                "sktransfer explain model.skops images/ --out explained/",
            ],
            "Run `sktransfer embed --help`, `sktransfer predict --help` or `sktransfer "
            "explain --help` for their options.",
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        title="commands", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    _add_embed(commands)
    _add_predict(commands)
    _add_explain(commands)
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
                "sktransfer embed images/ --model efficientnet_b0.ra_in1k --layer logits \\\n"
                "    --top-k 5 --out top5.csv",
            ],
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("root", metavar="ROOT", help="the folder of images (searched recursively)")
    embed.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a timm model name, with or without a pretrained tag (default: %(default)s)",
    )
    embed.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the output: FILE.npy (the float32 matrix, one row per image; the paths of "
        "the rows, relative to ROOT, go one a line into FILE.paths.txt beside it) or "
        "FILE.parquet (the paths in a 'path' column, then one float32 column per feature, "
        "named after the ImageNet-1k classes for --layer logits of a model with 1000 "
        "outputs); with --top-k, FILE.csv or FILE.parquet. Its folder must exist, and an "
        "existing FILE (and FILE.paths.txt) is replaced only when the run succeeds",
    )
    embed.add_argument(
        "--weights",
        type=_weights,
        default=DEFAULT_WEIGHTS,
        metavar="pretrained|none|PATH",
        help="'pretrained': timm's weights from the Hugging Face hub or its local cache; "
        "'none': random weights; PATH: a local checkpoint (default: %(default)s)",
    )
    embed.add_argument(
        "--layer",
        type=_layer,
        default=None,
        metavar="SPEC",
        help="what to embed: 'logits' (the class scores), a block index (3) or a comma "
        "list of them (1,2,-1; write --layer=-1,2 when the list starts with a minus), each "
        "pooled and concatenated (default: the pooled pre-logits features)",
    )
    embed.add_argument(
        "--top-k",
        type=_top_k,
        default=None,
        metavar="K",
        help="with --layer logits of a model with 1000 outputs (ImageNet-1k): write the K "
        "most likely class names and their softmax probabilities instead of the scores, "
        "as columns path, label_1..label_K, score_1..score_K (as timm's inference script "
        "does), into FILE.csv or FILE.parquet (default: the scores)",
    )
    embed.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=None,
        help="global pooling (default: the model's own for pooled features, 'avg' for blocks)",
    )
    embed.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="N|HxW",
        help="input size of the model, square (224) or height x width (224x160) "
        "(default: the model's own)",
    )
    embed.add_argument(
        "--preprocessing",
        type=_preprocessing,
        default=None,
        metavar="PRESET|JSON",
        help="the preprocessing the weights were trained with: "
        + ", ".join(sorted(PREPROCESSING_PRESETS))
        + " (mean and std), or a JSON object of timm data-config values, "
        '\'{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}\'; state it for a checkpoint '
        "whose tensors load by order (default: the model's own)",
    )
    _add_extensions(embed)
    _add_batch_and_device(embed, DEFAULT_BATCH_SIZE, DEFAULT_DEVICE)
    embed.add_argument(
        "--cache",
        metavar="FOLDER",
        default=None,
        help="a folder for the per-image embedding cache: images embedded before (same "
        "file, model and options) are read from it (default: no cache)",
    )
    _add_run_options(embed)
    embed.set_defaults(command="embed")


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
            _PICKLE_HELP,
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_and_root(predict)
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
    predict.set_defaults(command="predict")


def _add_model_and_root(parser) -> None:
    """The two positional arguments of the commands that run a saved model on a folder."""
    parser.add_argument(
        "model_file",
        metavar="MODEL_FILE",
        help="the saved model: .skops (safe: no code runs), or .pkl, .pickle, .joblib "
        "(these run code when loaded: only load files you trust)",
    )
    parser.add_argument("root", metavar="ROOT", help="the folder of images (searched recursively)")


def _add_explain(commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="draw where a saved model looks in every image of a folder, as PNG files",
        description=_filled(
            "Draw where a saved, fitted model looks in every image under ROOT (at any "
            "depth, sorted by path): its class activation map (sktransfer.inspection) as "
            "a heat map over the image, one PNG per image at the image's own size, and "
            "one row per image in FOLDER/index.csv: path, overlay, target, score. The "
            "model is a FineTunedClassifier, a FineTunedRegressor, a "
            "PretrainedFeatureExtractor with layer='logits', a probe Pipeline (a "
            "PretrainedFeatureExtractor, StandardScaler or PCA steps, a linear "
            "classifier), or a fitted search over one of them. Needs "
            "sktransfer[inspection]."
        ),
        epilog=_epilog(
            [
                "sktransfer explain model.skops images/ --out explained/",
                "sktransfer explain model.joblib images/ --out cams/ --method eigencam \\\n"
                "    --target cat --alpha 0.4 --device cuda",
            ],
            _PICKLE_HELP,
            _EXIT_STATUS_HELP,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_and_root(explain)
    explain.add_argument(
        "--out",
        required=True,
        metavar="FOLDER",
        help="the output folder, created if missing (its parent must exist), outside ROOT: "
        "FOLDER/<the image's path relative to ROOT>.png for each image (sub-folders "
        "kept: images/cats/a.jpg -> FOLDER/cats/a.jpg.png), and FOLDER/index.csv with "
        "the columns path (relative to ROOT), overlay (relative to FOLDER), target (the "
        "class explained) and score (the model's probability of it; for a regressor, its "
        "predicted value). Files of an earlier run are replaced only when the run succeeds",
    )
    explain.add_argument(
        "--method",
        choices=CAM_METHODS,
        default="gradcam",
        help="how the map is computed: gradcam, gradcam++, layercam (from gradients), "
        "scorecam, ablationcam (one forward pass per channel: slow), eigencam (the same map "
        "whatever the target) (default: %(default)s)",
    )
    explain.add_argument(
        "--layer",
        default="auto",
        metavar="NAME",
        help="the backbone layer whose activations are weighed, by its module name (as in "
        "backbone_.named_modules()); 'auto': the last layer with a spatial output "
        "(default: %(default)s)",
    )
    explain.add_argument(
        "--target",
        default=None,
        metavar="LABEL",
        help="the class to explain in every image, one of the model's labels (read as "
        "their type: 1 is the label 1 of a model with integer classes; an ImageNet class "
        "index for a PretrainedFeatureExtractor, an output index for a regressor) "
        "(default: the class the model predicts for each image)",
    )
    explain.add_argument(
        "--alpha",
        type=_fraction,
        default=0.5,
        metavar="A",
        help="weight of the heat map over the image, from 0 (the image alone) to 1 (the "
        "map alone) (default: %(default)s)",
    )
    _add_extensions(explain)
    _add_batch_and_device(explain, None, None)
    _add_skip_bad_images(explain, "FOLDER/skipped.csv")
    _add_no_progress(explain)
    explain.set_defaults(command="explain")


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
    _add_skip_bad_images(
        parser, "FILE.skipped.csv", " beside the output", "; not with --dask-scheduler"
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=CHUNK_SIZE,
        metavar="N",
        help="images per chunk: each is computed (a Dask task with --dask-scheduler) and "
        "written at once (default: %(default)s)",
    )
    _add_no_progress(parser)


def _add_skip_bad_images(parser, listed_in: str, where: str = "", limits: str = "") -> None:
    """``--skip-bad-images``, whose list of skipped images is ``listed_in`` (``where``,
    e.g. beside the output), with the ``limits`` of the command."""
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out the image files that cannot be opened or decoded, listed with "
        f"their error in {listed_in} (columns path, error){where}, instead of stopping at "
        f"the first one{limits}. A run without it removes an earlier {listed_in} (default: "
        "stop, with exit status 2)",
    )


def _add_no_progress(parser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not show the progress bar (shown on stderr where a person watches: a "
        "terminal; never in a log or a pipe)",
    )


# ---------------------------------------------------------------------- option values


def _positive_int(text: str) -> int:
    return _integer(text, "an integer >= 1", high=None)


def _integer(text: str, expected: str, *, high: int | None) -> int:
    """``text`` as an int from 1 to ``high`` (no bound: None); else an error saying
    what was ``expected``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _real(text, "a number of seconds > 0", lambda value: value > 0)


def _fraction(text: str) -> float:
    return _real(text, "a number from 0 to 1", lambda value: 0 <= value <= 1)


def _real(text: str, expected: str, valid) -> float:
    """``text`` as a float for which ``valid`` holds; else an error saying what was
    ``expected``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _extensions(text: str) -> tuple[str, ...]:
    endings = tuple(part.strip() for part in text.split(","))
    if not all(len(e) > 1 and e.startswith(".") for e in endings):
        raise argparse.ArgumentTypeError(
            f"expected file name endings with their dot, comma-separated (.tif,.bmp), got {text!r}"
        )
    return endings


def _top_k(text: str) -> int:
    expected = "an integer between 1 and 1000 (ImageNet-1k's classes)"
    return _integer(text, expected, high=1000)


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

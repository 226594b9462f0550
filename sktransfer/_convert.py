"""``to_onnxruntime``: a fitted estimator in its serving form (torch is needed here only).

The network is exported once (``ExportsOnnx._onnx_graph``), optionally quantised to
INT8 with ONNX Runtime's static quantisation, checked to run, and only then wrapped in a
serving estimator of ``_serving``: a failure at any step raises, and nothing half-built
is returned. A ``Pipeline`` keeps its scikit-learn steps after the image step (copied:
the original pipeline is left as it was).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path

from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._classifier import FineTunedClassifier
from ._features import PretrainedFeatureExtractor
from ._images import ImageSource, as_images, iter_batches
from ._preprocess import Preprocess
from ._regressor import FineTunedRegressor
from ._serving import (
    ServedClassifier,
    ServedFeatureExtractor,
    ServedRegressor,
    decoding_threads,
)

QUANTIZATIONS = (None, "int8")
MIN_CALIBRATION_IMAGES = 32

# What each image estimator keeps besides the graph, and the serving class it becomes.
_SERVED = {
    PretrainedFeatureExtractor: (ServedFeatureExtractor, ("n_features_out_", "layer_", "pooling_")),
    FineTunedClassifier: (
        ServedClassifier,
        ("classes_", "multilabel_", "multitask_", "task_names_"),
    ),
    FineTunedRegressor: (ServedRegressor, ("n_outputs_", "multioutput_")),
}


def to_onnxruntime(estimator, *, quantize=None, calibration=None):
    """The serving form of a fitted estimator: ONNX Runtime, numpy and PIL, no torch.

    Parameters
    ----------
    estimator : fitted estimator
        A ``PretrainedFeatureExtractor``, ``FineTunedClassifier`` or
        ``FineTunedRegressor``, a ``Pipeline`` whose first step is one (the steps after
        it stay scikit-learn steps), or a fitted search (its ``best_estimator_``).
    quantize : {None, "int8"}, default=None
        ``"int8"``: ONNX Runtime's static quantisation (QDQ, per-channel weights),
        calibrated on ``calibration``.
    calibration : images, default=None
        Images like those the model will serve (at least 32; a few hundred is better),
        needed with ``quantize="int8"``.

    Returns
    -------
    served : ServedFeatureExtractor, ServedClassifier, ServedRegressor or Pipeline
        Fitted, with the estimator's methods, outputs and fitted attributes, taking the
        same inputs. It pickles, ``joblib.dump``s and ``skops.io.dump``s as data; a
        process that loads it needs onnxruntime, numpy, PIL and scikit-learn only.

    Raises
    ------
    TypeError
        For an estimator of another kind.
    ValueError
        For a network that does not export (naming the layer at fault), or missing or
        too few calibration images.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.serving import to_onnxruntime
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> extractor = PretrainedFeatureExtractor("test_efficientnet", weights=None,
    ...                                        image_size=32, verbose=False).fit()
    >>> served = to_onnxruntime(extractor)
    >>> bool(np.abs(served.transform(images) - extractor.transform(images)).max() < 1e-4)
    True
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'int8'; got {quantize!r}.")
    if quantize is None and calibration is not None:
        raise ValueError(
            "calibration images are used by quantize='int8' only; pass quantize='int8' or "
            "drop calibration."
        )
    images = None if quantize is None else _calibration_images(calibration)  # before export
    best = getattr(estimator, "best_estimator_", None)
    if best is not None:
        estimator = best
    if isinstance(estimator, Pipeline):
        return _served_pipeline(estimator, images)
    return _served(estimator, images)


def _served_pipeline(pipeline: Pipeline, calibration) -> Pipeline:
    (name, first), *rest = pipeline.steps
    if type(first) not in _SERVED:
        raise TypeError(_unsupported(f"a Pipeline whose first step is a {_name(first)}"))
    served = _served(first, calibration)
    return Pipeline([(name, served), *copy.deepcopy(rest)], verbose=pipeline.verbose)


def _served(estimator, calibration: ImageSource | None):
    """The serving form of an image estimator; INT8 when ``calibration`` is given."""
    kind = _SERVED.get(type(estimator))
    if kind is None:
        raise TypeError(_unsupported(f"a {_name(estimator)}"))
    check_is_fitted(estimator)
    served_class, attributes = kind
    preprocessing = Preprocess.of(estimator.data_config_)
    graph = estimator._onnx_graph()
    output = graph.graph.output[0].name
    if calibration is not None:
        graph = quantized(graph, calibration, preprocessing)
    served = served_class(batch_size=estimator.batch_size)
    fitted = {
        "onnx_model_": graph.SerializeToString(),
        "input_name_": graph.graph.input[0].name,
        "output_name_": output,
        "preprocessing_": vars(preprocessing).copy(),
        "estimator_name_": type(estimator).__name__,
        "quantization_": None if calibration is None else "int8",
        **{name: copy.deepcopy(getattr(estimator, name, None)) for name in attributes},
    }
    vars(served).update(fitted)
    served.session  # noqa: B018 (a graph ONNX Runtime cannot load fails here, not in the service)
    return served


def _calibration_images(calibration) -> ImageSource:
    """The calibration images, checked to be enough (no file is decoded yet)."""
    if calibration is None:
        raise ValueError(
            "quantize='int8' needs calibration images: pass calibration=<images like "
            f"those the model will serve>, at least {MIN_CALIBRATION_IMAGES} (a few hundred "
            "is better), e.g. part of the training images."
        )
    source = as_images(calibration)
    if len(source) < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"quantize='int8' got {len(source)} calibration images; it needs at least "
            f"{MIN_CALIBRATION_IMAGES} (a few hundred is better) to set the INT8 ranges of "
            "every layer. Pass more images like those the model will serve."
        )
    return source


# The INT8 recipe, measured on EfficientNet-Lite0 beside others by
# benchmarks/int8_recipes.py (the serving page gives the table): signed INT8
# activations, per-channel INT8 weights, ranges at the 99.999th percentile of the
# calibration activations, and the convolutions nearest the input left in float: their
# activations lose the most to INT8 (the features' cosine to float32's goes from 0.98
# to 0.997 with six in float), and a contiguous run from the input keeps ONNX Runtime
# from quantising their weights back at session time. reduce_range (7-bit weights, for
# CPUs without VNNI whose 8-bit products saturate) cost 0.039 of ROC AUC there.
FLOAT_CONVS = 6
CALIBRATION_PERCENTILE = 99.999


def quantized(
    graph,
    calibration: ImageSource,
    preprocess: Preprocess,
    *,
    float_convs: int = FLOAT_CONVS,
    **settings,
):
    """``graph`` (an ``onnx.ModelProto``) statically quantised to INT8 by ONNX Runtime
    (QDQ), calibrated on the images of ``calibration`` as ``preprocess`` makes them (in
    threads, as the serving estimators do); its first ``float_convs``
    convolutions stay in float. ``settings`` replace arguments of ONNX Runtime's
    ``quantize_static`` (``benchmarks/int8_recipes.py`` measures other recipes)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = graph.graph.input[0].name

    class Reader(CalibrationDataReader):
        """One image at a time: the percentile calibrator stacks the outputs of its
        runs, which must have one shape."""

        def __init__(self):
            batches = iter_batches(calibration, preprocess, 32, decoding_threads(None))
            self.images = (image[None] for _, batch in batches for image in batch)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {input_name: image}

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        onnx.save(graph, folder / "float.onnx")
        quant_pre_process(folder / "float.onnx", folder / "prepared.onnx")
        prepared = onnx.load(folder / "prepared.onnx")
        convs = [node.name for node in prepared.graph.node if node.op_type == "Conv"]
        recipe = {
            "quant_format": QuantFormat.QDQ,
            "per_channel": True,
            "reduce_range": False,
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            "nodes_to_exclude": convs[:float_convs],
            "calibrate_method": CalibrationMethod.Percentile,
            "extra_options": {"CalibPercentile": CALIBRATION_PERCENTILE},
            **settings,
        }
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its steps
            quantize_static(folder / "prepared.onnx", folder / "int8.onnx", Reader(), **recipe)
        model = onnx.load(folder / "int8.onnx")
    del model.metadata_props[:]
    model.metadata_props.extend(graph.metadata_props)
    return model


def _name(estimator) -> str:
    return type(estimator).__name__


def _unsupported(what: str) -> str:
    return (
        f"to_onnxruntime converts a fitted PretrainedFeatureExtractor, FineTunedClassifier "
        f"or FineTunedRegressor, a Pipeline that starts with one, or a fitted search over "
        f"one; got {what}."
    )

"""Fitted models served by ONNX Runtime, without torch: what ``to_onnxruntime`` returns.

Each serving estimator holds its network as an ONNX graph (bytes), its preprocessing as
plain values (``Preprocess``) and the fitted attributes of the estimator it was made
from; it reads images as every sktransfer estimator does (``as_images``: the same inputs
and the same errors) and preprocesses them with numpy and PIL. Nothing here, nor
anything it imports, imports torch or timm, so a service that loads a serving model
starts without them.

A call decodes and preprocesses images in ``num_workers`` threads (one per core by
default), up to ``num_workers`` batches ahead of the one ONNX Runtime runs (PIL, numpy
and ONNX Runtime release the GIL). The ONNX Runtime session is made on first use, with ``intra_op_num_threads`` threads (by default what
``OMP_NUM_THREADS`` says, else ONNX Runtime's choice), and shared by every thread that
predicts: ``InferenceSession.run`` is thread-safe. Pickle, joblib and ``skops.io`` store
the graph and the plain values only, with the versions of sktransfer and onnxruntime
that saved them (loading under others warns with ``InconsistentVersionWarning``).
"""

from __future__ import annotations

import os
import threading
from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    RegressorMixin,
    TransformerMixin,
)
from sklearn.utils.validation import check_is_fitted

from ._class_outputs import LabelsFromProbabilities, per_task
from ._docs import compose
from ._images import as_images, iter_batches
from ._params import Interval, validate_params
from ._preprocess import Preprocess
from ._progress import image_bar, shows_progress
from ._rows import collect_rows
from ._warnings import warn_on_other_versions

_VERSIONS = "_sktransfer_versions"
_SESSION_LOCK = threading.Lock()


def runtime_versions() -> dict[str, str]:
    """The versions a serving model file records: what runs it."""
    import onnxruntime

    from . import __version__

    return {"sktransfer": __version__, "onnxruntime": onnxruntime.__version__}


def decoding_threads(num_workers: int | None) -> int:
    """The threads that decode and preprocess images: ``num_workers``, or with None one
    per core."""
    return (os.cpu_count() or 1) if num_workers is None else num_workers


def default_threads() -> int:
    """ONNX Runtime's intra-op threads when none are given: ``OMP_NUM_THREADS`` where
    it is a positive integer, else 0 (ONNX Runtime's own choice: one per core)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 0


class ServedEstimator(BaseEstimator):
    """Base of the serving estimators: the graph, the preprocessing, the session.

    Subclasses say what ``fit`` does and what their outputs mean. The fitted state
    (``onnx_model_``, ``preprocessing_``, ``output_name_``, ``estimator_name_`` and the
    attributes of the estimator it came from) is set by ``to_onnxruntime``.
    """

    _param_constraints: dict = {
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "num_workers": [None, Interval(Integral, 0, None, closed="left")],
        "intra_op_num_threads": [None, Interval(Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(
        self, *, batch_size=32, num_workers=None, intra_op_num_threads=None, verbose=False
    ):
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.intra_op_num_threads = intra_op_num_threads
        self.verbose = verbose

    def _outputs(self, X) -> np.ndarray:
        """The graph's output for images ``X``, float32, one row per image."""
        check_is_fitted(self)
        validate_params(self)
        source = as_images(X)
        session, names = self.session, [self.output_name_]
        preprocess = Preprocess(**self.preprocessing_)
        workers = decoding_threads(self.num_workers)
        batches = iter_batches(source, preprocess, self.batch_size, workers)
        rows = (session.run(names, {self.input_name_: batch})[0] for _, batch in batches)
        with image_bar(len(source), "predicting", shows_progress(self.verbose)) as bar:
            return collect_rows(rows, len(source), bar=bar)

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` that runs the graph: made on first use
        (again after ``intra_op_num_threads`` or ``onnx_model_`` changes), shared by
        every thread."""
        check_is_fitted(self)
        threads, graph = self._threads(), self.onnx_model_
        with _SESSION_LOCK:  # a session is made once, however many threads ask
            made = self.__dict__.get("_made_session")
            if made is None or made[0] != threads or made[1] is not graph:
                made = self._made_session = (threads, graph, _inference_session(graph, threads))
        return made[2]

    def _threads(self) -> int:
        if self.intra_op_num_threads is not None:
            return self.intra_op_num_threads
        return default_threads()

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "_made_session"}
        if "onnx_model_" in state:
            state[_VERSIONS] = runtime_versions()
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop(_VERSIONS, None)
        if saved is not None:
            warn_on_other_versions(saved, runtime_versions(), type(self).__name__)
        self.__dict__.update(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags


def _inference_session(graph: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Threads that wait for work sleep instead of spinning: they share the cores with
    # the threads that decode the next images (measured: 409 against 348 images/s end
    # to end on two cores, benchmarks/serving.py's probe).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(
        graph, sess_options=options, providers=["CPUExecutionProvider"]
    )


@compose
class ServedFeatureExtractor(TransformerMixin, ServedEstimator):
    """A fitted ``PretrainedFeatureExtractor`` served by ONNX Runtime, without torch.

    Made by [`to_onnxruntime`][sktransfer.serving.to_onnxruntime]; ``transform`` gives
    what the extractor's gives (within 1e-4 in float32) and ``get_feature_names_out``
    the same names. ``fit`` learns nothing (as the extractor's), so a ``Pipeline``
    that starts with it can refit the steps after it without torch.

    Parameters
    ----------
    {{serving}}

    Attributes
    ----------
    n_features_out_ : int
    layer_, pooling_ :
        Those of the extractor it was made from.
    {{served-attributes}}
    """

    def fit(self, X=None, y=None):
        """Nothing to learn (as ``PretrainedFeatureExtractor.fit``); returns self."""
        check_is_fitted(self)
        return self

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : images
            As ``PretrainedFeatureExtractor.transform`` accepts them.

        Returns
        -------
        embeddings : ndarray of shape (n_images, n_features_out_), dtype float32
        """
        return self._outputs(X)

    def get_feature_names_out(self, input_features=None):
        """The extractor's names: ``pretrainedfeatureextractor0``, ..."""
        check_is_fitted(self)
        prefix = self.estimator_name_.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []
        return tags


class _DoesNotTrain:
    """Mixin: ``fit`` refuses, saying how to refit (the torch estimator learns)."""

    def fit(self, X, y=None, **fit_params):
        raise TypeError(
            f"A {type(self).__name__} is a fitted {getattr(self, 'estimator_name_', 'model')} "
            "served without torch: it does not train. Fit the torch estimator, then convert "
            "it again with sktransfer.serving.to_onnxruntime."
        )


@compose
class ServedClassifier(LabelsFromProbabilities, ClassifierMixin, _DoesNotTrain, ServedEstimator):
    """A fitted ``FineTunedClassifier`` served by ONNX Runtime, without torch.

    Made by [`to_onnxruntime`][sktransfer.serving.to_onnxruntime]. ``predict_proba``,
    ``predict`` and ``score`` give what the classifier's give (probabilities within
    1e-4 in float32), with its ``classes_``, ``multilabel_``, ``multitask_`` and
    ``task_names_``. The test-time augmentation (``tta``) is the one the classifier had
    when it was converted.

    Parameters
    ----------
    {{serving}}

    Attributes
    ----------
    classes_, multilabel_, multitask_, task_names_ :
        Those of the classifier it was made from.
    {{served-attributes}}
    """

    def predict_proba(self, X):
        """Class probabilities; columns follow ``classes_`` (with several label
        columns, a list of one array per column)."""
        return per_task(self._outputs(X), self.classes_, self.multitask_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags


@compose
class ServedRegressor(RegressorMixin, _DoesNotTrain, ServedEstimator):
    """A fitted ``FineTunedRegressor`` served by ONNX Runtime, without torch.

    Made by [`to_onnxruntime`][sktransfer.serving.to_onnxruntime]: ``predict`` gives what
    the regressor's gives, in the units of ``y`` (within 1e-4 in float32; 1-D when
    ``y`` was).

    Parameters
    ----------
    {{serving}}

    Attributes
    ----------
    n_outputs_, multioutput_ :
        Those of the regressor it was made from.
    {{served-attributes}}
    """

    def predict(self, X):
        """Predicted targets, in the units of ``y``."""
        values = self._outputs(X)
        return values if self.multioutput_ else values[:, 0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

"""PretrainedFeatureExtractor: images in, embeddings of a pretrained timm backbone out."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _backbone
from ._cache import create_folder, existing_memory
from ._device import resolve_device, resolve_precision
from ._docs import compose
from ._export import ExportsOnnx
from ._images import as_images
from ._inference import run_batches
from ._options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_MODEL,
    DEFAULT_WEIGHTS,
    POOLINGS,
    PREPROCESSING_PRESETS,
)
from ._params import CALL_PARAMETERS, HasMethods, Interval, Options, validate_params
from ._progress import shows_progress
from ._rows import cached_rows, namespace
from ._state import StoredAsData, swap_in

PRECISIONS = ("auto", "float32", "float16", "bfloat16")


@compose
class PretrainedFeatureExtractor(
    StoredAsData, ExportsOnnx, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Embed images with a pretrained timm backbone.

    A scikit-learn transformer: images in, a float32 array of embeddings out. The backbone
    is loaded in [`fit`][sktransfer.PretrainedFeatureExtractor.fit] (never in ``__init__``), runs in
    eval mode under ``torch.inference_mode``, batched, on the best available device, and
    preprocesses images exactly as the model was trained (size, crop, interpolation, mean and std
    from its pretrained config). With ``memory``, each image is embedded once across all the
    folds and candidates of a grid search.

    Parameters
    ----------
    {{model}}
    weights : "pretrained", None or path-like, default="pretrained"
        ``"pretrained"``: timm's weights from the Hugging Face hub or its local cache
        (``HF_HUB_OFFLINE=1`` is honoured). ``None``: random initialisation. A path: a
        local checkpoint (``.pth``, ``.pt``, ``.bin``, ``.safetensors``), a bare state dict
        or one under ``state_dict`` / ``model``; when key names differ but every tensor's
        order and shape match, it loads by order. A file that does not fit raises.
    layer : None, "logits", int or list of int, default=None
        ``None``: the pooled pre-logits features (the usual embedding). ``"logits"``: the
        original head's class scores (see [`top_imagenet_labels`][sktransfer.top_imagenet_labels]).
        An int or a list of ints: the outputs of those blocks (feature levels of timm's
        ``forward_intermediates``; negative indices count from the top), each pooled,
        concatenated.
    pooling : {"avg", "max", "avgmax", "token"} or None, default=None
        Global pooling. ``None`` keeps the model's own pooling for pooled features and
        averages intermediate blocks. ``"token"`` takes the class token of models that
        have one (vision transformers).
    {{image_size}}
    {{preprocessing}}
    batch_size : int, default=32
        Images per forward pass.
    {{device}}
    precision : {"auto", "float32", "float16", "bfloat16"}, default="auto"
        ``"auto"``: autocast to half precision on GPUs, float32 on the CPU.
    num_workers : int, default=0
        Threads that decode and preprocess images while the model runs.
    memory : str, path-like, joblib.Memory or None, default=None
        Folder of the per-image embedding cache (see the user guide). ``None``: no cache.
        ``fit`` creates the folder; ``transform`` uses it only where it exists, so a
        model loaded elsewhere creates none (see Serving). A file is refused.
    {{cache_key}}
    {{verbose}}

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The loaded timm model, in eval mode, on ``device_``. Pickles and skops files
        store it as data: its timm name, constructor arguments and weights.
    device_ : torch.device
        The device used.
    precision_ : str
        The resolved precision.
    data_config_ : dict
        The preprocessing: input size, interpolation, crop, mean and std.
    n_features_out_ : int
        Width of the embeddings.
    weights_fingerprint_ : str
        A hash of the backbone's weights (part of the cache key).
    layer_, pooling_ : object
        ``layer`` (block indices as a list) and ``pooling`` as they were at ``fit``:
        ``transform`` and the cache use these, so ``set_params`` after ``fit`` changes
        nothing until the next ``fit``.

    See Also
    --------
    FineTunedClassifier : Fine-tune the backbone instead of freezing it.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    >>> extractor = PretrainedFeatureExtractor(model="test_efficientnet", weights=None)
    >>> extractor.fit_transform(images).shape
    (4, 256)
    """

    _param_constraints: dict = {
        "model": [str],
        "weights": [str, os.PathLike, None],
        "layer": [None, Options({"logits"}), Integral, list, tuple],
        "pooling": [None, Options(set(POOLINGS))],
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "preprocessing": [None, Options(set(PREPROCESSING_PRESETS)), dict],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "precision": [Options(set(PRECISIONS))],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "memory": [None, str, os.PathLike, HasMethods(("cache",))],
        "cache_key": [Options({"stat", "content"})],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model=DEFAULT_MODEL,
        *,
        weights=DEFAULT_WEIGHTS,
        layer=None,
        pooling=None,
        image_size=None,
        preprocessing=None,
        batch_size=DEFAULT_BATCH_SIZE,
        device=DEFAULT_DEVICE,
        precision="auto",
        num_workers=0,
        memory=None,
        cache_key="stat",
        verbose="auto",
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.memory = memory
        self.cache_key = cache_key
        self.verbose = verbose

    def fit(self, X=None, y=None):
        """Load the backbone and resolve device and preprocessing.

        Nothing is embedded here: a pretrained extractor learns nothing from ``X``.

        Parameters
        ----------
        X : images, optional
            Validated if given (see the user guide for accepted inputs).
        y : ignored

        Returns
        -------
        self : PretrainedFeatureExtractor
        """
        validate_params(self)
        create_folder(self.memory)  # prediction uses the cache only where its folder exists
        if X is not None:
            as_images(X, key=self.cache_key)  # validate early; files are checked to exist
        layer, pooling = _copy_layer(self.layer), self.pooling
        blocks = _block_indices(layer)
        backbone = _backbone.create_backbone(
            self.model,
            self.weights,
            pooling=pooling if blocks is None else None,
            image_size=self.image_size,
            preprocessing=self.preprocessing,
        )
        self._check_backbone(backbone, blocks)
        device = resolve_device(self.device)
        fitted = {
            "layer_": layer,
            "pooling_": pooling,
            "device_": device,
            "precision_": resolve_precision(self.precision, device),
            "backbone_": _to_device(backbone, device),
            "data_config_": _backbone.data_config(backbone, self.image_size, self.preprocessing),
            "weights_fingerprint_": _backbone.weights_fingerprint(backbone),
        }
        probe = torch.zeros(1, *fitted["data_config_"]["input_size"], device=device)
        with torch.inference_mode():
            embedding = _embedding(fitted["backbone_"], layer, pooling, probe)
        fitted["n_features_out_"] = int(embedding.shape[1])
        swap_in(self, fitted)
        return self

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : images
            A numpy array of images, a list of PIL images or arrays, or file paths (see
            the user guide for the full list and the pixel-scaling rule).

        Returns
        -------
        embeddings : ndarray of shape (n_images, n_features_out_), dtype float32
        """
        check_is_fitted(self)
        validate_params(self, CALL_PARAMETERS)
        source = as_images(X, key=self.cache_key)
        positions = np.arange(len(source))

        def compute(rows, allocate, on_rows=None):
            return self._embed(source, positions[rows], on_rows)

        memory = existing_memory(self.memory)  # never creates a folder: see docs/serving.md
        return cached_rows(self._cache_namespace(), source, positions, compute, memory=memory)

    def _embed(self, source, positions, on_rows=None) -> np.ndarray:
        """Run the backbone on the images at ``positions`` (the only place that does)."""
        if len(positions) == 0:
            return np.empty((0, self.n_features_out_), dtype=np.float32)
        return run_batches(
            self._forward,
            source,
            _backbone.eval_transform(self.data_config_),
            positions=positions,
            batch_size=self.batch_size,
            device=self.device_,
            precision=self.precision_,
            num_workers=self.num_workers,
            channels_last=_backbone.prefers_channels_last(self.backbone_),
            verbose=shows_progress(self.verbose),
            on_rows=on_rows,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _embedding(self.backbone_, self.layer_, self.pooling_, x)

    def _onnx_network(self):
        network = _Embedding(self.backbone_, self.layer_, self.pooling_)
        return network, "features", {"layer": self.layer_, "pooling": self.pooling_}

    def _check_backbone(self, backbone, blocks) -> None:
        if self.pooling == "token" and not _backbone.has_prefix_tokens(backbone):
            raise ValueError(
                f"pooling='token' needs a model with a class token; {self.model!r} has none. "
                "Use pooling='avg', 'max' or 'avgmax'."
            )
        if blocks is not None:
            n = _backbone.n_blocks(backbone)
            bad = [b for b in blocks if not -n <= b < n]
            if bad:
                raise ValueError(
                    f"layer={self.layer!r} is out of range: {self.model!r} has {n} blocks, "
                    f"so block indices must lie in [{-n}, {n - 1}]."
                )

    def _cache_namespace(self) -> dict:
        """Everything besides the image that a row depends on, from fitted state only
        (a parameter set after ``fit`` changes nothing until the next ``fit``)."""
        return namespace(
            model=_backbone.describe(self.backbone_)["name"],
            weights=self.weights_fingerprint_,
            data_config=self.data_config_,
            layer=self.layer_,
            pooling=self.pooling_,
            precision=self.precision_,
            device=self.device_,
        )

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def _placed_on(self, state: dict, device) -> dict:
        return {
            **state,
            "backbone_": _to_device(state["backbone_"], device),
            "device_": device,
            "precision_": resolve_precision(state["precision"], device),
        }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags


class _Embedding(torch.nn.Module):
    """The embedding network as one module (what ONNX files hold)."""

    def __init__(self, backbone, layer, pooling):
        super().__init__()
        self.backbone, self.layer, self.pooling = backbone, layer, pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _embedding(self.backbone, self.layer, self.pooling, x)


def _embedding(backbone, layer, pooling, x: torch.Tensor) -> torch.Tensor:
    """The embedding of a batch at ``layer`` (None, "logits" or block indices) of the
    fitted ``backbone``."""
    if layer is None:
        return _backbone.forward_pooled(backbone, x)
    if layer == "logits":
        return _backbone.forward_logits(backbone, x)
    return _backbone.forward_blocks(backbone, x, layer, pooling or "avg")


def _copy_layer(layer):
    """``layer`` as fitted state: None, "logits" or a list of block indices."""
    blocks = _block_indices(layer)
    return layer if blocks is None else blocks


def _block_indices(layer):
    if layer is None or layer == "logits":
        return None
    if isinstance(layer, Integral):
        return [int(layer)]
    if not layer or not all(isinstance(b, Integral) for b in layer):
        raise ValueError(
            f"layer={layer!r} is not valid: expected None, 'logits', an int or a "
            "non-empty list of ints (block indices)."
        )
    return [int(b) for b in layer]


def _to_device(model, device):
    """The model on ``device``, in eval mode, channels-last if it is a convolutional net."""
    model = model.to(device).eval()
    if _backbone.prefers_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    return model


def top_imagenet_labels(scores, k=3):
    """Turn ImageNet-1k class scores into the ``k`` most likely label names.

    Parameters
    ----------
    scores : array-like of shape (n_images, 1000)
        Logits (or probabilities) from ``PretrainedFeatureExtractor(layer="logits")`` on
        an ImageNet-1k model.
    k : int, default=3
        How many labels per image.

    Returns
    -------
    labels : list of list of (str, float)
        For each image, ``k`` pairs of label name and softmax probability, most likely
        first.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import top_imagenet_labels
    >>> scores = np.zeros((1, 1000)); scores[0, 817] = 10.0
    >>> top_imagenet_labels(scores, k=1)[0][0][0]
    'sports car, sport car'
    """
    if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ValueError(f"k={k!r} is not valid: expected an int between 1 and 1000.")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 1000:
        raise ValueError(
            f"Expected ImageNet-1k scores of shape (n_images, 1000), got {scores.shape}. "
            "Use layer='logits' with a model trained on ImageNet-1k."
        )
    names = _backbone.imagenet_label_names()
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :k]
    return [[(names[j], float(p[j])) for j in row] for row, p in zip(top, probs, strict=True)]

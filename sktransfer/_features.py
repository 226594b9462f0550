"""PretrainedFeatureExtractor: images in, embeddings of a pretrained timm backbone out."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _backbone
from ._cache import EmbeddingCache, cache_namespace
from ._device import dumps_torch, loadable_device, loads_torch, resolve_device, resolve_precision
from ._images import as_images
from ._inference import run_batches
from ._params import HasMethods, Interval, Options, validate_params

PRECISIONS = ("auto", "float32", "float16", "bfloat16")


class PretrainedFeatureExtractor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed images with a pretrained timm backbone.

    A scikit-learn transformer: images in, a float32 array of embeddings out. The backbone
    is loaded in :meth:`fit` (never in ``__init__``), runs in eval mode under
    ``torch.inference_mode``, batched, on the best available device, and preprocesses
    images exactly as the model was trained (size, crop, interpolation, mean and std from
    its pretrained config). With ``memory``, each image is embedded once across all the
    folds and candidates of a grid search.

    Parameters
    ----------
    model : str, default="efficientnet_b0.ra_in1k"
        Any timm model name, with or without a pretrained tag (``"resnet50.a1_in1k"``).
    weights : "pretrained", None or path-like, default="pretrained"
        ``"pretrained"``: timm's weights from the Hugging Face hub or its local cache
        (``HF_HUB_OFFLINE=1`` is honoured). ``None``: random initialisation. A path: a
        local checkpoint (``.pth``, ``.pt``, ``.bin``, ``.safetensors``), a bare state dict
        or one under ``state_dict`` / ``model``; when key names differ but every tensor's
        order and shape match, it loads by order. A file that does not fit raises.
    layer : None, "logits", int or list of int, default=None
        ``None``: the pooled pre-logits features (the usual embedding). ``"logits"``: the
        original head's class scores (see :func:`top_imagenet_labels`). An int or a list
        of ints: the outputs of those blocks (feature levels of timm's
        ``forward_intermediates``; negative indices count from the top), each pooled,
        concatenated.
    pooling : {"avg", "max", "avgmax", "token"} or None, default=None
        Global pooling. ``None`` keeps the model's own pooling for pooled features and
        averages intermediate blocks. ``"token"`` takes the class token of models that
        have one (vision transformers).
    image_size : int or (int, int), default=None
        Override the model's input size (e.g. a low resolution for speed). The crop
        fraction, interpolation and normalisation stay the model's.
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    precision : {"auto", "float32", "float16", "bfloat16"}, default="auto"
        ``"auto"``: autocast to half precision on GPUs, float32 on the CPU.
    num_workers : int, default=0
        Threads that decode and preprocess images while the model runs.
    memory : str, path-like, joblib.Memory or None, default=None
        Folder of the per-image embedding cache (see the user guide). ``None``: no cache.
    verbose : bool, default=False
        Show a progress bar while embedding.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The loaded timm model, in eval mode, on ``device_``.
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
        "pooling": [None, Options(set(_backbone.POOLINGS))],
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "precision": [Options(set(PRECISIONS))],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "memory": [None, str, os.PathLike, HasMethods(("cache",))],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model="efficientnet_b0.ra_in1k",
        *,
        weights="pretrained",
        layer=None,
        pooling=None,
        image_size=None,
        batch_size=32,
        device="auto",
        precision="auto",
        num_workers=0,
        memory=None,
        verbose=False,
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.memory = memory
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
        if X is not None:
            as_images(X)  # validate early; files are checked to exist
        blocks = self._block_indices()
        pooled = blocks is None
        backbone = _backbone.create_backbone(
            self.model,
            self.weights,
            pooling=self.pooling if pooled else None,
            image_size=self.image_size,
        )
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
        self.device_ = resolve_device(self.device)
        self.precision_ = resolve_precision(self.precision, self.device_)
        self.backbone_ = _to_device(backbone, self.device_)
        self.data_config_ = _backbone.data_config(backbone, self.image_size)
        self.weights_fingerprint_ = _backbone.weights_fingerprint(backbone)
        probe = torch.zeros(1, *self.data_config_["input_size"], device=self.device_)
        with torch.inference_mode():
            self.n_features_out_ = int(self._forward(probe).shape[1])
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
        source = as_images(X)
        n = len(source)
        if self.memory is None:
            return self._embed(source, np.arange(n))

        cache = EmbeddingCache(self.memory, self._cache_namespace())
        keys = [source.key(i) for i in range(n)]
        return cache.rows(keys, lambda positions, _: self._embed(source, positions))

    def _embed(self, source, positions) -> np.ndarray:
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
            verbose=bool(self.verbose),
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return _backbone.forward_pooled(self.backbone_, x)
        if self.layer == "logits":
            return _backbone.forward_logits(self.backbone_, x)
        return _backbone.forward_blocks(
            self.backbone_, x, self._block_indices(), self.pooling or "avg"
        )

    def _block_indices(self):
        if self.layer is None or self.layer == "logits":
            return None
        if isinstance(self.layer, Integral):
            return [int(self.layer)]
        if not self.layer or not all(isinstance(b, Integral) for b in self.layer):
            raise ValueError(
                f"layer={self.layer!r} is not valid: expected None, 'logits', an int or a "
                "non-empty list of ints (block indices)."
            )
        return [int(b) for b in self.layer]

    def _cache_namespace(self) -> dict:
        return cache_namespace(
            model=self.model,
            weights=self.weights_fingerprint_,
            data_config=self.data_config_,
            layer=self.layer,
            pooling=self.pooling,
            precision=self.precision_,
            device=self.device_,
        )

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __getstate__(self):
        state = super().__getstate__()
        if "backbone_" in state:
            state = dict(state)
            state["backbone_"] = dumps_torch(state["backbone_"])
        return state

    def __setstate__(self, state):
        if isinstance(state.get("backbone_"), bytes):
            device = loadable_device(state["device_"])
            state = dict(state)
            state["backbone_"] = loads_torch(state["backbone_"], device).eval()
            state["device_"] = device
            state["precision_"] = resolve_precision(state["precision"], device)
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []
        return tags


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

"""The scikit-learn face shared by the fine-tuners: parameters, ``fit`` and prediction.

A subclass says what its targets are (``FineTunedEstimator._encode_targets``: a
``Targets`` with its objective) and how the network's outputs
become predictions; this module builds the ``TrainingPlan``, hands it
to the fine-tuning core (``sktransfer._finetuning.train``) and runs prediction.
"""

from __future__ import annotations

import contextlib
import os
import random
from abc import abstractmethod
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _backbone
from ._cache import existing_memory
from ._device import resolve_device, resolve_precision
from ._export import ExportsOnnx
from ._finetuning import (
    ADAPTATIONS,
    Caching,
    Regularisation,
    Runtime,
    Schedule,
    Stage,
    TrainingData,
    TrainingPlan,
    adaptation_for,
    train,
)
from ._finetuning._callbacks import named_callbacks
from ._finetuning._net import OPTIMIZERS
from ._finetuning._objectives import Objective
from ._finetuning._predict import (
    TTA_VIEWS,
    ViewAverage,
    outputs_from_frozen_rows,
    outputs_of_images,
)
from ._images import as_images
from ._options import PREPROCESSING_PRESETS
from ._params import (
    CALL_PARAMETERS,
    HasMethods,
    Interval,
    Options,
    parse_bytes,
    validate_params,
)
from ._progress import shows_progress
from ._state import StoredAsData, swap_in
from ._targets import (
    Targets,
    check_sample_weight,
    source_weights,
    split_domains,
    take_rows,
    training_weights,
)
from ._warnings import warn


class FineTunedEstimator(StoredAsData, ExportsOnnx, BaseEstimator):
    """Base class of [`FineTunedClassifier`][sktransfer.FineTunedClassifier] and
    [`FineTunedRegressor`][sktransfer.FineTunedRegressor].

    Not meant to be used directly: the subclasses declare the parameters (their
    ``__init__`` lists the shared ones first, in the order of ``_param_constraints``)
    and document them (``sktransfer._docs``).
    """

    _param_constraints: dict = {
        "model": [str],
        # a path, or a fitted fine-tuner (bare or frozen) to start from: sequential transfer
        "weights": [str, os.PathLike, None, HasMethods(("save_weights",))],
        "freeze_depth": [
            Interval(Integral, 0, None, closed="left"),
            Interval("real_not_int", 0, 1, closed="both"),
            Options({"all"}),
        ],
        "head_epochs": [Interval(Integral, 0, None, closed="left"), Options({"converge"})],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "optimizer": [Options(set(OPTIMIZERS))],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "augment": [None, Options(set(_backbone.AUGMENT_POLICIES)), callable],
        "batchnorm": [Options({"auto", "frozen", "train"})],
        "ema": [None, Interval(Real, 0, 1, closed="neither")],
        "tta": [None, Options(set(TTA_VIEWS) - {None})],
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "preprocessing": [None, Options(set(PREPROCESSING_PRESETS)), dict],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": [None, Interval(Integral, 1, None, closed="left")],
        "drop_rate": [Interval(Real, 0, 1, closed="left")],
        "device": [str, torch.device],
        "precision": [Options({"auto", "float32", "bfloat16", "float16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
        "memory": [None, str, os.PathLike, HasMethods(("cache",))],
        "cache_key": [Options({"stat", "content"})],
        "activation_budget": [Interval(Integral, 0, None, closed="left"), str],
        "domain_adaptation": [None, Options(set(ADAPTATIONS))],
        "adaptation_weight": [Interval(Real, 0, None, closed="left")],
    }

    # ------------------------------------------------------- what subclasses say

    @abstractmethod
    def _encode_targets(self, y, n_images: int, sample_weight) -> Targets:
        """``y`` checked and encoded, with the objective it trains for."""

    @abstractmethod
    def _masked_rows(self, y, n_images) -> np.ndarray:
        """Rows of ``y`` whose label is masked (unlabelled target images)."""

    @abstractmethod
    def _output_activation(self):
        """What turns the network's outputs into predictions (and the exported output)."""

    def _objective(self, targets: Targets, data: TrainingData) -> Objective:
        """The objective of this fit, which may depend on the training split."""
        return targets.objective

    def _mixing(self) -> dict:
        """The mixup and cutmix alphas, for estimators that have them."""
        return {}

    def _check_combinations(self, targets: Targets, weights) -> None:
        if self.early_stopping is not None and self.validation_fraction == 0:
            raise ValueError(
                f"early_stopping={self.early_stopping} needs a validation set; set "
                "validation_fraction > 0 (e.g. 0.1) or early_stopping=None."
            )

    # ------------------------------------------------------------------------- fit

    def fit(self, X, y, sample_weight=None, sample_domain=None):
        """Fine-tune the backbone on images ``X`` with targets ``y``.

        A fit that fails (a bad image, Ctrl-C) leaves the previous model working.

        Parameters
        ----------
        X : images
            A numpy array of images, a list of PIL images or arrays, or file paths.
        y : array-like of shape (n_images,) or (n_images, n_outputs)
            For a classifier, class labels (any type scikit-learn accepts), a 2-D 0/1
            indicator matrix (multilabel) or several label columns (multi-task); for a
            regressor, finite real numbers, one column per output.
        sample_weight : array-like of shape (n_images,), default=None
            Non-negative weights of the images in the loss (scaled to a mean of 1 over
            the training images). Routed by ``GridSearchCV`` and, with metadata routing
            on, requested by ``set_fit_request(sample_weight=True)``.
        sample_domain : array-like of shape (n_images,), default=None
            skada's convention: positive for labelled source images, negative for
            unlabelled target images (their ``y`` is ignored). None: every image is a
            source, unless ``domain_adaptation`` is set, when images labelled -1 (NaN
            for a regressor) are the target. Without ``domain_adaptation``, target
            images are left out (the source-only baseline).

        Returns
        -------
        self : estimator
            The fitted estimator.
        """
        validate_params(self)
        source = as_images(X, key=self.cache_key)
        weights = check_sample_weight(sample_weight, len(source))
        n_images = len(source)
        source, y, weights, target = self._split_domains(source, y, weights, sample_domain)
        targets = self._encoded_source_targets(y, len(source), weights, n_images)
        self._check_combinations(targets, weights)
        device = resolve_device(self.device)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        adaptation = adaptation_for(self.domain_adaptation, self.adaptation_weight)
        with _seeded(seed, device):
            preprocessing = self._preprocessing()
            backbone, identity = self._start_backbone(
                targets.n_outputs, seed, adaptation, preprocessing
            )
            backbone.to(device)
            groups = _backbone.block_groups(backbone)
            frozen_groups = self._resolve_freeze_depth(len(groups))
            cfg = _backbone.data_config(backbone, self.image_size, preprocessing)
            train_idx, valid_idx = self._split(targets.stratify, len(source), seed)
            weights = training_weights(weights, train_idx, len(valid_idx))
            data = TrainingData(
                source, targets.y, train_idx, valid_idx, cfg, targets.n_outputs, weights, target
            )
            plan = self._plan(
                backbone, groups, frozen_groups, device, targets, data, identity, adaptation
            )
            result = train(plan, backbone, data)
        for warning in result.warnings:
            warn(warning)
        fitted = {
            **targets.attributes,
            "backbone_": result.backbone,
            "device_": device,
            "history_": result.history,
            "precision_": resolve_precision(self.precision, device),
            "n_groups_": len(groups),
            "frozen_groups_": frozen_groups,
            "data_config_": cfg,
            "cached_activations_": result.cached,
            "cache_identity_": identity,
            "batchnorm_adapted_": adaptation is not None and adaptation.adapts_batchnorm,
        }
        swap_in(self, fitted)  # the previous model works until this fit has succeeded
        return self

    def _split_domains(self, source, y, weights, sample_domain):
        """The labelled source images (with their targets and weights) and the
        unlabelled target images: None without ``domain_adaptation``, which ignores
        them (skada's source-only baseline)."""
        masked = None
        if sample_domain is None and self.domain_adaptation is not None:
            masked = self._masked_rows(y, len(source))
        source_rows, target_rows = split_domains(sample_domain, len(source), masked)
        if self.domain_adaptation is not None and len(target_rows) == 0:
            raise ValueError(
                f"domain_adaptation={self.domain_adaptation!r} needs unlabelled target "
                "images, and there are none: mark them with a negative sample_domain (or "
                "a label of -1, NaN for real targets), or set domain_adaptation=None."
            )
        if len(source_rows) == 0:
            raise ValueError("Every image is a target image: fit needs labelled source images.")
        if len(target_rows) == 0:
            return source, y, weights, None
        target = source.subset(target_rows) if self.domain_adaptation is not None else None
        weights = source_weights(weights, source_rows, len(target_rows))
        return source.subset(source_rows), take_rows(y, source_rows), weights, target

    def _encoded_source_targets(self, y, n_source: int, weights, n_images: int) -> Targets:
        """``_encode_targets`` of the source rows; an error says when target rows
        were set aside first, since its counts and indices are then the source's."""
        try:
            return self._encode_targets(y, n_source, weights)
        except ValueError as exc:
            if n_source == n_images:
                raise
            raise ValueError(
                f"{exc} (Only the {n_source} labelled source images are encoded: the "
                f"{n_images - n_source} target images, marked by sample_domain < 0 or a label "
                "of -1 / NaN, were set aside first, and indices count source images only.)"
            ) from exc

    def _start_backbone(self, n_outputs: int, seed: int, adaptation, preprocessing):
        """The starting backbone with a new head of ``n_outputs``, and what names its
        weights in the cache (given the fit's ``adaptation`` strategy); ``preprocessing``:
        what the fit states of the weights (``_preprocessing``)."""
        backbone = _backbone.create_backbone(
            self.model,
            self._starting_weights(),
            image_size=self.image_size,
            drop_rate=self.drop_rate,
            seed=seed,
            preprocessing=preprocessing,
        )
        identity = self._cache_identity(backbone, adaptation)
        _backbone.reset_head(backbone, n_outputs)
        return backbone, identity

    def _starting_weights(self):
        """``weights`` as ``_backbone.create_backbone`` takes them: a fitted
        fine-tuner (sequential transfer) gives its fine-tuned backbone's state dict."""
        donor = self.weights
        if isinstance(donor, FrozenEstimator):
            donor = donor.estimator
        if not isinstance(donor, FineTunedEstimator):
            return donor
        if not hasattr(donor, "backbone_"):
            raise ValueError(
                f"weights= is an unfitted {type(donor).__name__}: sequential transfer starts "
                "from a fitted fine-tuner. Fit it first. Inside GridSearchCV or after "
                "clone(), estimator parameters are cloned unfitted: pass "
                "sklearn.frozen.FrozenEstimator(fitted) or a file saved by "
                "fitted.save_weights(path) instead."
            )
        return donor.backbone_.state_dict()

    def _preprocessing(self):
        """``preprocessing``, or, when it is None and the fit starts from a fitted
        fine-tuner, the preprocessing that fine-tuner's weights were trained with."""
        donor = self.weights
        if isinstance(donor, FrozenEstimator):
            donor = donor.estimator
        if self.preprocessing is not None or not hasattr(donor, "data_config_"):
            return self.preprocessing
        return {k: v for k, v in donor.data_config_.items() if k != "input_size"}

    def save_weights(self, path):
        """Save the fine-tuned backbone's weights (head included) to a file.

        The file is a plain state dict of tensors: ``.safetensors`` (needs the
        ``safetensors`` package) or ``.pt``/``.pth`` (``torch.save``). ``weights=path``
        of any sktransfer estimator loads it: a new fine-tune starts from this one
        (sequential transfer; the head is replaced), and a
        [`PretrainedFeatureExtractor`][sktransfer.PretrainedFeatureExtractor] embeds with the
        fine-tuned backbone.

        Parameters
        ----------
        path : str or path-like
            Where to write; the suffix chooses the format.

        Returns
        -------
        path : pathlib.Path
            The file written.
        """
        check_is_fitted(self)
        path = Path(os.fspath(path))
        _backbone.save_state(self.backbone_, path)
        return path

    def _plan(self, backbone, groups, frozen_groups, device, targets, data, identity, adaptation):
        """The training plan: stages, learning rates and every knob, as plain values."""
        precision = resolve_precision(self.precision, device)
        return TrainingPlan(
            schedule=Schedule(
                self._stages(backbone, groups, frozen_groups),
                self.batch_size,
                self.optimizer,
                self.weight_decay,
                self.early_stopping,
                converge_head=self.head_epochs == "converge",
            ),
            objective=self._objective(targets, data),
            runtime=Runtime(
                device,
                "bfloat16" if precision == "float16" else precision,
                self.num_workers,
                shows_progress(self.verbose),
                tuple(named_callbacks(self.callbacks or ())),
            ),
            regularisation=Regularisation(
                self.augment, self._freeze_batchnorm(), ema=self.ema, **self._mixing()
            ),
            caching=Caching(
                self.memory,
                identity,
                parse_bytes(self.activation_budget, "activation_budget"),
            ),
            adaptation=adaptation,
        )

    def _stages(self, backbone, groups, frozen_groups) -> tuple[Stage, ...]:
        """The head stage, then the unfrozen groups at layer-wise decaying rates."""
        head_only = (tuple(_backbone.classifier_names(backbone)), self.lr)
        head_epochs = 1 if self.head_epochs == "converge" else self.head_epochs
        if frozen_groups == len(groups):
            return (Stage("head", (head_only,), head_epochs + self.max_epochs),)
        lr_groups = tuple(
            (tuple(names), self.lr * self.layer_decay ** (len(groups) - g))
            for g, names in enumerate(groups)
            if g >= frozen_groups
        )
        return (
            Stage("head", (head_only,), head_epochs),
            Stage("finetune", (*lr_groups, head_only), self.max_epochs),
        )

    def _cache_identity(self, backbone, adaptation) -> dict:
        """What names the pretrained backbone in the cache (hashing weights costs a
        pass over them, so only with a cache). A method that adapts BatchNorm layers
        changes the frozen layers, so its fits share no rows."""
        if self.memory is None or (adaptation is not None and adaptation.adapts_batchnorm):
            return {}
        return {
            "model": _backbone.describe(backbone)["name"],
            "weights": _backbone.weights_fingerprint(backbone),
        }

    def _freeze_batchnorm(self) -> bool:
        if self.batchnorm == "auto":
            return self.weights is not None
        return self.batchnorm == "frozen"

    def _resolve_freeze_depth(self, n_groups: int) -> int:
        depth = self.freeze_depth
        if isinstance(depth, str):
            return n_groups
        if isinstance(depth, Integral):
            if depth > n_groups:
                raise ValueError(
                    f"freeze_depth={depth} is out of range: {self.model!r} has {n_groups} "
                    f"block groups, so an int freeze_depth must lie in [0, {n_groups}]. Use "
                    "'all' to train only the head, or a float in [0, 1] for a fraction."
                )
            return int(depth)
        return int(round(float(depth) * n_groups))

    def _split(self, stratify, n: int, seed: int):
        if self.validation_fraction == 0:
            return np.arange(n), np.array([], dtype=np.int64)
        try:
            train_idx, valid_idx = train_test_split(
                np.arange(n),
                test_size=self.validation_fraction,
                stratify=stratify,
                random_state=seed,
            )
        except ValueError as exc:
            raise ValueError(
                f"Cannot hold out validation_fraction={self.validation_fraction} of "
                f"{n} images with every class on both sides: {exc}. Use a larger "
                "fraction, more images, or validation_fraction=0."
            ) from exc
        return np.sort(train_idx), np.sort(valid_idx)

    # --------------------------------------------------------------------- predict

    def _predict_outputs(self, X, activation) -> np.ndarray:
        """``activation`` of the network's outputs for images ``X``, averaged over the
        ``tta`` views; from the cached frozen rows when ``memory`` was set at fit (the
        cache used only where its folder exists: prediction never creates one)."""
        check_is_fitted(self)
        validate_params(self, CALL_PARAMETERS)
        source = as_images(X, key=self.cache_key)
        run = dict(
            batch_size=self.batch_size,
            device=self.device_,
            precision=self.precision_,
            num_workers=self.num_workers,
            verbose=shows_progress(self.verbose),
        )
        if self.memory is not None and self.cache_identity_ and self.tta is None:
            return outputs_from_frozen_rows(
                self.backbone_,
                source,
                activation,
                frozen=self._frozen_names(),
                head_only=self.frozen_groups_ == self.n_groups_,
                cfg=self.data_config_,
                caching=Caching(existing_memory(self.memory), self.cache_identity_),
                **run,
            )
        network = ViewAverage(self.backbone_, TTA_VIEWS[self.tta], activation)
        return outputs_of_images(network, source, self.data_config_, **run)

    def _placed_on(self, state: dict, device) -> dict:
        """Loaded (or moved) onto ``device``, the precision is resolved for it."""
        placed = super()._placed_on(state, device)
        return {**placed, "precision_": resolve_precision(state["precision"], device)}

    def _onnx_network(self):
        network = ViewAverage(self.backbone_, TTA_VIEWS[self.tta], self._output_activation())
        return network, self._onnx_output, self._onnx_metadata()

    def _onnx_metadata(self) -> dict:
        return {}

    def _frozen_names(self) -> set[str]:
        groups = _backbone.block_groups(self.backbone_)
        return {n for names in groups[: self.frozen_groups_] for n in names}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.target_tags.multi_output = True
        return tags


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """torch, numpy's global generator (timm's Mixup draws from it) and Python's
    ``random`` (timm's augmentations) seeded with ``seed`` inside the block, and all
    three restored after it."""
    fork_devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    python_rng, numpy_rng = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002 (the global one is what timm uses)
            yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)  # noqa: NPY002


def init_params(estimator, arguments: dict) -> None:
    """The body of a fine-tuner's ``__init__``: store each parameter of its signature
    under its own name, and nothing else (``arguments``: the ``__init__``'s ``locals()``)."""
    for name in type(estimator)._param_constraints:
        setattr(estimator, name, arguments[name])

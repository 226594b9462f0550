"""The scikit-learn face shared by the fine-tuners: parameters, ``fit`` and prediction.

A subclass says what its targets are (``_encode_targets``: a :class:`Targets`), which
loss options it adds to the plan (``_loss_options``) and how the network's outputs
become predictions; this module builds the plain :class:`TrainingPlan`, hands it to the
training core (:mod:`sktransfer._trainer`) and runs prediction, caching included.
"""

from __future__ import annotations

import contextlib
import os
import random
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
from ._device import resolve_device, resolve_precision
from ._export import ExportsOnnx
from ._images import as_images
from ._inference import array_batches, parse_bytes, run_batches, run_forward
from ._params import HasMethods, Interval, Options, validate_params
from ._state import StoredAsData, swap_in
from ._targets import Targets, check_sample_weight, split_domains, take_rows
from ._trainer import (
    Stage,
    Trainer,
    TrainingData,
    TrainingPlan,
    bottom_of_images,
    cached_rows,
)
from ._training import OPTIMIZERS


class FineTunedEstimator(StoredAsData, ExportsOnnx, BaseEstimator):
    """Base class of :class:`FineTunedClassifier` and :class:`FineTunedRegressor`.

    Not meant to be used directly: the subclasses document the parameters.
    """

    _param_constraints: dict = {
        "model": [str],
        "weights": [str, os.PathLike, None],
        "freeze_depth": [
            Interval(Integral, 0, None, closed="left"),
            Interval("real_not_int", 0, 1, closed="both"),
            Options({"all"}),
        ],
        "head_epochs": [Interval(Integral, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "optimizer": [Options(set(OPTIMIZERS))],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "augment": [None, Options(set(_backbone.AUGMENT_POLICIES)), callable],
        "batchnorm": [Options({"auto", "frozen", "train"})],
        "ema": [None, Interval(Real, 0, 1, closed="neither")],
        "tta": [None, Options({"hflip", "flips"})],
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
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
        "domain_adaptation": [None, Options({"adabn", "coral", "mmd", "dann"})],
        "adaptation_weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        model,
        *,
        weights,
        freeze_depth,
        head_epochs,
        max_epochs,
        lr,
        layer_decay,
        optimizer,
        weight_decay,
        batch_size,
        augment,
        batchnorm,
        ema,
        tta,
        image_size,
        validation_fraction,
        early_stopping,
        drop_rate,
        device,
        precision,
        num_workers,
        random_state,
        verbose,
        callbacks,
        memory,
        cache_key,
        activation_budget,
        domain_adaptation,
        adaptation_weight,
    ):
        self.model = model
        self.weights = weights
        self.freeze_depth = freeze_depth
        self.head_epochs = head_epochs
        self.max_epochs = max_epochs
        self.lr = lr
        self.layer_decay = layer_decay
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.augment = augment
        self.batchnorm = batchnorm
        self.ema = ema
        self.tta = tta
        self.image_size = image_size
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.drop_rate = drop_rate
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.memory = memory
        self.cache_key = cache_key
        self.activation_budget = activation_budget
        self.domain_adaptation = domain_adaptation
        self.adaptation_weight = adaptation_weight

    # ------------------------------------------------------- what subclasses say

    def _encode_targets(self, y, n_images: int, sample_weight) -> Targets:
        raise NotImplementedError

    def _loss_options(self, targets: Targets, data: TrainingData) -> dict:
        """Extra :class:`TrainingPlan` fields of this kind of estimator."""
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

        Parameters
        ----------
        X : images
            A numpy array of images, a list of PIL images or arrays, or file paths.
        y : array-like of shape (n_images,) or (n_images, n_outputs)
            The targets (see the estimator's description).
        sample_weight : array-like of shape (n_images,), default=None
            Non-negative weights of the images in the loss (scaled to a mean of 1 over
            the training images). Routed by ``GridSearchCV`` and, with metadata routing
            on, requested by ``set_fit_request(sample_weight=True)``.
        sample_domain : array-like of shape (n_images,), default=None
            skada's convention: positive numbers for (labelled) source images, negative
            for unlabelled target images, whose ``y`` is ignored. None: every image is a
            source, unless ``domain_adaptation`` is set, when images whose label is
            masked (-1 for classes, NaN for real targets) are the target.

        Returns
        -------
        self : estimator
            The fitted estimator.
        """
        validate_params(self)
        source = as_images(X, key=self.cache_key)
        weights = check_sample_weight(sample_weight, len(source))
        source, y, weights, target = self._split_domains(source, y, weights, sample_domain)
        targets = self._encode_targets(y, len(source), weights)
        self._check_combinations(targets, weights)

        device = resolve_device(self.device)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        fork_devices = [torch.cuda.current_device()] if device.type == "cuda" else []
        python_rng = random.getstate()  # timm's augmentations draw from `random`
        with torch.random.fork_rng(devices=fork_devices), _restoring(python_rng):
            torch.manual_seed(seed)
            random.seed(seed)
            backbone, identity = self._start_backbone(targets.n_outputs, seed)
            backbone.to(device)
            groups = _backbone.block_groups(backbone)
            frozen_groups = self._resolve_freeze_depth(len(groups))
            cfg = _backbone.data_config(backbone, self.image_size)
            train_idx, valid_idx = self._split(targets.stratify, len(source), seed)
            if weights is not None:
                weights = weights / weights[train_idx].mean()
            data = TrainingData(
                source, targets.y, train_idx, valid_idx, cfg, targets.n_outputs, weights, target
            )
            plan = self._plan(backbone, groups, frozen_groups, device, targets, data, identity)
            trainer = Trainer(plan, backbone, data)
            net, history = trainer.run()

        fitted = {
            **targets.attributes,
            "backbone_": net.module_.backbone.eval(),  # the skorch net stays behind
            "device_": device,
            "history_": history,
            "n_groups_": len(groups),
            "frozen_groups_": frozen_groups,
            "data_config_": cfg,
            "cached_activations_": trainer.cached,
            "cache_identity_": identity,
            "batchnorm_adapted_": plan.domain_adaptation == "adabn",
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
        weights = None if weights is None else weights[source_rows]
        return source.subset(source_rows), take_rows(y, source_rows), weights, target

    def _masked_rows(self, y, n_images) -> np.ndarray:
        raise NotImplementedError

    def _start_backbone(self, n_outputs: int, seed: int):
        """The starting backbone with a new head of ``n_outputs``, and what names its
        weights in the cache."""
        backbone = _backbone.create_backbone(
            self.model,
            self._starting_weights(),
            image_size=self.image_size,
            drop_rate=self.drop_rate,
            seed=seed,
        )
        identity = self._cache_identity(backbone)
        _backbone.reset_head(backbone, n_outputs)
        return backbone, identity

    def _starting_weights(self):
        """``weights`` as :func:`_backbone.create_backbone` takes them: a fitted
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

    def save_weights(self, path):
        """Save the fine-tuned backbone's weights (head included) to a file.

        The file is a plain state dict of tensors: ``.safetensors`` (needs the
        ``safetensors`` package) or ``.pt``/``.pth`` (``torch.save``). ``weights=path``
        of any sktransfer estimator loads it: a new fine-tune starts from this one
        (sequential transfer; the head is replaced), and a
        :class:`PretrainedFeatureExtractor` embeds with the fine-tuned backbone.

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

    def _plan(self, backbone, groups, frozen_groups, device, targets, data, identity):
        """The training plan: stages, learning rates and every knob, as plain values."""
        precision = resolve_precision(self.precision, device)
        return TrainingPlan(
            stages=self._stages(backbone, groups, frozen_groups),
            loss=targets.loss,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            device=device,
            precision="bfloat16" if precision == "float16" else precision,
            augment=self.augment,
            freeze_batchnorm=self._freeze_batchnorm(),
            ema=self.ema,
            early_stopping=self.early_stopping,
            num_workers=self.num_workers,
            verbose=bool(self.verbose),
            callbacks=tuple(self.callbacks or ()),
            activation_budget=parse_bytes(self.activation_budget, "activation_budget"),
            memory=self.memory,
            cache_identity=identity,
            domain_adaptation=self.domain_adaptation,
            adaptation_weight=self.adaptation_weight,
            **self._loss_options(targets, data),
        )

    def _stages(self, backbone, groups, frozen_groups) -> tuple[Stage, ...]:
        """The head stage, then the unfrozen groups at layer-wise decaying rates."""
        head_only = (tuple(_backbone.classifier_names(backbone)), self.lr)
        if frozen_groups == len(groups):
            return (Stage("head", (head_only,), self.head_epochs + self.max_epochs),)
        lr_groups = tuple(
            (tuple(names), self.lr * self.layer_decay ** (len(groups) - g))
            for g, names in enumerate(groups)
            if g >= frozen_groups
        )
        return (
            Stage("head", (head_only,), self.head_epochs),
            Stage("finetune", (*lr_groups, head_only), self.max_epochs),
        )

    def _cache_identity(self, backbone) -> dict:
        """What names the pretrained backbone in the cache (hashing weights costs a
        pass over them, so only with a cache). AdaBN changes the frozen layers, so its
        fits share no rows."""
        if self.memory is None or self.domain_adaptation == "adabn":
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
        ``tta`` views; from the cached frozen rows when ``memory`` was set at fit."""
        check_is_fitted(self)
        source = as_images(X, key=self.cache_key)
        backbone, device = self.backbone_, self.device_
        if self.memory is not None and self.cache_identity_ and self.tta is None:
            return self._outputs_from_frozen_rows(source, backbone, device, activation)
        return run_batches(
            _ViewAverage(backbone, TTA_VIEWS[self.tta], activation),
            source,
            _backbone.eval_transform(self.data_config_),
            batch_size=self.batch_size,
            device=device,
            precision=resolve_precision(self.precision, device),
            num_workers=self.num_workers,
            channels_last=_backbone.prefers_channels_last(backbone),
            verbose=bool(self.verbose),
            desc="predicting",
        )

    def _outputs_from_frozen_rows(self, source, backbone, device, activation):
        """Predict from the cached output of the frozen layers (they never changed), so
        a search scores each image's frozen bottom once; only the top runs."""
        split = _backbone.split_forward(
            backbone,
            self._frozen_names(backbone),
            self.data_config_["input_size"],
            head_only=self.frozen_groups_ == self.n_groups_,
        )
        positions = np.arange(len(source))
        compute = bottom_of_images(
            split,
            source,
            positions,
            _backbone.eval_transform(self.data_config_),
            batch_size=self.batch_size,
            device=device,
            num_workers=self.num_workers,
        )
        rows = cached_rows(
            split.point,
            source,
            positions,
            compute,
            memory=self.memory,
            identity=self.cache_identity_,
            cfg=self.data_config_,
            device=device,
        )
        return run_forward(
            lambda a: activation(split.top(a).float()),
            array_batches(rows, self.batch_size),
            len(rows),
            device=device,
            precision=resolve_precision(self.precision, device),
            channels_last=_backbone.prefers_channels_last(backbone),
        )

    def _onnx_network(self):
        network = _ViewAverage(self.backbone_, TTA_VIEWS[self.tta], self._output_activation())
        return network, self._onnx_output, self._onnx_metadata()

    def _output_activation(self):
        """What turns the network's outputs into the exported output."""
        raise NotImplementedError

    def _onnx_metadata(self) -> dict:
        return {}

    def _frozen_names(self, backbone) -> set[str]:
        groups = _backbone.block_groups(backbone)
        return {n for names in groups[: self.frozen_groups_] for n in names}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.target_tags.multi_output = True
        return tags


@contextlib.contextmanager
def _restoring(python_rng_state):
    try:
        yield
    finally:
        random.setstate(python_rng_state)


def _hflip(x):
    return torch.flip(x, dims=(-1,))


def _vflip(x):
    return torch.flip(x, dims=(-2,))


def _hvflip(x):
    return torch.flip(x, dims=(-2, -1))


def _identity(x):
    return x


class _ViewAverage(torch.nn.Module):
    """``activation(backbone(view(x)))`` averaged over ``views``: a fine-tuner's
    prediction as one module (what prediction runs and what ONNX files hold)."""

    def __init__(self, backbone, views, activation):
        super().__init__()
        self.backbone, self.views, self.activation = backbone, tuple(views), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.activation(self.backbone(view(x)).float()) for view in self.views]
        return sum(outputs) / len(outputs)


# A fitted fine-tuner, bare or frozen, is a starting point too (sequential transfer).
FineTunedEstimator._param_constraints["weights"] += [FineTunedEstimator, FrozenEstimator]


# Test-time augmentation: the views of each image whose predictions are averaged.
TTA_VIEWS = {
    None: (_identity,),
    "hflip": (_identity, _hflip),
    "flips": (_identity, _hflip, _vflip, _hvflip),
}

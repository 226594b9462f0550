"""FineTunedClassifier: fine-tune a timm backbone inside scikit-learn, with skorch."""

from __future__ import annotations

import contextlib
import os
import random
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from . import _backbone
from ._device import resolve_device, resolve_precision
from ._images import as_images
from ._inference import array_batches, parse_bytes, run_batches, run_forward
from ._params import HasMethods, Interval, Options, validate_params
from ._targets import check_sample_weight, encode_labels
from ._trainer import (
    Stage,
    Trainer,
    TrainingData,
    TrainingPlan,
    bottom_of_images,
    cached_rows,
)
from ._training import OPTIMIZERS


class FineTunedClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained timm backbone as a scikit-learn classifier.

    A new head replaces the model's classifier. Training runs in two stages, each with
    its own optimizer and warm-up + cosine schedule: first ``head_epochs`` epochs train
    the head on a frozen backbone, then the block groups above ``freeze_depth`` unfreeze
    for ``max_epochs`` epochs, with learning rates that shrink by ``layer_decay`` group by
    group towards the input. skorch runs the loop (the net is kept as ``net_``).

    Frozen layers are never paid for twice: without augmentation their output is the
    same every epoch, so the images are decoded and the frozen bottom computed once per
    fit (the head stage's features are derived from it), and only the trainable top runs
    in each epoch. With ``memory``, they are computed once per image for a whole grid
    search. Frozen parameters and BatchNorm statistics stay exactly unchanged.

    Parameters
    ----------
    model : str, default="efficientnet_b0.ra_in1k"
        Any timm model name, with or without a pretrained tag.
    weights : "pretrained", None or path-like, default="pretrained"
        As in :class:`PretrainedFeatureExtractor`: hub weights (cache-aware), random
        initialisation, or a local checkpoint.
    freeze_depth : int, float or "all", default=0
        How many of the backbone's block groups (timm's ``group_matcher(coarse=True)``:
        stem, stages, final norm) stay frozen, counted from the input. ``0``: everything
        trains after the head stage; ``"all"``: only the new head trains. A float in
        [0, 1] is a fraction of the groups, so one grid means the same on different
        architectures (``0.5`` freezes the lower half).
    head_epochs : int, default=1
        Epochs of the first stage (the new head on a frozen backbone).
    max_epochs : int, default=4
        Epochs of the second stage (unfrozen groups and head).
    lr : float, default=3e-4
        Learning rate of the head; the top unfrozen group gets ``lr * layer_decay``, the
        next ``lr * layer_decay**2`` and so on. The defaults of ``lr``, ``layer_decay``,
        ``max_epochs`` and ``batchnorm`` were chosen by a sweep on real data
        (``benchmarks/sweep_defaults.md``): with pretrained BatchNorm statistics kept,
        ``lr=1e-3`` and above did worse.
    layer_decay : float, default=0.85
        Learning-rate decay per block group, from the head towards the input.
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
    weight_decay : float, default=0.01
        Applied to weights, not to biases or normalisation parameters.
    batch_size : int, default=32
    augment : None, "light", "randaugment", "trivialaugment" or callable, default=None
        Training-time augmentation (timm's ``create_transform``); validation and
        prediction never see it. ``"light"``: random resized crops (70-100 % of the area)
        and horizontal flips; ``"randaugment"`` adds RandAugment (timm's
        ``rand-m9-mstd0.5-inc1-mmax9``), ``"trivialaugment"`` TrivialAugment (one random
        operation at a random magnitude). A callable takes and returns a PIL image (e.g. a
        torchvision transform) and runs before the model's own preprocessing. With
        augmentation, frozen activations cannot be cached.
    batchnorm : {"auto", "frozen", "train"}, default="auto"
        BatchNorm layers in the trainable groups: ``"frozen"`` keeps their running
        statistics the pretrained ones (eval mode) while their affine weights train;
        ``"train"`` updates them from each batch as usual. ``"auto"``: frozen with
        pretrained or file weights, train with ``weights=None``. Frozen groups always
        keep theirs.
    mixup : float, default=0.0
        Alpha of mixup (timm's ``Mixup``); ``0`` turns it off. With cached activations
        the mix happens at the cut (manifold mixup).
    cutmix : float, default=0.0
        Alpha of CutMix; ``0`` turns it off. Stages trained on pooled features (the head
        stage without augmentation) use mixup only. Both need an even ``batch_size``.
    ema : float or None, default=None
        Decay of an exponential moving average of the weights (timm's ``ModelEmaV3``,
        with warm-up), in (0, 1); the average is the model kept for prediction.
    tta : {None, "hflip", "flips"}, default=None
        Test-time augmentation in ``predict_proba``: probabilities averaged over the
        image and its horizontal flip, or over all four horizontal/vertical flips.
    image_size : int or (int, int), default=None
        Override the model's input size.
    validation_fraction : float, default=0.0
        Fraction of the training data held out (stratified) to score each epoch. ``0``:
        no hidden split, every image trains.
    early_stopping : int or None, default=None
        Patience in epochs on the validation loss; the best epoch's weights are restored.
        Needs ``validation_fraction > 0``.
    class_weight : dict, "balanced" or None, default=None
        Class weights of the loss (single-label targets only).
    label_smoothing : float, default=0.0
    drop_rate : float, default=0.0
        Dropout before the new head.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        ``"auto"``: bfloat16 autocast on GPUs that support it, float32 on the CPU.
        float16 is used for inference only; training then autocasts to bfloat16.
    num_workers : int, default=0
        Workers that decode images (threads for inference, processes for augmented
        training batches).
    random_state : int, RandomState or None, default=None
        Seeds the head, the validation split, shuffling and dropout; fixes CPU training.
    verbose : bool, default=False
        Print skorch's epoch table and a progress bar.
    callbacks : list of skorch callbacks or None, default=None
        Extra callbacks, added to every stage.
    memory : str, path-like, joblib.Memory or None, default=None
        Folder of the per-image activation cache, shared with
        :class:`PretrainedFeatureExtractor` (same keys): frozen activations at each cut
        point, and pooled features, are computed once per image across fits.
    activation_budget : int or str, default="4GiB"
        How much memory the frozen activations of one fit may take (bytes, or a string
        such as ``"500MB"``); beyond it they spill to memory-mapped files (under
        ``memory``, or a temporary folder) that are deleted after the fit.

    Attributes
    ----------
    classes_ : ndarray
        The class labels (for multilabel targets, the column indices).
    net_ : skorch.NeuralNet
        The net that ran the last stage, trimmed for prediction; ``net_.module_.backbone``
        is the fine-tuned timm model.
    history_ : list of dict
        Per-epoch records of both stages: ``epoch``, ``stage``, ``train_loss``,
        ``train_acc`` (without mixing), ``dur``, and with validation ``valid_loss`` and
        ``valid_acc``. See :class:`TrainingHistoryDisplay`.
    n_groups_ : int
        Number of block groups of the backbone.
    frozen_groups_ : int
        How many groups stayed frozen in the second stage.
    data_config_ : dict
        The preprocessing.
    cached_activations_ : bool
        Whether frozen activations were computed once and reused (per stage).
    cache_identity_ : dict
        The model name and a hash of the starting weights: with ``memory``, what names
        the frozen layers' rows in the cache (empty without ``memory`` at fit).

    See Also
    --------
    PretrainedFeatureExtractor : Frozen embeddings for any scikit-learn model.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTunedClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    >>> y = np.array(["cat", "dog"] * 8)
    >>> clf = FineTunedClassifier(model="test_efficientnet", weights=None,
    ...                           max_epochs=1, image_size=32, random_state=0)
    >>> clf.fit(X, y).predict(X[:2]).shape
    (2,)
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
        "mixup": [Interval(Real, 0, None, closed="left")],
        "cutmix": [Interval(Real, 0, None, closed="left")],
        "ema": [None, Interval(Real, 0, 1, closed="neither")],
        "tta": [None, Options({"hflip", "flips"})],
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": [None, Interval(Integral, 1, None, closed="left")],
        "class_weight": [None, dict, Options({"balanced"})],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "drop_rate": [Interval(Real, 0, 1, closed="left")],
        "device": [str, torch.device],
        "precision": [Options({"auto", "float32", "bfloat16", "float16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
        "memory": [None, str, os.PathLike, HasMethods(("cache",))],
        "activation_budget": [Interval(Integral, 0, None, closed="left"), str],
    }

    def __init__(
        self,
        model="efficientnet_b0.ra_in1k",
        *,
        weights="pretrained",
        freeze_depth=0,
        head_epochs=1,
        max_epochs=4,
        lr=3e-4,
        layer_decay=0.85,
        optimizer="adamw",
        weight_decay=0.01,
        batch_size=32,
        augment=None,
        batchnorm="auto",
        mixup=0.0,
        cutmix=0.0,
        ema=None,
        tta=None,
        image_size=None,
        validation_fraction=0.0,
        early_stopping=None,
        class_weight=None,
        label_smoothing=0.0,
        drop_rate=0.0,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=False,
        callbacks=None,
        memory=None,
        activation_budget="4GiB",
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
        self.mixup = mixup
        self.cutmix = cutmix
        self.ema = ema
        self.tta = tta
        self.image_size = image_size
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.drop_rate = drop_rate
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.memory = memory
        self.activation_budget = activation_budget

    # ------------------------------------------------------------------------- fit

    def fit(self, X, y, sample_weight=None):
        """Fine-tune the backbone on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : images
            A numpy array of images, a list of PIL images or arrays, or file paths.
        y : array-like of shape (n_images,) or (n_images, n_labels)
            Class labels (any type scikit-learn accepts), or a 2-D 0/1 indicator matrix
            for multilabel targets.
        sample_weight : array-like of shape (n_images,), default=None
            Non-negative weights of the images in the loss (scaled to a mean of 1 over
            the training images). Routed by ``GridSearchCV`` and, with metadata routing
            on, requested by ``set_fit_request(sample_weight=True)``.

        Returns
        -------
        self : FineTunedClassifier
        """
        validate_params(self)
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)  # a fit that fails below leaves no half-fitted state
        source = as_images(X)
        classes, y_enc, multilabel = encode_labels(y, len(source))
        weights = check_sample_weight(sample_weight, len(source))
        self._check_combinations(multilabel, weights)

        device = resolve_device(self.device)
        precision = resolve_precision(self.precision, device)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        fork_devices = [torch.cuda.current_device()] if device.type == "cuda" else []
        python_rng = random.getstate()  # timm's augmentations draw from `random`
        with torch.random.fork_rng(devices=fork_devices), _restoring(python_rng):
            torch.manual_seed(seed)
            random.seed(seed)
            backbone = _backbone.create_backbone(
                self.model,
                self.weights,
                image_size=self.image_size,
                drop_rate=self.drop_rate,
                seed=seed,
            )
            identity = self._cache_identity(backbone)
            n_outputs = y_enc.shape[1] if multilabel else len(classes)
            _backbone.reset_head(backbone, n_outputs)
            backbone.to(device)
            groups = _backbone.block_groups(backbone)
            frozen_groups = self._resolve_freeze_depth(len(groups))
            cfg = _backbone.data_config(backbone, self.image_size)
            train_idx, valid_idx = self._split(y_enc, multilabel, seed)
            if weights is not None:
                weights = weights / weights[train_idx].mean()
            data = TrainingData(
                source, y_enc, train_idx, valid_idx, cfg, multilabel, n_outputs, weights
            )
            plan = self._plan(
                backbone, groups, frozen_groups, device, precision, data, identity, classes
            )
            trainer = Trainer(plan, backbone, data)
            net, history = trainer.run()

        net.module_.split = None
        net.module_.eval()
        net.trim_for_prediction()

        self.classes_ = classes
        self.n_groups_ = len(groups)
        self.frozen_groups_ = frozen_groups
        self.data_config_ = cfg
        self.cached_activations_ = trainer.cached
        self.cache_identity_ = identity
        self.multilabel_ = multilabel
        self.history_ = history
        self.net_ = net
        return self

    def _plan(self, backbone, groups, frozen_groups, device, precision, data, identity, classes):
        """The training plan: stages, learning rates and every knob, as plain values."""
        head_only = (tuple(_backbone.classifier_names(backbone)), self.lr)
        if frozen_groups == len(groups):
            stages = (Stage("head", (head_only,), self.head_epochs + self.max_epochs),)
        else:
            lr_groups = tuple(
                (tuple(names), self.lr * self.layer_decay ** (len(groups) - g))
                for g, names in enumerate(groups)
                if g >= frozen_groups
            )
            stages = (
                Stage("head", (head_only,), self.head_epochs),
                Stage("finetune", (*lr_groups, head_only), self.max_epochs),
            )
        return TrainingPlan(
            stages=stages,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            device=device,
            precision="bfloat16" if precision == "float16" else precision,
            augment=self.augment,
            freeze_batchnorm=self._freeze_batchnorm(),
            mixup=self.mixup,
            cutmix=self.cutmix,
            label_smoothing=self.label_smoothing,
            class_weight=self._class_weight(classes, data),
            ema=self.ema,
            early_stopping=self.early_stopping,
            num_workers=self.num_workers,
            verbose=bool(self.verbose),
            callbacks=tuple(self.callbacks or ()),
            activation_budget=parse_bytes(self.activation_budget, "activation_budget"),
            memory=self.memory,
            cache_identity=identity,
        )

    def _cache_identity(self, backbone) -> dict:
        """What names the pretrained backbone in the cache (hashing weights costs a
        pass over them, so only with a cache)."""
        if self.memory is None:
            return {}
        return {"model": self.model, "weights": _backbone.weights_fingerprint(backbone)}

    def _freeze_batchnorm(self) -> bool:
        if self.batchnorm == "auto":
            return self.weights is not None
        return self.batchnorm == "frozen"

    def _class_weight(self, classes, data):
        """Class weights from the training labels (validation labels excluded)."""
        if self.class_weight is None:
            return None
        labels = classes[data.y[data.train_idx]]
        return torch.as_tensor(
            compute_class_weight(self.class_weight, classes=classes, y=labels),
            dtype=torch.float32,
        )

    def _check_combinations(self, multilabel, weights):
        if self.early_stopping is not None and self.validation_fraction == 0:
            raise ValueError(
                f"early_stopping={self.early_stopping} needs a validation set; set "
                "validation_fraction > 0 (e.g. 0.1) or early_stopping=None."
            )
        if self.class_weight is not None and multilabel:
            raise ValueError("class_weight is not supported for multilabel targets.")
        mixing = self.mixup > 0 or self.cutmix > 0
        if mixing and self.batch_size % 2:
            raise ValueError(
                f"mixup and cutmix mix each batch with itself reversed, so they need an "
                f"even batch_size; got batch_size={self.batch_size}."
            )
        if mixing and weights is not None:
            raise ValueError(
                "sample_weight cannot be combined with mixup or cutmix (a mixed image has "
                "two weights); set mixup=0 and cutmix=0, or drop sample_weight."
            )

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

    def _split(self, y_enc, multilabel, seed):
        n = len(y_enc)
        if self.validation_fraction == 0:
            return np.arange(n), np.array([], dtype=np.int64)
        try:
            train_idx, valid_idx = train_test_split(
                np.arange(n),
                test_size=self.validation_fraction,
                stratify=None if multilabel else y_enc,
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

    def predict_proba(self, X):
        """Class probabilities; columns follow ``classes_``.

        Parameters
        ----------
        X : images

        Returns
        -------
        proba : ndarray of shape (n_images, n_classes)
            Softmax probabilities, or per-label sigmoid probabilities for multilabel
            targets; with ``tta``, averaged over the flipped views.
        """
        check_is_fitted(self)
        source = as_images(X)
        device = torch.device(self.net_.device)
        backbone = self.net_.module_.eval().backbone
        activation = torch.sigmoid if self.multilabel_ else _softmax
        if self.memory is not None and self.cache_identity_ and self.tta is None:
            return self._proba_from_frozen_rows(source, backbone, device, activation)
        views = TTA_VIEWS[self.tta]

        def forward(x):
            return sum(activation(backbone(view(x)).float()) for view in views) / len(views)

        return run_batches(
            forward,
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

    def _proba_from_frozen_rows(self, source, backbone, device, activation):
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

    def _frozen_names(self, backbone) -> set[str]:
        groups = _backbone.block_groups(backbone)
        return {n for names in groups[: self.frozen_groups_] for n in names}

    def predict(self, X):
        """Predicted labels (a 0/1 indicator matrix for multilabel targets)."""
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[proba.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        return tags


@contextlib.contextmanager
def _restoring(python_rng_state):
    try:
        yield
    finally:
        random.setstate(python_rng_state)


def _softmax(logits):
    return torch.softmax(logits, dim=1)


def _hflip(x):
    return torch.flip(x, dims=(-1,))


def _vflip(x):
    return torch.flip(x, dims=(-2,))


def _hvflip(x):
    return torch.flip(x, dims=(-2, -1))


def _identity(x):
    return x


# Test-time augmentation: the views of each image whose predictions are averaged.
TTA_VIEWS = {
    None: (_identity,),
    "hflip": (_identity, _hflip),
    "flips": (_identity, _hflip, _vflip, _hvflip),
}

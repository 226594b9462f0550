"""FineTunedClassifier: fine-tune a timm backbone inside scikit-learn, with skorch."""

from __future__ import annotations

import contextlib
import os
import random
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import EarlyStopping, LRScheduler, ProgressBar
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from torch import nn

from . import _backbone
from ._device import resolve_device, resolve_precision
from ._images import ImageDataset, as_images
from ._inference import run_batches
from ._training import (
    OPTIMIZERS,
    StageName,
    TransferModule,
    TransferNet,
    ValidAccuracy,
    warmup_cosine,
)

# Cached frozen activations above this size are streamed instead (recomputed each epoch).
MAX_CACHED_BYTES = int(os.environ.get("SKTRANSFER_MAX_CACHED_BYTES", 4 * 2**30))


class FineTunedClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained timm backbone as a scikit-learn classifier.

    A new head replaces the model's classifier. Training runs in two stages, each with
    its own optimizer and warm-up + cosine schedule: first ``head_epochs`` epochs train
    the head on a frozen backbone, then the block groups above ``freeze_depth`` unfreeze
    for ``max_epochs`` epochs, with learning rates that shrink by ``layer_decay`` group by
    group towards the input. skorch runs the loop (the net is kept as ``net_``).

    Frozen layers are never paid for twice: without augmentation their output is the
    same every epoch, so it is computed once per fit and only the trainable top runs in
    each epoch. Frozen parameters and BatchNorm statistics stay exactly unchanged.

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
    lr : float, default=1e-3
        Learning rate of the head; the top unfrozen group gets ``lr * layer_decay``, the
        next ``lr * layer_decay**2`` and so on.
    layer_decay : float, default=0.7
        Learning-rate decay per block group, from the head towards the input.
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
    weight_decay : float, default=0.01
        Applied to weights, not to biases or normalisation parameters.
    batch_size : int, default=32
    augment : None, "light" or callable, default=None
        Training-time augmentation; validation and prediction never see it. ``"light"``:
        random resized crops (70-100 % of the area) and horizontal flips. A callable takes
        and returns a PIL image (e.g. a torchvision transform) and runs before the model's
        own preprocessing. With augmentation, frozen activations cannot be cached.
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

    Attributes
    ----------
    classes_ : ndarray
        The class labels (for multilabel targets, the column indices).
    net_ : skorch.NeuralNet
        The net that ran the last stage, trimmed for prediction; ``net_.module_.backbone``
        is the fine-tuned timm model.
    history_ : list of dict
        Per-epoch records of both stages: ``stage``, ``train_loss``, and with validation
        ``valid_loss`` and ``valid_acc``.
    n_groups_ : int
        Number of block groups of the backbone.
    frozen_groups_ : int
        How many groups stayed frozen in the second stage.
    data_config_ : dict
        The preprocessing.
    cached_activations_ : bool
        Whether frozen activations were computed once and reused (per stage).

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

    _parameter_constraints: dict = {
        "model": [str],
        "weights": [str, os.PathLike, None],
        "freeze_depth": [
            Interval(Integral, 0, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="both"),
            StrOptions({"all"}),
        ],
        "head_epochs": [Interval(Integral, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "augment": [None, StrOptions({"light"}), callable],
        "image_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": [None, Interval(Integral, 1, None, closed="left")],
        "class_weight": [None, dict, StrOptions({"balanced"})],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "drop_rate": [Interval(Real, 0, 1, closed="left")],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
    }

    def __init__(
        self,
        model="efficientnet_b0.ra_in1k",
        *,
        weights="pretrained",
        freeze_depth=0,
        head_epochs=1,
        max_epochs=4,
        lr=1e-3,
        layer_decay=0.7,
        optimizer="adamw",
        weight_decay=0.01,
        batch_size=32,
        augment=None,
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

    # ------------------------------------------------------------------------- fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fine-tune the backbone on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : images
            A numpy array of images, a list of PIL images or arrays, or file paths.
        y : array-like of shape (n_images,) or (n_images, n_labels)
            Class labels (any type scikit-learn accepts), or a 2-D 0/1 indicator matrix
            for multilabel targets.

        Returns
        -------
        self : FineTunedClassifier
        """
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)  # a fit that fails below leaves no half-fitted state
        source = as_images(X)
        classes, y_enc, multilabel = _encode_labels(y, len(source))
        if self.early_stopping is not None and self.validation_fraction == 0:
            raise ValueError(
                f"early_stopping={self.early_stopping} needs a validation set; set "
                "validation_fraction > 0 (e.g. 0.1) or early_stopping=None."
            )
        if self.class_weight is not None and multilabel:
            raise ValueError("class_weight is not supported for multilabel targets.")

        device = resolve_device(self.device)
        precision = resolve_precision(self.precision, device)
        train_precision = "bfloat16" if precision == "float16" else precision
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
            _backbone.reset_head(backbone, len(classes) if not multilabel else y_enc.shape[1])
            backbone.to(device)
            groups = _backbone.block_groups(backbone)
            frozen_groups = self._resolve_freeze_depth(len(groups))
            cfg = _backbone.data_config(backbone, self.image_size)
            train_idx, valid_idx = self._split(y_enc, multilabel, seed)
            trainer = _Trainer(
                self,
                backbone,
                source,
                y_enc,
                train_idx,
                valid_idx,
                cfg,
                device,
                train_precision,
                multilabel,
                classes,
            )
            head_only = [(_backbone.classifier_names(backbone), self.lr)]
            stages = []
            if frozen_groups == len(groups):
                stages.append(("head", head_only, self.head_epochs + self.max_epochs))
            else:
                stages.append(("head", head_only, self.head_epochs))
                lr_groups = [
                    (names, self.lr * self.layer_decay ** (len(groups) - g))
                    for g, names in enumerate(groups)
                    if g >= frozen_groups
                ]
                stages.append(("finetune", lr_groups + head_only, self.max_epochs))
            net, history = None, []
            for name, lr_groups, epochs in stages:
                if epochs > 0:
                    net = trainer.run_stage(name, lr_groups, epochs)
                    history.extend(_epoch_records(net.history, offset=len(history)))

        if net is None:  # zero epochs: an untrained head, still a usable (trimmed) net
            net = trainer.build_net(head_only, "head", split=None, epochs=0, n_train=0)
            net.initialize()
        net.module_.split = None
        net.module_.eval()
        net.trim_for_prediction()

        self.classes_ = classes
        self.n_groups_ = len(groups)
        self.frozen_groups_ = frozen_groups
        self.data_config_ = cfg
        self.cached_activations_ = trainer.cached
        self.multilabel_ = multilabel
        self.history_ = history
        self.net_ = net
        return self

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
            targets.
        """
        logits = torch.from_numpy(self._logits(X))
        if self.multilabel_:
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        """Predicted labels (a 0/1 indicator matrix for multilabel targets)."""
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[proba.argmax(axis=1)]

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        source = as_images(X)
        device = torch.device(self.net_.device)
        module = self.net_.module_.eval()
        return run_batches(
            module.backbone,
            source,
            _backbone.eval_transform(self.data_config_),
            batch_size=self.batch_size,
            device=device,
            precision=resolve_precision(self.precision, device),
            num_workers=self.num_workers,
            verbose=bool(self.verbose),
            desc="predicting",
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        return tags


class _Trainer:
    """One fit's data, caches and stage runs (kept out of the estimator's state)."""

    def __init__(
        self,
        est,
        backbone,
        source,
        y,
        train_idx,
        valid_idx,
        cfg,
        device,
        precision,
        multilabel,
        classes,
    ):
        self.est, self.backbone, self.source, self.y = est, backbone, source, y
        self.train_idx, self.valid_idx = train_idx, valid_idx
        self.cfg, self.device, self.precision = cfg, device, precision
        self.multilabel, self.classes = multilabel, classes
        self.eval_tf = _backbone.eval_transform(cfg)
        self.cached = False

    def run_stage(self, name, lr_groups, epochs):
        est = self.est
        trainable = {n for names, _ in lr_groups for n in names}
        frozen = {n for n, _ in self.backbone.named_parameters()} - trainable
        split = None
        if est.augment is None:
            head_only = trainable == set(_backbone.classifier_names(self.backbone))
            split = _backbone.split_forward(
                self.backbone, frozen, self.cfg["input_size"], head_only=head_only
            )
        train_X, valid_X, split = self._inputs(split)
        self.cached = self.cached or split is not None
        net = self.build_net(lr_groups, name, split, epochs, len(self.train_idx))
        if valid_X is not None:
            net.set_params(train_split=predefined_split(valid_X))
        net.fit(train_X, None)
        return net

    def _inputs(self, split):
        """Training and validation data, and the split they are for: cached activations
        of the frozen bottom when there is one (and they fit in memory), else images
        decoded on the fly (and no split)."""
        y_t = torch.as_tensor(self.y, dtype=torch.float32 if self.multilabel else torch.long)
        n_valid = len(self.valid_idx)
        if split is not None:
            probe = self._bottom(split, self.train_idx[:1])
            if probe.nbytes * len(self.y) <= MAX_CACHED_BYTES:
                train = Dataset(self._bottom(split, self.train_idx), y_t[self.train_idx])
                valid = (
                    Dataset(self._bottom(split, self.valid_idx), y_t[self.valid_idx])
                    if n_valid
                    else None
                )
                return train, valid, split
        aug = self.est.augment
        if aug is None:
            train_tf = self.eval_tf
        elif aug == "light":
            train_tf = _backbone.train_transform(self.cfg)
        else:
            train_tf = _Compose(aug, self.eval_tf)
        train = ImageDataset(self.source.subset(self.train_idx), train_tf, y_t[self.train_idx])
        valid = (
            ImageDataset(self.source.subset(self.valid_idx), self.eval_tf, y_t[self.valid_idx])
            if n_valid
            else None
        )
        return train, valid, None

    def _bottom(self, split, positions) -> torch.Tensor:
        self.backbone.eval()
        out = run_batches(
            split.bottom,
            self.source,
            self.eval_tf,
            positions=positions,
            batch_size=self.est.batch_size,
            device=self.device,
            precision="float32",
            num_workers=self.est.num_workers,
        )
        return torch.from_numpy(out.reshape(len(positions), *out.shape[1:]))

    def build_net(self, lr_groups, name, split, epochs, n_train):
        est = self.est
        module = TransferModule(self.backbone, lr_groups, split, est.weight_decay)
        steps_per_epoch = max(1, -(-n_train // est.batch_size))
        total = steps_per_epoch * max(1, epochs)
        callbacks = [
            ("stage", StageName(name)),
            (
                "lr_schedule",
                LRScheduler(
                    policy=torch.optim.lr_scheduler.LambdaLR,
                    lr_lambda=warmup_cosine(total, warmup_steps=min(steps_per_epoch, total // 10)),
                    step_every="batch",
                ),
            ),
        ]
        if len(self.valid_idx):
            callbacks.append(("valid_acc", ValidAccuracy(self.multilabel)))
            if est.early_stopping is not None:
                callbacks.append(
                    (
                        "early_stopping",
                        EarlyStopping(patience=est.early_stopping, load_best=True),
                    )
                )
        if est.verbose:
            callbacks.append(("progress", ProgressBar()))
        callbacks += [(f"user_{i}", cb) for i, cb in enumerate(est.callbacks or [])]
        return TransferNet(
            module=module,
            criterion=self._criterion(),
            optimizer=OPTIMIZERS[est.optimizer],
            lr=est.lr,
            max_epochs=epochs,
            batch_size=est.batch_size,
            train_split=None,
            callbacks=callbacks,
            device=str(self.device),
            precision=self.precision,
            iterator_train__shuffle=True,
            iterator_train__num_workers=0 if split is not None else est.num_workers,
            iterator_valid__num_workers=0 if split is not None else est.num_workers,
            verbose=int(bool(est.verbose)),
        )

    def _criterion(self):
        est = self.est
        if self.multilabel:
            return nn.BCEWithLogitsLoss()
        weight = None
        if est.class_weight is not None:
            labels = self.classes[self.y[self.train_idx]]  # validation labels excluded
            weight = torch.as_tensor(
                compute_class_weight(est.class_weight, classes=self.classes, y=labels),
                dtype=torch.float32,
            )
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=est.label_smoothing)


@contextlib.contextmanager
def _restoring(python_rng_state):
    try:
        yield
    finally:
        random.setstate(python_rng_state)


class _Compose:
    """A user's PIL augmentation followed by the model's preprocessing (picklable)."""

    def __init__(self, augment, preprocess):
        self.augment, self.preprocess = augment, preprocess

    def __call__(self, image):
        return self.preprocess(self.augment(image))


def _encode_labels(y, n_images):
    """Validate ``y`` and encode it: (classes, encoded targets, is_multilabel)."""
    if y is None:
        raise ValueError("FineTunedClassifier needs labels: y is None.")
    values = np.asarray(y, dtype=object)
    if len(values) != n_images:
        raise ValueError(
            f"X and y have different lengths: {n_images} images but {len(values)} labels."
        )
    # Scan as objects: np.asarray would turn None or NaN among strings into classes.
    for i, v in enumerate(values.ravel()):
        if v is None:
            raise ValueError(f"y contains None (first at index {i}); every image needs a label.")
        if isinstance(v, float | np.floating) and not np.isfinite(v):
            raise ValueError(f"y contains NaN or infinite values (first at index {i}).")
    y_arr = np.asarray(y)
    kind = type_of_target(y_arr, input_name="y")
    if kind == "multilabel-indicator":
        if y_arr.shape[1] < 2:
            raise ValueError("A multilabel y needs at least two label columns.")
        return np.arange(y_arr.shape[1]), y_arr.astype(np.float32), True
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"y looks like a {kind} target; FineTunedClassifier expects class labels "
            "(binary or multiclass, 1-D) or a 2-D 0/1 multilabel indicator matrix."
        )
    encoder = LabelEncoder().fit(y_arr.ravel())
    if len(encoder.classes_) < 2:
        raise ValueError(
            f"y has a single class ({encoder.classes_[0].item()!r}); a classifier needs at "
            "least two classes."
        )
    return encoder.classes_, encoder.transform(y_arr.ravel()), False


def _epoch_records(history, offset):
    records = []
    for i, row in enumerate(history):
        record = {k: v for k, v in row.items() if k not in ("batches", "dur")}
        record["epoch"] = offset + i + 1
        record["dur"] = row.get("dur")
        records.append(record)
    return records

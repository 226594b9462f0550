"""The training core: runs a plain :class:`TrainingPlan` on a backbone and its data.

The estimator builds the plan (stages, learning rates, regularisation, device) and the
data (:class:`TrainingData`); nothing here reads an estimator. Frozen layers are paid
for once: without augmentation, the images are decoded and the frozen bottom of the
deepest stage computed once per fit (and, with a cache, once per search); the head
stage's pooled features are derived from those activations, not from the images.
"""

from __future__ import annotations

import math
import os
import reprlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from skorch.callbacks import (
    Callback,
    EarlyStopping,
    LRScheduler,
    PassthroughScoring,
    ProgressBar,
)
from skorch.helper import predefined_split
from torch import nn

from . import _backbone
from ._adabn import adapt_batchnorm, batchnorm_layers
from ._cache import EmbeddingCache, cache_namespace, memory_location
from ._images import ImageSource
from ._inference import BudgetAllocator, array_batches, empty_rows, run_batches, run_forward
from ._training import (
    OPTIMIZERS,
    Accuracy,
    AdversarialLoss,
    DomainAlignment,
    DomainClassifier,
    FeatureLoss,
    MultiTaskCrossEntropy,
    StageName,
    TaskHits,
    TransferModule,
    TransferNet,
    WeightAverage,
    label_hits,
    multilabel_hits,
    warmup_cosine,
)

# Domain adaptation by a loss between the pooled features of source and target batches
# (skada's deep losses): deep CORAL (covariances), DAN's multi-kernel MMD, and DANN's
# adversarial domain classifier.
ALIGNMENT_LOSSES = ("coral", "mmd", "dann")

# Losses by target kind: class labels, 0/1 label columns, several label columns (one
# head each), standardised real targets.
LABEL_LOSSES = ("cross_entropy", "multitask_cross_entropy")  # integer targets
CLASSIFICATION_LOSSES = (*LABEL_LOSSES, "binary_cross_entropy")
LOSSES = (*CLASSIFICATION_LOSSES, "squared_error", "huber")


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: its name, (parameter names, lr) groups and epochs."""

    name: str
    lr_groups: tuple
    epochs: int


@dataclass(frozen=True)
class TrainingPlan:
    """How to train: plain values, resolved by the estimator."""

    stages: tuple[Stage, ...]
    loss: str  # one of LOSSES
    batch_size: int
    optimizer: str
    weight_decay: float
    device: torch.device
    precision: str
    augment: object = None  # None, a preset name of _backbone.AUGMENT_POLICIES or a callable
    freeze_batchnorm: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    class_weight: torch.Tensor | None = None
    task_sizes: tuple = ()  # outputs per task (multi-task heads)
    task_weights: tuple = ()  # weight of each task's loss
    ema: float | None = None
    early_stopping: int | None = None
    num_workers: int = 0
    verbose: bool = False
    callbacks: tuple = ()
    activation_budget: int = 4 * 2**30
    memory: object = None
    cache_identity: dict = field(default_factory=dict)  # model name, weights fingerprint
    domain_adaptation: str | None = None  # None, "adabn" or one of ALIGNMENT_LOSSES
    adaptation_weight: float = 1.0  # weight of the alignment loss


@dataclass(frozen=True)
class TrainingData:
    """The images, encoded targets, optional sample weights and the split."""

    source: ImageSource
    y: np.ndarray
    train_idx: np.ndarray
    valid_idx: np.ndarray
    cfg: dict
    n_outputs: int
    sample_weight: np.ndarray | None = None
    target: ImageSource | None = None  # unlabelled target images (domain adaptation)

    @property
    def positions(self) -> np.ndarray:
        """The images used in training order: training rows, then validation rows."""
        return np.concatenate([self.train_idx, self.valid_idx])


class Trainer:
    """Run a plan: ``run()`` returns the skorch net of the last stage and the history."""

    def __init__(self, plan: TrainingPlan, backbone: nn.Module, data: TrainingData):
        self.plan, self.backbone, self.data = plan, backbone, data
        self.eval_tf = _backbone.eval_transform(data.cfg)
        self.channels_last = _backbone.prefers_channels_last(backbone)
        self.cached = False
        self.aligning = False  # set by run(): an alignment loss on target batches
        self.user_callbacks = named_callbacks(plan.callbacks)
        self._allocate = BudgetAllocator(plan.activation_budget, _spill_folder(plan.memory))

    def run(self):
        plan = self.plan
        adabn = plan.domain_adaptation == "adabn" and self.data.target is not None
        self.aligning = plan.domain_adaptation in ALIGNMENT_LOSSES and self.data.target is not None
        if self.aligning:
            self._check_alignment()
        if adabn and not batchnorm_layers(self.backbone):
            raise ValueError(
                "domain_adaptation='adabn' recomputes BatchNorm statistics on the target "
                "images, and this model has no BatchNorm layer (vision transformers use "
                "LayerNorm). Choose a convolutional model, or domain_adaptation=None."
            )
        ema = _backbone.weight_average(self.backbone, plan.ema) if plan.ema else None
        extra = [("ema", WeightAverage(ema))] if ema is not None else []
        try:
            training = any(stage.epochs > 0 for stage in plan.stages)
            inputs = self._cached_inputs() if plan.augment is None and training else None
            net, history = None, []
            for stage in plan.stages:
                if stage.epochs > 0:
                    net = self._run_stage(stage, inputs, extra)
                    history.extend(_epoch_records(net.history, offset=len(history)))
        finally:
            self._allocate.close()
        if ema is not None:
            self.backbone.load_state_dict(ema.module.state_dict())
        if adabn:  # target activations normalised as the source's were
            self._adapt_batchnorm()
        if net is None:  # zero epochs: an untrained head, still a usable (trimmed) net
            net = self._build_net(plan.stages[0], None, 0, [])
            net.initialize()
        return net, history

    # ------------------------------------------------------------------ stages

    def _run_stage(self, stage: Stage, inputs, extra):
        split = None
        if inputs is not None:
            split, arrays = inputs["pooled"] if self._head_only(stage) else inputs["bottom"]
            self.cached = True
            train, valid = self._array_datasets(arrays)
        else:
            train, valid = self._image_datasets()
        alignment = domain_head = None
        if self.aligning and not self._head_only(stage):
            target = inputs["target"] if inputs is not None else self._target_images()
            extra = [*extra, ("domain_loss", PassthroughScoring("domain_loss", on_train=True))]
            if self.plan.domain_adaptation == "dann":
                domain_head = DomainClassifier(_backbone.pooled_width(self.backbone))
            alignment = self._alignment(target, domain_head, stage)
        net = self._build_net(stage, split, len(self.data.train_idx), extra, alignment, domain_head)
        if valid is not None:
            net.set_params(train_split=predefined_split(valid))
        net.fit(train, None)
        if domain_head is not None:
            _warn_if_adversary_diverged(net.history)
        return net

    def _adapt_batchnorm(self) -> None:
        adapt_batchnorm(
            self.backbone,
            self.data.source,
            self.data.target,
            self.eval_tf,
            batch_size=self.plan.batch_size,
            device=self.plan.device,
            num_workers=self.plan.num_workers,
        )

    def _check_alignment(self):
        require_skada(self.plan.domain_adaptation)
        last = [s for s in self.plan.stages if s.epochs > 0][-1:]
        if not last or self._head_only(last[0]):
            raise ValueError(
                f"domain_adaptation={self.plan.domain_adaptation!r} aligns the features of "
                "trainable backbone layers, and only the head trains (freeze_depth='all', "
                "or max_epochs=0). Lower freeze_depth, or use domain_adaptation='adabn'."
            )
        if len(self.data.target) < 2:
            raise ValueError(
                f"domain_adaptation={self.plan.domain_adaptation!r} compares feature "
                f"statistics of target batches and needs at least 2 target images; got "
                f"{len(self.data.target)}."
            )

    def _alignment(self, target_inputs, domain_head, stage: Stage) -> DomainAlignment:
        """Endless shuffled target batches and skada's loss for the method."""
        plan = self.plan
        batch_size = min(plan.batch_size, len(target_inputs))
        loader = torch.utils.data.DataLoader(
            target_inputs, batch_size=batch_size, shuffle=True, drop_last=True
        )
        if domain_head is not None:
            loss = AdversarialLoss(domain_head)
        else:
            loss = FeatureLoss(alignment_loss(plan.domain_adaptation))
        steps = -(-len(self.data.train_idx) // plan.batch_size) * stage.epochs
        return DomainAlignment(loader, loss, plan.adaptation_weight, total_steps=steps)

    def _target_images(self):
        """Target images through the training transform (augmentation included)."""
        target = self.data.target
        return InputsOnly(ImageDataset(target, self._train_transform(), torch.zeros(len(target))))

    def _head_only(self, stage: Stage) -> bool:
        trainable = {n for names, _ in stage.lr_groups for n in names}
        return trainable == set(_backbone.classifier_names(self.backbone))

    def _frozen(self, stage: Stage) -> set[str]:
        trainable = {n for names, _ in stage.lr_groups for n in names}
        return {n for n, _ in self.backbone.named_parameters()} - trainable

    # ------------------------------------------------------------ cached inputs

    def _cached_inputs(self) -> dict:
        """The frozen bottom of the deepest stage, computed once for training and
        validation images, and the head stage's pooled features derived from it."""
        stages = [s for s in self.plan.stages if s.epochs > 0]
        last = stages[-1]
        head_only = self._head_only(last)
        split = _backbone.split_forward(
            self.backbone, self._frozen(last), self.data.cfg["input_size"], head_only=head_only
        )
        positions = self.data.positions
        self.backbone.eval()
        bottom = self._rows(split.point, positions, self._bottom_of_images(split))
        inputs = {"bottom": (split, bottom)}
        if self.aligning:
            inputs["target"] = self._target_rows(split)
        if head_only:
            inputs["pooled"] = inputs["bottom"]
        elif any(self._head_only(s) for s in stages):
            head = _backbone.split_forward(self.backbone, set(), None, head_only=True)
            inputs["pooled"] = (
                head,
                self._rows("pooled", positions, self._pooled_of(split, bottom)),
            )
        return inputs

    def _target_rows(self, split) -> torch.utils.data.Dataset:
        """The frozen bottom of the target images, computed once (cached with
        ``memory``), as inputs without targets."""
        target = self.data.target
        positions = np.arange(len(target))
        compute = self._bottom_of_images(split, target, positions)
        rows = self._rows(split.point, positions, compute, target)
        return InputsOnly(ArrayDataset(rows, torch.zeros(len(rows))))

    def _rows(self, point: str, positions, compute: Callable, source=None) -> np.ndarray:
        """Rows at ``point`` of the images at ``positions`` of ``source`` (the training
        images by default), from the cache or ``compute``."""
        plan = self.plan
        return cached_rows(
            point,
            self.data.source if source is None else source,
            positions,
            compute,
            memory=plan.memory,
            identity=plan.cache_identity,
            cfg=self.data.cfg,
            device=plan.device,
            allocate=self._allocate,
        )

    def _bottom_of_images(self, split, source=None, positions=None) -> Callable:
        """``compute`` of the frozen bottom of ``split`` on the images at ``positions``
        of ``source`` (by default the training images, in training order)."""
        return bottom_of_images(
            split,
            self.data.source if source is None else source,
            self.data.positions if positions is None else positions,
            self.eval_tf,
            batch_size=self.plan.batch_size,
            device=self.plan.device,
            num_workers=self.plan.num_workers,
        )

    def _pooled_of(self, split, bottom: np.ndarray) -> Callable:
        def compute(rows, allocate, on_rows=None):
            return run_forward(
                split.pooled,
                array_batches(_take(bottom, rows), self.plan.batch_size),
                len(rows),
                device=self.plan.device,
                precision="float32",
                channels_last=self.channels_last,
                allocate=allocate,
                on_rows=on_rows,
            )

        return compute

    def _array_datasets(self, arrays: np.ndarray):
        n_train = len(self.data.train_idx)
        y, w = self._targets()
        train = ArrayDataset(arrays[:n_train], y[:n_train], _part(w, slice(0, n_train)))
        valid = None
        if len(self.data.valid_idx):
            valid = ArrayDataset(arrays[n_train:], y[n_train:], _part(w, slice(n_train, None)))
        return train, valid

    # ------------------------------------------------------------ streamed inputs

    def _train_transform(self) -> Callable:
        """The preprocessing of training images: the model's, after the augmentation."""
        aug = self.plan.augment
        if aug is None:
            return self.eval_tf
        if isinstance(aug, str):
            return _backbone.train_transform(self.data.cfg, aug)
        return _Compose(aug, self.eval_tf)

    def _image_datasets(self):
        data, train_tf = self.data, self._train_transform()
        y, w = self._targets()
        n_train = len(data.train_idx)
        train = ImageDataset(
            data.source.subset(data.train_idx), train_tf, y[:n_train], _part(w, slice(0, n_train))
        )
        valid = None
        if len(data.valid_idx):
            valid = ImageDataset(
                data.source.subset(data.valid_idx),
                self.eval_tf,
                y[n_train:],
                _part(w, slice(n_train, None)),
            )
        return train, valid

    def _targets(self):
        """Targets and sample weights in the order train rows, then validation rows."""
        data = self.data
        order = data.positions
        dtype = torch.long if self.plan.loss in LABEL_LOSSES else torch.float32
        y = torch.as_tensor(data.y[order], dtype=dtype)
        w = None
        if data.sample_weight is not None:
            w = torch.as_tensor(data.sample_weight[order], dtype=torch.float32)
        return y, w

    # --------------------------------------------------------------------- net

    def _build_net(
        self, stage: Stage, split, n_train: int, extra, alignment=None, domain_head=None
    ):
        plan = self.plan
        mixer = self._mixer(split)
        drop_last = n_train % plan.batch_size == 1 or (
            mixer is not None and n_train % plan.batch_size % 2 == 1
        )
        module = TransferModule(
            self.backbone,
            stage.lr_groups,
            split,
            plan.weight_decay,
            freeze_batchnorm=plan.freeze_batchnorm,
            channels_last=self.channels_last,
            domain_head=domain_head,
        )
        n_batches = n_train // plan.batch_size if drop_last else -(-n_train // plan.batch_size)
        steps_per_epoch = max(1, n_batches)
        total = steps_per_epoch * max(1, stage.epochs)
        schedule = warmup_cosine(total, warmup_steps=min(steps_per_epoch, total // 10))
        callbacks = [
            ("stage", StageName(stage.name)),
            (
                "lr_schedule",
                LRScheduler(
                    policy=torch.optim.lr_scheduler.LambdaLR,
                    lr_lambda=schedule,
                    step_every="batch",
                ),
            ),
            *extra,
        ]
        if plan.loss in CLASSIFICATION_LOSSES:
            callbacks.insert(2, ("accuracy", Accuracy(self._hits(), train=mixer is None)))
        if len(self.data.valid_idx) and plan.early_stopping is not None:
            callbacks.append(
                ("early_stopping", EarlyStopping(patience=plan.early_stopping, load_best=True))
            )
        if plan.verbose:
            callbacks.append(("progress", ProgressBar()))
        callbacks += self.user_callbacks
        workers = 0 if split is not None else plan.num_workers
        return TransferNet(
            module=module,
            criterion=self._criterion(),
            optimizer=OPTIMIZERS[plan.optimizer],
            lr=max(lr for _, lr in stage.lr_groups),
            max_epochs=stage.epochs,
            batch_size=plan.batch_size,
            train_split=None,
            callbacks=callbacks,
            device=str(plan.device),
            precision=plan.precision,
            mixer=mixer,
            alignment=alignment,
            iterator_train__shuffle=True,
            iterator_train__drop_last=drop_last,
            iterator_train__num_workers=workers,
            iterator_valid__num_workers=workers,
            verbose=int(bool(plan.verbose)),
        )

    def _mixer(self, split):
        """timm's Mixup for this stage's inputs: images, or cached activations (mixed at
        the cut); pooled features have no space to cut, so they get mixup only."""
        plan = self.plan
        cutmix = plan.cutmix if not (split is not None and split.point == "pooled") else 0.0
        if plan.mixup == 0 and cutmix == 0:
            return None
        return _backbone.batch_mixer(
            plan.mixup,
            cutmix,
            label_smoothing=plan.label_smoothing,
            n_classes=self.data.n_outputs,
            multilabel=plan.loss == "binary_cross_entropy",
        )

    def _hits(self):
        if self.plan.loss == "binary_cross_entropy":
            return multilabel_hits
        if self.plan.loss == "multitask_cross_entropy":
            return TaskHits(self.plan.task_sizes)
        return label_hits

    def _criterion(self):
        plan = self.plan
        if plan.loss == "multitask_cross_entropy":
            return MultiTaskCrossEntropy(
                plan.task_sizes, plan.task_weights, label_smoothing=plan.label_smoothing
            )
        if plan.loss == "binary_cross_entropy":
            return nn.BCEWithLogitsLoss(reduction="none")
        if plan.loss == "squared_error":
            return nn.MSELoss(reduction="none")
        if plan.loss == "huber":
            return nn.HuberLoss(reduction="none", delta=1.0)
        mixing = plan.mixup > 0 or plan.cutmix > 0  # timm's Mixup smooths the targets
        return nn.CrossEntropyLoss(
            weight=plan.class_weight,
            label_smoothing=0.0 if mixing else plan.label_smoothing,
            reduction="none",
        )


# ------------------------------------------------------------------ frozen rows


def cached_rows(
    point: str,
    source: ImageSource,
    positions: np.ndarray,
    compute: Callable,
    *,
    memory,
    identity: dict,
    cfg: dict,
    device: torch.device,
    allocate: Callable = empty_rows,
) -> np.ndarray:
    """Rows at the cut ``point`` for the images at ``positions``: looked up in the cache
    under ``memory`` (keyed as the extractor keys its embeddings) or computed by
    ``compute(rows, allocate, on_rows)``, ``rows`` indexing ``positions``."""
    if memory is None or not identity:
        return compute(np.arange(len(positions)), allocate, None)
    namespace = cache_namespace(
        **identity,
        data_config=cfg,
        layer=None if point == "pooled" else f"frozen {point}",
        pooling=None,
        precision="float32",
        device=device,
    )
    keys = [source.key(int(i)) for i in positions]
    return EmbeddingCache(memory, namespace).rows(keys, compute, allocate)


def bottom_of_images(
    split, source, positions, transform, *, batch_size, device, num_workers
) -> Callable:
    """``compute(rows, allocate, on_rows)``: the frozen bottom of ``split`` run on images."""
    channels_last = _backbone.prefers_channels_last(split.model)

    def compute(rows, allocate, on_rows=None):
        return run_batches(
            split.bottom,
            source,
            transform,
            positions=positions[rows],
            batch_size=batch_size,
            device=device,
            precision="float32",
            num_workers=num_workers,
            channels_last=channels_last,
            allocate=allocate,
            on_rows=on_rows,
        )

    return compute


# ---------------------------------------------------------------------- datasets


def _item(x, y, w, i):
    if w is None:
        return x, y[i]
    return {"x": x, "sample_weight": w[i]}, y[i]


class ArrayDataset(torch.utils.data.Dataset):
    """Rows of an array (in memory or memory-mapped) with their targets and weights."""

    def __init__(self, rows: np.ndarray, y, w=None):
        self.rows, self.y, self.w = rows, y, w

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return _item(torch.from_numpy(np.array(self.rows[i])), self.y, self.w, i)


class ImageDataset(torch.utils.data.Dataset):
    """Transformed images with their targets and weights, decoded on the fly."""

    def __init__(self, source: ImageSource, transform: Callable, y, w=None):
        self.source, self.transform, self.y, self.w = source, transform, y, w

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            x = self.transform(self.source.load(i))
        except NotAnImageError as exc:
            raise exc.for_image(self.source.describe(i)) from None
        return _item(x, self.y, self.w, i)


class InputsOnly(torch.utils.data.Dataset):
    """The inputs of a dataset of (input, target) pairs (unlabelled target images)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def require_skada(method: str) -> None:
    """Raise an ImportError that says how to install skada, whose deep losses every
    alignment method uses, when it is missing."""
    try:
        import skada.deep.losses  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"domain_adaptation={method!r} uses the deep losses of skada: pip install "
            "'sktransfer[da]' (or pip install skada)."
        ) from exc


def alignment_loss(method: str) -> Callable:
    """skada's deep loss for ``method``: deep CORAL or DAN's multi-kernel MMD."""
    require_skada(method)
    from skada.deep.losses import dan_loss, deepcoral_loss

    return {"coral": deepcoral_loss, "mmd": dan_loss}[method]


def named_callbacks(callbacks) -> list[tuple[str, Callback]]:
    """The estimator's ``callbacks`` as skorch's (name, callback) pairs: a bare callback
    (an instance, or a class skorch instantiates) is named ``user_<position>``, a pair
    keeps its name. Anything else raises here, not deep inside skorch."""
    named = []
    for i, item in enumerate(callbacks):
        if _is_callback(item):
            named.append((f"user_{i}", item))
        elif _is_named_callback(item):
            named.append((item[0], item[1]))
        else:
            raise TypeError(
                f"callbacks[{i}] is {reprlib.repr(item)} ({type(item).__name__}): each "
                "element of callbacks must be a skorch Callback instance (e.g. "
                "skorch.callbacks.EpochScoring('f1_macro')) or a (name, callback) pair."
            )
    return named


def _is_callback(obj) -> bool:
    return isinstance(obj, Callback) or (isinstance(obj, type) and issubclass(obj, Callback))


def _is_named_callback(item) -> bool:
    return (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], str)
        and _is_callback(item[1])
    )


class _Compose:
    """A user's PIL augmentation followed by the model's preprocessing (picklable)."""

    def __init__(self, augment, preprocess):
        self.augment, self.preprocess = augment, preprocess

    def __call__(self, image):
        augmented = self.augment(image)
        if not isinstance(augmented, Image.Image):
            raise NotAnImageError(self.augment, augmented)
        return self.preprocess(augmented)


class NotAnImageError(TypeError):
    """The ``augment`` callable returned something else than a PIL image; the dataset,
    which knows which image it was, reports it (:meth:`for_image`)."""

    def __init__(self, augment, returned):
        super().__init__(augment, returned)
        self.augment, self.returned = augment, returned

    def for_image(self, name: str) -> TypeError:
        return TypeError(
            f"The augment callable {_name_of(self.augment)} returned a "
            f"{_name_of(type(self.returned))} for {name}: it must map a PIL image to a PIL "
            "image (the model's own resizing and normalisation follow it). Return "
            "PIL.Image.fromarray(array) for an array, or use PIL-based transforms (e.g. "
            "torchvision's RandomHorizontalFlip, without ToTensor)."
        )


def _name_of(obj) -> str:
    """``module.qualname`` of a function or class (the class of another callable)."""
    if not hasattr(obj, "__qualname__"):
        obj = type(obj)
    module = getattr(obj, "__module__", None)
    return obj.__qualname__ if module in (None, "builtins") else f"{module}.{obj.__qualname__}"


# ----------------------------------------------------------------------- helpers


def _part(w, rows):
    return None if w is None else w[rows]


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` without a copy when ``rows`` is all of it, in order."""
    if len(rows) == len(array) and np.array_equal(rows, np.arange(len(array))):
        return array
    return array[rows]


def _spill_folder(memory):
    """Spilled activations go next to the cache, or to a temporary folder."""
    location = memory_location(memory)
    return None if location is None else os.path.join(location, "sktransfer", "spill")


def _warn_if_adversary_diverged(history) -> None:
    """DANN's domain classifier should end near chance, the loss ``2 log 2`` of a constant
    guess; far above it, the backbone won the game by flipping the domains rather than
    merging them (measured on ELPV: target ROC AUC fell to chance or below)."""
    loss, chance = history[-1, "domain_loss"], 2 * math.log(2)
    if loss > 1.5 * chance:
        warnings.warn(
            f"domain_adaptation='dann' diverged: in the last epoch the domain "
            f"classifier's loss was {loss:.2f}, far above {chance:.2f} (a constant "
            "guess), so the backbone flipped the domains instead of merging them, which "
            "usually ruins the target predictions. Check them before use, or prefer "
            "domain_adaptation='adabn' or 'coral' (the guide's domain adaptation page).",
            ConvergenceWarning,
            stacklevel=6,  # the caller of the estimator's fit
        )


def _epoch_records(history, offset):
    records = []
    for i, row in enumerate(history):
        record = {k: v for k, v in row.items() if k not in ("batches", "dur")}
        record["epoch"] = offset + i + 1
        record["dur"] = row.get("dur")
        records.append(record)
    return records

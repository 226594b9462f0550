"""The skorch side of a stage: the trainable module, the net and how one is built."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping, LRScheduler
from skorch.utils import to_tensor
from torch import nn

from .. import _backbone
from .._device import autocast
from ._batchnorm import BATCHNORMS
from ._callbacks import Accuracy, StageName, warmup_cosine
from ._objectives import mean_loss

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def build_net(plan, backbone, stage, *, split, n_train, n_outputs, validating, extras=None):
    """The skorch net of one stage: its trainable groups, schedule, loss and callbacks.

    ``split``: the cut of cached inputs (None: images); ``extras``: what the trainer adds
    to the stage (``StageExtras``); ``validating``: whether a validation set scores
    each epoch.
    """
    schedule, runtime = plan.schedule, plan.runtime
    extras = StageExtras() if extras is None else extras
    mixer = _mixer(plan, split, n_outputs)
    batch = schedule.batch_size
    drop_last = n_train % batch == 1 or (mixer is not None and n_train % batch % 2 == 1)
    steps_per_epoch = max(1, n_train // batch if drop_last else -(-n_train // batch))
    total = steps_per_epoch * max(1, stage.epochs)
    schedule_lr = LRScheduler(
        policy=torch.optim.lr_scheduler.LambdaLR,
        lr_lambda=warmup_cosine(total, warmup_steps=min(steps_per_epoch, total // 10)),
        step_every="batch",
    )
    callbacks = [("stage", StageName(stage.name)), ("lr_schedule", schedule_lr)]
    hits = plan.objective.hits()
    if hits is not None:
        callbacks.append(("accuracy", Accuracy(hits, train=mixer is None)))
    callbacks += extras.callbacks
    if validating and schedule.early_stopping is not None:
        stopping = EarlyStopping(patience=schedule.early_stopping, load_best=True)
        callbacks.append(("early_stopping", stopping))
    callbacks += runtime.callbacks
    module = TransferModule(
        backbone,
        stage.lr_groups,
        split,
        schedule.weight_decay,
        freeze_batchnorm=plan.regularisation.freeze_batchnorm,
        channels_last=_backbone.prefers_channels_last(backbone),
        domain_head=extras.domain_head,
    )
    workers = 0 if split is not None else runtime.num_workers
    return TransferNet(
        module=module,
        criterion=plan.objective.criterion(plan.regularisation.mixing),
        optimizer=OPTIMIZERS[schedule.optimizer],
        lr=max(lr for _, lr in stage.lr_groups),
        max_epochs=stage.epochs,
        batch_size=batch,
        train_split=None,
        callbacks=callbacks,
        device=str(runtime.device),
        precision=runtime.precision,
        mixer=mixer,
        alignment=extras.alignment,
        iterator_train__shuffle=True,
        iterator_train__drop_last=drop_last,
        iterator_train__num_workers=workers,
        iterator_valid__num_workers=workers,
        verbose=0,  # the trainer shows progress (EpochProgress), not skorch's table
    )


@dataclass(frozen=True)
class StageExtras:
    """What the trainer adds to a stage: named callbacks (weight averaging, the domain
    loss's column), and for an aligning adaptation the target batches and loss of each
    step (``_alignment.DomainAlignment``) and a module trained alongside (DANN's
    domain classifier)."""

    callbacks: tuple = ()
    alignment: object = None
    domain_head: nn.Module | None = None


def _mixer(plan, split, n_outputs):
    """timm's Mixup for this stage's inputs: images, or cached activations (mixed at
    the cut); pooled features have no space to cut, so they get mixup only."""
    reg = plan.regularisation
    cutmix = reg.cutmix if not (split is not None and split.point == "pooled") else 0.0
    if reg.mixup == 0 and cutmix == 0:
        return None
    return _backbone.batch_mixer(
        reg.mixup,
        cutmix,
        label_smoothing=plan.objective.label_smoothing,
        n_classes=n_outputs,
        multilabel=plan.objective.multilabel,
    )


class TransferModule(nn.Module):
    """The part of a backbone that trains in one stage.

    Parameters
    ----------
    backbone : nn.Module
        The whole timm model, new head included.
    groups : list of (list of str, float)
        The trainable parameter names of each optimizer group and its learning rate.
    split : SplitForward or None
        With a split, ``forward`` takes the frozen bottom's cached output and runs only the
        top; without one, it takes images and runs the whole model.
    weight_decay : float
        Applied to weights, never to biases and normalisation parameters.
    freeze_batchnorm : bool
        Keep every BatchNorm layer in eval mode (its running statistics stay the
        pretrained ones) while its affine weights, if trainable, still train.
    channels_last : bool
        Run the backbone on channels-last tensors (faster for convolutional networks).
    domain_head : nn.Module or None
        A domain classifier trained with the backbone (DANN), in its own optimizer group
        at the head's learning rate.
    """

    def __init__(
        self,
        backbone,
        groups,
        split=None,
        weight_decay=0.0,
        *,
        freeze_batchnorm=False,
        channels_last=False,
        domain_head=None,
    ):
        super().__init__()
        self.backbone = backbone
        self.domain_head = domain_head  # DANN's domain classifier, trained alongside
        self.split = split
        self.weight_decay = weight_decay
        self.channels_last = channels_last
        self.group_names = [list(names) for names, _ in groups]
        self.group_lrs = [lr for _, lr in groups]
        trainable = {n for names in self.group_names for n in names}
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in trainable)
        self._eval_modules = _eval_modules(backbone, freeze_batchnorm)

    def forward(self, x, sample_weight=None):
        # sample_weight travels with the inputs (skorch's way) and is read by the loss
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.split is None:
            return self.backbone(x)
        return self.split.top(x)

    def features_and_logits(self, x):
        """Pooled pre-logits features and the logits computed from them (the two
        outputs of one forward pass, for losses on the features)."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.split is None:
            pooled = _backbone.forward_pooled(self.backbone, x)
        else:
            pooled = self.split.pooled(x)
        return pooled, _backbone.classify(self.backbone, pooled)

    def train(self, mode: bool = True):
        """Train mode everywhere but in frozen modules (and, with ``freeze_batchnorm``,
        BatchNorm layers), whose statistics, dropout and stochastic depth stay in eval
        mode."""
        super().train(mode)
        for module in self._eval_modules:
            module.eval()
        return self

    def param_groups(self) -> list[dict]:
        """Explicit optimizer groups: every trainable parameter exactly once, each with
        its own ``lr`` (no ``lr_scale`` left for a scheduler to apply)."""
        params = dict(self.backbone.named_parameters())
        groups = []
        for names, lr in zip(self.group_names, self.group_lrs, strict=True):
            decay = [params[n] for n in names if params[n].ndim > 1]
            no_decay = [params[n] for n in names if params[n].ndim <= 1]
            if decay:
                groups.append({"params": decay, "lr": lr, "weight_decay": self.weight_decay})
            if no_decay:
                groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
        if self.domain_head is not None:
            lr = max(self.group_lrs)
            groups.append({"params": list(self.domain_head.parameters()), "lr": lr})
        return groups


class TransferNet(NeuralNet):
    """A skorch ``NeuralNet`` whose optimizer takes the module's explicit parameter
    groups, whose forward pass autocasts to the requested precision, whose loss weighs
    samples by the ``sample_weight`` that travels with the inputs, and whose training
    batches are mixed by ``mixer`` (timm's ``Mixup``) when one is given.

    The criterion must not reduce (``reduction="none"``): the loss is the mean over the
    batch of the per-sample losses times their weights.
    """

    def __init__(self, *args, precision="float32", mixer=None, alignment=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision
        self.mixer = mixer
        self.alignment = alignment

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """skorch's ``partial_fit``, except that Ctrl-C stops the estimator's ``fit``
        (after ``on_train_end``, for callbacks to clean up) instead of returning a
        half-trained model as if training had finished.

        skorch catches every KeyboardInterrupt, because its callbacks end training by
        raising one (``EarlyStopping``); those still end the stage quietly. Only an
        interrupt signal that arrived during the training loop propagates.
        """
        if not self.initialized_:
            self.initialize()
        self.notify("on_train_begin", X=X, y=y)
        with CtrlC() as ctrl_c:
            try:
                self.fit_loop(X, y, **fit_params)
            except KeyboardInterrupt:
                if ctrl_c.pressed:
                    self.notify("on_train_end", X=X, y=y)
                    raise
        self.notify("on_train_end", X=X, y=y)
        return self

    def train_step_single(self, batch, **fit_params):
        if self.mixer is not None:
            batch = _mix(self.mixer, batch, self.device)
        if self.alignment is None:
            return super().train_step_single(batch, **fit_params)
        return self._aligned_step(batch)

    def _aligned_step(self, batch):
        """One step on a source batch and a target batch: the task loss on the source,
        plus the alignment loss between the pooled features of both."""
        self._set_training(True)
        X, y = batch
        x = to_tensor(X["x"] if isinstance(X, Mapping) else X, device=self.device)
        x_target = self.alignment.next_batch(self.device)
        with autocast(torch.device(self.device), self.precision):
            features, logits = self.module_.features_and_logits(torch.cat([x, x_target]))
        features, logits = features.float(), logits[: len(x)].float()
        task = self.get_loss(logits, y, X=X, training=True)
        alignment = self.alignment
        domain = alignment.loss(features[: len(x)], features[len(x) :], alignment.progress)
        loss = task + self.alignment.weight * domain
        loss.backward()
        self.history.record_batch("domain_loss", domain.item())
        return {"loss": loss, "y_pred": logits}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        losses = self.criterion_(y_pred, to_tensor(y_true, device=self.device))
        weight = None
        if isinstance(X, Mapping) and "sample_weight" in X:
            weight = to_tensor(X["sample_weight"], device=self.device)
        return mean_loss(losses, weight)

    def initialize_optimizer(self, triggered_directly=None):
        kwargs = self.get_params_for("optimizer")
        self.optimizer_ = self.optimizer(self.module_.param_groups(), lr=self.lr, **kwargs)
        return self

    def infer(self, x, **fit_params):
        with autocast(torch.device(self.device), self.precision):
            return super().infer(x, **fit_params).float()


class CtrlC:
    """Within the block, ``pressed`` tells whether an interrupt signal (SIGINT, Ctrl-C)
    raised the KeyboardInterrupt that ended it, rather than a callback stopping training.

    The handler in place (Python's raises KeyboardInterrupt) still runs. Signals reach
    only the main thread, so elsewhere nothing is watched and ``pressed`` stays False.
    """

    def __init__(self):
        self.pressed = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):  # not SIG_IGN (no interrupt) nor SIG_DFL (process ends)
                self.previous = previous
                signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.pressed = True
        self.previous(signum, frame)  # Python's default handler raises KeyboardInterrupt
        self.pressed = False  # a handler that did not raise: training went on

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _mix(mixer, batch, device):
    """Mix a training batch (inputs, targets): targets become soft."""
    X, y = batch
    x = X["x"] if isinstance(X, Mapping) else X
    x, y = mixer(to_tensor(x, device=device), to_tensor(y, device=device))
    return ({**X, "x": x} if isinstance(X, Mapping) else x), y


def _eval_modules(backbone: nn.Module, freeze_batchnorm: bool) -> list[nn.Module]:
    """The outermost modules to hold in eval mode: frozen ones and, when asked, every
    BatchNorm layer (eval() recurses, and train() runs every batch: keep the list short)."""
    held = _frozen_modules(backbone)
    if freeze_batchnorm:
        held += [m for m in backbone.modules() if isinstance(m, BATCHNORMS)]
    inner = {id(child) for m in held for child in m.modules() if child is not m}
    return [m for m in held if id(m) not in inner]


def _frozen_modules(backbone: nn.Module) -> list[nn.Module]:
    """Modules to keep in eval mode: those whose parameters are all frozen, and
    parameter-free modules with buffers (a BatchNorm without affine parameters) whose
    nearest ancestor with parameters is frozen."""
    modules = dict(backbone.named_modules())
    frozen = []
    for name, module in modules.items():
        owner = module
        while not any(True for _ in owner.parameters()):
            if not name or not any(True for _ in module.buffers()):
                owner = None
                break
            name = name.rpartition(".")[0]
            owner = modules[name]
        if owner is not None and not any(p.requires_grad for p in owner.parameters()):
            frozen.append(module)
    return frozen

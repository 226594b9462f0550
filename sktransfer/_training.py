"""The skorch side of fine-tuning: the trainable module, the net and its callbacks."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Mapping

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch import nn

from . import _backbone
from ._adabn import BATCHNORMS
from ._device import autocast

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


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
        loss = self.criterion_(y_pred, to_tensor(y_true, device=self.device))
        if loss.ndim > 1:  # one loss per label of multilabel targets
            loss = loss.mean(dim=tuple(range(1, loss.ndim)))
        if isinstance(X, Mapping) and "sample_weight" in X:
            loss = loss * to_tensor(X["sample_weight"], device=self.device).to(loss.dtype)
        return loss.mean()

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


class DomainAlignment:
    """What a training step needs to align source and target features: batches of
    target inputs, drawn without end from ``loader``, a ``loss(features_source,
    features_target, progress)`` and its ``weight``. ``progress`` (0 to 1 over ``total_steps``
    calls of :meth:`next_batch`) drives the schedule of adversarial losses."""

    def __init__(self, loader, loss, weight, total_steps=1):
        self.loader, self.loss, self.weight = loader, loss, weight
        self.total_steps, self.steps = max(1, total_steps), 0
        self._batches = iter(())

    @property
    def progress(self) -> float:
        return min(1.0, self.steps / self.total_steps)

    def next_batch(self, device):
        self.steps += 1
        try:
            x = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            x = next(self._batches)
        return to_tensor(x, device=device)


class DomainClassifier(nn.Module):
    """DANN's domain classifier (Ganin et al., 2016) on pooled features, behind a
    gradient-reversal layer (skada's): one logit per image, source 0, target 1."""

    def __init__(self, n_features, hidden=100):
        from skada.deep.modules import GradientReversalLayer

        super().__init__()
        self.reverse = GradientReversalLayer.apply
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, features, reversal):
        return self.layers(self.reverse(features, reversal))[:, 0]


class FeatureLoss:
    """A distance between source and target features (deep CORAL, MMD): no schedule."""

    def __init__(self, distance):
        self.distance = distance

    def __call__(self, features_source, features_target, progress):
        return self.distance(features_source, features_target)


class AdversarialLoss:
    """DANN's loss: the domain classifier's cross-entropy on source and target features
    (skada's ``DANNLoss`` on logits), its gradient reversed into the backbone with the
    usual ramp ``2 / (1 + exp(-10 p)) - 1`` of training progress ``p``."""

    def __init__(self, domain_head):
        from skada.deep import DANNLoss

        self.domain_head = domain_head
        self.criterion = DANNLoss(domain_criterion=nn.BCEWithLogitsLoss())

    def __call__(self, features_source, features_target, progress):
        reversal = 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
        # One batch of both domains, as in DANN and skada: a BatchNorm in the domain
        # classifier that saw each domain alone would normalise away their difference.
        logits = self.domain_head(torch.cat([features_source, features_target]), reversal)
        n = len(features_source)
        return self.criterion(logits[:n], logits[n:])


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


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Linear warm-up then cosine decay to zero, as a ``LambdaLR`` factor."""
    return _WarmupCosine(total_steps, warmup_steps)


class _WarmupCosine:
    def __init__(self, total_steps, warmup_steps):
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class MultiTaskCrossEntropy(nn.Module):
    """The loss of several label columns on one backbone: the outputs hold one block of
    logits per task (one linear head each), and each image's loss is the weighted sum
    over tasks of its cross-entropy (``reduction="none"``: one loss per image)."""

    def __init__(self, task_sizes, task_weights, label_smoothing=0.0):
        super().__init__()
        self.task_sizes = tuple(task_sizes)
        self.task_weights = tuple(task_weights)
        self.label_smoothing = label_smoothing

    def forward(self, logits, y):
        blocks = torch.split(logits, self.task_sizes, dim=1)
        losses = [
            weight
            * nn.functional.cross_entropy(
                block, y[:, t], reduction="none", label_smoothing=self.label_smoothing
            )
            for t, (block, weight) in enumerate(zip(blocks, self.task_weights, strict=True))
        ]
        return torch.stack(losses, dim=1).sum(dim=1)


def label_hits(y_pred, y):
    """Per image: 1 if the top class is the label."""
    return (y_pred.argmax(dim=1) == y).float()


def multilabel_hits(y_pred, y):
    """Per image: the fraction of its labels predicted right (logit > 0)."""
    return ((y_pred > 0).float() == y).float().mean(dim=1)


class TaskHits:
    """Per image: the fraction of its tasks whose top class is the label."""

    def __init__(self, task_sizes):
        self.task_sizes = tuple(task_sizes)

    def __call__(self, y_pred, y):
        blocks = torch.split(y_pred, self.task_sizes, dim=1)
        hits = [block.argmax(dim=1) == y[:, t] for t, block in enumerate(blocks)]
        return torch.stack(hits, dim=1).float().mean(dim=1)


class Accuracy(Callback):
    """Record ``train_acc`` and ``valid_acc`` from the outputs of the training and
    validation steps (no extra forward). ``hits(y_pred, y)`` scores each image (see
    :func:`label_hits`). Training accuracy is of the model while it trains (dropout on),
    as Keras reports it; ``train=False`` skips it (mixed batches)."""

    def __init__(self, hits=label_hits, train=True):
        self.hits = hits
        self.train = train

    def on_epoch_begin(self, net, **kwargs):
        self.counts_ = {True: [0.0, 0], False: [0.0, 0]}

    def on_batch_end(self, net, batch, training, y_pred=None, **kwargs):
        if y_pred is None or (training and not self.train):
            return
        hits = self.hits(y_pred, batch[1].to(y_pred.device))
        count = self.counts_[bool(training)]
        count[0] += float(hits.sum())
        count[1] += len(hits)

    def on_epoch_end(self, net, **kwargs):
        for training, name in ((True, "train_acc"), (False, "valid_acc")):
            correct, total = self.counts_[training]
            if total:
                net.history.record(name, correct / total)


class WeightAverage(Callback):
    """Update an exponential moving average of the backbone's weights (timm's
    ``ModelEmaV3``) after every optimizer step; the step count carries across stages."""

    def __init__(self, ema):
        self.ema = ema
        self.steps_ = 0

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.ema.update(net.module_.backbone, step=self.steps_)
            self.steps_ += 1


class StageName(Callback):
    """Record which stage of the schedule each epoch belongs to."""

    def __init__(self, stage):
        self.stage = stage

    def on_epoch_end(self, net, **kwargs):
        net.history.record("stage", self.stage)

"""The callbacks of a stage (accuracy, weight averaging, the stage's name, progress), the
user's callbacks as skorch's named pairs, and the learning-rate schedule."""

from __future__ import annotations

import math
import reprlib

from skorch.callbacks import Callback
from skorch.dataset import get_len

from .._progress import epoch_line, image_bar, write_line
from ._objectives import label_hits


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


class Accuracy(Callback):
    """Record ``train_acc`` and ``valid_acc`` from the outputs of the training and
    validation steps (no extra forward). ``hits(y_pred, y)`` scores each image (see
    ``label_hits``). Training accuracy is of the model while it trains (dropout on),
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


class EpochProgress(Callback):
    """A bar over each epoch's images and, when the epoch ends, its line of ``history_``
    (``epoch_line``); epochs are numbered from
    ``first_epoch`` of ``total_epochs``, across the stages of a fit."""

    def __init__(self, first_epoch: int, total_epochs: int):
        self.first_epoch = first_epoch
        self.total_epochs = total_epochs

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        images = len(dataset_train) + (0 if dataset_valid is None else len(dataset_valid))
        desc = f"epoch {self._number(net)}/{self.total_epochs}"
        self.bar_ = image_bar(images, desc, enabled=True)

    def on_batch_end(self, net, batch=None, **kwargs):
        self.bar_.update(get_len(batch[0]))

    def on_epoch_end(self, net, **kwargs):
        self.bar_.close()
        record = {**net.history[-1], "epoch": self._number(net)}
        write_line(epoch_line(record, self.total_epochs))

    def _number(self, net) -> int:
        return self.first_epoch + len(net.history) - 1

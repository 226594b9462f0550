"""The skorch side of fine-tuning: the trainable module, the net and its callbacks."""

from __future__ import annotations

import math

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from torch import nn

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
    """

    def __init__(self, backbone, groups, split=None, weight_decay=0.0):
        super().__init__()
        self.backbone = backbone
        self.split = split
        self.weight_decay = weight_decay
        self.group_names = [list(names) for names, _ in groups]
        self.group_lrs = [lr for _, lr in groups]
        trainable = {n for names in self.group_names for n in names}
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in trainable)
        self._frozen_modules = _frozen_modules(backbone)

    def forward(self, x):
        if self.split is None:
            return self.backbone(x)
        return self.split.top(x)

    def train(self, mode: bool = True):
        """Train mode everywhere but in frozen modules, whose BatchNorm statistics,
        dropout and stochastic depth stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules:
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
        return groups


_SAME_AS_MODULE_ = "<same as module_>"


class TransferNet(NeuralNet):
    """A skorch ``NeuralNet`` whose optimizer takes the module's explicit parameter
    groups, and whose forward pass autocasts to the requested precision."""

    def __init__(self, *args, precision="float32", **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision

    def initialize_optimizer(self, triggered_directly=None):
        kwargs = self.get_params_for("optimizer")
        self.optimizer_ = self.optimizer(self.module_.param_groups(), lr=self.lr, **kwargs)
        return self

    def __getstate__(self):
        # `module` is the very instance of `module_`; skorch pickles `module_` through its
        # device-mapping path, so pickling `module` as well would store the weights twice,
        # the second copy without device mapping.
        state = super().__getstate__()
        if state.get("module") is getattr(self, "module_", None):
            state["module"] = _SAME_AS_MODULE_
        return state

    def __setstate__(self, state):
        same = isinstance(state.get("module"), str) and state["module"] == _SAME_AS_MODULE_
        super().__setstate__(state)
        if same:
            self.module = self.module_

    def infer(self, x, **fit_params):
        with autocast(torch.device(self.device), self.precision):
            return super().infer(x, **fit_params).float()


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
    # eval() recurses: calling it on the outermost frozen modules only is enough, and
    # train() runs every batch, so the list stays short.
    inner = {id(child) for m in frozen for child in m.modules() if child is not m}
    return [m for m in frozen if id(m) not in inner]


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


class ValidAccuracy(Callback):
    """Record ``valid_acc`` from the outputs of the validation step (no extra forward)."""

    def __init__(self, multilabel=False):
        self.multilabel = multilabel

    def on_epoch_begin(self, net, **kwargs):
        self.correct_, self.total_ = 0.0, 0

    def on_batch_end(self, net, batch, training, y_pred=None, **kwargs):
        if training or y_pred is None:
            return
        y = batch[1].to(y_pred.device)
        if self.multilabel:
            hits = ((y_pred > 0).float() == y).float().mean(dim=1)
        else:
            hits = (y_pred.argmax(dim=1) == y).float()
        self.correct_ += float(hits.sum())
        self.total_ += len(hits)

    def on_epoch_end(self, net, **kwargs):
        if self.total_:
            net.history.record("valid_acc", self.correct_ / self.total_)


class StageName(Callback):
    """Record which stage of the schedule each epoch belongs to."""

    def __init__(self, stage):
        self.stage = stage

    def on_epoch_end(self, net, **kwargs):
        net.history.record("stage", self.stage)

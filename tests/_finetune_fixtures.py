"""Helpers shared by the FineTunedClassifier tests: tiny data, tiny estimators, recording
callbacks, and loading pickles in a fresh process."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import torch
from conftest import REPO_ROOT
from skorch import NeuralNet
from skorch.callbacks import Callback

from sktransfer import FineTunedClassifier
from sktransfer._backbone import block_groups, classifier_names

TINY_SIZE = 32

# scikit-learn's estimator checks that need no 2-D data (image estimators get no others)
DATA_FREE_CHECKS = [
    "check_estimator_cloneable",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_mixin_order",
    "check_estimators_unfitted",  # predict raises NotFittedError before reading X
]


def colour_images(y, size=TINY_SIZE, seed=0):
    """Noisy images whose colour depends on the class index ``y``: learnable in a few
    epochs by a head on random features, so predictions can be checked against labels."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    palette = np.array(
        [[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230]]
    )
    base = palette[y % len(palette)][:, None, None, :]
    noise = rng.integers(-25, 26, (len(y), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def random_images(n, size=TINY_SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def two_domains(n: int):
    """``n`` labelled source images (colour classes 0, 1, 2) and ``n`` unlabelled target
    images of the same colours, darker and with less contrast: images, ``y`` (-1 for
    the target), ``sample_domain`` (1 and -1) and the target's true labels."""
    y = np.arange(n) % 3
    target = colour_images(y, seed=1).astype(np.int16) // 2 + 60
    X = np.concatenate([colour_images(y), target.astype(np.uint8)])
    sample_domain = np.r_[np.ones(n, dtype=int), -np.ones(n, dtype=int)]
    return X, np.r_[y, -np.ones(n, dtype=int)], sample_domain, y


def tiny(estimator=FineTunedClassifier, **params):
    """A fine-tuner (``FineTunedClassifier`` by default) on timm's tiny random-weight
    EfficientNet, on the CPU."""
    defaults = dict(
        model="test_efficientnet",
        weights=None,
        image_size=TINY_SIZE,
        head_epochs=1,
        max_epochs=1,
        batch_size=8,
        device="cpu",
        random_state=0,
    )
    defaults.update(params)
    return estimator(**defaults)


# -------------------------------------------------------------------- backbone layout


def frozen_names(backbone, frozen_groups: int) -> tuple[set[str], set[str]]:
    """(parameter names, buffer names) that must not change with ``frozen_groups`` frozen:
    the parameters of the lowest groups, and the buffers (BatchNorm running statistics) of
    every module whose own parameters are all among them."""
    groups = block_groups(backbone)
    params = {n for group in groups[:frozen_groups] for n in group}
    buffers = set()
    for module_name, module in backbone.named_modules():
        prefix = f"{module_name}." if module_name else ""
        own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        if own and all(n in params for n in own):
            buffers |= {prefix + n for n, _ in module.named_buffers(recurse=False)}
    return params, buffers


def trainable_names(backbone, frozen_groups: int) -> set[str]:
    groups = block_groups(backbone)
    return {n for group in groups[frozen_groups:] for n in group} | set(classifier_names(backbone))


def group_of(backbone) -> dict[str, int]:
    """Parameter name -> block group index (the head gets ``len(groups)``)."""
    groups = block_groups(backbone)
    index = {n: g for g, names in enumerate(groups) for n in names}
    index.update({n: len(groups) for n in classifier_names(backbone)})
    return index


def batchnorm_modules(backbone):
    return {
        name: m
        for name, m in backbone.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }


# ------------------------------------------------------------------ recording callbacks


# Recording callbacks keep their records in attributes ending with "_": skorch takes the
# others for parameters (and sklearn's clone would pass them to __init__).


class BackboneSnapshots(Callback):
    """Copies of the backbone's state dict: at the start of each stage, at the end of every
    epoch (with the epoch's history row), and after the last optimizer step of each stage
    (early stopping ends the last epoch before later callbacks see its end)."""

    def __init__(self):
        self.at_train_begin_ = []
        self.at_epoch_end_ = []
        self.after_last_step_ = []

    def on_train_begin(self, net, **kwargs):
        self.at_train_begin_.append(_copy_state(net.module_.backbone))

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.latest_ = _copy_state(net.module_.backbone)

    def on_epoch_end(self, net, **kwargs):
        row = dict(net.history[-1])
        self.at_epoch_end_.append((row, _copy_state(net.module_.backbone)))

    def on_train_end(self, net, **kwargs):
        self.after_last_step_.append(getattr(self, "latest_", None))


def _copy_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class OptimizerGroups(Callback):
    """For each stage: its optimizer's parameter groups as (names, initial lr, weight decay),
    and per training batch the factor the schedule applies to the learning rate."""

    def __init__(self):
        self.stages_ = []
        self.lr_factors_ = []

    def on_train_begin(self, net, **kwargs):
        names = {id(p): n for n, p in net.module_.backbone.named_parameters()}
        groups = [
            (
                [names[id(p)] for p in g["params"]],
                g.get("initial_lr", g["lr"]),
                g["weight_decay"],
            )
            for g in net.optimizer_.param_groups
        ]
        self.stages_.append(groups)
        self.lr_factors_.append([])

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            group = net.optimizer_.param_groups[0]
            self.lr_factors_[-1].append(group["lr"] / group["initial_lr"])


class BatchNormModes(Callback):
    """For each stage, after every training step: the BatchNorm layers in training mode."""

    def __init__(self):
        self.stages_ = []

    def on_train_begin(self, net, **kwargs):
        self.stages_.append([])

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            modules = batchnorm_modules(net.module_.backbone)
            self.stages_[-1].append({n for n, m in modules.items() if m.training})


class BatchLabels(Callback):
    """Labels of the training and validation batches of the first epoch of each stage."""

    def __init__(self):
        self.train_, self.valid_ = [], []

    def on_train_begin(self, net, **kwargs):
        self.train_.append([])
        self.valid_.append([])
        self.epoch_ = 0

    def on_epoch_begin(self, net, **kwargs):
        self.epoch_ += 1

    def on_batch_end(self, net, batch, training=False, **kwargs):
        if self.epoch_ == 1:
            (self.train_ if training else self.valid_)[-1].extend(batch[1].tolist())


class CriterionWeights(Callback):
    """The criterion's class weights and the net's device, at the start of each stage."""

    def __init__(self):
        self.seen_ = []

    def on_train_begin(self, net, **kwargs):
        weight = net.criterion_.weight
        self.seen_.append((None if weight is None else weight.detach().clone(), net.device))


AUGMENT_CALLS: list[int] = []


class CountingAugment:
    """A picklable PIL augmentation that counts its calls (use with ``num_workers=0``)."""

    def __call__(self, image):
        AUGMENT_CALLS.append(1)
        return image


# ---------------------------------------------------------------------------- pickles


# What a fitted estimator must not carry into its pickle: training data (cached
# activations are a skorch Dataset), loaders, optimizer and schedule state, the loss.
FORBIDDEN_IN_PICKLE = (
    torch.utils.data.Dataset,
    torch.utils.data.DataLoader,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    torch.nn.modules.loss._Loss,
)


def reachable_types(obj) -> list[type]:
    """Types of every object pickling ``obj`` would write, including what skorch nets
    pickle into nested byte strings (their module, criterion and optimizer)."""
    seen: list[type] = []

    class Scanner(pickle.Pickler):
        def reducer_override(self, o):
            if not isinstance(o, type):
                seen.append(type(o))
            if isinstance(o, NeuralNet):
                for attr in o.cuda_dependent_attributes_:
                    seen.extend(reachable_types(getattr(o, attr, None)))
            return NotImplemented

    Scanner(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return seen


def state_nbytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


_LOAD_AND_PREDICT = textwrap.dedent(
    """
    import pickle, sys, warnings
    import joblib, numpy as np
    warnings.simplefilter("ignore")
    X = np.load(sys.argv[1])
    for path in sys.argv[2:]:
        if path.endswith(".joblib"):
            est = joblib.load(path)
        elif path.endswith(".skops"):
            import skops.io as sio

            est = sio.load(path, trusted=sio.get_untrusted_types(file=path))
        else:
            with open(path, "rb") as f:
                est = pickle.load(f)
        out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)
        np.save(path + ".proba.npy", out)
    """
)


def predict_in_fresh_process(tmp_path, X, paths) -> list[np.ndarray]:
    """Load each pickle or joblib file in a new CPU-only Python process, offline, and
    return its ``predict_proba(X)`` (``predict(X)`` for a regressor)."""
    x_path = tmp_path / "X.npy"
    np.save(x_path, X)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        # the last bits of float32 results depend on the number of threads: use ours
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_PREDICT, str(x_path), *map(str, paths)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"loading in a fresh process failed:\n{done.stderr}"
    return [np.load(f"{p}.proba.npy") for p in paths]


def assert_eight_threads_predict_the_sequential_results(predict) -> None:
    """``predict`` (images -> array) called from 8 threads at once, twice over, on 16
    small batches, gives exactly what it gives called one batch after another."""
    batches = [colour_images(np.arange(i % 3 + 2) % 3, seed=i) for i in range(16)]
    sequential = [predict(b) for b in batches]
    results = [None] * len(batches)

    def work(i):
        results[i] = predict(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for group in (threads[:8], threads[8:]):
        for t in group:
            t.start()
        for t in group:
            t.join()
    for got, want in zip(results, sequential, strict=True):
        np.testing.assert_array_equal(got, want)


def outputs(model, X):
    """What a model answers: probabilities, embeddings or predictions."""
    for method in ("predict_proba", "transform", "predict"):
        if hasattr(model, method):
            return getattr(model, method)(X)
    raise AssertionError(model)

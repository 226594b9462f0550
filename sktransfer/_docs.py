"""Parameter documentation written once and composed into each estimator's docstring.

An estimator's docstring holds a line ``{{name}}`` where the paragraphs of a parameter
(or of a group in ``GROUPS``) belong; ``compose`` (a class decorator) puts them
there. ``tests/test_docstrings.py`` checks that each estimator's signature, constraints and
documented parameters agree, in order, and that a parameter documented by several
estimators reads the same in each.
"""

from __future__ import annotations

import textwrap

PARAMETERS = {
    "model": """\
model : str, default="efficientnet_b0.ra_in1k"
    Any timm model name, with or without a pretrained tag (``"resnet50.a1_in1k"``).""",
    "weights": """\
weights : "pretrained", None, path-like or fitted fine-tuner, default="pretrained"
    As in [`PretrainedFeatureExtractor`][sktransfer.PretrainedFeatureExtractor]: hub weights
    (cache-aware), random initialisation, or a local checkpoint (such as a file of
    ``save_weights``). A fitted [`FineTunedClassifier`][sktransfer.FineTunedClassifier] or
    [`FineTunedRegressor`][sktransfer.FineTunedRegressor] (bare, or in
    ``sklearn.frozen.FrozenEstimator`` to survive ``clone`` in searches) starts from its fine-tuned
    backbone with a new head: sequential transfer (with the preprocessing it was trained with,
    unless ``preprocessing`` states one).""",
    "freeze_depth": """\
freeze_depth : int, float or "all", default=0
    How many of the backbone's block groups (timm's ``group_matcher(coarse=True)``:
    stem, stages, final norm) stay frozen, counted from the input. ``0``: everything
    trains after the head stage; ``"all"``: only the new head trains. A float in
    [0, 1] is a fraction of the groups, so one grid means the same on different
    architectures (``0.5`` freezes the lower half).""",
    "head_epochs": """\
head_epochs : int or "converge", default=1
    Epochs of the first stage (the new head on a frozen backbone). When that stage is
    the whole fit (``freeze_depth="all"``, where it gets ``head_epochs + max_epochs``
    epochs, or ``max_epochs=0``) and trains on cached pooled features (no ``augment``,
    no ``mixup`` or ``cutmix``), it is solved to convergence instead, like
    scikit-learn's ``LogisticRegressionCV`` (``Ridge`` for squared error): full-batch
    L-BFGS on standardised features, with an L2 penalty on the head's weights chosen
    among 8 values by 3-fold cross-validation, then refitted on every training image
    (``lr``, ``weight_decay`` and ``drop_rate`` do not apply to it); the epochs then
    only say whether the stage exists (more than 0), and ``history_`` holds one record
    for it, with ``head_penalty`` and ``head_iterations``. Before a fine-tuning stage,
    the head keeps its epochs: a converged head there made the fine-tune worse on
    ELPV (``benchmarks/head_probe.py``). ``"converge"`` solves it there too (linear
    probing, then fine-tuning: LP-FT), so a grid can compare ``[1, "converge"]``; it
    needs the stage on cached pooled features, and raises otherwise.""",
    "max_epochs": """\
max_epochs : int, default=4
    Epochs of the second stage (unfrozen groups and head).""",
    "lr": """\
lr : float, default=3e-4
    Learning rate of the head; the top unfrozen group gets ``lr * layer_decay``, the
    next ``lr * layer_decay**2`` and so on. The defaults of ``lr``, ``layer_decay``,
    ``max_epochs`` and ``batchnorm`` were chosen by a sweep on real data
    (``benchmarks/sweep_defaults.md``): with pretrained BatchNorm statistics kept,
    ``lr=1e-3`` and above did worse.""",
    "layer_decay": """\
layer_decay : float, default=0.85
    Learning-rate decay per block group, from the head towards the input.""",
    "optimizer": """\
optimizer : {"adamw", "adam", "sgd"}, default="adamw"
    torch's optimizer of every stage.""",
    "weight_decay": """\
weight_decay : float, default=0.01
    Applied to weights, not to biases or normalisation parameters.""",
    "batch_size": """\
batch_size : int, default=32
    Images per training step, and per forward pass in prediction.""",
    "augment": """\
augment : None, "light", "randaugment", "trivialaugment" or callable, default=None
    Training-time augmentation (timm's ``create_transform``); validation and
    prediction never see it. ``"light"``: random resized crops (70-100 % of the area)
    and horizontal flips; ``"randaugment"`` adds RandAugment (timm's
    ``rand-m9-mstd0.5-inc1-mmax9``), ``"trivialaugment"`` TrivialAugment (one random
    operation at a random magnitude). A callable takes and returns a PIL image (e.g. a
    torchvision transform) and runs before the model's own preprocessing. With
    augmentation, frozen activations cannot be cached. For real-valued targets, use only
    augmentation that leaves the target unchanged.""",
    "batchnorm": """\
batchnorm : {"auto", "frozen", "train"}, default="auto"
    BatchNorm layers in the trainable groups: ``"frozen"`` keeps their running
    statistics the pretrained ones (eval mode) while their affine weights train;
    ``"train"`` updates them from each batch as usual. ``"auto"``: frozen with
    pretrained or file weights, train with ``weights=None``. Frozen groups always
    keep theirs.""",
    "ema": """\
ema : float or None, default=None
    Decay of an exponential moving average of the weights (timm's ``ModelEmaV3``,
    with warm-up), in (0, 1); the average is the model kept for prediction.""",
    "tta": """\
tta : {None, "hflip", "flips"}, default=None
    Test-time augmentation in prediction: outputs (probabilities, or predicted values)
    averaged over the image and its horizontal flip, or over all four
    horizontal/vertical flips.""",
    "image_size": """\
image_size : int or (int, int), default=None
    Override the model's input size (e.g. a low resolution for speed). The crop
    fraction, interpolation and normalisation stay the model's (or those stated by
    ``preprocessing``).""",
    "preprocessing": """\
preprocessing : dict, {"imagenet", "inception", "clip"} or None, default=None
    The preprocessing the weights were trained with, in timm's data-config keys:
    ``mean`` and ``std`` (one number per channel, pixels in [0, 1]),
    ``interpolation`` (``"bilinear"``, ``"bicubic"``, ...), ``crop_pct`` (the
    fraction kept by the centre crop) and ``crop_mode``; keys left out keep the
    model's values. A preset name sets ``mean`` and ``std`` to timm's constants
    (``"inception"``: 0.5 and 0.5). ``None``: the model's own. State it for a local
    checkpoint loaded by tensor order (its key names differ, as in weights ported
    from TensorFlow), which otherwise warns (``UnstatedPreprocessingWarning``): a
    checkpoint fits any architecture of the same shapes, but not its preprocessing.
    Recorded in ``data_config_``, model files and ONNX metadata; searchable in a grid.""",
    "validation_fraction": """\
validation_fraction : float, default=0.0
    Fraction of the training data held out to score each epoch (stratified by class
    for single-label targets, at random otherwise). ``0``: no hidden split, every image
    trains.""",
    "early_stopping": """\
early_stopping : int or None, default=None
    Patience in epochs on the validation loss; the best epoch's weights are restored.
    Needs ``validation_fraction > 0``.""",
    "drop_rate": """\
drop_rate : float, default=0.0
    Dropout before the new head.""",
    "device": """\
device : str or torch.device, default="auto"
    ``"auto"`` picks CUDA, then MPS, then the CPU.""",
    "precision": """\
precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
    ``"auto"``: bfloat16 autocast on GPUs that support it, float32 on the CPU.
    float16 is used for inference only; training then autocasts to bfloat16.""",
    "num_workers": """\
num_workers : int, default=0
    Workers that decode images (threads for inference, processes for augmented
    training batches).""",
    "random_state": """\
random_state : int, RandomState or None, default=None
    Seeds the head, the validation split, shuffling and dropout; fixes CPU training.""",
    "verbose": """\
verbose : "auto", bool or int, default="auto"
    What running work shows on standard error. ``"auto"``: as ``True`` where a person
    watches (a terminal or a notebook, in the main process and thread), as ``False``
    in logs, CI and the workers of ``GridSearchCV(n_jobs=...)``, Dask or a thread pool.
    ``False`` or 0: nothing. ``True`` or 1: progress bars that count images (the
    one-time decode and frozen-layer pass, each epoch, each prediction) and, while
    training, one line per epoch numbered across stages as in ``history_``.""",
    "callbacks": """\
callbacks : list of skorch callbacks or None, default=None
    Extra callbacks (instances, or ``(name, callback)`` pairs), added to every
    stage trained by epochs. A head stage solved to convergence (see
    ``head_epochs``) runs no callbacks.""",
    "memory": """\
memory : str, path-like, joblib.Memory or None, default=None
    Folder of the per-image activation cache, shared with
    [`PretrainedFeatureExtractor`][sktransfer.PretrainedFeatureExtractor] (same keys): frozen
    activations at each cut point, and pooled features, are computed once per image across fits.
    ``fit`` creates the folder; prediction uses it only where it exists, so a model loaded
    elsewhere writes no folder of its own. A path naming a file raises.""",
    "cache_key": """\
cache_key : {"stat", "content"}, default="stat"
    How the cache recognises an image file: ``"stat"`` trusts its absolute path,
    size and modification time; ``"content"`` hashes its bytes (for files rewritten
    in place). In-memory images and encoded bytes are always keyed by content.""",
    "activation_budget": """\
activation_budget : int or str, default="4GiB"
    How much memory the frozen activations of one fit may take (bytes, or a string
    such as ``"500MB"``); beyond it they spill to memory-mapped files (under
    ``memory``, or a temporary folder) that are deleted after the fit.""",
    "domain_adaptation": """\
domain_adaptation : {None, "adabn", "tent", "coral", "mmd", "dann"}, default=None
    Adapt to the unlabelled target images of ``fit`` (see ``sample_domain``).
    ``"adabn"`` (AdaBN, Li et al. 2016) trains as without adaptation, then sets
    every BatchNorm layer's statistics so that target activations are normalised as
    the source's were (needs BatchNorm layers; with ``memory``, no activations are
    shared with other fits, since the frozen layers change). ``"coral"`` (deep
    CORAL, Sun & Saenko 2016) and ``"mmd"`` (DAN's multi-kernel MMD, Long et al.
    2015) add to each training step of the unfrozen stage a loss between the pooled
    features of the source batch and of a target batch (skada's deep losses: the
    ``da`` extra), weighted by ``adaptation_weight``; ``history_`` records it as
    ``domain_loss``. ``"dann"`` (Ganin et al. 2016) trains a domain classifier on
    the pooled features of both batches against the backbone, through a
    gradient-reversal layer whose strength ramps up as ``2 / (1 + exp(-10 p)) - 1``
    over the stage (skada's ``DANNLoss``). ``"tent"`` (TENT, Wang et al. 2021) trains
    as without adaptation, then minimises the entropy of the predictions on the
    target images (test-time adaptation: class labels only), updating only the
    BatchNorm affine parameters while each BatchNorm layer normalises a target batch by
    its own statistics (Adam, lr 1e-3, one pass over the target images in batches of
    ``batch_size``, as the paper's online setting); the layers then keep AdaBN's
    statistics for prediction. ``history_`` records ``target_entropy`` for the pass
    (stage ``"tent"``). Like AdaBN, it needs BatchNorm layers and shares no
    activations through ``memory``.""",
    "adaptation_weight": """\
adaptation_weight : float, default=1.0
    Weight of the ``"coral"``, ``"mmd"`` or ``"dann"`` loss against the task loss
    (the other methods add no loss to training).""",
}

# The serving estimators' (sktransfer.serving): the same names, other meanings.
SERVING_PARAMETERS = {
    "batch_size": """\
batch_size : int, default=32
    Images per run of the network.""",
    "num_workers": """\
num_workers : int or None, default=None
    Threads that decode and preprocess images, sharing each batch and running ahead of
    the network by up to ``num_workers`` batches; None: one per core; 0: decoding and
    the network take turns in the calling thread.""",
    "intra_op_num_threads": """\
intra_op_num_threads : int or None, default=None
    ONNX Runtime's threads per run of the network; None: what ``OMP_NUM_THREADS``
    says, else one per core (ONNX Runtime's choice).""",
    "verbose": """\
verbose : bool or int, default=False
    A progress bar over the images.""",
}
PARAMETERS.update({f"serving:{name}": text for name, text in SERVING_PARAMETERS.items()})
# ...and the fitted attributes they all have (documented after their own).
PARAMETERS.update(
    {
        "served:onnx_model_": """\
onnx_model_ : bytes
    The ONNX graph: preprocessed images in, what the estimator returns out.""",
        "served:preprocessing_": """\
preprocessing_ : dict
    Input size, interpolation, crop and normalisation, as plain values.""",
        "served:quantization_": """\
quantization_ : str or None
    ``"int8"`` for a statically quantised graph, else None.""",
    }
)

# The parameters every fine-tuner shares, in signature order; those of every serving
# estimator.
GROUPS = {
    "fine-tuning": (
        "model",
        "weights",
        "freeze_depth",
        "head_epochs",
        "max_epochs",
        "lr",
        "layer_decay",
        "optimizer",
        "weight_decay",
        "batch_size",
        "augment",
        "batchnorm",
        "ema",
        "tta",
        "image_size",
        "preprocessing",
        "validation_fraction",
        "early_stopping",
        "drop_rate",
        "device",
        "precision",
        "num_workers",
        "random_state",
        "verbose",
        "callbacks",
        "memory",
        "cache_key",
        "activation_budget",
        "domain_adaptation",
        "adaptation_weight",
    ),
    "serving": tuple(f"serving:{name}" for name in SERVING_PARAMETERS),
    "served-attributes": ("served:onnx_model_", "served:preprocessing_", "served:quantization_"),
}


def compose(cls):
    """Class decorator: each line ``{{name}}`` of the docstring becomes the paragraphs
    of that parameter (or of each parameter of the group ``name``), at its indentation."""
    lines = []
    for line in cls.__doc__.splitlines():
        name = line.strip()
        if not (name.startswith("{{") and name.endswith("}}")):
            lines.append(line)
            continue
        name = name[2:-2]
        indent = line[: len(line) - len(line.lstrip())]
        for param in GROUPS.get(name, (name,)):
            lines.append(textwrap.indent(PARAMETERS[param], indent))
    cls.__doc__ = "\n".join(lines) + ("\n" if cls.__doc__.endswith("\n") else "")
    return cls

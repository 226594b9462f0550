"""FineTunedClassifier: fine-tune a timm backbone as a scikit-learn classifier."""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from ._finetune import FineTunedEstimator
from ._params import Interval, Options
from ._targets import Targets, classification_targets, masked_labels


class FineTunedClassifier(ClassifierMixin, FineTunedEstimator):
    """Fine-tune a pretrained timm backbone as a scikit-learn classifier.

    A new head replaces the model's classifier. Training runs in two stages, each with
    its own optimizer and warm-up + cosine schedule: first ``head_epochs`` epochs train
    the head on a frozen backbone, then the block groups above ``freeze_depth`` unfreeze
    for ``max_epochs`` epochs, with learning rates that shrink by ``layer_decay`` group by
    group towards the input. skorch runs the loop; only the fine-tuned model is kept
    (``backbone_``).

    Frozen layers are never paid for twice: without augmentation their output is the
    same every epoch, so the images are decoded and the frozen bottom computed once per
    fit (the head stage's features are derived from it), and only the trainable top runs
    in each epoch. With ``memory``, they are computed once per image for a whole grid
    search. Frozen parameters and BatchNorm statistics stay exactly unchanged.

    Parameters
    ----------
    model : str, default="efficientnet_b0.ra_in1k"
        Any timm model name, with or without a pretrained tag.
    weights : "pretrained", None, path-like or fitted fine-tuner, default="pretrained"
        As in :class:`PretrainedFeatureExtractor`: hub weights (cache-aware), random
        initialisation, or a local checkpoint (such as a file of :meth:`save_weights`).
        A fitted :class:`FineTunedClassifier` or :class:`FineTunedRegressor` (bare, or
        in ``sklearn.frozen.FrozenEstimator`` to survive ``clone`` in searches) starts
        from its fine-tuned backbone with a new head: sequential transfer.
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
    task_weights : array-like of shape (n_tasks,) or None, default=None
        With several label columns (a 2-D ``y`` of class labels, array or DataFrame: one
        task per column, one head each on the shared backbone), the weight of each
        task's loss; None weighs them equally.
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
        Extra callbacks (instances, or ``(name, callback)`` pairs), added to every
        stage.
    memory : str, path-like, joblib.Memory or None, default=None
        Folder of the per-image activation cache, shared with
        :class:`PretrainedFeatureExtractor` (same keys): frozen activations at each cut
        point, and pooled features, are computed once per image across fits.
    cache_key : {"stat", "content"}, default="stat"
        How the cache recognises an image file: ``"stat"`` trusts its absolute path,
        size and modification time; ``"content"`` hashes its bytes (for files rewritten
        in place). In-memory images and encoded bytes are always keyed by content.
    activation_budget : int or str, default="4GiB"
        How much memory the frozen activations of one fit may take (bytes, or a string
        such as ``"500MB"``); beyond it they spill to memory-mapped files (under
        ``memory``, or a temporary folder) that are deleted after the fit.
    domain_adaptation : {None, "adabn", "coral", "mmd", "dann"}, default=None
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
        over the stage (skada's ``DANNLoss``).
    adaptation_weight : float, default=1.0
        Weight of the ``"coral"``, ``"mmd"`` or ``"dann"`` loss against the task loss.

    Attributes
    ----------
    classes_ : ndarray or list of ndarray
        The class labels (for multilabel targets, the column indices; with several
        label columns, one array per column).
    multilabel_, multitask_ : bool
        Whether ``y`` was a 0/1 indicator matrix (one sigmoid per label), or several
        columns of class labels (one softmax head per column).
    backbone_ : torch.nn.Module
        The fine-tuned timm model, in eval mode (the skorch net that trained it is not
        kept). Pickles and skops files store it as data: its timm name, constructor
        arguments and weights (see the serving page of the user guide).
    device_ : torch.device
        Where it runs.
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
        **FineTunedEstimator._param_constraints,
        "mixup": [Interval(Real, 0, None, closed="left")],
        "cutmix": [Interval(Real, 0, None, closed="left")],
        "class_weight": [None, dict, Options({"balanced"})],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "task_weights": [None, list, tuple, np.ndarray],
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
        task_weights=None,
        drop_rate=0.0,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=False,
        callbacks=None,
        memory=None,
        cache_key="stat",
        activation_budget="4GiB",
        domain_adaptation=None,
        adaptation_weight=1.0,
    ):
        super().__init__(
            model,
            weights=weights,
            freeze_depth=freeze_depth,
            head_epochs=head_epochs,
            max_epochs=max_epochs,
            lr=lr,
            layer_decay=layer_decay,
            optimizer=optimizer,
            weight_decay=weight_decay,
            batch_size=batch_size,
            augment=augment,
            batchnorm=batchnorm,
            ema=ema,
            tta=tta,
            image_size=image_size,
            validation_fraction=validation_fraction,
            early_stopping=early_stopping,
            drop_rate=drop_rate,
            device=device,
            precision=precision,
            num_workers=num_workers,
            random_state=random_state,
            verbose=verbose,
            callbacks=callbacks,
            memory=memory,
            cache_key=cache_key,
            activation_budget=activation_budget,
            domain_adaptation=domain_adaptation,
            adaptation_weight=adaptation_weight,
        )
        self.mixup = mixup
        self.cutmix = cutmix
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.task_weights = task_weights

    def fit(self, X, y, sample_weight=None, sample_domain=None):
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

        sample_domain : array-like of shape (n_images,), default=None
            skada's convention: positive for labelled source images, negative for
            unlabelled target images (their ``y`` is ignored). None: every image is a
            source, unless ``domain_adaptation`` is set, when images labelled -1 (NaN
            for a regressor) are the target. Without ``domain_adaptation``, target
            images are left out (the source-only baseline).

        Returns
        -------
        self : FineTunedClassifier
        """
        return super().fit(X, y, sample_weight=sample_weight, sample_domain=sample_domain)

    def _masked_rows(self, y, n_images):
        return masked_labels(y, n_images)

    def _encode_targets(self, y, n_images, sample_weight) -> Targets:
        return classification_targets(y, n_images, self.task_weights)

    def _loss_options(self, targets, data) -> dict:
        return {
            "mixup": self.mixup,
            "cutmix": self.cutmix,
            "label_smoothing": self.label_smoothing,
            "class_weight": self._class_weight(targets, data),
            "task_sizes": targets.task_sizes,
            "task_weights": targets.task_weights,
        }

    def _class_weight(self, targets, data):
        """Class weights from the training labels (validation labels excluded)."""
        if self.class_weight is None:
            return None
        classes = targets.attributes["classes_"]
        labels = classes[data.y[data.train_idx]]
        return torch.as_tensor(
            compute_class_weight(self.class_weight, classes=classes, y=labels),
            dtype=torch.float32,
        )

    def _check_combinations(self, targets, weights):
        super()._check_combinations(targets, weights)
        if self.class_weight is not None and targets.attributes["multilabel_"]:
            raise ValueError("class_weight is not supported for multilabel targets.")
        mixing = self.mixup > 0 or self.cutmix > 0
        if mixing and self.domain_adaptation in ("coral", "mmd"):
            raise ValueError(
                f"domain_adaptation={self.domain_adaptation!r} cannot be combined with mixup "
                "or cutmix (the alignment compares unmixed features); set mixup=0 and "
                "cutmix=0, or domain_adaptation='adabn'."
            )
        if targets.attributes["multitask_"] and (mixing or self.class_weight is not None):
            raise ValueError(
                "Several label columns (multi-task) support neither class_weight nor "
                "mixup/cutmix (they mix or weigh one label per image); set "
                "class_weight=None, mixup=0 and cutmix=0, or fit one column at a time."
            )
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

    def predict_proba(self, X, sample_domain=None):
        """Class probabilities; columns follow ``classes_``.

        Parameters
        ----------
        X : images
        sample_domain : array-like of shape (n_images,), default=None
            Ignored: predictions do not depend on the domain. Accepted so that skada's
            pipelines and domain-adaptation scorers can pass it.

        Returns
        -------
        proba : ndarray of shape (n_images, n_classes), or list of them
            Softmax probabilities, or per-label sigmoid probabilities for multilabel
            targets; with ``tta``, averaged over the flipped views. With several label
            columns, a list with one array per column (scikit-learn's
            ``MultiOutputClassifier`` convention), columns following ``classes_[t]``.
        """
        check_is_fitted(self)
        proba = self._predict_outputs(X, self._output_activation())
        if self.multitask_:
            sizes = [len(c) for c in self.classes_]
            return np.split(proba, np.cumsum(sizes)[:-1], axis=1)
        return proba

    _onnx_output = "probabilities"

    def _output_activation(self):
        if self.multitask_:
            return _TaskSoftmax([len(c) for c in self.classes_])
        return torch.sigmoid if self.multilabel_ else _softmax

    def _onnx_metadata(self) -> dict:
        classes = self.classes_ if self.multitask_ else [self.classes_]
        return {
            "classes": [np.asarray(c).tolist() for c in classes],
            "multilabel": bool(self.multilabel_),
        }

    def predict(self, X, sample_domain=None):
        """Predicted labels: 1-D, a 0/1 indicator matrix for multilabel targets, or one
        column per label column (multi-task). ``sample_domain`` is ignored, as in
        :meth:`predict_proba`."""
        proba = self.predict_proba(X)
        if self.multitask_:
            columns = [c[np.argmax(p, axis=1)] for c, p in zip(self.classes_, proba, strict=True)]
            return np.column_stack(columns)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on images ``X``: the mean accuracy of ``predict``, and with several
        label columns the subset accuracy (an image counts when every column is right),
        as ``MultiOutputClassifier.score``.

        Parameters
        ----------
        X : images
        y : array-like of shape (n_images,) or (n_images, n_outputs)
        sample_weight : array-like of shape (n_images,), default=None

        Returns
        -------
        score : float
        """
        if not getattr(self, "multitask_", False):
            return super().score(X, y, sample_weight=sample_weight)
        exact = np.all(self.predict(X) == np.asarray(y, dtype=object), axis=1)
        return float(np.average(exact, weights=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


def _softmax(logits):
    return torch.softmax(logits, dim=1)


class _TaskSoftmax:
    """A softmax over each task's block of logits (one head per label column)."""

    def __init__(self, sizes):
        self.sizes = list(sizes)

    def __call__(self, logits):
        blocks = torch.split(logits, self.sizes, dim=1)
        return torch.cat([torch.softmax(b, dim=1) for b in blocks], dim=1)

"""FineTunedClassifier: fine-tune a timm backbone as a scikit-learn classifier."""

from __future__ import annotations

from dataclasses import replace
from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted

from ._class_outputs import LabelsFromProbabilities, per_task
from ._docs import compose
from ._finetune import FineTunedEstimator, init_params
from ._params import Interval, Options
from ._targets import Targets, classification_targets, masked_labels


@compose
class FineTunedClassifier(LabelsFromProbabilities, ClassifierMixin, FineTunedEstimator):
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
    {{fine-tuning}}
    mixup : float, default=0.0
        Alpha of mixup (timm's ``Mixup``); ``0`` turns it off. With cached activations
        the mix happens at the cut (manifold mixup).
    cutmix : float, default=0.0
        Alpha of CutMix; ``0`` turns it off. Stages trained on pooled features (the head
        stage without augmentation) use mixup only. Both need an even ``batch_size``.
    class_weight : dict, "balanced" or None, default=None
        Class weights of the loss (single-label targets only).
    label_smoothing : float, default=0.0
    task_weights : array-like of shape (n_tasks,) or None, default=None
        With several label columns (a 2-D ``y`` of class labels, array or DataFrame: one
        task per column, one head each on the shared backbone), the weight of each
        task's loss; None weighs them equally.

    Attributes
    ----------
    classes_ : ndarray or list of ndarray
        The class labels (for multilabel targets, the column indices; with several
        label columns, one array per column).
    multilabel_, multitask_ : bool
        Whether ``y`` was a 0/1 indicator matrix (one sigmoid per label), or several
        columns of class labels (one softmax head per column).
    task_names_ : ndarray of str or None
        With several label columns, the column names of a DataFrame ``y`` (the command
        line names its output columns after them), else None. Only set for multi-task
        targets.
    backbone_ : torch.nn.Module
        The fine-tuned timm model, in eval mode (the skorch net that trained it is not
        kept). Pickles and skops files store it as data: its timm name, constructor
        arguments and weights (see the serving page of the user guide).
    device_ : torch.device
        Where it runs.
    history_ : list of dict
        Per-epoch records of both stages: ``epoch``, ``stage``, ``train_loss``,
        ``train_acc`` (without mixing), ``dur``, and with validation ``valid_loss`` and
        ``valid_acc``. See [`TrainingHistoryDisplay`][sktransfer.TrainingHistoryDisplay].
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
        ema=None,
        tta=None,
        image_size=None,
        preprocessing=None,
        validation_fraction=0.0,
        early_stopping=None,
        drop_rate=0.0,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose="auto",
        callbacks=None,
        memory=None,
        cache_key="stat",
        activation_budget="4GiB",
        domain_adaptation=None,
        adaptation_weight=1.0,
        mixup=0.0,
        cutmix=0.0,
        class_weight=None,
        label_smoothing=0.0,
        task_weights=None,
    ):
        init_params(self, locals())

    def _masked_rows(self, y, n_images):
        return masked_labels(y, n_images)

    def _encode_targets(self, y, n_images, sample_weight) -> Targets:
        return classification_targets(y, n_images, self.task_weights, self.label_smoothing)

    def _objective(self, targets, data):
        """Class weights come from the training labels (validation labels excluded)."""
        if self.class_weight is None:
            return targets.objective
        classes = targets.attributes["classes_"]
        labels = classes[data.y[data.train_idx]]
        weights = compute_class_weight(self.class_weight, classes=classes, y=labels)
        return replace(targets.objective, class_weight=tuple(float(w) for w in weights))

    def _mixing(self) -> dict:
        return {"mixup": self.mixup, "cutmix": self.cutmix}

    def _check_combinations(self, targets, weights):
        super()._check_combinations(targets, weights)
        mixing = self.mixup > 0 or self.cutmix > 0
        targets.objective.check(mixing=mixing, class_weighted=self.class_weight is not None)
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
        return per_task(proba, self.classes_, self.multitask_)

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

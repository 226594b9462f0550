"""FineTunedRegressor: fine-tune a timm backbone to predict real-valued targets."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import RegressorMixin

from ._finetune import FineTunedEstimator
from ._params import Options
from ._targets import Targets, masked_values, regression_targets


class FineTunedRegressor(RegressorMixin, FineTunedEstimator):
    """Fine-tune a pretrained timm backbone as a scikit-learn regressor.

    The same two-stage schedule, caching, pickling and scikit-learn integration as
    :class:`FineTunedClassifier`, with a linear head of one output per target column.
    Targets are standardised per column inside ``fit`` (the loss sees zero-mean,
    unit-variance targets, so one learning rate suits any unit) and predictions are
    returned in the original units. ``score`` is R² (averaged over columns for
    multi-output ``y``).

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
    loss : {"squared_error", "huber"}, default="squared_error"
        Mean squared error, or the Huber loss with its threshold at one standard
        deviation of the target (robust to a few wrong or extreme targets).
    freeze_depth : int, float or "all", default=0
        Block groups kept frozen, counted from the input (see
        :class:`FineTunedClassifier`).
    head_epochs : int, default=1
        Epochs of the first stage (the new head on a frozen backbone).
    max_epochs : int, default=4
        Epochs of the second stage (unfrozen groups and head).
    lr : float, default=3e-4
        Learning rate of the head; unfrozen groups get ``lr * layer_decay**k``.
    layer_decay : float, default=0.85
        Learning-rate decay per block group, from the head towards the input.
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
    weight_decay : float, default=0.01
        Applied to weights, not to biases or normalisation parameters.
    batch_size : int, default=32
    augment : None, "light", "randaugment", "trivialaugment" or callable, default=None
        Training-time augmentation; only for targets that it leaves unchanged.
    batchnorm : {"auto", "frozen", "train"}, default="auto"
        BatchNorm layers in the trainable groups (see :class:`FineTunedClassifier`).
    ema : float or None, default=None
        Decay of an exponential moving average of the weights, used for prediction.
    tta : {None, "hflip", "flips"}, default=None
        Test-time augmentation in ``predict``: predictions averaged over flipped views.
    image_size : int or (int, int), default=None
        Override the model's input size.
    validation_fraction : float, default=0.0
        Fraction of the training data held out (at random) to score each epoch.
    early_stopping : int or None, default=None
        Patience in epochs on the validation loss; needs ``validation_fraction > 0``.
    drop_rate : float, default=0.0
        Dropout before the new head.
    device : str or torch.device, default="auto"
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
    num_workers : int, default=0
    random_state : int, RandomState or None, default=None
    verbose : bool, default=False
    callbacks : list of skorch callbacks or None, default=None
        Extra callbacks (instances, or ``(name, callback)`` pairs), added to every
        stage.
    memory : str, path-like, joblib.Memory or None, default=None
        Folder of the per-image activation cache, shared with the other estimators.
    cache_key : {"stat", "content"}, default="stat"
        How the cache recognises an image file: ``"stat"`` trusts its absolute path,
        size and modification time; ``"content"`` hashes its bytes (for files rewritten
        in place). In-memory images and encoded bytes are always keyed by content.
    activation_budget : int or str, default="4GiB"
        Memory allowed to the frozen activations of one fit; beyond it they spill to
        disk.
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
    n_outputs_ : int
        Number of target columns.
    target_mean_, target_scale_ : ndarray of shape (n_outputs_,)
        The standardisation of the targets: mean and standard deviation per column,
        weighted by ``sample_weight``.
    multioutput_ : bool
        Whether ``y`` was 2-D (then ``predict`` returns 2-D).
    backbone_, device_, history_, n_groups_, frozen_groups_, data_config_, cached_activations_, \
cache_identity_
        As in :class:`FineTunedClassifier`.

    See Also
    --------
    FineTunedClassifier : The same fine-tuning for class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTunedRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    >>> y = X.mean(axis=(1, 2, 3))  # brightness
    >>> reg = FineTunedRegressor(model="test_efficientnet", weights=None,
    ...                          max_epochs=1, image_size=32, random_state=0)
    >>> reg.fit(X, y).predict(X[:2]).shape
    (2,)
    """

    _param_constraints: dict = {
        **FineTunedEstimator._param_constraints,
        "loss": [Options({"squared_error", "huber"})],
    }

    def __init__(
        self,
        model="efficientnet_b0.ra_in1k",
        *,
        weights="pretrained",
        loss="squared_error",
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
        validation_fraction=0.0,
        early_stopping=None,
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
        self.loss = loss

    def fit(self, X, y, sample_weight=None, sample_domain=None):
        """Fine-tune the backbone on images ``X`` with real targets ``y``.

        Parameters
        ----------
        X : images
            A numpy array of images, a list of PIL images or arrays, or file paths.
        y : array-like of shape (n_images,) or (n_images, n_outputs)
            Finite real numbers; a 2-D ``y`` (array or DataFrame) gives one output per
            column.
        sample_weight : array-like of shape (n_images,), default=None
            Non-negative weights of the images in the loss (scaled to a mean of 1 over
            the training images).

        sample_domain : array-like of shape (n_images,), default=None
            skada's convention: positive for labelled source images, negative for
            unlabelled target images (their ``y`` is ignored). None: every image is a
            source, unless ``domain_adaptation`` is set, when images labelled -1 (NaN
            for a regressor) are the target. Without ``domain_adaptation``, target
            images are left out (the source-only baseline).

        Returns
        -------
        self : FineTunedRegressor
        """
        return super().fit(X, y, sample_weight=sample_weight, sample_domain=sample_domain)

    def _masked_rows(self, y, n_images):
        return masked_values(y, n_images)

    def _encode_targets(self, y, n_images, sample_weight) -> Targets:
        return regression_targets(y, n_images, self.loss, sample_weight)

    def predict(self, X, sample_domain=None):
        """Predicted targets, in the units of ``y``.

        Parameters
        ----------
        X : images
        sample_domain : array-like of shape (n_images,), default=None
            Ignored: predictions do not depend on the domain. Accepted so that skada's
            pipelines and domain-adaptation scorers can pass it.

        Returns
        -------
        y_pred : ndarray of shape (n_images,) or (n_images, n_outputs)
            1-D when ``y`` was 1-D at fit; with ``tta``, averaged over the flipped views.
        """
        standardised = self._predict_outputs(X, _unchanged)
        values = standardised * self.target_scale_ + self.target_mean_
        return values if self.multioutput_ else values[:, 0]

    _onnx_output = "predictions"

    def _output_activation(self):
        return _InUnitsOfY(self.target_mean_, self.target_scale_)


def _unchanged(outputs):
    return outputs


class _InUnitsOfY:
    """Standardised outputs back in the units of ``y`` (float32, for ONNX files)."""

    def __init__(self, mean, scale):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32))

    def __call__(self, outputs):
        return outputs * self.scale + self.mean

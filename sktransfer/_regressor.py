"""FineTunedRegressor: fine-tune a timm backbone to predict real-valued targets."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import RegressorMixin

from ._docs import compose
from ._finetune import FineTunedEstimator, init_params
from ._finetuning import REGRESSION_LOSSES
from ._params import Options
from ._targets import Targets, masked_values, regression_targets


@compose
class FineTunedRegressor(RegressorMixin, FineTunedEstimator):
    """Fine-tune a pretrained timm backbone as a scikit-learn regressor.

    The same two-stage schedule, caching, pickling and scikit-learn integration as
    [`FineTunedClassifier`][sktransfer.FineTunedClassifier], with a linear head of one output per
    target column. Targets are standardised per column inside ``fit`` (the loss sees zero-mean,
    unit-variance targets, so one learning rate suits any unit) and predictions are
    returned in the original units. ``score`` is R² (averaged over columns for
    multi-output ``y``).

    Parameters
    ----------
    {{fine-tuning}}
    loss : {"squared_error", "huber"}, default="squared_error"
        Mean squared error, or the Huber loss with its threshold at one standard
        deviation of the target (robust to a few wrong or extreme targets).

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
        As in [`FineTunedClassifier`][sktransfer.FineTunedClassifier].

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
        "loss": [Options(set(REGRESSION_LOSSES))],
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
        loss="squared_error",
    ):
        init_params(self, locals())

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

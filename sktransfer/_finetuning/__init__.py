"""The fine-tuning core, one module per concern.

- ``_plan``: the plan (schedule, regularisation, runtime, caching), the data and
  the result, as plain values;
- ``_objectives``: one object per target kind (criterion, accuracy, target dtype,
  what it can mix with);
- ``_adaptation``: one object per domain-adaptation method, and the one place where
  ``domain_adaptation``'s string becomes one (``_alignment`` and ``_batchnorm``
  hold their machinery);
- ``_inputs`` and ``_datasets``: what each stage trains on (frozen rows, whose
  names ``sktransfer._rows`` owns, or images);
- ``_net`` and ``_callbacks``: the skorch net of a stage;
- ``_head``: a head-only stage on cached pooled features, solved to convergence;
- ``_loop``: ``train``, the stages in order;
- ``_predict``: prediction of a fitted fine-tuner (from images or cached rows).

The estimators (``sktransfer._finetune`` and its subclasses) build a plan and call
``train``; nothing here reads an estimator.
"""

from ._adaptation import ADAPTATIONS, adaptation_for
from ._loop import train
from ._objectives import REGRESSION_LOSSES
from ._plan import (
    Caching,
    Regularisation,
    Runtime,
    Schedule,
    Stage,
    TrainingData,
    TrainingPlan,
    TrainingResult,
)

__all__ = [
    "ADAPTATIONS",
    "REGRESSION_LOSSES",
    "Caching",
    "Regularisation",
    "Runtime",
    "Schedule",
    "Stage",
    "TrainingData",
    "TrainingPlan",
    "TrainingResult",
    "adaptation_for",
    "train",
]

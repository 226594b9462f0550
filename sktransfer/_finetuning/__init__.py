"""The fine-tuning core, one module per concern.

- :mod:`._plan`: the plan (schedule, regularisation, runtime, caching), the data and
  the result, as plain values;
- :mod:`._objectives`: one object per target kind (criterion, accuracy, target dtype,
  what it can mix with);
- :mod:`._adaptation`: one object per domain-adaptation method, and the one place where
  ``domain_adaptation``'s string becomes one (:mod:`._alignment` and :mod:`._batchnorm`
  hold their machinery);
- :mod:`._inputs` and :mod:`._datasets`: what each stage trains on (frozen rows, whose
  names :mod:`sktransfer._rows` owns, or images);
- :mod:`._net` and :mod:`._callbacks`: the skorch net of a stage;
- :mod:`._head`: a head-only stage on cached pooled features, solved to convergence;
- :mod:`._loop`: :func:`train`, the stages in order;
- :mod:`._predict`: prediction of a fitted fine-tuner (from images or cached rows).

The estimators (:mod:`sktransfer._finetune` and its subclasses) build a plan and call
:func:`train`; nothing here reads an estimator.
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

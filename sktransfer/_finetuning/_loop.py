"""The loop of a fine-tune: stages in order, weight averaging, then adaptation.

``train`` runs a ``TrainingPlan`` on a backbone and its data and returns
a ``TrainingResult``; it reads the plan, never an estimator. A stage that
trains only a linear head on cached pooled features is solved to convergence
(``_head``); every other stage is a skorch net stepped by epochs.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from skorch.helper import predefined_split

from .. import _backbone
from .._progress import epoch_line, write_line
from ._callbacks import EpochProgress, WeightAverage
from ._head import solvable, solve_head
from ._inputs import StageInputs
from ._net import StageExtras, build_net
from ._plan import TrainingResult


def train(plan, backbone, data) -> TrainingResult:
    """Train ``backbone`` (in place) by ``plan`` on ``data``."""
    adaptation = plan.adaptation if data.target is not None else None
    if adaptation is not None:
        adaptation.check(plan, backbone, data)
    decay = plan.regularisation.ema
    ema = _backbone.weight_average(backbone, decay) if decay is not None else None
    averaging = (("ema", WeightAverage(ema)),) if ema is not None else ()
    inputs = StageInputs(
        plan, backbone, data, aligning=adaptation is not None and adaptation.aligns
    )
    history, warnings = [], []
    try:
        stages = plan.schedule.training
        solved = [solvable(plan, backbone, stage, inputs) for stage in stages]
        total = _epochs(stages, solved)
        for stage, solve in zip(stages, solved, strict=True):
            if solve:
                record, warning = solve_head(plan, backbone, stage, inputs)
                _average_solved(ema, backbone, stage)
                history += _numbered([record], offset=len(history))
                if plan.runtime.verbose:
                    write_line(epoch_line(history[-1], total))
            else:
                numbering = (len(history) + 1, total)
                net, warning = _run_stage(
                    plan, backbone, data, stage, inputs, averaging, adaptation, numbering
                )
                history += _numbered(epoch_records(net.history), offset=len(history))
            warnings += [warning] if warning is not None else []
    finally:
        inputs.close()
    if ema is not None:
        backbone.load_state_dict(ema.module.state_dict())
    if adaptation is not None:
        records = adaptation.after_training(backbone, data, plan, inputs.eval_tf)
        history += _numbered(records, offset=len(history))
    return TrainingResult(backbone.eval(), history, inputs.cached, tuple(warnings))


def _run_stage(plan, backbone, data, stage, inputs, averaging, adaptation, numbering):
    """Fit one stage's net; returns it and a warning of the adaptation (or None).
    ``numbering``: the number of the stage's first epoch in the fit, and of its last."""
    split, train_set, valid_set = inputs.datasets(stage)
    callbacks = averaging
    if plan.runtime.verbose:
        callbacks += (("progress", EpochProgress(*numbering)),)
    extras = StageExtras(callbacks)
    aligning = adaptation is not None and adaptation.aligns and not stage.head_only(backbone)
    if aligning:
        batch_size = plan.schedule.batch_size
        steps = -(-len(data.train_idx) // batch_size) * stage.epochs
        own = adaptation.stage_extras(backbone, stage, inputs.target(), steps, batch_size)
        extras = replace(own, callbacks=(*callbacks, *own.callbacks))
    net = build_net(
        plan,
        backbone,
        stage,
        split=split,
        n_train=len(data.train_idx),
        n_outputs=data.n_outputs,
        validating=valid_set is not None,
        extras=extras,
    )
    if valid_set is not None:
        net.set_params(train_split=predefined_split(valid_set))
    net.fit(train_set, None)
    return net, adaptation.after_stage(net.history) if aligning else None


def _epochs(stages, solved) -> int:
    """The records the stages add to ``history_``: one per epoch, one per solved stage
    (early stopping may end a stage sooner)."""
    return sum(1 if solve else stage.epochs for stage, solve in zip(stages, solved, strict=True))


def _average_solved(ema, backbone, stage) -> None:
    """A solved stage takes no optimizer step for the weight average to follow: its
    solution is the average's value of the parameters it trained."""
    if ema is None:
        return
    averaged = dict(ema.module.named_parameters())
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if name in stage.trainable:
                averaged[name].copy_(param)


def epoch_records(history):
    """skorch's epoch rows as ``history_`` records (numbered by the caller)."""
    records = []
    for row in history:
        record = {k: v for k, v in row.items() if k not in ("epoch", "batches", "dur")}
        record["dur"] = row.get("dur")
        records.append(record)
    return records


def _numbered(records, offset):
    return [{"epoch": offset + i + 1, **record} for i, record in enumerate(records)]

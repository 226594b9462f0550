"""A head-only fit solved to convergence: the new linear head on cached pooled features.

When the last (or only) stage of a fit trains only a linear head, on pooled features
computed once (no augmentation), with unmixed targets and a smooth loss, the stage is a
convex problem: a (multinomial) logistic regression for labels, a ridge regression for
squared error. A few epochs of AdamW stop far from its optimum; ``solve_head``
solves it instead, the way scikit-learn's ``LogisticRegressionCV`` does:

- the features are standardised (the training rows' mean and standard deviation; a
  constant column keeps a scale of 1), and the standardisation is folded back into the
  head's weight and bias afterwards (exact for a linear head);
- the loss is the objective's own criterion (class weights, label smoothing, sample
  weights included), averaged over the rows, plus ``penalty / 2`` times the squared
  norm of the head's weight (never its bias), minimised by full-batch L-BFGS with a
  strong-Wolfe line search until the largest gradient entry falls below
  ``TOLERANCE`` (at most ``MAX_ITER`` iterations);
- the penalty is chosen among ``INVERSE_PENALTIES`` (``C``, as in scikit-learn:
  ``penalty = 1 / (C * n_train)``) by ``FOLDS``-fold cross-validation of the
  unpenalised loss on the training rows (stratified by class where the objective has
  classes), warm-started along the grid from the strongest penalty; the head is then
  refitted on every training row, from the mean of the folds' solutions. With fewer
  than two training rows per fold, ``C = 1`` (scikit-learn's default) is used.

Dropout before the head and the optimizer's weight decay do not apply: the
cross-validated penalty is the regulariser. skorch callbacks do not run.

A head stage followed by a fine-tuning stage keeps its epochs unless the plan asks to
converge it (``head_epochs="converge"``, LP-FT): on ELPV (300 training cells, 128 px,
3 seeds, ``benchmarks/head_probe.py --full-finetune``), a converged head before the
backbone unfreezes lowered the default fine-tune's ROC AUC by 0.010-0.013 (the first
fine-tuning epoch's loss rose from about 0.2 to 0.6-1.0: AdamW moves every backbone
weight by about the learning rate, and a confident head amplifies the change).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn

from .. import _backbone
from ._objectives import mean_loss

INVERSE_PENALTIES = tuple(float(c) for c in np.logspace(-4, 3, 8))  # C, strong to weak
FOLDS = 3
DEFAULT_C = 1.0
MAX_ITER = 500
TOLERANCE = 1e-5


def solvable(plan, backbone, stage, inputs) -> bool:
    """Whether ``stage`` is solved here rather than stepped by epochs: it is the fit's
    last stage (nothing after it changes the features its head is solved on), or a head
    stage the plan asks to converge (``Schedule.converge_head``), and ``convex``
    holds. A head stage asked to converge that is not convex raises ``ValueError``."""
    last = stage is plan.schedule.training[-1]
    asked = plan.schedule.converge_head and stage.head_only(backbone)
    if not (last or asked):
        return False
    if asked and not convex(plan, backbone, stage, inputs):
        raise ValueError(
            'head_epochs="converge" solves the head stage on pooled features computed '
            "once, and this fit cannot: "
            + _not_convex(plan, backbone, inputs)
            + ". Set head_epochs to a number of epochs."
        )
    return convex(plan, backbone, stage, inputs)


def _not_convex(plan, backbone, inputs) -> str:
    """Why a head stage is not a convex problem on cached rows, in words."""
    if not inputs.cached:
        return "augment changes the images every epoch"
    if plan.regularisation.mixing:
        return "mixup and cutmix mix the targets"
    if not plan.objective.solvable:
        return "its loss is not smooth"
    return "the model's head is not a single linear layer"


def convex(plan, backbone, stage, inputs) -> bool:
    """Whether ``stage`` is a convex problem: only the head trains, on cached pooled
    rows, unmixed, with a smooth loss and a linear head."""
    return (
        stage.head_only(backbone)
        and inputs.cached
        and not plan.regularisation.mixing
        and plan.objective.solvable
        and linear_head(backbone) is not None
    )


def linear_head(backbone: nn.Module) -> nn.Linear | None:
    """The classifier if it is one ``nn.Linear`` with a bias, else None."""
    names = set(_backbone.classifier_names(backbone))
    owners = {name.rpartition(".")[0] for name in names}
    if len(owners) != 1:
        return None
    owner = owners.pop()
    module = backbone.get_submodule(owner)
    if type(module) is not nn.Linear or names != {f"{owner}.weight", f"{owner}.bias"}:
        return None
    return module


@dataclass(frozen=True)
class Rows:
    """Standardised features, targets and sample weights (None: all 1), on one device."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor | None

    def __len__(self):
        return len(self.x)

    def take(self, index) -> Rows:
        index = torch.as_tensor(index, device=self.x.device)
        return Rows(self.x[index], self.y[index], None if self.w is None else self.w[index])


@dataclass(frozen=True)
class Solution:
    """A head in standardised space, and how its solve ended."""

    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int = 0
    converged: bool = True

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


class Standardiser:
    """The training rows' mean and standard deviation per column (float64)."""

    def __init__(self, rows: np.ndarray):
        x = np.asarray(rows, dtype=np.float64)
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        # float32 features whose spread is within rounding of their value are constant
        scale[scale <= 10 * np.finfo(np.float32).eps * np.abs(self.mean)] = 1.0
        self.scale = scale

    def rows(self, dataset, device) -> Rows:
        """A dataset of cached rows (``rows``, ``y``, ``w``), standardised."""
        x = (np.asarray(dataset.rows, dtype=np.float64) - self.mean) / self.scale
        w = None if dataset.w is None else dataset.w.to(device)
        return Rows(torch.as_tensor(x, dtype=torch.float32, device=device), dataset.y.to(device), w)

    def write(self, head: nn.Linear, solution: Solution) -> None:
        """Set ``head`` to ``solution`` on unstandardised features."""
        weight = solution.weight.double().cpu().numpy() / self.scale
        bias = solution.bias.double().cpu().numpy() - weight @ self.mean
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight))
            head.bias.copy_(torch.as_tensor(bias))


def solve_head(plan, backbone, stage, inputs) -> tuple[dict, ConvergenceWarning | None]:
    """Solve ``stage`` (one that is ``solvable``): set the head to the optimum and
    return the stage's ``history_`` record and a warning (None if it converged)."""
    start = time.perf_counter()
    _, train_set, valid_set = inputs.datasets(stage)
    objective, device = plan.objective, plan.runtime.device
    criterion = objective.criterion(False).to(device)
    standardiser = Standardiser(train_set.rows)
    train = standardiser.rows(train_set, device)
    penalty, warm = choose_penalty(train, objective, criterion, _zeros(backbone, device))
    solution = fit_linear(train, criterion, penalty, warm)
    standardiser.write(linear_head(backbone), solution)
    record = {"stage": stage.name, **_scores(train, solution, objective, criterion, "train")}
    if valid_set is not None:
        valid = standardiser.rows(valid_set, device)
        record.update(_scores(valid, solution, objective, criterion, "valid"))
    record.update(head_penalty=penalty, head_iterations=solution.iterations)
    record["dur"] = time.perf_counter() - start
    return record, None if solution.converged else _not_converged(stage.name, penalty)


def choose_penalty(rows: Rows, objective, criterion, zero: Solution):
    """The penalty (of ``INVERSE_PENALTIES``) with the least cross-validated loss,
    and the mean of the folds' solutions at it (a warm start for the refit)."""
    n = len(rows)
    penalties = [1.0 / (c * n) for c in INVERSE_PENALTIES]
    folds = _folds(rows, objective)
    if folds is None:
        return 1.0 / (DEFAULT_C * n), zero
    losses = np.zeros((len(folds), len(penalties)))
    solutions = []
    for f, (fit_rows, held_rows) in enumerate(folds):
        fit, held = rows.take(fit_rows), rows.take(held_rows)
        path, solution = [], zero
        for p, penalty in enumerate(penalties):
            solution = fit_linear(fit, criterion, penalty, solution)
            losses[f, p] = _loss(held, solution, criterion).item()
            path.append(solution)
        solutions.append(path)
    best = int(np.argmin(losses.mean(axis=0)))  # ties: the stronger penalty
    weight = torch.stack([path[best].weight for path in solutions]).mean(dim=0)
    bias = torch.stack([path[best].bias for path in solutions]).mean(dim=0)
    return penalties[best], Solution(weight, bias)


def fit_linear(rows: Rows, criterion, penalty: float, start: Solution) -> Solution:
    """Minimise the mean loss plus ``penalty / 2 * |weight|^2`` from ``start``."""
    weight = start.weight.detach().clone().requires_grad_(True)
    bias = start.bias.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=MAX_ITER,
        max_eval=4 * MAX_ITER,
        tolerance_grad=TOLERANCE,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = _loss(rows, Solution(weight, bias), criterion)
        loss = loss + 0.5 * penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    # L-BFGS stops early only on its tolerances (gradient, or no more progress)
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    return Solution(weight.detach(), bias.detach(), iterations, iterations < MAX_ITER)


def _loss(rows: Rows, solution: Solution, criterion) -> torch.Tensor:
    """The mean over rows of each one's weighted loss, as the stepped stages have it."""
    return mean_loss(criterion(solution.logits(rows.x), rows.y), rows.w)


def _folds(rows: Rows, objective) -> list | None:
    """The cross-validation folds of the training rows (None: too few rows): stratified
    when the objective has classes and each class present has a row in every fold."""
    n = len(rows)
    if n < 2 * FOLDS:
        return None
    seed = int(torch.randint(2**31 - 1, ()).item())  # from the fit's seeded generator
    strata = objective.strata(rows.y)
    if strata is not None:
        strata = strata.cpu().numpy()
        counts = np.bincount(strata)
        if counts[counts > 0].min() >= FOLDS:
            splitter = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
            return list(splitter.split(strata, strata))
    return list(KFold(FOLDS, shuffle=True, random_state=seed).split(np.arange(n)))


def _zeros(backbone: nn.Module, device) -> Solution:
    """The start of every path: a head of zeros (the penalised optimum is unique, up
    to a shift of every softmax bias that zero-sum gradients never make)."""
    head = linear_head(backbone)
    weight = torch.zeros(head.weight.shape, dtype=torch.float32, device=device)
    return Solution(weight, torch.zeros(head.bias.shape, dtype=torch.float32, device=device))


@torch.no_grad()
def _scores(rows: Rows, solution: Solution, objective, criterion, side: str) -> dict:
    """``<side>_loss`` and, for objectives with hits, ``<side>_acc``."""
    scores = {f"{side}_loss": _loss(rows, solution, criterion).item()}
    hits = objective.hits()
    if hits is not None:
        scores[f"{side}_acc"] = hits(solution.logits(rows.x), rows.y).mean().item()
    return scores


def _not_converged(stage: str, penalty: float) -> ConvergenceWarning:
    return ConvergenceWarning(
        f"The {stage} stage's solve (L-BFGS on the pooled features, L2 penalty "
        f"{penalty:.3g}) stopped after {MAX_ITER} iterations before its gradient fell "
        f"below {TOLERANCE}: the head is near, not at, the optimum of its loss."
    )

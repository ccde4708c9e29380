"""When a trial stops early: how often a trial evaluates over its run (`evaluations_per_run`), when it is
clearly behind the method's other trials (`clearly_behind`, the default pruner `behind`), and the pruner
of each name (`_pruner`: `behind`, Optuna's `median` and `halving`, or `none`). optuna is imported inside
functions."""

from __future__ import annotations

import math
from typing import Any

PRUNERS = ("behind", "median", "halving", "none")
DEFAULT_PRUNER = "behind"
MAX_EVALS_PER_RUN = 8  # a trial evaluates at most this often over its run, so a pruner sees its curve early
EVAL_COST_SHARE = 0.15  # ... while its evaluations cost at most this share of its training
PRUNE_FROM_EVAL = 2  # `behind` never judges a trial on its first evaluation (its warm-up may not be over)
NOISE_Z = 2.0  # `behind`: a gap of fewer standard errors than this is noise, not a trial behind


def evaluations_per_run(train_rows: int, val_rows: int, epochs: int) -> int:
    """How often a trial evaluates over its run: as often as keeps its evaluations (a forward pass over the
    validation rows, about a third of a training step's cost per row) within EVAL_COST_SHARE of its training,
    at least once an epoch and at most MAX_EVALS_PER_RUN times."""
    if train_rows <= 0 or val_rows <= 0:
        return max(1, epochs)
    affordable = int(EVAL_COST_SHARE * 3 * epochs * train_rows / val_rows)
    return max(epochs, min(MAX_EVALS_PER_RUN, affordable))


def noise(accuracy: float, val_rows: int) -> float:
    """NOISE_Z standard errors of an accuracy measured on `val_rows` rows (at least one row's worth)."""
    n = max(1, val_rows)
    p = min(1.0, max(0.0, accuracy))
    return NOISE_Z * math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def clearly_behind(curve: dict[int, float], others: list[dict[int, float]], val_rows: int) -> bool:
    """Whether a trial with validation accuracies `curve` (step -> value) is clearly behind: it has been
    evaluated at least PRUNE_FROM_EVAL times, and at its last step its accuracy is below the best of the
    other trials' (each at its own last evaluation up to that step) by more than `noise`."""
    if len(curve) < PRUNE_FROM_EVAL:
        return False
    step = max(curve)
    value = curve[step]
    seen = [c[max(s for s in c if s <= step)] for c in others if any(s <= step for s in c)]
    if not seen:
        return False
    best = max(seen)
    return value + noise(best, val_rows) < best


def _pruner(name: str, eval_every: int, val_rows: int):
    import optuna

    if name == "behind":
        class Behind(optuna.pruners.BasePruner):
            """`clearly_behind` against every other trial of the method (running, pruned or finished)."""

            def prune(self, study: Any, trial: Any) -> bool:
                others = [dict(t.intermediate_values) for t in study.get_trials(deepcopy=False)
                          if t.number != trial.number and t.intermediate_values]
                return clearly_behind(dict(trial.intermediate_values), others, val_rows)

        return Behind()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, eval_every), reduction_factor=3)
    return optuna.pruners.NopPruner()

"""When a trial stops early: how often a trial evaluates over its run (`evaluations_per_run`), when it is
clearly behind the method's other trials (`clearly_behind`, the pruner `behind`), and the pruner of each
name (`_pruner`: Optuna's successive `halving`, the default; `behind`; Optuna's `median`; or `none`).
optuna is imported inside functions.

Why `halving` is the default (README, "Tuning evidence"): replayed on the recorded trials of the IMDB and
AG News studies, it saved the most steps, and it never changed a study's outcome. The outcome is the
configuration each method's final runs use: the best trial only where it beats the defaults trial by
more than the validation noise (report.keep_defaults), else the defaults. A trial that halving stops early
would, at its end, have been within the noise of the kept ones. `behind` saved 0-12%."""

from __future__ import annotations

import math
from typing import Any

PRUNERS = ("behind", "median", "halving", "none")
DEFAULT_PRUNER = "halving"
MAX_EVALS_PER_RUN = 8  # a trial evaluates at most this often over its run, so a pruner sees its curve early
EVAL_COST_SHARE = 0.15  # ... while its evaluations cost at most this share of its training
MIN_EVALS_PRUNED = 4  # ... but with a pruner at least this often: halving's first cut comes after a quarter of a run
HALVING_FACTOR = 3  # `halving` keeps the best third of the trials at each rung (steps: first evaluation x 3^k)
PRUNE_FROM_EVAL = 2  # `behind` never judges a trial on its first evaluation (its warm-up may not be over)
NOISE_Z = 2.0  # `behind`: a gap of fewer standard errors than this is noise, not a trial behind


def evaluations_per_run(train_rows: int, val_rows: int, epochs: int, pruning: bool = True) -> int:
    """How often a trial evaluates over its run: as often as keeps its evaluations (a forward pass over the
    validation rows, about a third of a training step's cost per row) within EVAL_COST_SHARE of its training,
    at least once an epoch and at most MAX_EVALS_PER_RUN times. With a pruner (`pruning`), at least
    MIN_EVALS_PRUNED times: a trial stopped at its first evaluation then saves three quarters of its run,
    which pays for the extra evaluations of the trials that go on."""
    if train_rows <= 0 or val_rows <= 0:
        return max(1, epochs)
    affordable = int(EVAL_COST_SHARE * 3 * epochs * train_rows / val_rows)
    if pruning:
        affordable = max(affordable, MIN_EVALS_PRUNED)
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
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, eval_every),
                                                      reduction_factor=HALVING_FACTOR)
    return optuna.pruners.NopPruner()

"""When a trial stops early: how often a trial evaluates over its run (`evaluations_per_run`), when it is
clearly behind the method's other trials (`clearly_behind`, the pruner `behind`) or behind its defaults
(`behind_defaults`), and the pruner of each name (`_pruner`: `ahead`, the default; Optuna's successive
`halving`; `behind`; Optuna's `median`; or `none`). optuna is imported inside functions.

`ahead` is successive halving with the defaults as the bar: at each evaluation a trial goes on only while
it is not behind the defaults trial at the same step, and at each rung of halving only while it is among
the best third of the method's trials there. The defaults trial itself always runs to its end.

Why it is the default (README, "Tuning evidence"): a study's outcome, the configuration each method's
final runs use, is the best trial only where it beats the defaults trial by more than the validation noise
(report.keep_defaults); otherwise it is the defaults. A trial that is behind the defaults a quarter of the
way in seldom ends that far ahead of them. Replayed on the recorded trials of the IMDB and AG News studies
(every trial run to its end), `ahead` never changed a study's outcome. It saved 43-49% of the training
steps, against 32-49% for `halving` and 3-12% for `behind`."""

from __future__ import annotations

import math
from typing import Any

PRUNERS = ("ahead", "halving", "behind", "median", "none")
DEFAULT_PRUNER = "ahead"
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


def behind_defaults(curve: dict[int, float], defaults: dict[int, float]) -> bool:
    """Whether a trial with validation accuracies `curve` (step -> value) is below the defaults trial's
    `defaults` at its last step (the defaults' own last evaluation at or before that step). False while
    either has no evaluation to compare."""
    if not curve:
        return False
    step = max(curve)
    before = [s for s in defaults if s <= step]
    return bool(before) and curve[step] < defaults[max(before)]


def is_defaults(trial: Any) -> bool:
    """The method's defaults trial (search.py enqueues it first, tagged in its user attributes)."""
    return bool(trial.user_attrs.get("defaults"))


def _pruner(name: str, eval_every: int, val_rows: int):
    import optuna

    if name == "ahead":
        class Ahead(optuna.pruners.BasePruner):
            """Not behind the defaults trial at the same step (`behind_defaults`), and among the best third
            at each rung of successive halving. The defaults trial is never stopped: it is the bar."""

            def __init__(self) -> None:
                self.halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, eval_every),
                                                                      reduction_factor=HALVING_FACTOR)

            def prune(self, study: Any, trial: Any) -> bool:
                if is_defaults(trial):  # (halving still records its rung values: the others compete with them)
                    self.halving.prune(study, trial)
                    return False
                bar = next((dict(t.intermediate_values) for t in study.get_trials(deepcopy=False)
                            if is_defaults(t) and t.intermediate_values), {})
                return (behind_defaults(dict(trial.intermediate_values), bar)
                        or self.halving.prune(study, trial))

        return Ahead()

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

"""A tuning study: each method searched on an equal budget, then its best configuration (and its defaults)
run again over several seeds for a fair final comparison. UI-free; optuna is imported inside functions.

    spec = new_study(store, bases, trials=8, ...)        # or load_study(store, "tune-1") to resume
    tuner = Tuner(store, spec, pool, data=splits)        # pool: engine.submit.make_pool(...), started
    tuner.run(stop)                                      # search, then the final runs; tuner.interrupt() on Ctrl-C
    doc = summary(store, spec)                           # the whole study (trials, budget, final runs)

How it works (Optuna's ask-and-tell form):
- one Optuna study per method (its own space, TPE seeded), in a journal file under the store
  (<store>/studies/<name>.optuna.log) next to the study's own record (<name>.json); a method's first
  trial is its defaults (`enqueue_trial`), so the tuned result is never worse on validation;
- a trial is asked, turned into a config (space.apply) and queued as an ordinary run tagged with the
  study and trial number (engine/submit.py); several run at once when there are several workers;
- each evaluation's validation accuracy (the store's metrics) is reported to the trial; when the pruner
  says so the run is cancelled through the store (works across processes and on Ray) and recorded
  `pruned` at its step; a finished run's value is its final validation accuracy: the test split of a
  trial is never read;
- the default pruner, `ahead`, is successive halving with the defaults as the bar: a trial evaluates at
  least four times a run (`evaluations_per_run`); at each evaluation it goes on only while it is not behind
  the defaults trial at the same step (`behind_defaults`), and at its first evaluation (a quarter of the
  run), then at three times that step, only while it is among the best third of the method's trials
  there. `halving` is the same without the defaults bar; `behind` stops a trial only when it is clearly
  behind (`clearly_behind`); `median` is Optuna's. See pruning.py for the evidence behind the default;
- the budget is --trials per method, or --budget seconds split equally (each method's trials' run
  seconds count against its share);
- Ctrl-C cancels the study's runs; `--resume NAME` continues: finished trials stay, a trial cut short is
  asked again with the same values, final runs already done are kept.

The package: study.py (the study's record: StudySpec, new, save, load, list), pruning.py (how often a
trial evaluates, when it is clearly behind, the pruners), search.py (the driver, `Tuner`), report.py
(reading a study: its runs, their cost and searched values, `summary`, `export_config`).
"""

from __future__ import annotations

from peft_tui.engine.tune.pruning import (
    DEFAULT_PRUNER,
    EVAL_COST_SHARE,
    HALVING_FACTOR,
    MAX_EVALS_PER_RUN,
    MIN_EVALS_PRUNED,
    NOISE_Z,
    PRUNE_FROM_EVAL,
    PRUNERS,
    _pruner,
    behind_defaults,
    clearly_behind,
    evaluations_per_run,
    noise,
)
from peft_tui.engine.tune.report import export_config, run_seconds, searched_values, study_runs, summary
from peft_tui.engine.tune.search import POLL_S, Tuner
from peft_tui.engine.tune.study import (
    COUNTED,
    NAME_CHARS,
    STUDY_DIR,
    StudySpec,
    list_studies,
    load_study,
    new_study,
    save,
    study_dir,
)

__all__ = ["COUNTED", "DEFAULT_PRUNER", "EVAL_COST_SHARE", "HALVING_FACTOR", "MAX_EVALS_PER_RUN", "MIN_EVALS_PRUNED",
           "NAME_CHARS", "NOISE_Z", "POLL_S",
           "PRUNERS", "PRUNE_FROM_EVAL", "STUDY_DIR", "StudySpec", "Tuner", "_pruner", "behind_defaults", "clearly_behind",
           "evaluations_per_run", "export_config", "list_studies", "load_study", "new_study", "noise",
           "run_seconds", "save", "searched_values", "study_dir", "study_runs", "summary"]

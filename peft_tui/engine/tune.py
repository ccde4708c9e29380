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
- the default pruner, `behind`, stops a trial only when it is clearly behind: from its second evaluation
  on, its validation accuracy is below the best other trial's at the same step by more than two standard
  errors of an accuracy on the validation rows (`clearly_behind`). `median` and `halving` are Optuna's;
  trials evaluate several times a run (`evaluations_per_run`) as long as that costs little;
- the budget is --trials per method, or --budget seconds split equally (each method's trials' run
  seconds count against its share);
- Ctrl-C cancels the study's runs; `--resume NAME` continues: finished trials stay, a trial cut short is
  asked again with the same values, final runs already done are kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_tui.config import RunConfig
from peft_tui.engine.methods import space as spaces
from peft_tui.engine.store import FINAL, Store
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits

PRUNERS = ("behind", "median", "halving", "none")
DEFAULT_PRUNER = "behind"
MAX_EVALS_PER_RUN = 8  # a trial evaluates at most this often over its run, so a pruner sees its curve early
EVAL_COST_SHARE = 0.15  # ... while its evaluations cost at most this share of its training
PRUNE_FROM_EVAL = 2  # `behind` never judges a trial on its first evaluation (its warm-up may not be over)
NOISE_Z = 2.0  # `behind`: a gap of fewer standard errors than this is noise, not a trial behind
POLL_S = 0.3
STUDY_DIR = "studies"
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
COUNTED = ("done", "pruned", "failed", "diverged")  # trials that spent budget (cancelled ones are asked again)


@dataclass
class StudySpec:
    """What a study is (saved as <store>/studies/<name>.json): enough to resume it in another process."""

    name: str
    methods: list[str]
    bases: dict[str, dict[str, Any]]  # method -> its base RunConfig (defaults + the command's options)
    trials: int | None = None  # per method; or
    budget_s: float | None = None  # run seconds, split equally between the methods
    seeds: int = 3
    pruner: str = "median"
    space: list[str] = field(default_factory=list)  # the --space overrides as typed
    parallel: int = 1
    sampler_seed: int = 0
    val_rows: int = 0  # the validation split's size: what `behind` takes as noise
    small_data: bool = True
    force: bool = False
    state: str = "searching"  # searching | final | done
    created_at: float = 0.0
    final: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # method -> tuned|defaults -> seed -> id
    exported: dict[str, str] = field(default_factory=dict)  # method -> best config file

    def base(self, method: str) -> RunConfig:
        return RunConfig.from_dict(self.bases[method])

    def space_of(self, method: str) -> dict[str, spaces.Dim]:
        overrides = spaces.parse_overrides(self.space, [self.base(m) for m in self.methods])
        return spaces.space_for(self.base(method), overrides, self.small_data)

    @property
    def share_s(self) -> float | None:
        return None if self.budget_s is None else self.budget_s / len(self.methods)

    def final_seeds(self) -> list[int]:
        """Fresh seeds (never the trials' own), the same for every method and for tuned and defaults."""
        seed = self.base(self.methods[0]).seed
        return [seed + 1 + i for i in range(self.seeds)]


# ---------------------------------------------------------------- creating, saving, loading
def study_dir(store: Store) -> Path:
    return store.root / STUDY_DIR


def _spec_path(store: Store, name: str) -> Path:
    return study_dir(store) / f"{name}.json"


def _journal_path(store: Store, name: str) -> Path:
    return study_dir(store) / f"{name}.optuna.log"


def save(store: Store, spec: StudySpec) -> None:
    path = _spec_path(store, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True))
    os.replace(tmp, path)


def list_studies(store: Store) -> list[str]:
    folder = study_dir(store)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_study(store: Store, name: str) -> StudySpec:
    if not name or any(c not in NAME_CHARS for c in name):
        raise ConfigError(f"study name {name[:60]!r} is not allowed: use letters, digits, '.', '_' or '-'")
    path = _spec_path(store, name)
    if not path.is_file():
        known = ", ".join(list_studies(store)) or "none yet"
        raise ConfigError(f"study {name!r} does not exist in {store.root}: its studies are {known}")
    try:
        raw = json.loads(path.read_text())
        return StudySpec(**raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"study file {path} cannot be read ({e}): start a new study") from None


def new_study(store: Store, bases: list[RunConfig], *, trials: int | None = None, budget_s: float | None = None,
              seeds: int = 3, pruner: str = DEFAULT_PRUNER, space: list[str] | None = None, parallel: int = 1,
              train_rows: int = 0, val_rows: int = 0, name: str | None = None, force: bool = False) -> StudySpec:
    """Check a study's settings (one line on the first problem), fix each base's evaluation interval so a
    pruner has several points per run, and save the study. `bases`: one config per method, validated;
    `train_rows`, `val_rows`: the splits' sizes (they set the interval, whether `epochs` is searched, and
    what `behind` counts as noise)."""
    if (trials is None) == (budget_s is None):
        raise ConfigError("give the budget as --trials N (per method) or --budget TIME (e.g. 2h), not both")
    if trials is not None and not 1 <= trials <= 10_000:
        raise ConfigError(f"--trials {trials}: pass 1 to 10000 trials per method")
    if budget_s is not None and not 0 < budget_s <= 365 * 86400:
        raise ConfigError("--budget must be a positive time up to a year, e.g. 30m or 2h")
    if not 1 <= seeds <= 100:
        raise ConfigError(f"--seeds {seeds}: pass 1 to 100 seeds for the final runs")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
    methods = [b.method for b in bases]
    if len(set(methods)) != len(methods):
        raise ConfigError("--methods names a method twice: list each once")
    from peft_tui.engine.methods import get_method

    for b in bases:
        if not get_method(b.method).space:
            raise ConfigError(f"method {b.method!r} has nothing to tune (no search space): leave it out of --methods")
    if name is not None and (not name or any(c not in NAME_CHARS for c in name) or len(name) > 64):
        raise ConfigError(f"study name {name[:60]!r} is not allowed: use up to 64 letters, digits, '.', '_' or '-'")
    if name is not None and _spec_path(store, name).exists():
        raise ConfigError(f"study {name!r} already exists: continue it with --resume {name}, or pick another name")
    spaces.parse_overrides(space or [], bases)  # refused here, in one line, before anything runs
    if name is None:
        taken = set(list_studies(store))
        name = next(f"tune-{i}" for i in range(1, 10**6) if f"tune-{i}" not in taken)
    fixed = []
    for b in bases:
        per_epoch = math.ceil(train_rows / b.batch_size / max(1, b.nproc))
        evals = evaluations_per_run(train_rows, val_rows, b.epochs)
        if b.eval_every == 0 and evals > b.epochs and per_epoch * b.epochs >= 2 * evals:
            b = dataclasses.replace(b, eval_every=math.ceil(per_epoch * b.epochs / evals))
        fixed.append(dataclasses.replace(b, name=b.method))
    spec = StudySpec(name=name, methods=methods, bases={b.method: b.to_dict() for b in fixed}, trials=trials,
                     budget_s=budget_s, seeds=seeds, pruner=pruner, space=list(space or []), parallel=max(1, parallel),
                     sampler_seed=bases[0].seed, val_rows=val_rows,
                     small_data=0 < train_rows < spaces.SMALL_DATA_ROWS, force=force,
                     created_at=time.time())
    save(store, spec)
    return spec


# ---------------------------------------------------------------- the driver
@dataclass
class _Active:
    method: str
    trial: Any  # optuna.trial.Trial
    run_id: int
    last_step: int = -1
    prune_step: int | None = None


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


class Tuner:
    """Runs one study to its end (see the module's docstring). `on_progress(line_or_event)` is called with a
    dict each time a trial is queued or ends and when the final runs are queued; `pruner` (an optuna pruner
    object) replaces the study's named one (tests force pruning with it)."""

    def __init__(self, store: Store, spec: StudySpec, pool: Any, *, data: DataSplits | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None, pruner: Any = None,
                 poll_s: float = POLL_S):
        self.store, self.spec, self.pool, self.data = store, spec, pool, data
        self.on_progress = on_progress or (lambda _event: None)
        self.poll_s = poll_s
        self._pruner_override = pruner
        self.active: dict[int, _Active] = {}
        self.final_ids: list[int] = []
        self._studies: dict[str, Any] = {}
        self._spaces: dict[str, dict[str, spaces.Dim]] = {}
        self._counted: dict[str, int] = {}
        self._inputs: dict = {}  # estimate inputs reused across trials (engine/submit.check)

    # ------------------------------------------------------------ public
    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Search (unless done), then the final runs; returns `summary`. `stop` set: cancel the study's
        runs and return early (the study stays resumable)."""
        stop = stop or threading.Event()
        if self.spec.state == "searching":
            self._open()
            self._search(stop)
            if stop.is_set():
                return summary(self.store, self.spec)
            self.spec.state = "final"
            save(self.store, self.spec)
        if self.spec.state == "final":
            self._final(stop)
            if stop.is_set():
                return summary(self.store, self.spec)
            self.spec.state = "done"
            save(self.store, self.spec)
        return summary(self.store, self.spec)

    def interrupt(self, wait_s: float = 60.0) -> list[int]:
        """Cancel every run of the study still queued or running (Ctrl-C), wait up to `wait_s` for them to
        end and record the trials as cut short (asked again on resume). Returns the runs cancelled."""
        ids = list(self.active) + list(self.final_ids)
        cancelled = [i for i in ids if self.store.request_cancel(i)]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            rows = self.store.list(ids=ids) if ids else []
            if all(r["status"] in FINAL for r in rows):
                break
            time.sleep(self.poll_s)
        if self.active:
            self._poll()
        return cancelled

    # ------------------------------------------------------------ search
    def _open(self) -> None:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        path = _journal_path(self.store, self.spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
        for i, method in enumerate(self.spec.methods):
            base = self.spec.base(method)
            space = self.spec.space_of(method)
            self._spaces[method] = space
            name = f"{self.spec.name}:{method}"
            exists = name in {s.study_name for s in storage.get_all_studies()}
            n_before = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)) if exists else 0
            n = self.spec.trials or 10
            sampler = optuna.samplers.TPESampler(
                # a resumed study draws from a fresh stream: never the random values of a trial already asked
                seed=self.spec.sampler_seed + 1000 * i + n_before, n_startup_trials=max(2, min(10, n // 3)),
                constant_liar=True)
            pruner = self._pruner_override or _pruner(self.spec.pruner, base.eval_every, self.spec.val_rows)
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                        pruner=pruner, load_if_exists=True)
            self._studies[method] = study
            if n_before == 0:
                method_obj = _method(method)
                study.enqueue_trial(spaces.defaults(base, method_obj, space), user_attrs={"defaults": True})
            counted = 0
            for t in study.get_trials(deepcopy=False):
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                        t.state == TrialState.FAIL and t.user_attrs.get("counted")):
                    counted += 1
                elif t.state == TrialState.RUNNING:  # asked in an earlier session
                    run_id = t.user_attrs.get("run_id")
                    if run_id is None:
                        self._retry(study, t.number, t.params, t.user_attrs)
                        continue
                    trial = optuna.trial.Trial(study, t._trial_id)
                    self.active[int(run_id)] = _Active(method, trial, int(run_id),
                                                       max(t.intermediate_values, default=-1),
                                                       t.user_attrs.get("prune_step"))
            self._counted[method] = counted

    def _search(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._poll()
            while len(self.active) < self.spec.parallel and not stop.is_set():
                method = self._next_method()
                if method is None:
                    break
                self._launch(method)
            if not self.active and self._next_method() is None:
                return
            stop.wait(self.poll_s)
        self.interrupt()

    def _spent_s(self, method: str) -> float:
        rows = [r for r in study_runs(self.store, self.spec.name) if r["method"] == method and r["trial"] is not None]
        return sum(run_seconds(r) for r in rows if r["status"] in COUNTED or r["status"] in ("queued", "running"))

    def _next_method(self) -> str | None:
        """The method with the fewest trials (then the least time spent) that still has budget."""
        wanting = []
        for i, m in enumerate(self.spec.methods):
            started = self._counted.get(m, 0) + sum(a.method == m for a in self.active.values())
            if self.spec.trials is not None:
                if started < self.spec.trials:
                    wanting.append((started, 0.0, i, m))
            else:
                spent = self._spent_s(m)
                if spent < (self.spec.share_s or 0):
                    wanting.append((started, spent, i, m))
        return min(wanting)[3] if wanting else None

    def _launch(self, method: str) -> None:
        from optuna.trial import TrialState

        from peft_tui.engine.submit import check, create

        study = self._studies[method]
        space = self._spaces[method]
        trial = study.ask(_distributions(space))
        cfg = dataclasses.replace(spaces.apply(self.spec.base(method), trial.params, space),
                                  name=f"{method}-t{trial.number}")
        try:
            _methods().validate(cfg)
            planned = check(self.store, [cfg], force=self.spec.force, data=self.data, inputs=self._inputs,
                            devices=[] if _is_ray(self.pool) else None)
            [run_id] = create(self.store, planned, study=self.spec.name, trial=trial.number)
        except ConfigError as e:  # a sampled config that cannot run (too large for memory, ...) spends a trial
            trial.set_user_attr("counted", True)
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=TrialState.FAIL)
            self._counted[method] += 1
            self.on_progress({"kind": "trial", "method": method, "trial": trial.number, "run_id": None,
                              "status": "failed", "error": str(e)})
            return
        trial.set_user_attr("run_id", run_id)
        self.active[run_id] = _Active(method, trial, run_id)
        self.pool.wake()
        self.on_progress({"kind": "queued", "method": method, "trial": trial.number, "run_id": run_id})

    def _poll(self) -> None:
        if not self.active:
            return
        rows = {r["id"]: r for r in self.store.list(ids=list(self.active))}
        for run_id, a in list(self.active.items()):
            row = rows.get(run_id)
            if row is None:  # removed from the queue by hand: asked again
                self._end(a, None)
                continue
            new = self.store.series(run_id, "val_accuracy", after_step=a.last_step)
            for step, value in new:
                a.trial.report(value, step)
                a.last_step = step
            last = row.get("total_steps") or 0
            if (new and a.prune_step is None and row["status"] == "running" and a.last_step < last
                    and a.trial.should_prune()):
                a.prune_step = a.last_step
                a.trial.set_user_attr("prune_step", a.last_step)
                self.store.request_cancel(run_id)
            if row["status"] in FINAL:
                self._end(a, row)

    def _end(self, a: _Active, row: dict[str, Any] | None) -> None:
        from optuna.trial import TrialState

        study = self._studies[a.method]
        status = row["status"] if row else "removed"
        del self.active[a.run_id]
        value = None
        if status == "done" and row is not None:
            value = (row["result"] or {}).get("val_accuracy")
            study.tell(a.trial, value)
        elif status == "pruned" or (status == "cancelled" and a.prune_step is not None):
            if status == "cancelled" and row is not None:
                self.store.mark_pruned(a.run_id, int(row["step"] or a.prune_step or 0))
            study.tell(a.trial, state=TrialState.PRUNED)
            status = "pruned"
        elif status in ("failed", "diverged"):
            a.trial.set_user_attr("counted", True)
            study.tell(a.trial, state=TrialState.FAIL)
        else:  # cancelled from outside (Ctrl-C, the dashboard) or removed: the same values are asked again
            self._retry(study, a.trial.number, a.trial.params, {})
            self.on_progress({"kind": "trial", "method": a.method, "trial": a.trial.number, "run_id": a.run_id,
                              "status": status})
            return
        self._counted[a.method] += 1
        self.on_progress({"kind": "trial", "method": a.method, "trial": a.trial.number, "run_id": a.run_id,
                          "status": status, "val_accuracy": value, "step": row["step"] if row else None})

    @staticmethod
    def _retry(study: Any, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(params, user_attrs={**{k: v for k, v in attrs.items() if k == "defaults"},
                                                "retry_of": number})

    # ------------------------------------------------------------ final comparison
    def _final(self, stop: threading.Event) -> None:
        from peft_tui.engine.submit import check, create

        doc = summary(self.store, self.spec)
        wanted: list[tuple[str, str, int, RunConfig]] = []
        for method in self.spec.methods:
            best = doc["methods"][method]["best"]
            base = self.spec.base(method)
            tuned = RunConfig.from_dict(best["config"]) if best else None
            if tuned is not None and method not in self.spec.exported:
                self.spec.exported[method] = str(export_config(self.store, self.spec.name, method, tuned))
            for seed in self.spec.final_seeds():
                if tuned is not None:
                    wanted.append((method, "tuned", seed, dataclasses.replace(tuned, seed=seed, name=f"{method}-tuned")))
                wanted.append((method, "defaults", seed, dataclasses.replace(base, seed=seed,
                                                                               name=f"{method}-defaults")))
        todo: list[tuple[str, str, int, RunConfig]] = []
        by_config: dict[str, int] = {}
        for method, kind, seed, cfg in wanted:
            have = self.spec.final.get(method, {}).get(kind, {}).get(str(seed))
            if have is not None and _status(self.store, have) in ("done", "queued", "running"):
                by_config.setdefault(_same(cfg), have)
                continue
            todo.append((method, kind, seed, cfg))
        for method, kind, seed, cfg in todo:
            key = _same(cfg)
            if key not in by_config:  # the tuned config is the defaults: one set of runs serves both rows
                planned = check(self.store, [cfg], force=True, data=self.data, inputs=self._inputs,
                                devices=[] if _is_ray(self.pool) else None)
                [by_config[key]] = create(self.store, planned, study=self.spec.name)
            self.spec.final.setdefault(method, {}).setdefault(kind, {})[str(seed)] = by_config[key]
        save(self.store, self.spec)
        self.final_ids = sorted({i for m in self.spec.final.values() for k in m.values() for i in k.values()})
        self.pool.wake()
        self.on_progress({"kind": "final", "run_ids": self.final_ids})
        while not stop.is_set():
            rows = self.store.list(ids=self.final_ids)
            if all(r["status"] in FINAL for r in rows):
                return
            stop.wait(self.poll_s)
        self.interrupt()


def _same(cfg: RunConfig) -> str:
    """A config without its name, its learning rate and method parameters resolved (lr None is the method's
    default): two final runs with this key train the same thing."""
    resolved = {**cfg.to_dict(), "name": None, "lr": _methods().learning_rate(cfg),
                "params": _method(cfg.method).resolve(cfg.params)}
    return json.dumps(resolved, sort_keys=True, default=str)


def _status(store: Store, run_id: int) -> str:
    try:
        return store.get(run_id)["status"]
    except ConfigError:
        return "missing"


def _is_ray(pool: Any) -> bool:
    return type(pool).__name__ == "RayPool"


def _methods():
    import peft_tui.engine.methods as methods

    return methods


def _method(name: str):
    return _methods().get_method(name)


def _distributions(space: dict[str, spaces.Dim]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, spaces.Choice):
            out[key] = CategoricalDistribution(dim.options)
        elif dim.integer:
            out[key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
    return out


def export_config(store: Store, study: str, method: str, cfg: RunConfig) -> Path:
    """The best configuration of `method` as a JSON config (`peft-tui run --config FILE` reruns it)."""
    path = study_dir(store) / study / f"best-{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json() + "\n")
    return path


# ---------------------------------------------------------------- reading a study (no optuna)
def study_runs(store: Store, name: str) -> list[dict[str, Any]]:
    """The runs of a study (trials and final runs), in id order."""
    return [r for r in store.list() if r.get("study") == name]


def run_seconds(row: dict[str, Any]) -> float:
    """What a run has cost so far: from its start (or claim) to its end (or now)."""
    start = row.get("started_at") or row.get("claimed_at")
    if not start:
        return 0.0
    end = row.get("finished_at") if row["status"] in FINAL else None
    return max(0.0, (end or time.time()) - start)


def searched_values(cfg: dict[str, Any], space: dict[str, spaces.Dim]) -> dict[str, Any]:
    """What a run's config sets for each key of a search space (derived keys as the parameter they set)."""
    config = RunConfig.from_dict(cfg)
    resolved = _method(config.method).resolve(config.params)
    out: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, spaces.Range) and dim.sets:
            out[dim.sets] = resolved.get(dim.sets)
        elif key == "lr":
            out["lr"] = _methods().learning_rate(config)
        elif key in resolved:
            value = resolved[key]
            out[key] = dim.option_of(value) if isinstance(dim, spaces.Choice) and dim.values else value
        else:
            out[key] = getattr(config, key, None)
    return out


def summary(store: Store, spec: StudySpec) -> dict[str, Any]:
    """The whole study as one JSON-able document: its settings, every trial (status, validation accuracy,
    the step a pruned one stopped at, run seconds, searched values), each method's budget and best trial,
    and the final runs (store rows) per method: tuned and defaults over the seeds."""
    runs = study_runs(store, spec.name)
    by_id = {r["id"]: r for r in runs}
    methods: dict[str, Any] = {}
    for method in spec.methods:
        space = spec.space_of(method)
        trials = []
        for r in runs:
            if r["method"] != method or r.get("trial") is None:
                continue
            result = r.get("result") or {}
            trials.append({
                "trial": r["trial"], "run_id": r["id"], "status": r["status"],
                "val_accuracy": result.get("val_accuracy") if r["status"] == "done" else r.get("val_accuracy"),
                "step": r.get("step"), "total_steps": r.get("total_steps"), "seconds": round(run_seconds(r), 2),
                "error": r.get("error"), "values": searched_values(r["config"], space), "config": r["config"],
            })
        done = [t for t in trials if t["status"] == "done" and t["val_accuracy"] is not None]
        best = max(done, key=lambda t: (t["val_accuracy"], -t["trial"]), default=None)
        counted = [t for t in trials if t["status"] in COUNTED]
        final = {kind: [by_id[i] for _, i in sorted(ids.items(), key=lambda kv: int(kv[0])) if i in by_id]
                 for kind, ids in spec.final.get(method, {}).items()}
        methods[method] = {
            "space": {k: d.describe() for k, d in space.items()},
            "trials": trials, "trials_run": len(counted), "pruned": sum(t["status"] == "pruned" for t in trials),
            "failed": sum(t["status"] in ("failed", "diverged") for t in trials),
            "seconds": round(sum(t["seconds"] for t in counted), 2),
            "best": best, "defaults_values": searched_values(spec.bases[method], space),
            "final": final,
        }
    return {"study": spec.name, "state": spec.state, "settings": {
        "methods": spec.methods, "trials": spec.trials, "budget_s": spec.budget_s, "seeds": spec.seeds,
        "final_seeds": spec.final_seeds(), "pruner": spec.pruner, "space": spec.space, "parallel": spec.parallel,
        "sampler_seed": spec.sampler_seed}, "methods": methods, "exported": spec.exported}

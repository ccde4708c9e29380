"""The study's driver, `Tuner`: one Optuna study per method (TPE, in a journal file), each trial asked,
queued as an ordinary run (engine/submit.py), its validation accuracy reported as it evaluates, pruned
through the store's cancel flag, told its result; then the final runs over fresh seeds. optuna is
imported inside functions."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peft_tui.config import RunConfig
from peft_tui.engine.methods import space as spaces
from peft_tui.engine.store import FINAL, Store
from peft_tui.engine.tune.pruning import _pruner
from peft_tui.engine.tune.report import _method, _methods, export_config, run_seconds, study_runs, summary
from peft_tui.engine.tune.study import COUNTED, StudySpec, _journal_path, save
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits

POLL_S = 0.3


@dataclass
class _Active:
    method: str
    trial: Any  # optuna.trial.Trial
    run_id: int
    last_step: int = -1
    prune_step: int | None = None


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

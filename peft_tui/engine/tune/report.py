"""Reading a study (no optuna): its runs (`study_runs`), what each cost (`run_seconds`), the values a
run's config sets for the searched keys (`searched_values`), the whole study as one JSON-able document
(`summary`, the final runs graded against their estimates), and a method's best configuration written as
a config file (`export_config`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.estimate import grade_run
from peft_tui.engine.methods import space as spaces
from peft_tui.engine.store import FINAL, Store
from peft_tui.engine.tune.pruning import noise
from peft_tui.engine.tune.study import COUNTED, StudySpec, study_dir


def _methods():
    """The method registry (engine.methods), imported when first needed; the driver uses it too."""
    import peft_tui.engine.methods as methods

    return methods


def _method(name: str):
    return _methods().get_method(name)


def export_config(store: Store, study: str, method: str, cfg: RunConfig) -> Path:
    """The best configuration of `method` as a JSON config (`peft-tui run --config FILE` reruns it)."""
    path = study_dir(store) / study / f"best-{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json() + "\n")
    return path


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


def keep_defaults(best: dict[str, Any] | None, done: list[dict[str, Any]], defaults_values: dict[str, Any],
                  val_rows: int) -> tuple[dict[str, Any], str] | None:
    """The defaults trial and why, when the best trial beats it on validation by no more than the noise of an
    accuracy on `val_rows` rows (pruning.noise): selecting the maximum of a few noisy scores picks noise, and
    the defaults are the better bet until a trial is clearly ahead. None: keep `best` (no defaults trial
    finished, it is the best, or the study's validation size is unknown)."""
    defaults = next((t for t in sorted(done, key=lambda t: t["trial"]) if t["values"] == defaults_values), None)
    if best is None or defaults is None or best is defaults or val_rows <= 0:
        return None
    margin = noise(defaults["val_accuracy"], val_rows)
    gap = best["val_accuracy"] - defaults["val_accuracy"]
    if gap > margin:
        return None
    return defaults, (f"trial {best['trial']} beat the defaults by {100 * gap:.1f} points on validation, within the "
                      f"noise ({100 * margin:.1f} points on {val_rows} rows)")


def summary(store: Store, spec: StudySpec) -> dict[str, Any]:
    """The whole study as one JSON-able document: its settings, every trial (status, validation accuracy,
    the step a pruned one stopped at, run seconds, searched values), each method's budget and best trial,
    and the final runs (store rows, each with its estimate's `grade`) per method: tuned and defaults over the
    seeds."""
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
        defaults_values = searched_values(spec.bases[method], space)
        kept = keep_defaults(best, done, defaults_values, spec.val_rows)
        if kept is not None:
            best = {**kept[0], "kept_defaults": kept[1]}
        counted = [t for t in trials if t["status"] in COUNTED]
        final = {kind: [{**by_id[i], "grade": grade_run(by_id[i])}  # the store keeps no grade: read here
                        for _, i in sorted(ids.items(), key=lambda kv: int(kv[0])) if i in by_id]
                 for kind, ids in spec.final.get(method, {}).items()}
        methods[method] = {
            "space": {k: d.describe() for k, d in space.items()},
            "trials": trials, "trials_run": len(counted), "pruned": sum(t["status"] == "pruned" for t in trials),
            "failed": sum(t["status"] in ("failed", "diverged") for t in trials),
            "seconds": round(sum(t["seconds"] for t in counted), 2),
            "best": best, "defaults_values": defaults_values,
            "final": final,
        }
    return {"study": spec.name, "state": spec.state, "settings": {
        "methods": spec.methods, "trials": spec.trials, "budget_s": spec.budget_s, "seeds": spec.seeds,
        "final_seeds": spec.final_seeds(), "pruner": spec.pruner, "space": spec.space, "parallel": spec.parallel,
        "sampler_seed": spec.sampler_seed}, "methods": methods, "exported": spec.exported}

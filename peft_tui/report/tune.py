"""The report of a tuning study (`peft-tui tune`, the dashboard's tune view), from the study's summary
document (engine/tune `summary`). Pure functions: no store, no engine, no UI.

- `final_rows`: per method, the tuned configuration and the defaults over the final seeds (mean ± sample
  std of test accuracy, report.seeds), with the budget the method's search got;
- `within_noise`: which tuned methods are within two standard errors of the best (report.seeds);
- `fronts`: the Pareto front of tuned accuracy against trainable parameters, peak memory and time;
- `best_so_far`: per method, the best validation accuracy after each trial (pruned trials marked);
- `to_text`: all of it as plain text (tables in Markdown, the accuracy/parameters chart).
"""

from __future__ import annotations

from typing import Any

from peft_tui.report.pareto import pareto_front
from peft_tui.report.seeds import aggregate, noise_threshold
from peft_tui.report.table import human_count, rows_from_runs

FRONT_AXES = (("trainable_params", "trainable parameters"), ("peak_memory_mb", "peak memory"),
              ("train_time_s", "training time"))


def _pct(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def best_so_far(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials of one method in order, each with `best`: the best validation accuracy of a finished
    trial up to and including it (None before the first)."""
    best = None
    out = []
    for t in sorted(trials, key=lambda t: t["trial"]):
        if t["status"] == "done" and t.get("val_accuracy") is not None:
            best = t["val_accuracy"] if best is None else max(best, t["val_accuracy"])
        out.append({"trial": t["trial"], "status": t["status"], "val_accuracy": t.get("val_accuracy"), "best": best,
                    "step": t.get("step")})
    return out


def final_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method: the tuned result (aggregated over the final seeds) with `defaults_*` beside it,
    the budget (trials_run, pruned, search_s) and the best trial's values."""
    out = []
    for method, m in doc["methods"].items():
        tuned = aggregate(rows_from_runs(m["final"].get("tuned", [])))
        default = aggregate(rows_from_runs(m["final"].get("defaults", [])))
        row: dict[str, Any] = dict(tuned[0]) if tuned else {"name": method, "method": method, "accuracy": None}
        row["name"] = method
        row["method"] = method
        d = default[0] if default else {}
        row["defaults_accuracy"], row["defaults_std"] = d.get("accuracy"), d.get("accuracy_std")
        row["defaults_n"] = d.get("n")
        acc, dacc = row.get("accuracy"), row["defaults_accuracy"]
        row["gain"] = acc - dacc if acc is not None and dacc is not None else None
        row["trials_run"], row["pruned"], row["search_s"] = m["trials_run"], m["pruned"], m["seconds"]
        best = m.get("best")
        row["best_trial"] = best["trial"] if best else None
        row["best_val"] = best["val_accuracy"] if best else None
        row["best_values"] = best["values"] if best else {}
        row["kept_defaults"] = best.get("kept_defaults") if best else None
        row["defaults_values"] = m.get("defaults_values", {})
        out.append(row)
    return out


def within_noise(rows: list[dict[str, Any]]) -> list[str] | None:
    """Names of the methods whose tuned mean is within two standard errors of the best one's (the best
    included); None when the noise is unknown (a single seed)."""
    scored = [r for r in rows if r.get("accuracy") is not None]
    if not scored:
        return []
    top = max(scored, key=lambda r: r["accuracy"])
    out = [top["name"]]
    for r in scored:
        if r is top:
            continue
        threshold = noise_threshold(top, r)
        if threshold is None:
            return None
        if top["accuracy"] - r["accuracy"] <= threshold:
            out.append(r["name"])
    return out


def fronts(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """For each axis (trainable_params, peak_memory_mb, train_time_s): the methods on the Pareto front of
    tuned test accuracy against it (lower is better on the axis)."""
    return {axis: [r["name"] for r in pareto_front(rows, x=axis)] for axis, _ in FRONT_AXES}


def ranking(rows: list[dict[str, Any]], key: str) -> list[str]:
    scored = [r for r in rows if r.get(key) is not None]
    return [r["name"] for r in sorted(scored, key=lambda r: -r[key])]


def verdict(doc: dict[str, Any]) -> dict[str, Any]:
    """The study's conclusions as data: the final rows, who is within noise of the best, the Pareto fronts,
    and the ranking of the methods at their defaults and tuned."""
    rows = final_rows(doc)
    return {"rows": rows, "within_noise_of_best": within_noise(rows), "pareto": fronts(rows),
            "ranking_defaults": ranking(rows, "defaults_accuracy"), "ranking_tuned": ranking(rows, "accuracy")}


def progress_line(method: str, m: dict[str, Any], budget: str) -> str:
    """`lora: 3/8 trials (1 pruned), best val 81.2% (trial 2)` for the CLI's progress."""
    best = m.get("best")
    text = f"{method}: {m['trials_run']}/{budget} trials"
    if m["pruned"]:
        text += f" ({m['pruned']} pruned)"
    if best and best.get("kept_defaults"):  # a higher trial within the noise: the defaults stay the pick
        text += f", defaults kept at val {_pct(best['val_accuracy'])}% (trial {best['trial']}; a higher trial is " \
                "within the noise)"
    elif best:
        text += f", best val {_pct(best['val_accuracy'])}% (trial {best['trial']})"
    return text


def to_text(doc: dict[str, Any], chart: bool = True, color: bool = False) -> str:
    """The study's final report as text: the comparison table, tuned vs defaults, budgets, best
    configurations, noise, Pareto fronts and (with `chart`) accuracy against trainable parameters."""
    v = verdict(doc)
    rows = v["rows"]
    seeds = doc["settings"]["seeds"]
    lines = [f"study {doc['study']} ({doc['state']}): tuned vs defaults, test accuracy % mean ± std over "
             f"{seeds} seed(s) {', '.join(map(str, doc['settings']['final_seeds']))}", ""]
    head = ["method", "tuned acc %", "defaults acc %", "gain", "trials (pruned)", "search s", "best val %",
            "trainable", "time s", "peak MB"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["name"], _pct(r.get("accuracy"), r.get("accuracy_std")),
                 _pct(r["defaults_accuracy"], r["defaults_std"]),
                 "-" if r["gain"] is None else f"{100 * r['gain']:+.1f}", f"{r['trials_run']} ({r['pruned']})",
                 f"{r['search_s']:.0f}", _pct(r["best_val"]),
                 human_count(r["trainable_params"]) if r.get("trainable_params") else "-",
                 "-" if r.get("train_time_s") is None else f"{r['train_time_s']:.1f}",
                 "-" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("best configuration per method (validation accuracy; * differs from the defaults):")
    for r in rows:
        if r["best_trial"] is None:
            lines.append(f"  {r['name']}: no trial finished")
            continue
        parts = [f"{k}={_value(val)}" + ("*" if r["defaults_values"].get(k) != val else "")
                 for k, val in r["best_values"].items()]
        won = " (the defaults won: no trial beat them on validation)" if "*" not in "".join(parts) else ""
        if r.get("kept_defaults"):
            won = f" (the defaults kept: {r['kept_defaults']})"
        lines.append(f"  {r['name']} (trial {r['best_trial']}, val {_pct(r['best_val'])}%): {', '.join(parts)}{won}")
    noise = v["within_noise_of_best"]
    if noise is None:
        lines.append("within noise of the best: unknown with one seed (pass --seeds 3)")
    elif noise:
        lines.append(f"within noise of the best (two standard errors): {', '.join(noise)}")
    if v["ranking_defaults"] and v["ranking_tuned"]:
        same = v["ranking_defaults"] == v["ranking_tuned"]
        lines.append(f"ranking at the defaults: {' > '.join(v['ranking_defaults'])}; tuned: "
                     f"{' > '.join(v['ranking_tuned'])}" + (" (unchanged)" if same else " (changed)"))
    for axis, label in FRONT_AXES:
        if v["pareto"][axis]:
            lines.append(f"Pareto front, accuracy vs {label}: {', '.join(v['pareto'][axis])}")
    if doc.get("exported"):
        lines.append("best configs (rerun with `peft-tui run --config FILE`): "
                     + ", ".join(f"{m}: {p}" for m, p in doc["exported"].items()))
    if chart:
        from peft_tui.report.charts import accuracy_vs_params

        text = accuracy_vs_params([r for r in rows if r.get("accuracy") is not None],
                                  title="tuned methods: accuracy vs trainable parameters", color=color)
        if text:
            lines += ["", text]
    return "\n".join(lines)

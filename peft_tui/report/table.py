"""The comparison table, shared by `peft-tui compare`, `peft-tui runs` and the dashboard.

Efficiency = test accuracy points per million trainable parameters
           = 100 * accuracy / (trainable_params / 1e6).
It rewards methods that reach an accuracy while training few parameters; read it beside accuracy,
never alone (a method at chance level with 10 parameters is "efficient").

The last two columns grade the run's estimate (made before it ran) against what it measured: the error
of the estimated peak memory and training time, in % of the measured figure (+: over-estimated). The
store keeps no grade: the reader computes it (engine.estimate.grade_run) and hands that function to
`rows_from_runs`, since a report imports no engine.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

COLUMNS = [
    # key, header, formatter
    ("id", "run", lambda v: str(v)),
    ("name", "name", str),
    ("method", "method", str),
    ("pooling", "pool", str),  # how the classifier saw the sequence (cls, mean, max, last; - for TF-IDF)
    ("accuracy", "acc %", lambda v: f"{100 * v:.1f}"),
    ("f1", "F1 %", lambda v: f"{100 * v:.1f}"),
    ("trainable_params", "trainable", lambda v: human_count(v)),
    ("trainable_pct", "train %", lambda v: f"{v:.2f}"),
    ("train_time_s", "time s", lambda v: f"{v:.1f}"),
    ("samples_per_s", "samples/s", lambda v: f"{v:.0f}"),
    ("peak_memory_mb", "peak MB", lambda v: f"{v:.0f}"),
    ("efficiency", "eff", lambda v: f"{v:.1f}"),
    # the estimate made before the run against what it measured (engine.estimate `grade_run`), in % of the measured
    ("mem_err_pct", "est mem err %", lambda v: f"{v:+.0f}"),
    ("time_err_pct", "est time err %", lambda v: f"{v:+.0f}"),
]
GRADE_KEYS = {"mem_err_pct": "peak_error_pct", "time_err_pct": "time_error_pct"}  # column -> key of a grade

# one row per method over several seeds (`report.seeds.aggregate`): means, ± the sample standard deviation
SEED_COLUMNS = [
    ("name", "name", str),
    ("method", "method", str),
    ("n", "seeds", str),
    ("accuracy", "acc %", lambda v: f"{100 * v:.1f}"),
    ("accuracy_std", "± std", lambda v: f"{100 * v:.1f}"),
    ("f1", "F1 %", lambda v: f"{100 * v:.1f}"),
    ("f1_std", "± std", lambda v: f"{100 * v:.1f}"),
    ("trainable_params", "trainable", lambda v: human_count(v)),
    ("train_time_s", "mean time s", lambda v: f"{v:.1f}"),
    ("peak_memory_mb", "mean peak MB", lambda v: f"{v:.0f}"),
]

EFFICIENCY_NOTE = ("eff = accuracy points per million trainable parameters; est err = the estimate before the "
                   "run vs what it measured (+: over)")


def human_count(n: float) -> str:
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


Grader = Callable[[dict[str, Any]], dict[str, Any] | None]  # a run -> its grade (engine.estimate.grade_run)


def rows_from_runs(runs: list[dict[str, Any]], grade: Grader | None = None) -> list[dict[str, Any]]:
    """Flatten finished runs (store rows with a result) into comparison rows. `grade`: how the reader
    grades a run's estimate (engine.estimate.grade_run); without it the error columns stay empty."""
    out = []
    for run in runs:
        res = run.get("result")
        if not res:
            continue
        row = {"id": run["id"], "name": run["name"], "method": run["method"]}
        graded = (grade(run) if grade else None) or {}
        for key, _, _ in COLUMNS[3:]:
            row[key] = graded.get(GRADE_KEYS[key]) if key in GRADE_KEYS else res.get(key)
        row["seed"] = res.get("seed") if res.get("seed") is not None else (run.get("config") or {}).get("seed")
        row["device"] = res.get("device", "")
        row["memory_kind"] = res.get("memory_kind", "")
        out.append(row)
    return out


def formatted(rows: list[dict[str, Any]], columns: list = COLUMNS) -> tuple[list[str], list[list[str]]]:
    headers = [h for _, h, _ in columns]
    body = [[("-" if r.get(k) is None else fmt(r[k])) for k, _, fmt in columns] for r in rows]
    return headers, body


def to_csv(rows: list[dict[str, Any]], aggregated: list[dict[str, Any]] | None = None) -> str:
    """The runs' table; with `aggregated` (several seeds) the per-method rows follow the runs', told
    apart by `n` (empty on a run's row) and `seed` (empty on an aggregated row)."""
    buf = io.StringIO()
    keys = [k for k, _, _ in COLUMNS] + ["device", "memory_kind"]
    if aggregated:
        keys += ["seed", "n", "accuracy_std", "f1_std"]
        rows = rows + aggregated
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]], columns: list = COLUMNS) -> str:
    headers, body = formatted(rows, columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + (f"\n\n{EFFICIENCY_NOTE}.\n" if columns is COLUMNS else "\n")


def sort_rows(rows: list[dict[str, Any]], key: str, descending: bool = True) -> list[dict[str, Any]]:
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    return sorted(present, key=lambda r: r[key], reverse=descending) + missing

"""Recommendations computed from measured results (comparison rows from `table.rows_from_runs`).
Each names the runs it rests on. Pure functions: no store, no I/O.

- best accuracy: the highest test accuracy (ties: all of them). Over several seeds (rows from
  `seeds.aggregate`), a method whose mean is less than two standard errors of the difference below the
  best is within noise of it, and the text says so instead of naming a winner; with one seed per method
  the noise is unknown, and a gap under `tolerance` says that;
- best accuracy per trainable parameter: the highest efficiency (accuracy points per million
  trainable parameters) among runs within `efficiency_window` (10 points) of the best accuracy, so
  that a near-chance run with a handful of parameters does not win;
- fastest within 1 point of the best: the shortest training time among runs whose accuracy is at
  most `tolerance` (1 point) below the best;
- least memory within 1 point of the best: the lowest peak memory among those runs, compared only
  between runs measured the same way (GPU allocator peak vs process RSS are different quantities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peft_tui.report.seeds import noise_threshold

TOLERANCE = 0.01  # 1 accuracy point
EFFICIENCY_WINDOW = 0.10


@dataclass(frozen=True)
class Recommendation:
    key: str
    title: str
    run_ids: tuple[int, ...]  # the runs it rests on: the pick first, then the reference
    text: str


def _ids(r: dict[str, Any]) -> tuple[int, ...]:
    """The runs a row rests on: its own, or all those an aggregated row averages."""
    return tuple(r["run_ids"]) if r.get("run_ids") else (r["id"],)


def _label(r: dict[str, Any]) -> str:
    name, method = r.get("name") or r.get("method"), r.get("method")
    if r.get("run_ids"):
        runs = f"mean of {r['n']} seed(s), runs {', '.join(map(str, r['run_ids']))}"
    else:
        runs = f"run {r['id']}"
    return f"{name} ({runs}" + (f", {method})" if method and method != name else ")")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _pct_std(r: dict[str, Any]) -> str:
    std = r.get("accuracy_std")
    return _pct(r["accuracy"]) + (f" ± {100 * std:.1f}" if std is not None else "")


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("accuracy") is not None]


def best_accuracy(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> Recommendation | None:
    rows = _scored(rows)
    if not rows:
        return None
    top = max(r["accuracy"] for r in rows)
    best = [r for r in rows if r["accuracy"] == top]
    rest = sorted((r for r in rows if r["accuracy"] < top), key=lambda r: -r["accuracy"])
    noisy = [r for r in rest if (t := noise_threshold(best[0], r)) is not None and top - r["accuracy"] < t]
    if noisy:
        ru = noisy[-1]  # the furthest of those within noise
        text = (f"{', '.join(_label(r) for r in best + noisy)} are within noise of each other: "
                f"{', '.join(_pct_std(r) for r in best + noisy)} test accuracy; the gap of "
                f"{100 * (top - ru['accuracy']):.1f} points is under two standard errors "
                f"({100 * noise_threshold(best[0], ru):.1f} points), so none of them is the winner")
        ids = tuple(i for r in best + noisy for i in _ids(r))
        return Recommendation("best_accuracy", "Best accuracy", ids, text + ".")
    text = f"{', '.join(_label(r) for r in best)}: {_pct_std(best[0])} test accuracy"
    if rest:
        ru = rest[0]
        gap, threshold = top - ru["accuracy"], noise_threshold(best[0], ru)
        text += f"; next is {_label(ru)} at {_pct_std(ru)}"
        if threshold is not None:
            text += (f", {100 * gap:.1f} points down, beyond two standard errors "
                     f"({100 * threshold:.1f} points)")
        elif gap < tolerance:
            text += (f"; the noise is unknown with one seed per method, so a gap of {100 * gap:.1f} points "
                     f"may be chance (`peft-tui compare --seeds 3` measures it)")
    ids = tuple(i for r in best + rest[:1] for i in _ids(r))
    return Recommendation("best_accuracy", "Best accuracy", ids, text + ".")


def best_per_parameter(rows: list[dict[str, Any]], window: float = EFFICIENCY_WINDOW) -> Recommendation | None:
    rows = [r for r in _scored(rows) if r.get("trainable_params")]
    if not rows:
        return None
    top = max(rows, key=lambda r: r["accuracy"])
    pool = [r for r in rows if r["accuracy"] >= top["accuracy"] - window - 1e-12]
    pick = max(pool, key=lambda r: (r["accuracy"] / r["trainable_params"], r["accuracy"]))
    eff = 100 * pick["accuracy"] / (pick["trainable_params"] / 1e6)
    text = (f"{_label(pick)}: {_pct(pick['accuracy'])} with {_count(pick['trainable_params'])} trainable parameters "
            f"({eff:.1f} accuracy points per million), among the {len(pool)} run(s) within "
            f"{100 * window:.0f} points of the best ({_label(top)}, {_pct(top['accuracy'])}, "
            f"{_count(top['trainable_params'])} trainable)")
    ids = _ids(pick) + (_ids(top) if top is not pick else ())
    return Recommendation("best_per_parameter", "Best accuracy per trainable parameter", ids, text + ".")


def _within(rows: list[dict[str, Any]], tolerance: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    top = max(rows, key=lambda r: r["accuracy"])
    return top, [r for r in rows if r["accuracy"] >= top["accuracy"] - tolerance - 1e-12]


def fastest_within(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> Recommendation | None:
    rows = _scored(rows)
    if not rows:
        return None
    top, pool = _within(rows, tolerance)
    pool = [r for r in pool if r.get("train_time_s") is not None]
    if not pool:
        return None
    pick = min(pool, key=lambda r: (r["train_time_s"], -r["accuracy"]))
    text = (f"{_label(pick)}: {pick['train_time_s']:.1f} s of training for {_pct(pick['accuracy'])}, "
            f"the quickest of the {len(pool)} run(s) within {100 * tolerance:.0f} point of the best "
            f"({_label(top)}, {_pct(top['accuracy'])}")
    text += f", {top['train_time_s']:.1f} s)" if top.get("train_time_s") is not None else ")"
    ids = _ids(pick) + (_ids(top) if top is not pick else ())
    return Recommendation("fastest_within", f"Fastest within {100 * tolerance:.0f} point of the best", ids, text + ".")


def least_memory_within(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> Recommendation | None:
    rows = _scored(rows)
    if not rows:
        return None
    top, pool = _within(rows, tolerance)
    kind = top.get("memory_kind") or ""
    pool = [r for r in pool if r.get("peak_memory_mb") is not None and (r.get("memory_kind") or "") == kind]
    if not pool:
        return None
    pick = min(pool, key=lambda r: (r["peak_memory_mb"], -r["accuracy"]))
    text = (f"{_label(pick)}: {pick['peak_memory_mb']:.0f} MB peak for {_pct(pick['accuracy'])}, the least of the "
            f"{len(pool)} run(s) within {100 * tolerance:.0f} point of the best ({_label(top)}, "
            f"{_pct(top['accuracy'])}")
    text += f", {top['peak_memory_mb']:.0f} MB)" if top.get("peak_memory_mb") is not None else ")"
    if kind:
        text += f"; memory is {kind}"
    ids = _ids(pick) + (_ids(top) if top is not pick else ())
    return Recommendation("least_memory_within", f"Least memory within {100 * tolerance:.0f} point of the best",
                          ids, text + ".")


def recommend(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> list[Recommendation]:
    """All four recommendations that the rows support, in a fixed order."""
    out = [best_accuracy(rows, tolerance), best_per_parameter(rows), fastest_within(rows, tolerance),
           least_memory_within(rows, tolerance)]
    return [r for r in out if r is not None]


def to_markdown(recs: list[Recommendation]) -> str:
    if not recs:
        return "No finished run with a test accuracy: nothing to recommend.\n"
    lines = [f"- **{r.title}**: {r.text} Rests on run(s) {', '.join(map(str, r.run_ids))}." for r in recs]
    return "\n".join(lines) + "\n"

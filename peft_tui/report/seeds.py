"""One row per method over several seeds (`peft-tui compare --seeds N`), and the noise test the
recommendations use. Pure functions over comparison rows (`table.rows_from_runs`): no store, no I/O.

An aggregated row has the keys of a comparison row, with means in place of single values:
- accuracy, f1: the mean over the runs that have it; accuracy_std, f1_std: their sample standard
  deviation (n - 1 in the denominator; None for a single run); n: how many runs have an accuracy;
- trainable_params: the first run's (it does not depend on the seed); train_time_s, peak_memory_mb:
  the means; seeds and run_ids: the runs it rests on, in order.
"""

from __future__ import annotations

import math
from typing import Any

MEANS = ("trainable_pct", "train_time_s", "samples_per_s", "peak_memory_mb", "efficiency")


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run name (a method, or the TF-IDF baseline), in the order the names first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("name") or r["method"], []).append(r)
    out = []
    for name, group in groups.items():
        scored = [r for r in group if r.get("accuracy") is not None]
        acc, acc_std = mean_std([r["accuracy"] for r in scored])
        f1, f1_std = mean_std([r["f1"] for r in scored if r.get("f1") is not None])
        row: dict[str, Any] = {
            "id": None, "name": name, "method": group[0]["method"], "n": len(scored),
            "accuracy": acc, "accuracy_std": acc_std, "f1": f1, "f1_std": f1_std,
            "trainable_params": group[0].get("trainable_params"),
            "memory_kind": group[0].get("memory_kind", ""), "device": group[0].get("device", ""),
            "seeds": [r.get("seed") for r in group], "run_ids": [r["id"] for r in group],
        }
        row.update({key: _mean([r.get(key) for r in scored]) for key in MEANS})
        out.append(row)
    return out


def standard_error(row: dict[str, Any]) -> float | None:
    """The standard error of a row's mean accuracy; None where the noise is unknown (one seed)."""
    std, n = row.get("accuracy_std"), row.get("n") or 1
    return None if std is None or n < 2 else std / math.sqrt(n)


def noise_threshold(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Two standard errors of the difference of two mean accuracies, sqrt(se_a² + se_b²);
    None where either row's noise is unknown."""
    se_a, se_b = standard_error(a), standard_error(b)
    if se_a is None or se_b is None:
        return None
    return 2 * math.sqrt(se_a ** 2 + se_b ** 2)

"""The Pareto front of accuracy against trainable parameters: the runs no other run beats on both
(as accurate or more with as few parameters or fewer, strictly better on one). Pure functions."""

from __future__ import annotations

from typing import Any


def dominates(a: dict[str, Any], b: dict[str, Any], x: str = "trainable_params", y: str = "accuracy") -> bool:
    """`a` is at least as good as `b` on both axes (x lower is better, y higher) and better on one."""
    return a[x] <= b[x] and a[y] >= b[y] and (a[x] < b[x] or a[y] > b[y])


def pareto_front(rows: list[dict[str, Any]], x: str = "trainable_params", y: str = "accuracy") -> list[dict[str, Any]]:
    """Rows on the front, by ascending `x`. Rows missing either value are ignored; exact duplicates
    (same x and y) all stay on the front."""
    points = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    front = [r for r in points if not any(dominates(o, r, x, y) for o in points if o is not r)]
    return sorted(front, key=lambda r: (r[x], -r[y]))

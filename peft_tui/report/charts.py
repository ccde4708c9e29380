"""Charts as text with plotext (the terminal, the Markdown report). Each call draws on plotext's
global figure after `clf()` and returns the built string. The dashboard draws on textual-plotext's own
`self.plt` and takes only the log-scale ticks from here."""

from __future__ import annotations

import math
from typing import Any

from peft_tui.report.pareto import pareto_front


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks at each power of ten from below `lo` to above `hi` (log10 values), labelled 1k, 10k, 1M..."""
    first, last = math.floor(lo), math.ceil(hi)
    if last == first:
        last += 1
    ticks = list(range(first, last + 1))
    return [float(t) for t in ticks], [_power_label(t) for t in ticks]


def _power_label(power: int) -> str:
    for unit, p in (("B", 9), ("M", 6), ("k", 3)):
        if power >= p:
            return f"{10 ** (power - p)}{unit}"
    return str(10**power)


def accuracy_vs_params(rows: list[dict[str, Any]], title: str = "accuracy vs trainable parameters",
                       width: int = 78, height: int = 20, color: bool = True, label_points: bool = True) -> str:
    """Every run as a point (x: trainable parameters, log scale; y: test accuracy %), the Pareto front
    as a line. Returns the chart as text ('' when no run has both values)."""
    import plotext as plt

    points = [r for r in rows if r.get("trainable_params") and r.get("accuracy") is not None]
    if not points:
        return ""
    front = pareto_front(points)
    xs = [math.log10(r["trainable_params"]) for r in points]
    ys = [100 * r["accuracy"] for r in points]
    plt.clf()
    plt.plotsize(width, height)
    if not color:
        plt.theme("clear")
    else:
        plt.theme("pro")
    if len(front) > 1:
        plt.plot([math.log10(r["trainable_params"]) for r in front], [100 * r["accuracy"] for r in front],
                 marker="dot", label="Pareto front")
    plt.scatter(xs, ys, marker="o", label="runs")
    if label_points:
        for r, x, y in zip(points, xs, ys):
            plt.text(f"o {r.get('name') or r.get('method')}", x, y)  # the label starts on its point
    ticks, labels = log_ticks(min(xs), max(xs))
    plt.xticks(ticks, labels)
    plt.xlim(ticks[0] - 0.1, ticks[-1] + 0.1)
    lo, hi = min(ys), max(ys)
    pad = max(1.0, (hi - lo) * 0.1)
    plt.ylim(lo - pad, hi + pad)
    plt.xlabel("trainable parameters (log)")
    plt.ylabel("test accuracy %")
    plt.title(title)
    text = plt.build()
    plt.clf()
    return text if color else plt.uncolorize(text)

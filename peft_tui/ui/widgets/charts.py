"""Live run charts, the Results tab's Pareto chart, and the legend line each one has instead of an
in-plot legend (which covers the first points of every curve on a small terminal). Each chart is a
PlotextPlot with its own figure (`self.plt`), never the global plotext."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.text import Text
from textual.widgets import Static
from textual_plotext import PlotextPlot

from peft_tui.console import literal
from peft_tui.ui.state import LabState, Series, downsample

# plotext colour names, one per plotted run (cycled); every run also has its own marker, so colour is not
# the only cue. The legend writes each marker's glyph in the matching Rich colour.
COLOURS = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")
MARKERS = ("braille", "•", "+", "x", "*", "o", "~", "#")
RICH_COLOURS = {"orange": "dark_orange"}
GLYPHS = {"braille": "⢕"}


def run_look(state: LabState, rid: int) -> tuple[str, str]:
    """A plotted run's colour and marker: the same on every chart and in the legend."""
    i = state.plotted.index(rid)
    return COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]


def legend_entry(text: Text, colour: str, marker: str, label: str) -> None:
    """Append `glyph glyph label` to `text`: the glyph in the series' colour, the label literal."""
    glyph = GLYPHS.get(marker, marker)
    text.append(f" {glyph}{glyph} ", style=f"bold {RICH_COLOURS.get(colour, colour)}")
    text.append(literal(f"{label} "))


class Legend(Static):
    """One line naming what a chart draws."""


def runs_legend(state: LabState) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for rid in state.plotted:
        legend_entry(text, *run_look(state, rid), _label(state, rid))
    return text


class RunChart(PlotextPlot):
    """One line per plotted run. Subclasses say which series and axis labels."""

    chart_title = ""
    xlabel = ""
    kind = ""  # which LabState.dirty_charts entry this chart follows
    empty_text = "no data yet: press n (new run) or c (compare)"

    cost_s = 0.0  # seconds the last replot + render took on the UI thread (the app budgets redraws on it)

    def lines(self, state: LabState) -> list[tuple[int, Series, str | None]]:
        """(run id, series, marker or None for the run's own) for each line to draw."""
        raise NotImplementedError

    def render(self):
        t = time.perf_counter()
        try:
            return super().render()
        finally:
            self.cost_s += time.perf_counter() - t

    def decorate(self, state: LabState) -> None:
        self.plt.title(self.chart_title)

    def replot(self, state: LabState) -> None:
        t = time.perf_counter()
        self.cost_s = 0.0
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        lines = [line for line in self.lines(state) if len(line[1])]
        width = max(8, self.size.width - 12)  # roughly the plot area once axes are drawn
        for rid, s, marker in lines:
            colour, own_marker = run_look(state, rid)
            xs, ys = downsample(s.xs, s.ys, width)
            if len(xs) == 1:
                plt.scatter(xs, ys, color=colour, marker="x")
            else:
                plt.plot(xs, ys, color=colour, marker=marker or own_marker)
        self.decorate(state)
        if not lines:
            plt.title(f"{self.chart_title}: {self.empty_text}")
        elif self.screen.has_class("-narrow"):
            plt.title(f"{self.chart_title}  (g: next chart)")
        plt.xlabel(self.xlabel)
        self.cost_s += time.perf_counter() - t
        self.refresh()


def _label(state: LabState, rid: int) -> str:
    row = state.runs.get(rid, {})
    return f"#{rid} {row.get('name', '?')}"


class LossChart(RunChart):
    chart_title = "train loss"
    kind = "loss"
    xlabel = "step"

    def lines(self, state: LabState) -> list[tuple[int, Series, str | None]]:
        return [(r, state.loss[r], None) for r in state.plotted if r in state.loss]


class AccuracyChart(RunChart):
    chart_title = "val accuracy %"
    kind = "acc"
    xlabel = "epoch"

    def lines(self, state: LabState) -> list[tuple[int, Series, str | None]]:
        return [(r, state.acc[r], None) for r in state.plotted if r in state.acc]


class MemoryChart(RunChart):
    chart_title = "memory MB"
    xlabel = "seconds"
    kind = "mem"

    def lines(self, state: LabState) -> list[tuple[int, Series, str | None]]:
        out: list[tuple[int, Series, str | None]] = []
        t0 = min((s.xs[0] for r, s in state.mem.items() if r in state.plotted and len(s)), default=0.0)
        for r in state.plotted:
            if r in state.mem:
                out.append((r, _shift(state.mem[r], t0), None))
            if r in state.gpu_used:
                out.append((r, _shift(state.gpu_used[r], t0), "dot"))
        return out

    def decorate(self, state: LabState) -> None:
        peaks = [state.mem_peak[r] for r in state.plotted if r in state.mem_peak]
        peak = f", peak {max(peaks):.0f}" if peaks else ""
        device = " · dotted: whole device" if any(r in state.gpu_used for r in state.plotted) else ""
        self.plt.title(f"memory MB ({state.memory_kind}{peak}){device}")


def _shift(s: Series, t0: float) -> Series:
    return Series([x - t0 for x in s.xs], list(s.ys))


class ParetoChart(PlotextPlot):
    """Results view: test accuracy against trainable parameters (log scale), one marker per method, and
    the Pareto front (runs no other run beats on both) as a line under the markers. Redrawn only when
    results change; `replot_rows` returns the legend line that goes with it."""

    def replot_rows(self, rows: list[dict[str, Any]]) -> Text:
        from peft_tui.report.charts import log_ticks
        from peft_tui.report.pareto import pareto_front

        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        legend = Text(no_wrap=True, overflow="ellipsis")
        points = [r for r in rows if r.get("trainable_params") and r.get("accuracy") is not None]
        if not points:
            plt.title("test accuracy % vs trainable parameters: no finished runs yet (c: compare, w: LoRA rank sweep)")
            self.refresh()
            return legend
        front = pareto_front(points)
        if len(front) > 1:  # first, so the markers are drawn over it
            plt.plot([math.log10(r["trainable_params"]) for r in front], [100 * r["accuracy"] for r in front],
                     color="white", marker="braille")
        methods = sorted({r["method"] for r in points})
        for i, m in enumerate(methods):
            mine = [r for r in points if r["method"] == m]
            colour, marker = COLOURS[i % len(COLOURS)], MARKERS[(i + 1) % len(MARKERS)]
            plt.scatter([math.log10(r["trainable_params"]) for r in mine], [100 * r["accuracy"] for r in mine],
                        color=colour, marker=marker)
            legend_entry(legend, colour, marker, m)
        legend_entry(legend, "white", "braille", "Pareto front: " + ", ".join(f"#{r['id']} {r['name']}" for r in front))
        # room around the points, so none sits on the frame
        xs = [math.log10(r["trainable_params"]) for r in points]
        ys = [100 * r["accuracy"] for r in points]
        ticks, labels = log_ticks(min(xs), max(xs))
        plt.xticks(ticks, labels)
        plt.xlim(ticks[0] - 0.2, ticks[-1] + 0.2)
        pad = max(0.5, 0.2 * (max(ys) - min(ys)))
        plt.ylim(min(ys) - pad, max(ys) + pad)
        plt.title("test accuracy % vs trainable parameters")
        plt.xlabel("trainable parameters (log scale)")
        self.refresh()
        return legend

"""Live run charts. Each is a PlotextPlot with its own figure (`self.plt`), never the global plotext."""

from __future__ import annotations

import time

from textual_plotext import PlotextPlot

from peft_tui.ui.state import LabState, Series, downsample

# plotext colour names, one per plotted run (cycled); the legend names the run, so colour is not the only cue
COLOURS = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")
MARKERS = ("braille", "•", "+", "x", "*", "o", "~", "#")  # distinct marks, not colour alone


class RunChart(PlotextPlot):
    """One line per plotted run. Subclasses say which series and axis labels."""

    chart_title = ""
    xlabel = ""
    kind = ""  # which LabState.dirty_charts entry this chart follows
    empty_text = "no data yet: press n (new run) or c (compare)"

    cost_s = 0.0  # seconds the last replot + render took on the UI thread (the app budgets redraws on it)

    def series(self, state: LabState) -> list[tuple[str, Series]]:
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
        lines = [(label, s) for label, s in self.series(state) if len(s)]
        width = max(8, self.size.width - 12)  # roughly the plot area once axes are drawn
        for i, (label, s) in enumerate(lines):
            xs, ys = downsample(s.xs, s.ys, width)
            if len(xs) == 1:
                plt.scatter(xs, ys, label=label, color=COLOURS[i % len(COLOURS)], marker="x")
            else:
                plt.plot(xs, ys, label=label, color=COLOURS[i % len(COLOURS)], marker=MARKERS[i % len(MARKERS)])
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

    def series(self, state: LabState) -> list[tuple[str, Series]]:
        return [(_label(state, r), state.loss[r]) for r in state.plotted if r in state.loss]


class AccuracyChart(RunChart):
    chart_title = "val accuracy %"
    kind = "acc"
    xlabel = "epoch"

    def series(self, state: LabState) -> list[tuple[str, Series]]:
        return [(_label(state, r), state.acc[r]) for r in state.plotted if r in state.acc]


class MemoryChart(RunChart):
    xlabel = "seconds"
    kind = "mem"

    def series(self, state: LabState) -> list[tuple[str, Series]]:
        out: list[tuple[str, Series]] = []
        t0 = min((s.xs[0] for r, s in state.mem.items() if r in state.plotted and len(s)), default=0.0)
        for r in state.plotted:
            if r in state.mem:
                out.append((_label(state, r), _shift(state.mem[r], t0)))
            if r in state.gpu_used:
                out.append((_label(state, r) + " device", _shift(state.gpu_used[r], t0)))
        return out

    def decorate(self, state: LabState) -> None:
        peaks = [state.mem_peak[r] for r in state.plotted if r in state.mem_peak]
        peak = f", peak {max(peaks):.0f}" if peaks else ""
        self.plt.title(f"memory MB ({state.memory_kind}{peak})")

    @property
    def chart_title(self) -> str:  # type: ignore[override]
        return "memory MB"


def _shift(s: Series, t0: float) -> Series:
    return Series([x - t0 for x in s.xs], list(s.ys))


class ParetoChart(PlotextPlot):
    """Results view: test accuracy against trainable parameters (log10 x), one marker per method, and
    the Pareto front (runs no other run beats on both) as a line. Redrawn only when results change."""

    def replot_rows(self, rows: list[dict]) -> None:
        import math

        from peft_tui.report.pareto import pareto_front

        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        points = [r for r in rows if r.get("trainable_params") and r.get("accuracy") is not None]
        methods = sorted({r["method"] for r in points})
        for i, m in enumerate(methods):
            mine = [r for r in points if r["method"] == m]
            plt.scatter([math.log10(r["trainable_params"]) for r in mine], [100 * r["accuracy"] for r in mine],
                        label=m, color=COLOURS[i % len(COLOURS)], marker=MARKERS[(i + 1) % len(MARKERS)])
        front = pareto_front(points)
        if front:
            draw = plt.plot if len(front) > 1 else plt.scatter
            draw([math.log10(r["trainable_params"]) for r in front], [100 * r["accuracy"] for r in front],
                 label="Pareto front", color="white", marker="braille" if len(front) > 1 else "o")
        names = ", ".join(f"#{r['id']} {r['name']}" for r in front) if front else "-"
        plt.title("accuracy % vs log10(trainable params)" + (f" · front: {names}" if points else
                                                            ": no finished runs yet (c: compare, w: LoRA rank sweep)"))
        plt.xlabel("log10 trainable parameters")
        self.refresh()

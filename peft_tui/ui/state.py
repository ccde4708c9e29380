"""What the dashboard knows about runs, fed by engine events and by store polling.

Pure Python (no Textual): the app drains buffered events into a `LabState` on its own thread, and
widgets render from it. Histories are bounded: a series longer than MAX_POINTS is halved by
averaging neighbours, so memory stays flat on long runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peft_tui.engine.events import (
    EvalLogged,
    LogMessage,
    MemorySampled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StepLogged,
)
from peft_tui.engine.methods import get_method
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.estimate import Eta

MAX_POINTS = 4000
MAX_PLOTTED = 8  # runs with lines on the charts: the newest ones
ACTIVE = ("queued", "running")

STATUS_WORDS = {
    # status -> (symbol, style): the word itself is always shown, colour is a bonus
    "queued": ("·", "dim"),
    "running": ("▶", "bold cyan"),
    "done": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "diverged": ("✗", "bold red"),
    "cancelled": ("■", "yellow"),
    "interrupted": ("!", "magenta"),
}


def is_baseline(method: str) -> bool:
    """A method with no training loop (the TF-IDF baseline): no steps, epochs, trainable share or memory
    curve to show."""
    try:
        return bool(getattr(get_method(method), "is_baseline", False))
    except ConfigError:  # not registered: a method this version does not know, or the TF-IDF row of a
        return method == "tfidf"  # tree whose registry does not list baselines yet


def shown_result(row: dict[str, Any]) -> dict[str, Any]:
    """A run's result as the screens show it. A baseline has no trainable share and no peak memory of
    its own (older stores recorded 100% and the whole process's RSS): None, shown as a dash."""
    result = dict(row.get("result") or {})
    if result and is_baseline(row.get("method") or ""):
        result.update(trainable_pct=None, peak_memory_mb=None)
    return result


@dataclass
class Series:
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    def add(self, x: float, y: float) -> None:
        self.xs.append(float(x))
        self.ys.append(float(y))
        if len(self.xs) > MAX_POINTS:
            self.xs, self.ys = _halve(self.xs), _halve(self.ys)

    def __len__(self) -> int:
        return len(self.xs)


def _halve(v: list[float]) -> list[float]:
    out = [(v[i] + v[i + 1]) / 2 for i in range(0, len(v) - 1, 2)]
    if len(v) % 2:
        out.append(v[-1])
    return out


def downsample(xs: list[float], ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """At most `n` points: bucket means, keeping the first and last point exact."""
    if n < 2 or len(xs) <= n:
        return list(xs), list(ys)
    ox, oy = [xs[0]], [ys[0]]
    inner = n - 2
    m = len(xs) - 2
    for b in range(inner):
        lo = 1 + b * m // inner
        hi = 1 + (b + 1) * m // inner
        if hi <= lo:
            continue
        ox.append(sum(xs[lo:hi]) / (hi - lo))
        oy.append(sum(ys[lo:hi]) / (hi - lo))
    ox.append(xs[-1])
    oy.append(ys[-1])
    return ox, oy


class LabState:
    """Runs (store rows, kept fresh by events) plus chart series for the runs on screen."""

    def __init__(self) -> None:
        self.runs: dict[int, dict[str, Any]] = {}
        self.loss: dict[int, Series] = {}
        self.acc: dict[int, Series] = {}
        self.mem: dict[int, Series] = {}
        self.mem_peak: dict[int, float] = {}
        self.gpu_used: dict[int, Series] = {}
        self.memory_kind = "process RSS"
        self.plotted: list[int] = []  # runs with lines on the charts, by id: the newest MAX_PLOTTED
        self.removed: set[int] = set()
        self.dirty_runs: set[int] = set()
        self.dirty_charts: set[str] = set()  # "loss", "acc", "mem": which charts need a replot
        self.results_dirty = False

    # ------------------------------------------------------------------ helpers
    def _plot(self, run_id: int) -> None:
        if run_id not in self.plotted:
            self.plotted = sorted([*self.plotted, run_id])[-MAX_PLOTTED:]

    def _row(self, run_id: int) -> dict[str, Any]:
        return self.runs.setdefault(run_id, {"id": run_id, "name": f"run {run_id}", "method": "?",
                                             "status": "running", "step": 0, "total_steps": 0, "epoch": 0.0,
                                             "loss": None, "val_accuracy": None, "started_at": None,
                                             "finished_at": None, "result": None, "error": None})

    def counts(self) -> dict[str, int]:
        out = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for r in self.runs.values():
            s = r["status"]
            key = "failed" if s in ("failed", "diverged") else s
            if key in out:
                out[key] += 1
        return out

    def active(self) -> list[int]:
        return [i for i, r in self.runs.items() if r["status"] in ACTIVE]

    # ------------------------------------------------------------------ store rows
    def merge_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            rid = row["id"]
            if rid in self.removed:
                continue
            old = self.runs.get(rid)
            if old is not None and old["status"] == row["status"] == "running" and (old.get("step") or 0) > (
                row.get("step") or 0
            ):
                # our events are fresher than the poll: keep live fields, take the rest
                row = {**row, **{k: old[k] for k in ("step", "epoch", "loss", "val_accuracy")}}
            if old is not None and old["status"] in ("cancelled", "failed", "diverged", "done") and row["status"] in ACTIVE:
                continue  # the poll read the store before the final event was written
            if old is None or any(old.get(k) != row.get(k) for k in row):
                self.runs[rid] = row
                self.dirty_runs.add(rid)
                if row.get("result") and (old is None or not old.get("result")):
                    self.results_dirty = True
            if row["status"] == "running":
                self._plot(rid)

    def merge_points(self, points: dict[tuple[int, str], list[tuple[int, float, float]]]) -> None:
        """Chart points read from the store (runs trained by another process): (run, metric) -> [(step, value, t)]."""
        for (rid, name), pts in points.items():
            if rid in self.removed:
                continue
            self._plot(rid)
            row = self.runs.get(rid, {})
            total, epochs = row.get("total_steps") or 0, (row.get("config") or {}).get("epochs") or 1
            for step, value, t in pts:
                if name == "train_loss":
                    self.loss.setdefault(rid, Series()).add(step, value)
                elif name == "val_accuracy":  # drawn against epochs, as the events are
                    self.acc.setdefault(rid, Series()).add(step / (total / epochs) if total else step, 100 * value)
                elif name == "mem_used_mb":
                    self.mem.setdefault(rid, Series()).add(t, value)
                elif name == "mem_peak_mb":
                    self.mem_peak[rid] = max(self.mem_peak.get(rid, 0.0), value)
                elif name == "gpu_device_used_mb":
                    self.gpu_used.setdefault(rid, Series()).add(t, value)
            self.dirty_charts.add({"train_loss": "loss", "val_accuracy": "acc"}.get(name, "mem"))

    def forget(self, run_id: int) -> None:
        self.removed.add(run_id)
        self.runs.pop(run_id, None)
        for d in (self.loss, self.acc, self.mem, self.gpu_used):
            d.pop(run_id, None)
        if run_id in self.plotted:
            self.plotted.remove(run_id)
            self.dirty_charts |= {"loss", "acc", "mem"}
        self.dirty_runs.add(run_id)

    # ------------------------------------------------------------------ engine events
    def apply(self, event: Any, t: float | None = None) -> str | None:
        """Apply one engine event; returns a log line for the events worth logging."""
        t = time.time() if t is None else t
        rid = event.run_id
        if rid in self.removed:
            return None
        row = self._row(rid)
        self.dirty_runs.add(rid)
        if isinstance(event, RunStarted):
            row.update(status="running", total_steps=event.total_steps, started_at=t, step=0, name=event.name,
                       method=event.method, error=None)
            row["device"] = event.device
            self._plot(rid)
            self.dirty_charts |= {"loss", "acc", "mem"}
        elif isinstance(event, StepLogged):
            row.update(step=event.step, epoch=event.epoch, loss=event.loss, status="running")
            if row.get("started_at") is None:
                row["started_at"] = t - event.elapsed_s
            self.loss.setdefault(rid, Series()).add(event.step, event.loss)
            self._plot(rid)
            self.dirty_charts.add("loss")
        elif isinstance(event, EvalLogged):
            if event.split == "val":
                row["val_accuracy"] = event.accuracy
                self.acc.setdefault(rid, Series()).add(event.epoch, 100 * event.accuracy)
                self.dirty_charts.add("acc")
        elif isinstance(event, MemorySampled):
            self.add_memory(rid, t, event.used_mb, event.peak_mb, event.device_used_mb)
            self.memory_kind = "GPU allocated" if event.device.startswith("cuda") else "process RSS"
        elif isinstance(event, RunFinished):
            # a RunResult, or a plain dict from engines that predate it: kept as the dict the store returns
            result = event.result if isinstance(event.result, dict) else event.result.to_dict()
            row.update(status="done", result=result, finished_at=t, step=row.get("total_steps") or row["step"])
            self.results_dirty = True
        elif isinstance(event, RunFailed):
            row.update(status=event.status, error=event.error, finished_at=t)
        elif isinstance(event, RunCancelled):
            row.update(status="cancelled", finished_at=t)
        return log_text(event, row.get("name") or "")

    def add_memory(self, rid: int, t: float, used: float, peak: float, device_used: float = 0.0) -> None:
        self.mem.setdefault(rid, Series()).add(t, used)
        self.mem_peak[rid] = max(self.mem_peak.get(rid, 0.0), peak)
        if device_used:
            self.gpu_used.setdefault(rid, Series()).add(t, device_used)
        self.dirty_charts.add("mem")

    # ------------------------------------------------------------------ derived
    @staticmethod
    def elapsed(row: dict[str, Any], now: float | None = None) -> float | None:
        start = row.get("started_at")
        if not start:
            return None
        end = row.get("finished_at") if row["status"] not in ACTIVE else None
        return max(0.0, (end or now or time.time()) - start)

    @classmethod
    def eta(cls, row: dict[str, Any], now: float | None = None) -> Eta | None:
        """Time left of a running run: from its estimate (engine/estimate.py) for the first
        ETA_SWITCH_STEPS steps, then from its own rate so far; without an estimate, from its rate."""
        from peft_tui.engine.estimate import Estimate, Eta, eta

        if row["status"] != "running":
            return None
        step, total = row.get("step") or 0, row.get("total_steps") or 0
        el = cls.elapsed(row, now)
        if not total or el is None:
            return None
        if row.get("estimate"):
            try:
                return eta(Estimate.from_dict(row["estimate"]), step, el, total)
            except (TypeError, KeyError):  # an estimate written by another version: the rate alone
                pass
        if not step:
            return None
        left = el / step * max(0, total - step)
        return Eta(left, left, left, "measured")


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_text(e: Eta | None) -> str:
    """An ETA as the runs table shows it: "~" marks one still taken from the estimate (before the run's
    first ETA_SWITCH_STEPS steps), a plain duration one from the run's own rate."""
    if e is None:
        return "-"
    return ("~" if e.source == "estimate" else "") + fmt_duration(e.remaining_s)


def estimate_text(est: dict[str, Any] | None) -> str:
    """A run's estimate in a table cell: peak memory and training time ("-" without one)."""
    if not est:
        return "-"
    try:
        return f"{est['peak_mb']:,.0f}MB {fmt_duration(est['total_s'])}"
    except (KeyError, TypeError, ValueError):
        return "-"


def estimable(model: str) -> bool:
    """Whether the dashboard estimates runs of this model: the built-in ones and local folders. A hub id
    would be looked up online (as it is typed, in the form); `peft-tui plan` estimates it."""
    from pathlib import Path

    return model in ("tiny", "minilm") or Path(model).expanduser().is_dir()


def log_text(event: Any, name: str) -> str | None:
    """The Log tab's line for an engine event of run `name`, None for those not worth a line (steps,
    memory samples). Changes nothing: used for this dashboard's runs and for those read back from the
    events.jsonl of runs trained by another process."""
    rid = event.run_id
    if isinstance(event, RunStarted):
        return (f"run {rid} {event.name} started on {event.device} ({event.precision}): "
                f"{event.total_steps} steps, {event.trainable_params:,} of {event.total_params:,} params trainable")
    if isinstance(event, EvalLogged):
        return (f"run {rid} eval {event.split} at epoch {event.epoch:.2f}: "
                f"acc {100 * event.accuracy:.1f}%  F1 {100 * event.f1:.1f}%  loss {event.loss:.4f}")
    if isinstance(event, RunFinished):
        result = event.result if isinstance(event.result, dict) else event.result.to_dict()
        acc = result.get("accuracy")
        return f"run {rid} {name} done: test accuracy {100 * acc:.1f}%" if acc is not None else f"run {rid} done"
    if isinstance(event, RunFailed):
        return f"run {rid} {name} {event.status}: {event.error}"
    if isinstance(event, RunCancelled):
        return f"run {rid} {name} cancelled at step {event.step}"
    if isinstance(event, LogMessage):
        return f"run {rid} {event.level}: {event.text}"
    return None

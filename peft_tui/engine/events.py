"""What the engine tells the world. Sinks (store, events.jsonl, dashboard, console) receive these.

Events are frozen dataclasses, safe to hand across threads. A sink is anything with `__call__(event)`
and `close()` (the `Sink` protocol); `fan_out` forwards to several. A sink whose records the run cannot
do without (the store) sets `critical = True`: its failure stops the run instead of being logged.

`JsonlSink` appends every event of a run, log messages included, to `events.jsonl` in the run's
folder; `read_events` and `EventTail` read it back (the Log tab, clients following a run from another
process).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peft_tui.engine.result import RunResult

LOG_INTERVAL_S = 0.1  # progress events (StepLogged, MemorySampled) at most ~10 times a second

EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True)
class RunStarted:
    run_id: int
    name: str
    method: str
    total_steps: int
    epochs: int
    trainable_params: int
    total_params: int
    device: str
    precision: str
    train_size: int
    num_labels: int


@dataclass(frozen=True)
class StepLogged:
    """Throttled: `loss` is the mean over the steps since the previous StepLogged."""

    run_id: int
    step: int
    epoch: float
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float


@dataclass(frozen=True)
class EvalLogged:
    run_id: int
    step: int
    epoch: float
    split: str  # "val" or "test"
    loss: float
    accuracy: float
    f1: float


@dataclass(frozen=True)
class MemorySampled:
    run_id: int
    step: int
    elapsed_s: float
    device: str  # "cpu" or "cuda:N"
    used_mb: float  # CPU: process RSS; CUDA: torch memory allocated
    peak_mb: float  # CPU: peak sampled RSS; CUDA: max_memory_allocated
    reserved_mb: float = 0.0  # CUDA only
    device_used_mb: float = 0.0  # CUDA only, from NVML (all processes)


@dataclass(frozen=True)
class RunFinished:
    run_id: int
    # a plain dict is accepted too while the trainer still builds one; `result_dict` reads either
    result: RunResult | dict[str, Any] = field(default_factory=RunResult)

    def result_dict(self) -> dict[str, Any]:
        return self.result.to_dict() if isinstance(self.result, RunResult) else dict(self.result)


@dataclass(frozen=True)
class RunFailed:
    run_id: int
    error: str  # one line
    status: str = "failed"  # "failed" or "diverged"


@dataclass(frozen=True)
class RunCancelled:
    run_id: int
    step: int


@dataclass(frozen=True)
class LogMessage:
    run_id: int
    level: str  # "info" | "warning" | "error"
    text: str


Event = RunStarted | StepLogged | EvalLogged | MemorySampled | RunFinished | RunFailed | RunCancelled | LogMessage
EVENT_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (RunStarted, StepLogged, EvalLogged, MemorySampled, RunFinished, RunFailed, RunCancelled, LogMessage)
}
TERMINAL = (RunFinished, RunFailed, RunCancelled)


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...

    def close(self) -> None: ...


def _close(sink: Any) -> None:
    close = getattr(sink, "close", None)
    if close is not None:
        close()


class FanOut:
    """One sink that forwards each event to every sink. A failing sink never stops the others; the
    failure is logged (logger `peft_tui`), or re-raised after the others had the event when the sink
    is `critical`. Plain callables are accepted as sinks (they need no `close`)."""

    def __init__(self, *sinks: Callable[[Event], None] | None):
        self.sinks = [s for s in sinks if s is not None]

    def __call__(self, event: Event) -> None:
        failure: Exception | None = None
        for s in self.sinks:
            try:
                s(event)
            except Exception as e:  # a broken sink must not stop the others
                if getattr(s, "critical", False):
                    failure = failure or e
                else:
                    logging.getLogger("peft_tui").warning("sink %r failed on %s", s, type(event).__name__,
                                                          exc_info=True)
        if failure is not None:
            raise failure

    def close(self) -> None:
        for s in self.sinks:
            try:
                _close(s)
            except Exception:  # closing one sink must not leave the others open
                logging.getLogger("peft_tui").warning("closing sink %r failed", s, exc_info=True)


def fan_out(*sinks: Callable[[Event], None] | None) -> FanOut:
    return FanOut(*sinks)


# ------------------------------------------------------------------------------------------ JSONL
def event_to_dict(event: Event) -> dict[str, Any]:
    """One JSON-ready record: {"event": type name, "t": unix time, **fields}."""
    return {"event": type(event).__name__, "t": time.time(), **dataclasses.asdict(event)}


def event_from_dict(d: dict[str, Any]) -> Event | None:
    """The event a record describes, or None for a record this version does not know."""
    cls = EVENT_TYPES.get(str(d.get("event")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if cls is RunFinished:
        kw["result"] = RunResult.from_dict(kw.get("result"))
    try:
        return cls(**kw)
    except TypeError:  # a required field is missing
        return None


class JsonlSink:
    """Appends every event to one file, one JSON object a line, flushed at once so other processes
    can follow it. Not critical: a full disk here costs the log, not the run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def __call__(self, event: Event) -> None:
        self._fh.write(json.dumps(event_to_dict(event), default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class EventTail:
    """Reads the events appended to a JSONL file since the last read (complete lines only)."""

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset

    def read(self) -> list[Event]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        return _decode(data[:end])


def read_events(path: str | Path) -> list[Event]:
    """Every event in a run's events.jsonl (an empty list when there is none yet). Lines that are
    damaged or from a newer version are skipped."""
    return EventTail(path).read()


def _decode(data: bytes) -> list[Event]:
    out: list[Event] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        event = event_from_dict(d) if isinstance(d, dict) else None
        if event is not None:
            out.append(event)
    return out

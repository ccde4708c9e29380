"""The new-run form: every field checked here, with the message next to the field; nothing is queued
until the whole config validates. Under the fields, the run's estimated peak memory (against the free
memory) and training time for the current choices (engine/estimate.py), recomputed on a thread worker
a moment after each change, so typing never waits for it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from peft_tui.config import HEAD_INITS, POOLINGS, DataConfig, RunConfig
from peft_tui.console import literal
from peft_tui.engine.methods import REGISTRY, get_method, validate
from peft_tui.errors import ConfigError, first_line
from peft_tui.ui.state import estimable, fmt_duration, is_baseline

RUN_FIELDS = [
    # field, label, parse
    ("epochs", "epochs", int),
    ("lr", "lr (blank: default)", float),
    ("batch_size", "batch size", int),
    ("max_length", "max length (tokens)", int),
    ("seed", "seed", int),
]
CHOICE_FIELDS = [
    # field, label, choices: how every method (not the baselines) feeds and starts its classifier
    ("pooling", "pooling", POOLINGS),
    ("head_init", "head start (LP-FT)", HEAD_INITS),
]


FULL_WIDTH = 118  # the form's width; narrower terminals get fewer fields a row
ESTIMATE_DELAY_S = 0.4  # the estimate is recomputed this long after the last change


def estimate_line(row: dict[str, Any]) -> Text:
    """One of engine.estimate.plan's rows as the form shows it: peak memory against free memory, time,
    trainable parameters; in red with the first way to make it fit when it will not."""
    e = row["estimate"]
    text = Text(f"estimate: peak {e['peak_mb']:,.0f} MB of {row['free_mb']:,.0f} MB free · training "
                f"{fmt_duration(e['total_s'])} ({fmt_duration(e['total_low_s'])}-{fmt_duration(e['total_high_s'])}) "
                f"· {e['trainable_params']:,} trainable parameters")
    if not row.get("fits_time", True):
        text.append(f" · longer than its {fmt_duration(row['time_limit_s'])} limit: fewer epochs, or max_time",
                    style="bold red")
    elif not row["fits"]:
        tips = e.get("suggestions") or []
        text.append(" · will not fit" + (f": {tips[0]}" if tips else ""), style="bold red")
    if e.get("calibration") == "nominal":
        text.append("  (nominal speed: `peft-tui plan` calibrates this machine)", style="dim")
    return text


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


class Field(Vertical):
    """A label, an input (or select) and the error line under it."""

    DEFAULT_CSS = """
    Field { height: auto; margin: 0 1 0 0; }
    Field > Label { color: $text-muted; }
    Field > .error { color: $error; height: auto; display: none; }
    Field.-invalid > .error { display: block; }
    """

    def __init__(self, key: str, label: str, widget, **kw) -> None:
        super().__init__(id=f"field-{key}", **kw)
        self.key = key
        self.label = label
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield Label(self.label)
        yield self.widget
        yield Static("", classes="error", id=f"error-{self.key}")

    def set_error(self, text: str) -> None:
        err = self.query_one(".error", Static)
        err.update(literal(f"✗ {text}") if text else "")
        self.set_class(bool(text), "-invalid")


class NewRunScreen(ModalScreen[list[RunConfig] | None]):
    """Dismisses with [config] when valid, None on cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Queue run"),
    ]

    def __init__(self, template: RunConfig) -> None:
        super().__init__()
        self.template = template
        self._estimate_timer = None

    def compose(self) -> ComposeResult:
        t = self.template
        method_names = [m for m in REGISTRY if not is_baseline(m)]  # baselines come with the compare preset
        with Vertical(id="form"):
            yield Static("New run  [dim](tab: next field · enter or ctrl+s: queue · esc: cancel)[/]", id="form-title")
            with VerticalScroll(id="form-body"):
                with Horizontal(classes="row"):
                    yield Field("model", "model (minilm, tiny, folder, hub id)", Input(t.model, id="in-model"))
                    yield Field("data", "data (synthetic or a file)", Input(t.data.source, id="in-data"))
                with Horizontal(classes="row"):
                    method = t.method if t.method in method_names else method_names[0]
                    yield Field("method", "method", Select([(m, m) for m in method_names], value=method,
                                                           allow_blank=False, id="in-method"))
                    yield Field("name", "name (optional)", Input("", placeholder="method name", id="in-name"))
                with Grid(id="run-fields"):
                    for key, label, _ in RUN_FIELDS:
                        value = getattr(t, key)
                        yield Field(key, label, Input(_fmt(value), id=f"in-{key}"))
                    for key, label, choices in CHOICE_FIELDS:
                        yield Field(key, label, Select([(c, c) for c in choices], value=getattr(t, key),
                                                       allow_blank=False, id=f"in-{key}"))
                yield Static("method parameters", classes="section", id="params-title")
                yield Grid(id="params")
                yield Static(Text("estimating…", style="dim"), id="form-estimate")
                yield Static("", id="form-error")
            with Horizontal(id="form-buttons"):
                yield Button("Queue run", variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_resize(self, event) -> None:
        self._fit(event.size)

    async def on_mount(self) -> None:
        self._fit(self.app.size)
        await self._show_params(self.query_one("#in-method", Select).value)
        self.query_one("#in-method", Select).focus()
        self._schedule_estimate()

    def _fit(self, size) -> None:
        # the form scrolls inside the terminal; title, borders and buttons keep their ~9 rows
        self.query_one("#form-body").styles.max_height = max(4, size.height - 9)
        self.set_class(size.width < FULL_WIDTH, "-narrow")  # fewer fields a row, so no label is cut

    async def _show_params(self, method_name: Any) -> None:
        box = self.query_one("#params", Grid)
        await box.remove_children()
        try:
            method = get_method(str(method_name))
        except ConfigError:
            return
        title = self.query_one("#params-title", Static)
        title.update(f"[b]{method.name} {'parameters' if method.params else 'has no parameters'}[/b]  "
                     f"[dim]{method.summary}[/dim]")
        self.query_one("#in-lr", Input).placeholder = f"{method.default_lr:g}"
        fields = []
        for p in method.params.values():
            default = self.template.params.get(p.name, p.default) if self.template.method == method.name else p.default
            label = f"{p.name} (default {_fmt(p.default) or 'auto'})"
            if p.choices:
                w = Select([(c, c) for c in p.choices], value=default, allow_blank=False, id=f"pin-{p.name}")
            else:
                w = Input(_fmt(default), placeholder="auto" if p.default is None else "", id=f"pin-{p.name}")
            w.tooltip = p.help
            fields.append(Field(f"p-{p.name}", label, w))
        await box.mount(*fields)

    @on(Select.Changed, "#in-method")
    async def _method_changed(self, event: Select.Changed) -> None:
        await self._show_params(event.value)

    # ------------------------------------------------------------------ the estimate
    @on(Input.Changed)
    @on(Select.Changed)
    def _schedule_estimate(self) -> None:
        if self._estimate_timer is not None:
            self._estimate_timer.stop()
        self._estimate_timer = self.set_timer(ESTIMATE_DELAY_S, self._start_estimate)

    def _start_estimate(self) -> None:
        box = self.query_one("#form-estimate", Static)
        try:
            config = self.build(quiet=True)
        except NoMatches:  # the method's fields are being replaced: try again when they are in
            self._schedule_estimate()
            return
        if config is None:
            box.update(Text("estimate: once the fields above are valid", style="dim"))
        elif not estimable(config.model):
            box.update(Text("estimate: `peft-tui plan --model ...` estimates a hub model", style="dim"))
        else:
            box.update(Text("estimating…", style="dim"))
            self._estimate(config)

    @work(thread=True, exclusive=True, group="estimate", exit_on_error=False)
    def _estimate(self, config: RunConfig) -> None:
        from textual.worker import get_current_worker

        from peft_tui.engine.estimate import plan

        try:
            [row] = plan([config], self.app.store.root / "calibration.json", calibrate=False,
                         inputs=self.app.estimate_inputs)
            text = estimate_line(row) if row else Text("")
        except Exception as e:  # noqa: BLE001 - any problem (data, model files) is the form's to show
            text = Text(f"no estimate: {first_line(e, 200)}", style="dim")
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.query_one("#form-estimate", Static).update, text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#submit")
    @on(Input.Submitted)
    def action_submit(self) -> None:
        for f in self.query(Field):
            f.set_error("")
        self.query_one("#form-error", Static).update("")
        config = self.build()
        if config is not None:
            self.dismiss([config])

    # ------------------------------------------------------------------ parsing
    def _value(self, wid: str) -> str:
        w = self.query_one(f"#{wid}")
        return str(w.value).strip() if isinstance(w, Input) else str(w.value)

    def _error(self, key: str, text: str) -> None:
        try:
            self.query_one(f"#field-{key}", Field).set_error(text)
        except NoMatches:  # a problem with no field of its own
            self.query_one("#form-error", Static).update(literal(f"✗ {text}"))

    def build(self, quiet: bool = False) -> RunConfig | None:
        """The config from the form, or None after showing each problem next to its field (`quiet`:
        showing nothing, for the estimate)."""
        error = (lambda key, text: None) if quiet else self._error
        ok = True
        method = get_method(self._value("in-method"))
        top: dict[str, Any] = {}
        for key, _, parse in RUN_FIELDS:
            raw = self._value(f"in-{key}")
            if key == "lr" and raw == "":
                top[key] = None
                continue
            try:
                top[key] = parse(raw)
            except ValueError:
                error(key, f"{raw!r} is not a valid {parse.__name__}")
                ok = False
        for key, _, _ in CHOICE_FIELDS:
            top[key] = self._value(f"in-{key}")
        params: dict[str, Any] = {}
        for p in method.params.values():
            raw = self._value(f"pin-{p.name}")
            if raw == "" and p.default is None:
                continue
            try:
                params[p.name] = p.parse(raw)
                p.validate(params[p.name])
            except ConfigError as e:
                error(f"p-{p.name}", str(e))
                ok = False
        model = self._value("in-model")
        data = self._value("in-data")
        if not model:
            error("model", "model is empty: use minilm, tiny, a local folder or a hub id")
            ok = False
        if data != "synthetic" and not Path(data).expanduser().exists():
            error("data", f"no file {data!r}: use synthetic or a path to a CSV/JSONL/Parquet file")
            ok = False
        name = self._value("in-name") or None
        if not ok:
            return None
        base = self.template
        data_cfg = base.data if data == base.data.source else DataConfig(source=data)
        cfg = dataclasses.replace(base, method=method.name, model=model, data=data_cfg, params=params, name=name,
                                  **top)
        try:
            validate(cfg)
        except ConfigError as e:
            if quiet:
                return None
            msg = str(e)
            key = msg.split("=", 1)[0].split(" ")[0] if "=" in msg.split(" ")[0] else None
            if key in {k for k, _, _ in RUN_FIELDS} | {k for k, _, _ in CHOICE_FIELDS}:
                error(key, msg)
            elif key in method.params:
                error(f"p-{key}", msg)
            elif msg.startswith("run name"):
                error("name", msg)
            else:
                self.query_one("#form-error", Static).update(literal(f"✗ {msg}"))
            return None
        return cfg

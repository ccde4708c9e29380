"""Search spaces: what `peft-tui tune` may vary for a method, declared next to the method's parameters
(`space = standard(default_lr, r=Range(...))` in each method module) and shown by `peft-tui methods`.

A key of a space is a run field (lr, weight_decay, warmup_ratio, epochs, ...), a method parameter (r,
reduction_factor, num_virtual_tokens, ...), or a derived key that sets a parameter from another one
(`alpha_per_r` sets alpha = alpha_per_r * r). `--space key=lo:hi` or `key=a,b,c` replaces a range.
Torch-free and optuna-free: the method registry imports this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.config import RunConfig
    from peft_tui.engine.methods import Method

# run fields a study may vary (the others define the experiment, not its hyperparameters)
RUN_KEYS = ("lr", "weight_decay", "warmup_ratio", "epochs", "batch_size", "grad_clip")
LR_FACTOR = 5.0  # the learning rate is searched log-uniformly in [default / 5, default * 5]
SMALL_DATA_ROWS = 2000  # `epochs` is searched only when the training split has fewer rows than this


@dataclass(frozen=True)
class Range:
    """A numeric interval [low, high]; `log`: sampled log-uniformly; `integer`: whole numbers.
    `sets` + `times`: the sampled value times the value of key `times` is what parameter `sets` gets."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    sets: str | None = None
    times: str | None = None

    def describe(self) -> str:
        fmt = (lambda v: str(int(v))) if self.integer else (lambda v: f"{v:g}")
        return f"{fmt(self.low)}..{fmt(self.high)}" + (" log" if self.log else "")

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of `options` (names or numbers, what a trial records); `values`: what each puts in the config
    (default: the option itself), e.g. targets "attention" -> None (the architecture's default)."""

    options: tuple[Any, ...]
    values: tuple[Any, ...] | None = None

    def describe(self) -> str:
        return "|".join(str(o) for o in self.options)

    def value_of(self, option: Any) -> Any:
        return option if self.values is None else self.values[self.options.index(option)]

    def option_of(self, value: Any) -> Any:
        """The option whose config value is `value`, or None."""
        values = self.values if self.values is not None else self.options
        return next((o for o, v in zip(self.options, values) if v == value), None)

    def contains(self, value: Any) -> bool:
        return value in self.options


Dim = Range | Choice


def standard(default_lr: float, **extra: Dim) -> dict[str, Dim]:
    """The space every gradient-trained method shares, plus its own `extra` keys: the learning rate
    log-uniform around the method's default, weight decay, warm-up, and epochs (used on small data only)."""
    return {
        "lr": Range(default_lr / LR_FACTOR, default_lr * LR_FACTOR, log=True),
        "weight_decay": Range(0.0, 0.1),
        "warmup_ratio": Range(0.0, 0.2),
        "epochs": Range(1, 5, integer=True),
        **extra,
    }


def describe(space: dict[str, Dim]) -> str:
    """`lr 1e-4..2e-3 log, r 2..32 log, ...` for `peft-tui methods`."""
    return ", ".join(f"{k} {d.describe()}" for k, d in space.items()) or "-"


# ---------------------------------------------------------------- a trial's values -> a config
def apply(base: RunConfig, values: dict[str, Any], space: dict[str, Dim]) -> RunConfig:
    """`base` with a trial's `values` (options of `space`) put in: run fields, method parameters and
    derived keys. Not validated here."""
    from peft_tui.config import RunConfig

    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    top: dict[str, Any] = {}
    params = dict(base.params)
    for key, option in values.items():
        dim = space.get(key)
        value = dim.value_of(option) if isinstance(dim, Choice) else option
        if isinstance(dim, Range) and dim.sets:
            continue  # derived: after the others (it reads `times`)
        if key in run_fields and key not in ("params", "data", "method"):
            top[key] = value
        else:
            params[key] = value
    for key, option in values.items():
        dim = space.get(key)
        if isinstance(dim, Range) and dim.sets:
            from peft_tui.engine.methods import get_method

            factor = get_method(base.method).resolve(params).get(dim.times or "") or 1
            params[dim.sets] = float(option) * float(factor)
    return dataclasses.replace(base, params=params, **top)


def defaults(base: RunConfig, method: Method, space: dict[str, Dim]) -> dict[str, Any]:
    """The options of `space` that describe `base` as it is (the method's defaults): the first trial of a
    study. Keys whose default lies outside the range are left out (the sampler picks them)."""
    from peft_tui.engine.methods import learning_rate

    resolved = method.resolve(base.params)
    out: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, Range) and dim.sets:
            ref = resolved.get(dim.times or "")
            value = resolved.get(dim.sets) / ref if ref else None
        elif key in resolved:
            value = resolved[key]
        elif key == "lr":
            value = learning_rate(base)
        else:
            value = getattr(base, key, None)
        option = dim.option_of(value) if isinstance(dim, Choice) else value
        if option is not None and dim.contains(option):
            out[key] = int(option) if isinstance(dim, Range) and dim.integer else option
    return out


# ---------------------------------------------------------------- --space key=lo:hi | key=a,b,c
def parse_overrides(pairs: list[str], bases: list[RunConfig]) -> dict[str, Dim]:
    """The `--space` overrides, checked against every method of the study (`bases`: one config per method):
    a key must be in a method's space, a method parameter or a tunable run field; a range must be numeric,
    non-empty (lo < hi) and of the key's type; each end and each choice must be a value the method
    accepts. Raises ConfigError, one line, on the first problem."""
    from peft_tui.engine.methods import get_method

    out: dict[str, Dim] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--space {pair[:60]!r} is not key=lo:hi or key=a,b,c: write e.g. --space lr=1e-4:1e-3")
        key, raw = (s.strip() for s in pair.split("=", 1))
        owners = [b for b in bases if key in _keys(get_method(b.method))]
        if not owners:
            allowed = sorted({k for b in bases for k in _keys(get_method(b.method))})
            raise ConfigError(f"--space {key[:40]!r} is not a key these methods can search: use one of "
                              f"{', '.join(allowed)}")
        if key in out:
            raise ConfigError(f"--space {key} is given twice: keep one")
        out[key] = _parse_dim(key, raw, owners)
    return out


def space_for(base: RunConfig, overrides: dict[str, Dim], small_data: bool) -> dict[str, Dim]:
    """The space one method is searched over: its declared space with `overrides` for the keys it has;
    `epochs` only on small data (or when overridden)."""
    from peft_tui.engine.methods import get_method

    method = get_method(base.method)
    space = dict(method.space)
    if not small_data and "epochs" not in overrides:
        space.pop("epochs", None)
    keys = _keys(method)
    space.update({k: d for k, d in overrides.items() if k in keys})
    return space


def _keys(method: Method) -> set[str]:
    return set(method.space) | set(method.params) | set(RUN_KEYS)


def _parse_dim(key: str, raw: str, owners: list[RunConfig]) -> Dim:
    from peft_tui.engine.methods import get_method, validate

    declared = next((get_method(b.method).space[key] for b in owners if key in get_method(b.method).space), None)
    kind = _kind(key, owners[0])
    shown = f"--space {key}={raw[:40]}"
    if ":" in raw:
        if kind not in (int, float):
            raise ConfigError(f"{shown}: {key} is not numeric, so it takes choices: write {key}=a,b")
        lo_raw, _, hi_raw = (s.strip() for s in raw.partition(":"))
        if not lo_raw or not hi_raw:
            raise ConfigError(f"{shown}: the range is empty: write {key}=LOW:HIGH, e.g. {_example(key, kind)}")
        lo, hi = (_number(shown, key, kind, v) for v in (lo_raw, hi_raw))
        if lo >= hi:
            what = "empty" if lo == hi else "reversed"
            raise ConfigError(f"{shown}: the range is {what} (low {lo:g} must be below high {hi:g}); "
                              f"for one value write {key}={lo:g}")
        log = declared.log if isinstance(declared, Range) else key == "lr"
        if log and lo <= 0:
            raise ConfigError(f"{shown}: {key} is searched on a log scale, so the low end must be above 0")
        dim: Dim = Range(lo, hi, log=log, integer=kind is int,
                         sets=declared.sets if isinstance(declared, Range) else None,
                         times=declared.times if isinstance(declared, Range) else None)
        ends = [lo, hi]
    else:
        items = [s.strip() for s in raw.split(",")]
        if not raw.strip() or not all(items):
            raise ConfigError(f"{shown}: the list of choices is empty or has an empty item: write e.g. "
                              f"{_example(key, kind)}")
        if isinstance(declared, Choice) and all(i in map(str, declared.options) for i in items):
            picked = tuple(next(o for o in declared.options if str(o) == i) for i in items)
            idx = [declared.options.index(o) for o in picked]
            values = None if declared.values is None else tuple(declared.values[i] for i in idx)
            return Choice(tuple(dict.fromkeys(picked)), values if len(set(picked)) == len(picked) else None)
        options = tuple(dict.fromkeys(_parse_value(shown, key, kind, owners[0], i) for i in items))
        dim = Choice(options)
        ends = list(options)
    for base in owners:  # each end / choice must be a value the method accepts
        for value in ends:
            try:
                validate(apply(base, {key: value}, {key: dim}))
            except ConfigError as e:
                raise ConfigError(f"{shown}: {e}") from None
    return dim


def _kind(key: str, base: RunConfig) -> type:
    from peft_tui.config import RunConfig
    from peft_tui.engine.methods import get_method

    method = get_method(base.method)
    declared = method.space.get(key)
    if isinstance(declared, Range):
        return int if declared.integer else float
    if isinstance(declared, Choice):
        return type(declared.options[0]) if declared.options else str
    if key in method.params:
        return method.params[key].type
    kind = str(RunConfig.__dataclass_fields__[key].type)
    return int if kind.startswith("int") else float if kind.startswith("float") else str


def _number(shown: str, key: str, kind: type, raw: str) -> float:
    try:
        value = int(raw) if kind is int else float(raw)
    except ValueError:
        raise ConfigError(f"{shown}: {raw[:30]!r} is not {'a whole number' if kind is int else 'a number'}: "
                          f"write e.g. {_example(key, kind)}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{shown}: {raw[:30]!r} is not a finite number: write e.g. {_example(key, kind)}")
    return value


def _parse_value(shown: str, key: str, kind: type, base: RunConfig, raw: str) -> Any:
    from peft_tui.engine.methods import get_method

    method = get_method(base.method)
    if kind in (int, float):
        return _number(shown, key, kind, raw)
    if key in method.params:
        try:
            value = method.params[key].parse(raw)
        except ConfigError as e:
            raise ConfigError(f"{shown}: {e}") from None
        if isinstance(value, list):
            raise ConfigError(f"{shown}: {key} takes a list: search it through its own choices, e.g. "
                              "--space target_modules=attention,all-linear")
        return value
    return raw


def _example(key: str, kind: type) -> str:
    return {int: f"{key}=2:16", float: f"{key}=1e-4:1e-3" if key == "lr" else f"{key}=0:0.1"}.get(kind, f"{key}=a,b")

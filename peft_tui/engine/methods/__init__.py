"""Fine-tuning methods, one small module each, registered by name.

A method says which parameters it takes (with defaults and checks), its default learning rate,
how it wraps a freshly loaded classifier (`apply`), and how it saves and reloads what it trained.
A method with its own procedure instead of the trainer's loop sets a `run` hook, which `execute` calls
(the TF-IDF baseline; the head-only linear probe); `is_baseline` marks a row that is not a fine-tuning
of the base model (no checkpoint, no resume, no weights to predict with or export).
Importing this package is torch-free: modules import torch inside their functions, so
`peft-tui methods` and config validation stay fast.

Adding a method: write `peft_tui/engine/methods/mymethod.py` with a `Method` subclass decorated
with `@register`, and import it at the bottom of this file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from peft_tui.errors import ConfigError
from peft_tui.limits import MAX_INT

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from peft_tui.config import RunConfig
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.events import Sink
    from peft_tui.engine.result import RunResult

# run(config, run_id, sink, cancel, out_dir, data, cache_dir) -> RunResult: a whole run, its events included;
# `data` is the splits when the caller loaded them already, else None; `cache_dir` the store's cache folder
# (token ids, probe features) or None. Raises like the trainer (ConfigError, result.Cancelled, ...);
# `execute` turns that into the run's end.
RunHook = Callable[["RunConfig", int, "Sink", threading.Event, Path, Optional["DataSplits"], Optional[Path]],
                   "RunResult"]


@dataclass(frozen=True)
class Param:
    """One method parameter: its type, default, help, and an optional check returning an error."""

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, raw: str) -> Any:
        if self.type is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
        elif self.type is list:
            return [s.strip() for s in raw.split(",") if s.strip()] if raw.lower() not in ("", "auto") else None
        else:
            try:
                return self.type(raw)
            except ValueError:
                pass
        raise ConfigError(
            f"{self.name}={raw!r} is not a valid {self.type.__name__}: write e.g. {self.name}={self.default!r}"
        )

    def validate(self, value: Any) -> None:
        if value is None and self.default is None:
            return
        ok_type = isinstance(value, self.type) or (self.type is float and isinstance(value, int))
        if self.type is not bool and isinstance(value, bool):
            ok_type = False
        if not ok_type:
            raise ConfigError(
                f"{self.name}={value!r} has the wrong type: it takes a {self.type.__name__}, e.g. {self.default!r}"
            )
        if self.type is list and not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.name}={repr(value)[:60]} must be a list of names, e.g. {self.name}=query,value")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise ConfigError(f"{self.name}={repr(value)[:40]} is too large: it must fit in 64 bits")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name}={value!r} is not allowed: use one of {', '.join(self.choices)}")
        if self.check:
            problem = self.check(value)
            if problem:
                raise ConfigError(f"{self.name}={value!r} {problem}")


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


class Method:
    """Base class. Subclasses set the class attributes and implement apply/save/load."""

    name: str = ""
    summary: str = ""
    default_lr: float = 2e-5
    params: dict[str, Param] = {}
    is_baseline: bool = False  # not a fine-tuning of the base model (e.g. TF-IDF + logistic regression)
    run: RunHook | None = None  # set: `execute` calls it instead of the trainer's loop
    space: dict[str, Any] = {}  # what `peft-tui tune` searches (methods/space.py); {}: not tunable

    def check_params(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.params:
                allowed = ", ".join(self.params) or "none"
                raise ConfigError(f"method {self.name!r} has no parameter {key!r}: its parameters are {allowed}")
            self.params[key].validate(value)

    def check_model(self, model: nn.Module, params: dict[str, Any]) -> None:
        """Checks against the model before it loads: `model` is built on the meta device (module names
        and shapes, no weights). Raises ConfigError; by default nothing to check."""

    def positions_taken(self, params: dict[str, Any]) -> int:
        """Positions the method puts before the text (prefix and prompt tuning's virtual tokens): they and
        max_length together must fit the model's position limit."""
        return 0

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in."""
        out = {k: p.default for k, p in self.params.items()}
        out.update(values)
        return out

    # --- the work; `model` is a transformers ...ForSequenceClassification
    def apply(self, model: nn.Module, params: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def save(self, model: nn.Module, folder: Path, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self, base: nn.Module, folder: Path, params: dict[str, Any]) -> nn.Module:
        """Rebuild a trained model from `base` (a fresh classifier) and the saved weights."""
        raise NotImplementedError


REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: a list or table from a config file
        raise ConfigError(f"unknown method {repr(name)[:60]}: use one of {', '.join(REGISTRY)}") from None



def validate(config: RunConfig) -> None:
    """The whole check of a run config: its own fields (config.py), then its method and the method's
    parameters. Raises ConfigError (one line). Imports no torch."""
    config.validate()
    get_method(config.method).check_params(config.params)


def learning_rate(config: RunConfig) -> float:
    """The run's learning rate: its own, else its method's default."""
    return config.lr if config.lr is not None else get_method(config.method).default_lr


def with_overrides(config: RunConfig, pairs: list[str]) -> RunConfig:
    """`config` with `key=value` strings applied: run fields, data fields, or the method's parameters."""
    return config.with_overrides(pairs, get_method(config.method).params)

def method_names() -> list[str]:
    return list(REGISTRY)


# Registration order is display order.
from peft_tui.engine.methods import (  # noqa: E402, F401, I001
    full, lora, adapters, head, bitfit, ia3, prompt_learning, peft_json, tfidf,
)

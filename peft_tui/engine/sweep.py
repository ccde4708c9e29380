"""Sweeps: `--grid key=v1,v2,...` expanded into one RunConfig per combination. Torch-free, shared by
`peft-tui sweep` and the dashboard. Keys are anything `--set` takes (a method parameter, a run field
such as lr or epochs, or data.<field>); values are split on ',' (or ';' when a value itself is a
comma list, e.g. target_modules=query,value;query,key,value)."""

from __future__ import annotations

import dataclasses
import itertools
import re

from peft_tui.config import RunConfig
from peft_tui.engine.methods import validate, with_overrides
from peft_tui.errors import ConfigError

MAX_RUNS = 256


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not key=v1,v2,...: write e.g. --grid r=1,2,4,8")
        key, raw = (s.strip() for s in item.split("=", 1))
        values = [v.strip() for v in raw.split(";" if ";" in raw else ",") if v.strip()]
        if not key or not values:
            raise ConfigError(f"--grid {item!r} has no key or no values: write e.g. --grid r=1,2,4,8")
        if any(key == k for k, _ in grid):
            raise ConfigError(f"--grid {key} is given twice: put all its values in one --grid")
        grid.append((key, values))
    if not grid:
        raise ConfigError("a sweep needs at least one --grid key=v1,v2,...")
    return grid


def _slug(key: str, value: str) -> str:
    key = key.removeprefix("data.")
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{key}{value}")


def grid_configs(base: RunConfig, items: list[str], prefix: str | None = None) -> list[RunConfig]:
    """One validated config per combination, named <prefix>-<key><value>-..."""
    grid = parse_grid(items)
    total = 1
    for _, values in grid:
        total *= len(values)
    if total > MAX_RUNS:
        raise ConfigError(f"the grid has {total} combinations, more than {MAX_RUNS}: sweep fewer values")
    out = []
    for combo in itertools.product(*(values for _, values in grid)):
        pairs = [f"{k}={v}" for (k, _), v in zip(grid, combo)]
        cfg = with_overrides(base, pairs)
        name = "-".join([prefix or base.method] + [_slug(k, v) for (k, _), v in zip(grid, combo)])[:64]
        cfg = dataclasses.replace(cfg, name=name)
        validate(cfg)
        out.append(cfg)
    return out

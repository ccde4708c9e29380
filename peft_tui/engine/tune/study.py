"""A study's record: what it is (`StudySpec`, saved as <store>/studies/<name>.json, next to its Optuna
journal <name>.optuna.log), a new study with its settings checked (`new_study`), and saving, listing and
loading studies. No optuna here."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.methods import space as spaces
from peft_tui.engine.store import Store
from peft_tui.engine.tune.pruning import DEFAULT_PRUNER, PRUNERS, evaluations_per_run
from peft_tui.errors import ConfigError

STUDY_DIR = "studies"
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
COUNTED = ("done", "pruned", "failed", "diverged")  # trials that spent budget (cancelled ones are asked again)


@dataclass
class StudySpec:
    """What a study is (saved as <store>/studies/<name>.json): enough to resume it in another process."""

    name: str
    methods: list[str]
    bases: dict[str, dict[str, Any]]  # method -> its base RunConfig (defaults + the command's options)
    trials: int | None = None  # per method; or
    budget_s: float | None = None  # run seconds, split equally between the methods
    seeds: int = 3
    pruner: str = "median"
    space: list[str] = field(default_factory=list)  # the --space overrides as typed
    parallel: int = 1
    sampler_seed: int = 0
    val_rows: int = 0  # the validation split's size: what `behind` takes as noise
    small_data: bool = True
    force: bool = False
    state: str = "searching"  # searching | final | done
    created_at: float = 0.0
    final: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # method -> tuned|defaults -> seed -> id
    exported: dict[str, str] = field(default_factory=dict)  # method -> best config file

    def base(self, method: str) -> RunConfig:
        return RunConfig.from_dict(self.bases[method])

    def space_of(self, method: str) -> dict[str, spaces.Dim]:
        overrides = spaces.parse_overrides(self.space, [self.base(m) for m in self.methods])
        return spaces.space_for(self.base(method), overrides, self.small_data)

    @property
    def share_s(self) -> float | None:
        return None if self.budget_s is None else self.budget_s / len(self.methods)

    def final_seeds(self) -> list[int]:
        """Fresh seeds (never the trials' own), the same for every method and for tuned and defaults."""
        seed = self.base(self.methods[0]).seed
        return [seed + 1 + i for i in range(self.seeds)]


# ---------------------------------------------------------------- creating, saving, loading
def study_dir(store: Store) -> Path:
    return store.root / STUDY_DIR


def _spec_path(store: Store, name: str) -> Path:
    return study_dir(store) / f"{name}.json"


def _journal_path(store: Store, name: str) -> Path:
    return study_dir(store) / f"{name}.optuna.log"


def save(store: Store, spec: StudySpec) -> None:
    path = _spec_path(store, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True))
    os.replace(tmp, path)


def list_studies(store: Store) -> list[str]:
    folder = study_dir(store)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_study(store: Store, name: str) -> StudySpec:
    if not name or any(c not in NAME_CHARS for c in name):
        raise ConfigError(f"study name {name[:60]!r} is not allowed: use letters, digits, '.', '_' or '-'")
    path = _spec_path(store, name)
    if not path.is_file():
        known = ", ".join(list_studies(store)) or "none yet"
        raise ConfigError(f"study {name!r} does not exist in {store.root}: its studies are {known}")
    try:
        raw = json.loads(path.read_text())
        return StudySpec(**raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"study file {path} cannot be read ({e}): start a new study") from None


def new_study(store: Store, bases: list[RunConfig], *, trials: int | None = None, budget_s: float | None = None,
              seeds: int = 3, pruner: str = DEFAULT_PRUNER, space: list[str] | None = None, parallel: int = 1,
              train_rows: int = 0, val_rows: int = 0, name: str | None = None, force: bool = False) -> StudySpec:
    """Check a study's settings (one line on the first problem), fix each base's evaluation interval so a
    pruner has several points per run, and save the study. `bases`: one config per method, validated;
    `train_rows`, `val_rows`: the splits' sizes (they set the interval, whether `epochs` is searched, and
    what `behind` counts as noise)."""
    if (trials is None) == (budget_s is None):
        raise ConfigError("give the budget as --trials N (per method) or --budget TIME (e.g. 2h), not both")
    if trials is not None and not 1 <= trials <= 10_000:
        raise ConfigError(f"--trials {trials}: pass 1 to 10000 trials per method")
    if budget_s is not None and not 0 < budget_s <= 365 * 86400:
        raise ConfigError("--budget must be a positive time up to a year, e.g. 30m or 2h")
    if not 1 <= seeds <= 100:
        raise ConfigError(f"--seeds {seeds}: pass 1 to 100 seeds for the final runs")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
    methods = [b.method for b in bases]
    if len(set(methods)) != len(methods):
        raise ConfigError("--methods names a method twice: list each once")
    from peft_tui.engine.methods import get_method

    for b in bases:
        if not get_method(b.method).space:
            raise ConfigError(f"method {b.method!r} has nothing to tune (no search space): leave it out of --methods")
    if name is not None and (not name or any(c not in NAME_CHARS for c in name) or len(name) > 64):
        raise ConfigError(f"study name {name[:60]!r} is not allowed: use up to 64 letters, digits, '.', '_' or '-'")
    if name is not None and _spec_path(store, name).exists():
        raise ConfigError(f"study {name!r} already exists: continue it with --resume {name}, or pick another name")
    spaces.parse_overrides(space or [], bases)  # refused here, in one line, before anything runs
    if name is None:
        taken = set(list_studies(store))
        name = next(f"tune-{i}" for i in range(1, 10**6) if f"tune-{i}" not in taken)
    fixed = []
    for b in bases:
        per_epoch = math.ceil(train_rows / b.batch_size / max(1, b.nproc))
        evals = evaluations_per_run(train_rows, val_rows, b.epochs, pruning=pruner != "none")
        if b.eval_every == 0 and evals > b.epochs and per_epoch * b.epochs >= 2 * evals:
            b = dataclasses.replace(b, eval_every=math.ceil(per_epoch * b.epochs / evals))
        if b.data.split_seed is None:  # every run of the study (final seeds too) on the trials' split
            b = dataclasses.replace(b, data=dataclasses.replace(b.data, split_seed=b.seed))
        fixed.append(dataclasses.replace(b, name=b.method))
    spec = StudySpec(name=name, methods=methods, bases={b.method: b.to_dict() for b in fixed}, trials=trials,
                     budget_s=budget_s, seeds=seeds, pruner=pruner, space=list(space or []), parallel=max(1, parallel),
                     sampler_seed=bases[0].seed, val_rows=val_rows,
                     small_data=0 < train_rows < spaces.SMALL_DATA_ROWS, force=force,
                     created_at=time.time())
    save(store, spec)
    return spec

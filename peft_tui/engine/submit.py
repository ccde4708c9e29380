"""The one path from a config to a queued run. The CLI's commands, the dashboard and `tune` all submit
through here, so a run is checked the same way whoever queues it:

    planned = check(store, configs, force=force, data=splits)   # validate once, serve, estimate, fit
    ids = create(store, planned)                                # the queued rows, each with its estimate
    ids = submit(store, configs)                                # both
    pool = make_pool(store, ray=..., workers=...)               # who trains them: local workers or Ray

`check` raises ConfigError (one line) for the first config that cannot run: a bad value, a device no
worker serves, an estimate that failed, or a run that will not fit the device's memory or the time it is
given (unless `force`). Only a model whose architecture the estimate cannot read (`NotEstimable`) is
let through without an estimate, with a warning. Nothing is queued before every config has passed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_tui.config import RunConfig
from peft_tui.engine.methods import get_method, validate
from peft_tui.engine.store import Store, serves
from peft_tui.errors import ConfigError, OneLineError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.launch.local import LocalPool
    from peft_tui.engine.launch.ray import RayPool

INPROCESS_ENV = "PEFT_TUI_INPROCESS_POOL"  # "1": runs train in a thread of this process (the fast tests)


@dataclass(frozen=True)
class Planned:
    """A config that passed `check`: its estimate (Estimate.to_dict(); None for a baseline or a model the
    estimate cannot read), whether it fits, and a warning to show when it was let through regardless."""

    config: RunConfig
    estimate: dict[str, Any] | None
    fits: bool = True
    warning: str | None = None
    run_id: int | None = None  # once queued (Scheduler.submit)


def prepare(configs: Sequence[RunConfig], load_data: bool = True, cache_dir: Path | None = None) -> DataSplits:
    """Validate each config (the only time before a worker reads it back), check the device, precision and
    model location of each distinct model/device pair, and load the data of configs[0] (for the summary
    and the estimate; the others share it or load their own in `plan`). Raises ConfigError (one line).

    `cache_dir`: the store's cache (read only: `check` keeps what passed there once the store is open).
    A model, method and max_length whose files passed the full check before (`models.check_model_files`:
    the config, the safetensors headers, the skeleton on the meta device, the method's targets) are not
    checked again while its files are unchanged: a command then imports no torch to check them."""
    for cfg in configs:
        validate(cfg)
    seen: set[tuple] = set()
    for cfg in configs[1:]:
        key = (cfg.model, cfg.device, cfg.precision, cfg.trust_remote_code, cfg.method, cfg.max_length)
        if key not in seen and key != (configs[0].model, configs[0].device, configs[0].precision,
                                       configs[0].trust_remote_code, configs[0].method, configs[0].max_length):
            seen.add(key)
            _preflight(cfg, False, cache_dir)
    data = _preflight(configs[0], load_data, cache_dir)
    return data  # type: ignore[return-value]  # None only without load_data


CHECK_FORMAT = "peft-tui-model-check-v1"
_passed: set[str] = set()  # model checks passed in this process, kept in the store by `check`


def _model_check_key(cfg: RunConfig, params: dict) -> str | None:
    """What the full model check depends on: the model's files (name, size, modification time), the
    method and its parameters, max_length, the flag, and the library versions. None for a hub id."""
    import hashlib
    import json

    from peft_tui.engine import models
    from peft_tui.engine.estimate.shape import _versions

    folder = models.minilm_path() if cfg.model in ("minilm", "tiny") else models._model_folder(cfg.model)
    if folder is None:
        return None
    h = hashlib.sha256(f"{CHECK_FORMAT}\0{cfg.model}\0{folder}\0{cfg.method}\0{cfg.max_length}\0"
                       f"{cfg.trust_remote_code}\0{_versions()}\0".encode())
    h.update(json.dumps(params, sort_keys=True, default=repr).encode())
    try:
        for p in sorted(folder.iterdir()):
            if p.suffix in (".json", ".safetensors") and p.is_file():
                st = p.stat()
                h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    except OSError:
        return None
    return h.hexdigest()[:40]


def _preflight(cfg: RunConfig, load_data: bool, cache_dir: Path | None) -> DataSplits | None:
    """trainer.preflight, with the model files' check skipped when `cache_dir` says it passed before."""
    key = None
    method = get_method(cfg.method)
    if cache_dir is not None and not method.is_baseline:
        from peft_tui.engine import models
        from peft_tui.engine.device import resolve_device, resolve_precision

        device = resolve_device(cfg.device)
        resolve_precision(cfg.precision, device)
        models.check_model_name(cfg.model)
        key = _model_check_key(cfg, method.resolve(cfg.params))
        if key is not None and (Path(cache_dir) / f"checked-{key}").exists():
            from peft_tui.engine.data import load_splits

            return load_splits(cfg.data, cfg.seed) if load_data else None
    from peft_tui.engine.trainer import preflight  # imports torch (the model check builds a skeleton)

    data = preflight(cfg, load_data=load_data)
    if key is not None:
        _passed.add(key)
    return data


def remember_checks(cache_dir: Path) -> None:
    """Keep the model checks this process passed since the last call in the store's cache (`prepare`
    reads them)."""
    keys = sorted(_passed)
    _passed.clear()
    for key in keys:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            (Path(cache_dir) / f"checked-{key}").touch()
        except OSError:  # a read-only or full store: checked again next time
            return


def check(store: Store, configs: Sequence[RunConfig], *, force: bool = False, data: DataSplits | None = None,
          devices: Sequence[str] | None = None, inputs: dict | None = None,
          estimate: bool = True) -> list[Planned]:
    """The configs `prepare`d (or, with `data`, already prepared by the caller), check that a worker on
    `devices` (default: this machine's; empty: a Ray cluster serves any) can train each, estimate them
    from the store's cached calibration and refuse a run that will not fit unless `force`. `data`: the
    loaded splits of configs[0]; `inputs`: a dict kept by the caller to reuse model configs and token
    lengths across calls."""
    from peft_tui.engine.launch.local import default_devices

    if data is None and estimate:  # with `inputs`, `plan` reads the data once for many calls
        data = prepare(configs, load_data=inputs is None, cache_dir=store.cache_dir) or None
    elif data is None:
        for cfg in configs:
            validate(cfg)
    devices = default_devices() if devices is None else devices
    for cfg in configs:
        if devices and not any(serves(cfg.device, d) for d in devices):
            raise ConfigError(f"device {cfg.device!r} is not on this machine (workers serve "
                              f"{', '.join(devices)}): pass --device auto")
    if not store.readonly:
        remember_checks(store.cache_dir)
    if not estimate:
        return [Planned(cfg, None) for cfg in configs]
    rows, warning = _plan(store, configs, data, inputs)
    out = []
    for cfg, row in zip(configs, rows):
        if row is None:
            out.append(Planned(cfg, None, warning=warning))
            continue
        fits = bool(row["fits"])
        why = None
        if not fits:
            from peft_tui.engine.estimate import refusal

            why = refusal(cfg, row)
            if not force:
                raise ConfigError(why)
        out.append(Planned(cfg, row["estimate"], fits, why))
    return out


def _plan(store: Store, configs: Sequence[RunConfig], data: DataSplits | None,
          inputs: dict | None) -> tuple[list[dict | None], str | None]:
    from peft_tui.engine.estimate import NotEstimable, plan

    try:
        return plan(configs, store.root / "calibration.json", calibrate=False, data=data, inputs=inputs,
                    cache_dir=None if store.readonly else store.cache_dir), None
    except NotEstimable as e:  # the one failure that may go on: the run itself will tell
        return [None] * len(configs), f"no estimate ({first_line(e, 200)}): queued without the fit check"
    except OneLineError:
        raise
    except Exception as e:  # noqa: BLE001 - anything else the estimate met, the run would meet too
        raise ConfigError(f"{configs[0].display_name} cannot be queued: checking it failed "
                          f"({first_line(e, 200)}); fix the model or method parameters") from None


def create(store: Store, planned: Sequence[Planned], ids: list[int] | None = None,
           study: str | None = None, trial: int | None = None) -> list[int]:
    """Queue the checked configs, each with its estimate (graded by whoever reads the run: estimate.grade_run).
    Each id is appended to `ids` as soon as it is queued, so an interrupt in between knows what to cancel."""
    ids = [] if ids is None else ids
    for p in planned:
        ids.append(store.create_run(p.config, estimate=p.estimate, study=study, trial=trial))
    return ids


def submit(store: Store, configs: Sequence[RunConfig], *, force: bool = False, data: DataSplits | None = None,
           devices: Sequence[str] | None = None, study: str | None = None, trial: int | None = None,
           warn: Callable[[str], None] | None = None) -> list[int]:
    """`check`, then `create`: the ids of the queued runs. `warn` receives each warning (a run let
    through without an estimate, or forced past the fit check)."""
    planned = check(store, configs, force=force, data=data, devices=devices)
    for p in planned:
        if p.warning and warn is not None:
            warn(p.warning)
    return create(store, planned, study=study, trial=trial)


def make_pool(store: Store, *, ray: str | None = None, workers: int | None = None, detach: bool = False,
              devices: list[str] | None = None, run_ids: list[int] | None = None,
              trust_remote_code: bool | None = None, runs_per_gpu: int | str | None = None) -> LocalPool | RayPool:
    """Who trains the store's queued runs (not started): a Ray cluster (`ray`: "auto" or an address; with
    `run_ids`, only those runs), else worker processes on this machine, one per device or `workers`.
    Under PEFT_TUI_INPROCESS_POOL=1 (the fast test tier) runs train in a thread of this process instead."""
    if ray:
        from peft_tui.engine.launch.ray import RayPool

        return RayPool(store, ray, run_ids)
    if os.environ.get(INPROCESS_ENV) == "1" and not detach:
        from peft_tui.engine.launch.inprocess import InProcessPool

        return InProcessPool(store.root, devices)  # type: ignore[return-value]
    from peft_tui.engine.launch.local import LocalPool

    # trust_remote_code: the user's flag, told to each worker (None: the stored configs decide, as before)
    return LocalPool(store.root, devices, workers=workers, detach=detach, trust_remote_code=trust_remote_code,
                     runs_per_gpu=runs_per_gpu)  # --runs-per-gpu: several runs on one GPU

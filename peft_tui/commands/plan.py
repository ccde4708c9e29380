"""`peft-tui plan`: will each method fit, and how long will it take — estimated before anything runs.

Takes the same options as `compare`. For each method it prints the trainable parameters, the estimated
peak memory (with its range) against the device's free memory (available RAM on CPU,
`torch.cuda.mem_get_info` on GPU), and the estimated training time; a run that will not fit is marked and
the ways to make it fit are listed (a smaller batch, bf16, LoRA, a shorter max_length). The machine's
throughput is calibrated once (a few seconds) into `<store>/calibration.json`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from peft_tui.commands.common import handles_errors, open_store, print_json
from peft_tui.commands.options import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    JsonOpt,
    LabelColOpt,
    MaxLengthOpt,
    ModelOpt,
    PrecisionOpt,
    SetOpt,
    StoreOpt,
    TextColOpt,
    run_config,
)
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError


def free_mb(device: str) -> float:
    """Memory a run may use now: available RAM on CPU, free memory of the GPU on CUDA."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else 0)
        return free / 2**20
    import psutil

    return psutil.virtual_memory().available / 2**20


def plan_configs(st, configs: list[RunConfig]) -> list[dict[str, Any]]:
    """One row per config: the estimate, the free memory, and whether it fits."""
    from peft_tui.engine.device import resolve_device
    from peft_tui.engine.estimate import calibration, estimate, inputs_for

    rows = []
    inputs: dict[Any, Any] = {}
    for cfg in configs:
        device = resolve_device(cfg.device)
        key = (cfg.model, cfg.data, cfg.seed)
        if key not in inputs:  # the same model and data for every method: read them once
            inputs[key] = inputs_for(cfg)
        model_config, lengths = inputs[key]
        cal = calibration(st.root / "calibration.json", device)
        available = free_mb(device)
        est = estimate(cfg, model_config, lengths, device, cal, free_mb=available)
        rows.append({"method": cfg.method, "device": device, "free_mb": available,
                     "fits": est.fits(available), "estimate": est.to_dict()})
    return rows


@handles_errors
def plan(
    ctx: typer.Context,
    methods: Annotated[str, typer.Option("--methods", help="comma-separated method names")] = "full,lora,adapters",
    model: ModelOpt = "minilm",
    data: DataOpt = "synthetic",
    sets: SetOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    max_length: MaxLengthOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate each method's peak memory and training time before running it, and say what will not fit."""
    from peft_tui.engine.methods import get_method

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
    configs = [run_config(ctx, sets, method=m, name=None) for m in names]
    for cfg in configs:
        cfg.validate()
        if get_method(cfg.method).is_baseline:
            raise ConfigError(f"{cfg.method} is a baseline with nothing to estimate: leave it out of --methods")
    st = open_store(store)
    rows = plan_configs(st, configs)
    if as_json:
        print_json({"plan": rows})
    else:
        from peft_tui.console import print_plan

        print_plan(rows)
    if not all(r["fits"] for r in rows):
        raise typer.Exit(1)

"""`peft-tui plan`: will each method fit, and how long will it take — estimated before anything runs.

Takes the same options as `compare`. For each method it prints the trainable parameters, the estimated
peak memory (with its range) against the device's free memory (available RAM on CPU,
`torch.cuda.mem_get_info` on GPU), and the estimated training time; a run that will not fit is marked and
the ways to make it fit are listed (a smaller batch, bf16, LoRA, a shorter max_length). The machine's
throughput is calibrated once (a few seconds) into `<store>/calibration.json`; `run`, `compare` and
`sweep` use that calibration for their own fit check (engine.estimate.plan) and never measure.
"""

from __future__ import annotations

from typing import Annotated

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
from peft_tui.errors import ConfigError


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
    from peft_tui.engine.methods import get_method, validate

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
    configs = [run_config(ctx, sets, method=m, name=None) for m in names]
    for cfg in configs:
        validate(cfg)
        if get_method(cfg.method).is_baseline:
            raise ConfigError(f"{cfg.method} is a baseline with nothing to estimate: leave it out of --methods")
    from peft_tui.engine.estimate import plan as plan_rows

    st = open_store(store)
    rows = [r for r in plan_rows(configs, st.root / "calibration.json") if r is not None]
    if as_json:
        print_json({"plan": rows})
    else:
        from peft_tui.console import print_plan

        print_plan(rows)
        reasons = {(r["device"], r["estimate"]["precision"], r["estimate"].get("precision_reason"))
                   for r in rows if r["estimate"].get("precision_reason")}
        for device, chosen, reason in sorted(reasons):
            typer.echo(f"precision auto -> {chosen} on {device}: {reason}")
    if not all(r["fits"] for r in rows):
        raise typer.Exit(1)

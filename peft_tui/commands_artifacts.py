"""Commands on data and stored runs: `data`, `predict`, `export`, `sweep`, `report`.

Registered on the shared typer app (cli.py imports this module at its bottom). Heavy imports
(torch, transformers, peft, datasets, plotext) stay inside the command bodies.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from peft_tui.cli import (
    EXIT_FAILED,
    BatchOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    JsonOpt,
    LabelColOpt,
    ModelOpt,
    PrecisionOpt,
    SeedOpt,
    SetOpt,
    StoreOpt,
    TextColOpt,
    TextPairColOpt,
    TrustOpt,
    ValDataOpt,
    app,
    handles_errors,
    open_store,
)
from peft_tui.config import ConfigError, DataConfig, RunConfig




# ---------------------------------------------------------------- the data summary
def data_summary(cfg: RunConfig) -> dict:
    """The pre-training summary of a config's data, token counts from its model's tokenizer."""
    from peft_tui.engine import models
    from peft_tui.engine.data import load_splits, summarize

    data = load_splits(cfg.data, cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model, cfg.trust_remote_code)
    return summarize(data, tokenizer, cfg.max_length)


def print_data_summary(cfg: RunConfig, to_stderr: bool = False) -> dict:
    """Print the summary before training (stderr when stdout carries JSON). Returns it."""
    from peft_tui.engine.data import format_summary

    doc = data_summary(cfg)
    typer.echo(format_summary(doc), err=to_stderr)
    return doc


@app.command("data")
@handles_errors
def data_cmd(
    data: str = DataOpt,
    model: str = ModelOpt,
    sets: Optional[list[str]] = SetOpt,
    text_col: str = TextColOpt,
    label_col: str = LabelColOpt,
    text_pair_col: Optional[str] = TextPairColOpt,
    val_data: Optional[str] = ValDataOpt,
    trust_remote_code: bool = TrustOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Summarise a dataset as a run would see it: rows per class, token lengths, truncation.

    Example: peft-tui data --data news.csv --set data.limit=2000 --set max_length=64"""
    from peft_tui.engine import models

    cfg = RunConfig(
        method="head", model=model, trust_remote_code=trust_remote_code,
        data=DataConfig(source=data, text_col=text_col, label_col=label_col, text_pair_col=text_pair_col,
                        val_source=val_data),
    ).with_overrides(sets or [])
    cfg.data.validate()
    models.check_model_name(cfg.model)
    doc = data_summary(cfg)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        from peft_tui.engine.data import format_summary

        typer.echo(format_summary(doc))

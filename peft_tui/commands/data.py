"""`peft-tui data`: a dataset as a run would see it, before any training."""

from __future__ import annotations

import typer

from peft_tui.commands.common import data_summary, handles_errors, print_json
from peft_tui.commands.options import (
    DataOpt,
    JsonOpt,
    LabelColOpt,
    ModelOpt,
    SetOpt,
    TextColOpt,
    TextPairColOpt,
    TrustOpt,
    ValDataOpt,
    run_config,
)


@handles_errors
def show_data(
    ctx: typer.Context,
    data: DataOpt = "synthetic",
    model: ModelOpt = "minilm",
    sets: SetOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a dataset as a run would see it: rows per class, token lengths, truncation.

    Example: peft-tui data --data news.csv --set data.limit=2000 --set max_length=64"""
    from peft_tui.engine import models
    from peft_tui.engine.data import format_summary, load_splits
    from peft_tui.safe import safe_lines

    cfg = run_config(ctx, sets, method="head")
    cfg.data.validate()
    models.check_model_name(cfg.model)
    doc = data_summary(cfg, load_splits(cfg.data, cfg.seed))
    if as_json:
        print_json(doc)
    else:
        typer.echo(safe_lines(format_summary(doc)))  # labels and paths from the file, shown literally

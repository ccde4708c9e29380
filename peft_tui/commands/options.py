"""Options that several commands share, each written once as an `Annotated` alias, and `run_config`,
the one function that turns the run-config options into a RunConfig.

A command declares an option by its alias, with the default --help shows: `epochs: EpochsOpt = None`.
The run-config options' defaults are RunConfig's own (None: "the config's value").
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Optional

import typer

from peft_tui.config import HEAD_INITS, POOLINGS, RunConfig, parse_duration
from peft_tui.errors import ConfigError

# ---------------------------------------------------------------- every command that reads a store
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", help="run store folder (default ./peft-runs or $PEFT_TUI_STORE)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout instead of tables")]

# ---------------------------------------------------------------- the training commands' worker processes
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="worker processes training runs side by side (default: one per device; "
    "CPU: 1, a GPU box: one per GPU)")]
def _runs_per_gpu(value: str) -> int | str:
    """--runs-per-gpu's parser: a bad value is a usage error (one line, exit 2)."""
    from peft_tui.engine.memory import parse_runs_per_gpu

    try:
        return parse_runs_per_gpu(value)
    except ConfigError as e:
        raise typer.BadParameter(str(e).removeprefix("--runs-per-gpu ")) from None


RunsPerGpuOpt = Annotated[Optional[str], typer.Option(
    "--runs-per-gpu", parser=_runs_per_gpu, metavar="auto|N",
    help="let each GPU train up to N runs at once (auto: as many as fit, at most 8); a worker takes a run only "
    "when its estimated peak memory fits beside the runs already on that GPU, else the run waits in the queue "
    "(default: one run per GPU; no effect on the CPU)")]
DetachOpt = Annotated[bool, typer.Option(
    "--detach", help="queue the runs, leave the workers training them in the background (they outlive this "
    "shell) and return at once; follow them with `peft-tui launch` or `peft-tui show ID`")]

ForceOpt = Annotated[bool, typer.Option(
    "--force", help="queue the runs even when their estimated peak memory exceeds the device's free memory, "
    "or their estimated time exceeds --max-time (default 24 h) (see `peft-tui plan`)")]

RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", metavar="auto|ADDRESS", help="train the runs as tasks on an existing Ray cluster (auto: the one "
    "this machine belongs to, or a local one) instead of local workers; needs pip install 'peft-tui[ray]'")]

GpusOpt = Annotated[Optional[int], typer.Option(
    "--gpus", min=1, help="train each run data-parallel over N processes (GPUs; CPU: gloo), launched with "
    "torchrun; the same as --set nproc=N")]

# ---------------------------------------------------------------- the run-config options
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="method name (`peft-tui methods` lists them)")]
ModelOpt = Annotated[str, typer.Option(
    "--model", help="minilm (embedded), tiny (tests), a local folder, or a hub id")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="synthetic, or a .csv/.jsonl/.parquet file")]
TextColOpt = Annotated[str, typer.Option("--text-col", help="text column in the data file")]
LabelColOpt = Annotated[str, typer.Option("--label-col", help="label column in the data file")]
TextPairColOpt = Annotated[Optional[str], typer.Option(
    "--text-pair-col", help="second-sentence column for sentence pairs (NLI, paraphrase)")]
ValDataOpt = Annotated[Optional[str], typer.Option(
    "--val-data", help="a separate validation file (else split from --data)")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="run name (letters, digits, . _ -)")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="epochs (default 3)")]
LrOpt = Annotated[Optional[float], typer.Option(
    "--lr", help="learning rate (default: the method's, see `peft-tui methods`)")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="batch size (default 32)")]
MaxLengthOpt = Annotated[Optional[int], typer.Option(
    "--max-length", help="tokens per text; longer ones are truncated (default 128)")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="random seed (default 42)")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N")]
PrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help="auto, fp32, bf16 or fp16")]
PoolingOpt = Annotated[Optional[str], typer.Option(
    "--pooling", help=f"how the classifier sees the sequence: {'|'.join(POOLINGS)} (default auto: the "
    "checkpoint's own, e.g. mean for a sentence-transformers folder, the pooler for BERT, the last token for a "
    "decoder)")]
HeadInitOpt = Annotated[Optional[str], typer.Option(
    "--head-init", help=f"the classifier before the first step: {'|'.join(HEAD_INITS)} (probe: fitted as a linear "
    "probe on the training features first, LP-FT; random: seeded; default auto: probe for runs of up to 200 steps)")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-remote-code", help="allow a hub model's own Python code (off by default)")]
def _duration(value: str) -> float | None:
    """--max-time's parser: a bad duration is a usage error (one line, exit 2)."""
    try:
        return parse_duration(value)
    except ConfigError as e:
        raise typer.BadParameter(str(e).removeprefix("--max-time ")) from None


MaxTimeOpt = Annotated[Optional[float], typer.Option(
    "--max-time", parser=_duration, metavar="DURATION",
    help="stop each run after this much wall time (seconds, or 90m, 2h, 1d), and refuse one estimated to take "
    "longer (default: refused above 24 h; --force runs it anyway)")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="key=value for a run field, data.<field>, or a method parameter")]
ConfigOpt = Annotated[Optional[str], typer.Option(
    "--config", help="start from a JSON or TOML config (e.g. `peft-tui show ID --json`); "
    "options given on the command line and --set override it")]

# command parameter -> (config section, field) it sets
RUN_FLAGS = {
    "method": ("run", "method"), "model": ("run", "model"), "name": ("run", "name"), "epochs": ("run", "epochs"),
    "lr": ("run", "lr"), "batch_size": ("run", "batch_size"), "max_length": ("run", "max_length"),
    "seed": ("run", "seed"), "device": ("run", "device"), "precision": ("run", "precision"),
    "pooling": ("run", "pooling"), "head_init": ("run", "head_init"),
    "trust_remote_code": ("run", "trust_remote_code"), "gpus": ("run", "nproc"),
    "max_time": ("run", "max_time"),
    "data": ("data", "source"), "text_col": ("data", "text_col"), "label_col": ("data", "label_col"),
    "text_pair_col": ("data", "text_pair_col"), "val_data": ("data", "val_source"),
}


def run_config(ctx: typer.Context, sets: list[str] | None = None, **fields: Any) -> RunConfig:
    """The RunConfig a command's options describe: --config FILE (else the defaults), then the run-config
    options typed on the command line, then `fields` (what the command sets itself, e.g. each method of a
    comparison), then `sets` (--set key=value). Not checked against data and model yet: see `preflight`."""
    from peft_tui.config import config_from_file

    config_file = ctx.params.get("config_file")
    def warn(message: str) -> None:
        typer.echo(f"warning: {message}", err=True)

    flag = bool(ctx.params.get("trust_remote_code"))  # given: nothing to warn about
    cfg = config_from_file(config_file, None if flag else warn) if config_file else RunConfig()
    run_over: dict[str, Any] = {}
    data_over: dict[str, Any] = {}
    for param, (section, field) in RUN_FLAGS.items():
        if _typed(ctx, param):
            (run_over if section == "run" else data_over)[field] = ctx.params[param]
    run_over.update(fields)
    if run_over.get("method", cfg.method) != cfg.method:
        run_over["params"] = {}  # another method's parameters do not carry over
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_over), **run_over)
    from peft_tui.engine.methods import with_overrides

    return with_overrides(cfg, sets or [])


def _typed(ctx: typer.Context, param: str) -> bool:
    """Whether the user gave this option (an option left at its default does not override a config file)."""
    if param not in ctx.params:
        return False
    source = ctx.get_parameter_source(param)  # typer may vendor click: compare the source by name
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

"""Training commands: `run`, `compare`, `sweep`, `resume`, and the hidden `execute-stored` that
`run --detach` starts in the background.

Every run is queued in the store, then trained by the engine's `execute`, the path the dashboard's
runs take too. The TF-IDF baseline of `compare` is a run like any other (method "tfidf").
Data is loaded once, by `preflight`, and handed on to the summary and to training.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from peft_tui.commands.common import (
    exit_if_failed,
    handles_errors,
    open_store,
    print_data_summary,
    print_json,
    run_json,
    write_output,
)
from peft_tui.commands.options import (
    BatchOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    JsonOpt,
    LabelColOpt,
    LrOpt,
    MaxLengthOpt,
    MethodOpt,
    ModelOpt,
    NameOpt,
    PrecisionOpt,
    SeedOpt,
    SetOpt,
    StoreOpt,
    TextColOpt,
    TextPairColOpt,
    TrustOpt,
    ValDataOpt,
    run_config,
)
from peft_tui.config import DataConfig, RunConfig
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.console import ProgressSink
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.store import Store

# data already in memory, by what it was loaded from (the data config and the split seed)
Loaded = dict[tuple[DataConfig, int], "DataSplits"]

RunIdArg = Annotated[int, typer.Argument(help="run id (see `peft-tui runs`)")]


@handles_errors
def run(
    ctx: typer.Context,
    method: MethodOpt = "lora",
    model: ModelOpt = "minilm",
    data: DataOpt = "synthetic",
    sets: SetOpt = None,
    name: NameOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    max_length: MaxLengthOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    detach: Annotated[bool, typer.Option(
        "--detach", help="train in a background process that outlives this shell (SSH logout); "
        "follow it with `peft-tui launch` or `peft-tui show ID`")] = False,
) -> None:
    """Train one run and store it."""
    from peft_tui.engine.trainer import preflight

    cfg = run_config(ctx, sets)
    loaded = {data_key(cfg): preflight(cfg)}
    st = open_store(store)
    if detach:
        start_detached(st, cfg, as_json)
        return
    print_data_summary(cfg, loaded[data_key(cfg)], to_stderr=as_json)
    [run_id] = train_runs(st, [cfg], loaded, show_progress=not as_json)
    row = st.get(run_id)
    if as_json:
        print_json(run_json(st, row))
    elif row["status"] == "done":
        from peft_tui.console import print_comparison
        from peft_tui.report.table import rows_from_runs

        print_comparison(rows_from_runs([row]), title=f"run {run_id}")
        typer.echo(f"stored in {st.run_dir(run_id)}")
    exit_if_failed([row], quiet=as_json)


@handles_errors
def compare(
    ctx: typer.Context,
    methods: Annotated[str, typer.Option("--methods", help="comma-separated method names")] = "full,lora,adapters",
    model: ModelOpt = "minilm",
    data: DataOpt = "synthetic",
    sets: SetOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    max_length: MaxLengthOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="add the TF-IDF + logistic regression row")] = True,
    csv_path: Annotated[Optional[str], typer.Option("--csv", help="also write the table to this CSV file")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The same model and data through several methods, then one comparison table.

    The learning rate is each method's default (`peft-tui methods`); --lr or `--set lr=...` sets all."""
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.trainer import preflight

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
    configs = [run_config(ctx, method_sets(m, sets), method=m, name=None) for m in names]
    first = configs[0]
    loaded = {data_key(first): preflight(first)}
    for cfg in configs[1:]:
        cfg.validate()  # the same model, data and device as the first: only method and parameters differ
    print_data_summary(first, loaded[data_key(first)], to_stderr=as_json)
    if baseline and not any(get_method(m).is_baseline for m in names):
        configs.append(baseline_config(first))
    st = open_store(store)
    rows_db = [st.get(rid) for rid in train_runs(st, configs, loaded, show_progress=not as_json)]
    from peft_tui.report.table import rows_from_runs, to_csv

    rows = rows_from_runs(rows_db)
    if csv_path:
        write_output(csv_path, to_csv(rows), "--csv")
    if as_json:
        print_json({"runs": [run_json(st, r) for r in rows_db], "table": rows})
    else:
        from peft_tui.console import print_comparison

        print_comparison(rows, title=f"{first.model} on {first.data.source}")
        if csv_path:
            typer.echo(f"table written to {csv_path}")
    exit_if_failed(rows_db, quiet=as_json)


@handles_errors
def sweep(
    ctx: typer.Context,
    grid: Annotated[list[str], typer.Option("--grid", "-g", help="key=v1,v2,... (repeatable: every combination runs)")],
    method: MethodOpt = "lora",
    model: ModelOpt = "minilm",
    data: DataOpt = "synthetic",
    sets: SetOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    max_length: MaxLengthOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every combination of a grid, run one after another, then a table and the Pareto front of
    accuracy against trainable parameters.

    Example: peft-tui sweep --method lora --grid r=1,2,4,8,16 --grid lr=1e-3,2e-3"""
    from peft_tui.engine.sweep import grid_configs
    from peft_tui.engine.trainer import preflight
    from peft_tui.report.pareto import pareto_front
    from peft_tui.report.table import rows_from_runs

    base = run_config(ctx, sets)
    loaded = {data_key(base): preflight(base)}
    configs = grid_configs(base, grid)
    print_data_summary(base, loaded[data_key(base)], to_stderr=as_json)
    typer.echo(f"sweep: {len(configs)} run(s): {', '.join(c.display_name for c in configs)}", err=as_json)
    st = open_store(store)
    rows_db = [st.get(rid) for rid in train_runs(st, configs, loaded, show_progress=not as_json)]
    rows = rows_from_runs(rows_db)
    front = pareto_front(rows)
    if as_json:
        print_json({"runs": [run_json(st, r) for r in rows_db], "table": rows,
                    "pareto_front": [r["id"] for r in front]})
    else:
        from peft_tui.console import print_comparison
        from peft_tui.report.charts import accuracy_vs_params

        print_comparison(rows, title=f"sweep of {base.method} on {base.data.source}")
        chart = accuracy_vs_params(rows, title=f"{base.method} sweep: accuracy vs trainable parameters",
                                   color=sys.stdout.isatty())
        if chart:
            typer.echo(chart)
        if front:
            typer.echo("Pareto front: " + ", ".join(f"{r['name']} (run {r['id']}, {100 * r['accuracy']:.1f}%)"
                                                   for r in front))
    exit_if_failed(rows_db, quiet=as_json)


@handles_errors
def resume(
    run_id: Annotated[int, typer.Argument(
        help="an interrupted, failed, diverged or cancelled run (see `peft-tui runs`)")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue a stopped run from its last epoch-end checkpoint (same run id; the curve continues)."""
    from peft_tui.console import ProgressSink
    from peft_tui.engine.checkpoint import prepare_resume

    st = open_store(store)
    config = prepare_resume(st, run_id)
    with ProgressSink(enabled=False if as_json else None) as progress:
        execute_run(st, run_id, config, progress, resume=True)
    row = st.get(run_id)
    if as_json:
        print_json(run_json(st, row))
    elif row["status"] == "done":
        res = row["result"]
        typer.echo(f"run {run_id} done: accuracy {100 * res['accuracy']:.1f}% after {res['steps']} steps")
    exit_if_failed([row], quiet=as_json)


@handles_errors
def execute_stored(run_id: RunIdArg, store: StoreOpt = None) -> None:
    """Train a run that is already in the store as queued (used by `run --detach`)."""
    st = open_store(store)
    row = st.get(run_id)
    if row["status"] != "queued":
        raise ConfigError(f"run {run_id} is {row['status']}, not queued: nothing to do")
    execute_run(st, run_id, RunConfig.from_dict(row["config"]))
    exit_if_failed([st.get(run_id)], quiet=False)  # the reason goes to the run's log


# ---------------------------------------------------------------- helpers of these commands
def data_key(cfg: RunConfig) -> tuple[DataConfig, int]:
    """What a run's splits depend on: equal keys, equal splits."""
    return cfg.data, cfg.seed


def baseline_config(like: RunConfig) -> RunConfig:
    """The TF-IDF + logistic regression row on the same data and split seed as `like`."""
    return RunConfig(method="tfidf", model="tfidf+logreg", data=like.data, seed=like.seed, name="tfidf")


def method_sets(method: str, sets: list[str] | None) -> list[str]:
    """In a comparison, a bare --set key that is a method parameter applies only to the methods that
    have it: `--set size=4` sizes the adapters and leaves the others' data alone (data.size is the data)."""
    from peft_tui.engine.methods import REGISTRY, get_method

    own = set(get_method(method).params)
    others = {k for m in REGISTRY.values() for k in m.params} - own - set(RunConfig.__dataclass_fields__)
    return [pair for pair in sets or [] if pair.split("=", 1)[0].strip() not in others]


def train_runs(st: Store, configs: list[RunConfig], loaded: Loaded, show_progress: bool) -> list[int]:
    """Queue every config in the store, then train them one after another in this process (a failure
    does not stop the rest). A run whose data is in `loaded` is handed it instead of reading it again."""
    from peft_tui.console import ProgressSink

    ids = [st.create_run(c) for c in configs]
    with ProgressSink(enabled=None if show_progress else False) as progress:
        for run_id, cfg in zip(ids, configs):
            execute_run(st, run_id, cfg, progress, data=loaded.get(data_key(cfg)))
    return ids


def execute_run(st: Store, run_id: int, cfg: RunConfig, progress: ProgressSink | None = None, *,
                resume: bool = False, data: DataSplits | None = None) -> None:
    """The CLI's one call into the engine: train a stored run to its end (the outcome is in its row).
    Its events go to the store, to the run's events.jsonl (the dashboard's Log tab reads it) and to
    `progress`; `data`: its splits, when already loaded."""
    from peft_tui.engine.events import JsonlSink, fan_out
    from peft_tui.engine.trainer import execute

    events = JsonlSink(st.events_path(run_id))
    try:
        execute(st, run_id, cfg, fan_out(st, events, progress), resume=resume, cache_dir=st.cache_dir, data=data)
    finally:
        events.close()


def start_detached(st: Store, cfg: RunConfig, as_json: bool) -> None:
    """Store the run as queued, then train it in a new session (immune to SIGHUP) logging to run.log."""
    import subprocess

    run_id = st.create_run(cfg)
    log = st.run_dir(run_id) / "run.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "peft_tui.cli", "execute-stored", str(run_id), "--store", str(st.root)],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True, close_fds=True,
        )
    if as_json:
        print_json({"id": run_id, "status": "queued", "pid": proc.pid, "log": str(log)})
    else:
        typer.echo(f"run {run_id} training in the background (pid {proc.pid}); log: {log}")
        typer.echo(f"follow it with `peft-tui launch --store {st.root}` or `peft-tui show {run_id}`")

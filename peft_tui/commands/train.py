"""Training commands: `run`, `compare`, `sweep`, `resume`.

A command never trains in its own process: it starts its local worker processes first (engine/launch/
local.py, one per device, `--workers N`; queueing.command_pool), so that they import torch while it checks
its configs (`prepare`: the values, the model, the data loaded), estimates them and queues the runs in the
store. Queue first, describe after: the data summary is printed once the runs are queued, while a worker
claims and loads them; then the command streams their progress from the store into the progress bars and
prints the table. On a store that has seen the model, method and data before, none of this imports torch
(the model check, the token counts and the model's shape are kept in the store's cache). Ctrl-C or SIGTERM cancels every run the command queued (the one training ends `cancelled`
within a step) and exits 130 or 143. `--detach` leaves the workers training in the background and returns
at once with the run ids. The TF-IDF baseline of `compare` is a run like any other (method "tfidf").

Before queueing, each run's peak memory and time are estimated (engine/estimate.py, from the store's
cached calibration): a run that will not fit the device's free memory is refused (exit 2) unless
`--force`, and every run is queued with its estimate, graded against what it measured when the run is read.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from peft_tui.commands.common import (
    check_output_path,
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
    DetachOpt,
    DeviceOpt,
    EpochsOpt,
    ForceOpt,
    GpusOpt,
    HeadInitOpt,
    JsonOpt,
    LabelColOpt,
    LrOpt,
    MaxLengthOpt,
    MaxTimeOpt,
    MethodOpt,
    ModelOpt,
    NameOpt,
    PoolingOpt,
    PrecisionOpt,
    RayOpt,
    RunsPerGpuOpt,
    SeedOpt,
    SetOpt,
    StoreOpt,
    TextColOpt,
    TextPairColOpt,
    TrustOpt,
    ValDataOpt,
    WorkersOpt,
    run_config,
)
from peft_tui.commands.queueing import command_pool, fit_check, method_sets, start_detached, train_runs
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError
from peft_tui.safe import safe_text

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.store import Store


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
    pooling: PoolingOpt = None,
    head_init: HeadInitOpt = None,
    max_time: MaxTimeOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    runs_per_gpu: RunsPerGpuOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
    gpus: GpusOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train one run and store it."""
    from peft_tui.engine.submit import prepare

    cfg = run_config(ctx, sets)
    with command_pool(store, [cfg], workers, ray, detach, runs_per_gpu) as launch:  # its workers import while we prepare
        splits = prepare([cfg], cache_dir=cache_of(store))
        st = open_store(store, writable=True)
        planned = fit_check(st, [cfg], splits, force, ray)
        if detach:
            start_detached(st, planned, launch, as_json)
            return
        [run_id] = train_runs(st, planned, launch, show_progress=not as_json,
                              describe=summary_of(cfg, splits, st, as_json))
    row = st.get(run_id)
    if as_json:
        print_json(run_json(st, row))
    elif row["status"] == "done":
        from peft_tui.console import print_comparison
        from peft_tui.engine.estimate import grade_run
        from peft_tui.report.table import rows_from_runs

        print_comparison(rows_from_runs([row], grade_run), title=f"run {run_id}")
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
    pooling: PoolingOpt = None,
    head_init: HeadInitOpt = None,
    max_time: MaxTimeOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="add the TF-IDF + logistic regression row")] = True,
    csv_path: Annotated[Optional[str], typer.Option("--csv", help="also write the table to this CSV file")] = None,
    seeds: Annotated[int, typer.Option(
        "--seeds", help="run each method over this many seeds (seed, seed+1, ...) and show mean ± std")] = 1,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    runs_per_gpu: RunsPerGpuOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
    gpus: GpusOpt = None,
    force: ForceOpt = False,
) -> None:
    """The same model and data through several methods, then one comparison table.

    The learning rate is each method's default (`peft-tui methods`); --lr or `--set lr=...` sets all.
    With --seeds N, each method and the baseline run N times, the run seed going seed, seed+1, ...:
    it sets the initialisation, shuffling and dropout, and for a data file also the split (the synthetic
    set is fixed). A second table then shows one row per method: mean ± sample std over the seeds."""
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.submit import prepare

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: pass 1 or more seeds, e.g. --seeds 3")
    configs = [run_config(ctx, method_sets(m, sets), method=m, name=None) for m in names]
    first = configs[0]
    if baseline and not any(get_method(m).is_baseline for m in names):
        configs.append(baseline_config(first))
    if seeds > 1:
        configs = [dataclasses.replace(cfg, seed=cfg.seed + i) for cfg in configs for i in range(seeds)]
    if csv_path:
        check_output_path(csv_path, "--csv")
    with command_pool(store, configs, workers, ray, detach, runs_per_gpu) as launch:  # its workers import while we prepare
        splits = prepare(configs, cache_dir=cache_of(store))  # validates every config once (the largest seed included)
        st = open_store(store, writable=True)
        planned = fit_check(st, configs, splits, force, ray)
        if detach:
            start_detached(st, planned, launch, as_json)
            return
        rows_db = [st.get(rid) for rid in train_runs(st, planned, launch, show_progress=not as_json,
                                                     describe=summary_of(first, splits, st, as_json))]
    from peft_tui.engine.estimate import grade_run
    from peft_tui.report.recommend import recommend
    from peft_tui.report.seeds import aggregate
    from peft_tui.report.table import SEED_COLUMNS, rows_from_runs, to_csv, to_markdown

    rows = rows_from_runs(rows_db, grade_run)
    agg = aggregate(rows) if seeds > 1 else None
    if csv_path:
        write_output(csv_path, to_csv(rows, agg), "--csv")
    if as_json:
        doc = {"runs": [run_json(st, r) for r in rows_db], "table": rows}
        if agg is not None:
            doc["aggregated"] = agg
            doc["recommendations"] = [r.text for r in recommend(agg)]
        print_json(doc)
    else:
        from peft_tui.console import print_comparison
        from peft_tui.safe import safe_lines

        print_comparison(rows, title=f"{first.model} on {first.data.source}")
        if agg is not None:
            typer.echo(f"\nmean ± sample std over {seeds} seeds:\n" + safe_lines(to_markdown(agg, SEED_COLUMNS)))
            typer.echo(safe_lines("\n".join(f"{r.title}: {r.text}" for r in recommend(agg))))
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
    pooling: PoolingOpt = None,
    head_init: HeadInitOpt = None,
    max_time: MaxTimeOpt = None,
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    runs_per_gpu: RunsPerGpuOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
    gpus: GpusOpt = None,
    force: ForceOpt = False,
) -> None:
    """Every combination of a grid, run one after another, then a table and the Pareto front of
    accuracy against trainable parameters.

    Example: peft-tui sweep --method lora --grid r=1,2,4,8,16 --grid lr=1e-3,2e-3"""
    from peft_tui.engine.estimate import grade_run
    from peft_tui.engine.methods import validate
    from peft_tui.engine.submit import prepare
    from peft_tui.engine.sweep import grid_configs
    from peft_tui.report.pareto import pareto_front
    from peft_tui.report.table import rows_from_runs

    base = run_config(ctx, sets)
    validate(base)
    configs = grid_configs(base, grid)
    with command_pool(store, configs, workers, ray, detach, runs_per_gpu) as launch:  # its workers import while we prepare
        splits = prepare(configs, cache_dir=cache_of(store))
        st = open_store(store, writable=True)
        planned = fit_check(st, configs, splits, force, ray)
        if detach:
            start_detached(st, planned, launch, as_json)
            return
        describe = summary_of(base, splits, st, as_json,
                              f"sweep: {len(configs)} run(s): {', '.join(c.display_name for c in configs)}")
        rows_db = [st.get(rid) for rid in train_runs(st, planned, launch, show_progress=not as_json,
                                                     describe=describe)]
    rows = rows_from_runs(rows_db, grade_run)
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
    workers: WorkersOpt = None,
    runs_per_gpu: RunsPerGpuOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Continue a stopped run from its last epoch-end checkpoint (same run id; the curve continues).
    Of two `resume` commands on one run, one trains it and the other is refused (exit 2)."""
    from peft_tui.engine.submit import check

    st = open_store(store, writable=True)
    stored = RunConfig.from_stored(st.get(run_id)["config"], trust_remote_code, f"run {run_id}")
    with command_pool(store, [stored], workers, ray, detach, runs_per_gpu) as launch:
        planned = check(st, [stored], estimate=False, devices=[] if ray else None)  # validated, servable here
        if detach:
            start_detached(st, planned, launch, as_json, resume_id=run_id)
            return
        train_runs(st, planned, launch, show_progress=not as_json, resume_id=run_id)
    row = st.get(run_id)
    if as_json:
        print_json(run_json(st, row))
    elif row["status"] == "done":
        res = row["result"]
        typer.echo(f"run {run_id} done: accuracy {100 * res['accuracy']:.1f}% after {res['steps']} steps")
    exit_if_failed([row], quiet=as_json)


# ---------------------------------------------------------------- helpers of these commands
def cache_of(store: str | None) -> Path:
    """The store's cache folder (read before the store is opened: nothing is created here)."""
    from peft_tui.config import store_path

    return store_path(store) / "cache"


def summary_of(cfg: RunConfig, splits: DataSplits, st: Store, as_json: bool,
               more: str | None = None) -> Callable[[], None]:
    """What a command prints once its runs are queued, while its workers claim and load them: the data
    summary (token counts from the store's cache: engine/estimate/lengths.py), then `more`. The summary
    only describes: a failure to make it is one warning line, and the runs go on."""

    def describe() -> None:
        try:
            print_data_summary(cfg, splits, to_stderr=as_json, cache_dir=None if st.readonly else st.cache_dir)
        except Exception as e:  # noqa: BLE001 - the runs are queued and training: say it and go on
            from peft_tui.errors import first_line

            typer.echo(safe_text(f"warning: no data summary ({first_line(e, 200)})"), err=True)
        if more:
            typer.echo(more, err=as_json)

    return describe


def baseline_config(like: RunConfig) -> RunConfig:
    """The TF-IDF + logistic regression row on the same data and split seed as `like`."""
    return RunConfig(method="tfidf", model="tfidf+logreg", data=like.data, seed=like.seed, name="tfidf")

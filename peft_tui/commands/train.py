"""Training commands: `run`, `compare`, `sweep`, `resume`.

A command never trains in its own process: it checks its configs (`preflight`, which also loads the data
for the summary), queues the runs in the store, starts local worker processes (engine/launch/local.py, one
per device, `--workers N`) and streams their progress from the store into the progress bars, then prints
the table. Ctrl-C or SIGTERM cancels every run the command queued (the one training ends `cancelled`
within a step) and exits 130 or 143. `--detach` leaves the workers training in the background and returns
at once with the run ids. The TF-IDF baseline of `compare` is a run like any other (method "tfidf").

Before queueing, each run's peak memory and time are estimated (engine/estimate.py, from the store's
cached calibration): a run that will not fit the device's free memory is refused (exit 2) unless
`--force`, and every run is queued with its estimate, which the store grades when the run finishes.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
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
    MethodOpt,
    ModelOpt,
    NameOpt,
    PoolingOpt,
    PrecisionOpt,
    RayOpt,
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
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.launch.local import LocalPool
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
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
    gpus: GpusOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train one run and store it."""
    from peft_tui.engine.trainer import preflight

    cfg = run_config(ctx, sets)
    splits = preflight(cfg)
    st = open_store(store, writable=True)
    if detach and ray:
        raise ConfigError("--detach with --ray: start the Ray driver in the background instead: "
                          "nohup python -m peft_tui.engine.launch.ray --store STORE &")
    estimates = fit_check(st, [cfg], splits, force)
    if detach:
        start_detached(st, [cfg], workers, as_json, estimates=estimates)
        return
    print_data_summary(cfg, splits, to_stderr=as_json)
    [run_id] = train_runs(st, [cfg], workers, show_progress=not as_json, ray=ray, estimates=estimates)
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
    pooling: PoolingOpt = None,
    head_init: HeadInitOpt = None,
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
    from peft_tui.engine.trainer import preflight

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: pass 1 or more seeds, e.g. --seeds 3")
    configs = [run_config(ctx, method_sets(m, sets), method=m, name=None) for m in names]
    first = configs[0]
    splits = preflight(first)
    for cfg in configs[1:]:
        cfg.validate()  # the same model, data and device as the first: only method and parameters differ
    if baseline and not any(get_method(m).is_baseline for m in names):
        configs.append(baseline_config(first))
    if seeds > 1:
        configs = [dataclasses.replace(cfg, seed=cfg.seed + i) for cfg in configs for i in range(seeds)]
        configs[-1].validate()  # the largest seed still fits
    if detach and ray:
        raise ConfigError("--detach with --ray: start the Ray driver in the background instead: "
                          "nohup python -m peft_tui.engine.launch.ray --store STORE &")
    if csv_path:
        check_output_path(csv_path, "--csv")
    st = open_store(store, writable=True)
    estimates = fit_check(st, configs, splits, force)
    if detach:
        start_detached(st, configs, workers, as_json, estimates=estimates)
        return
    print_data_summary(first, splits, to_stderr=as_json)
    rows_db = [st.get(rid) for rid in train_runs(st, configs, workers, show_progress=not as_json, ray=ray,
                                                 estimates=estimates)]
    from peft_tui.report.recommend import recommend
    from peft_tui.report.seeds import aggregate
    from peft_tui.report.table import SEED_COLUMNS, rows_from_runs, to_csv, to_markdown

    rows = rows_from_runs(rows_db)
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
    text_col: TextColOpt = "text",
    label_col: LabelColOpt = "label",
    text_pair_col: TextPairColOpt = None,
    val_data: ValDataOpt = None,
    trust_remote_code: TrustOpt = False,
    config_file: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
    gpus: GpusOpt = None,
    force: ForceOpt = False,
) -> None:
    """Every combination of a grid, run one after another, then a table and the Pareto front of
    accuracy against trainable parameters.

    Example: peft-tui sweep --method lora --grid r=1,2,4,8,16 --grid lr=1e-3,2e-3"""
    from peft_tui.engine.sweep import grid_configs
    from peft_tui.engine.trainer import preflight
    from peft_tui.report.pareto import pareto_front
    from peft_tui.report.table import rows_from_runs

    base = run_config(ctx, sets)
    splits = preflight(base)
    configs = grid_configs(base, grid)
    if detach and ray:
        raise ConfigError("--detach with --ray: start the Ray driver in the background instead: "
                          "nohup python -m peft_tui.engine.launch.ray --store STORE &")
    st = open_store(store, writable=True)
    estimates = fit_check(st, configs, splits, force)
    if detach:
        start_detached(st, configs, workers, as_json, estimates=estimates)
        return
    print_data_summary(base, splits, to_stderr=as_json)
    typer.echo(f"sweep: {len(configs)} run(s): {', '.join(c.display_name for c in configs)}", err=as_json)
    rows_db = [st.get(rid) for rid in train_runs(st, configs, workers, show_progress=not as_json, ray=ray,
                                                 estimates=estimates)]
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
    workers: WorkersOpt = None,
    detach: DetachOpt = False,
    ray: RayOpt = None,
) -> None:
    """Continue a stopped run from its last epoch-end checkpoint (same run id; the curve continues).
    Of two `resume` commands on one run, one trains it and the other is refused (exit 2)."""
    st = open_store(store, writable=True)
    config = [RunConfig.from_dict(st.get(run_id)["config"])]
    if detach and ray:
        raise ConfigError("--detach with --ray: start the Ray driver in the background instead: "
                          "nohup python -m peft_tui.engine.launch.ray --store STORE &")
    if detach:
        start_detached(st, config, workers, as_json, resume_id=run_id)
        return
    train_runs(st, config, workers, show_progress=not as_json, resume_id=run_id, ray=ray)
    row = st.get(run_id)
    if as_json:
        print_json(run_json(st, row))
    elif row["status"] == "done":
        res = row["result"]
        typer.echo(f"run {run_id} done: accuracy {100 * res['accuracy']:.1f}% after {res['steps']} steps")
    exit_if_failed([row], quiet=as_json)


# ---------------------------------------------------------------- helpers of these commands
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


def fit_check(st: Store, configs: list[RunConfig], data: DataSplits, force: bool) -> list[dict | None]:
    """Each config's estimate (engine/estimate.py; None for a baseline), from the store's cached calibration
    (nominal figures before `peft-tui plan` has measured the machine). Bad input, one line, for the first
    run whose estimated peak memory exceeds the device's free memory, unless `force`. A model the
    estimator cannot read is queued without estimates, with a warning."""
    from peft_tui.engine.estimate import plan, refusal

    try:
        rows = plan(configs, st.root / "calibration.json", calibrate=False, data=data)
    except Exception as e:  # noqa: BLE001 - a model the estimator cannot read still trains: say so, go on
        from peft_tui.console import warn

        warn(f"no estimate for these runs ({first_line(e, 200)}): queued without the fit check")
        return [None] * len(configs)
    if not force:
        for cfg, row in zip(configs, rows):
            if row is not None and not row["fits"]:
                raise ConfigError(refusal(cfg, row))
    return [row["estimate"] if row else None for row in rows]


def worker_pool(st: Store, configs: list[RunConfig], workers: int | None, detach: bool = False) -> LocalPool:
    """The local workers for these runs (not started). Bad input when no worker's device can train one."""
    from peft_tui.engine.launch.local import LocalPool
    from peft_tui.engine.store import serves

    pool = LocalPool(st.root, workers=workers, detach=detach)
    for cfg in configs:
        if not any(serves(cfg.device, d) for d in pool.devices):
            raise ConfigError(f"device {cfg.device!r} is not on this machine (workers serve "
                              f"{', '.join(pool.devices)}): pass --device auto")
    return pool


def queue(st: Store, configs: list[RunConfig], resume_id: int | None, ids: list[int],
          estimates: list[dict | None] | None = None) -> None:
    """Queue the configs in the store, each with its estimate (with `resume_id`: queue that stopped run
    again instead, its config being `configs`), appending each id to `ids` as it is queued (an interrupt
    in between knows what to cancel)."""
    if resume_id is not None:
        st.request_resume(resume_id)  # one line when it cannot, or when another resume came first
        ids.append(resume_id)
        return
    for cfg, est in zip(configs, estimates or [None] * len(configs)):
        ids.append(st.create_run(cfg, estimate=est))


def train_runs(st: Store, configs: list[RunConfig], workers: int | None, show_progress: bool,
               resume_id: int | None = None, ray: str | None = None,
               estimates: list[dict | None] | None = None) -> list[int]:
    """Queue the runs, have local worker processes train them, and stream their progress until every
    one has ended (a failure does not stop the rest). Returns the run ids. On Ctrl-C or SIGTERM: every
    run queued here is cancelled, the workers leave, and the command exits 130 or 143 with one line."""
    from peft_tui.console import ProgressSink
    from peft_tui.engine.launch.client import interrupts, watch

    ids: list[int] = []
    if ray:
        from peft_tui.engine.launch.ray import RayPool

        pool = RayPool(st, ray, ids)
    else:
        pool = worker_pool(st, configs, workers)
    with interrupts() as stopped:
        try:
            queue(st, configs, resume_id, ids, estimates)
            pool.start()
            with ProgressSink(enabled=None if show_progress else False) as progress:
                signum = watch(st, ids, progress)
        except KeyboardInterrupt:  # before the watching began
            for run_id in ids:
                st.request_cancel(run_id)
            signum = stopped.signum or signal.SIGINT
        finally:
            pool.release()
    if signum:
        cancelled = ", ".join(str(i) for i in ids if st.get(i)["status"] == "cancelled") or "none"
        sys.stderr.write(f"stopped by {signal.Signals(signum).name}: runs cancelled: {cancelled}\n")
        raise typer.Exit(128 + signum)
    return ids


def start_detached(st: Store, configs: list[RunConfig], workers: int | None, as_json: bool,
                   resume_id: int | None = None, estimates: list[dict | None] | None = None) -> None:
    """Queue the runs and leave them to workers in their own session (they outlive this shell and leave
    when the queue is empty); print the run ids."""
    pool = worker_pool(st, configs, workers, detach=True)
    ids: list[int] = []
    queue(st, configs, resume_id, ids, estimates)
    pool.start()
    pool.stop(cancel=False)
    pids = sorted(pool.pids())
    if as_json:
        print_json({"ids": ids, "status": "queued", "workers": pids, "log": str(pool.log_path)})
    else:
        typer.echo(f"runs {', '.join(map(str, ids))} queued; training in the background "
                   f"(worker pids {', '.join(map(str, pids)) or 'already running'}; log: {pool.log_path})")
        typer.echo(f"follow them with `peft-tui launch --store {st.root}` or `peft-tui show ID`")

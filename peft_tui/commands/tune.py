"""`peft-tui tune`: search each method's hyperparameters on an equal budget (Optuna TPE, with pruning),
then run each method's best configuration and its defaults over several seeds and compare them.

The study lives in the store (engine/tune); its trials are ordinary queued runs tagged with the
study, trained by the same workers as any run (--workers, --ray). Ctrl-C cancels the study's runs and
exits 130; `peft-tui tune --resume NAME` continues without repeating a finished trial. `--detach` creates
the study, then runs that same `--resume` in a process of its own session (it outlives the shell) and
returns at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from peft_tui.commands.common import handles_errors, open_store, print_json
from peft_tui.commands.options import (
    BatchOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    ForceOpt,
    HeadInitOpt,
    JsonOpt,
    LabelColOpt,
    MaxLengthOpt,
    MaxTimeOpt,
    ModelOpt,
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
from peft_tui.errors import ConfigError
from peft_tui.safe import safe_lines, safe_text

DEFAULT_TRIALS = 8
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`2h`, `90m`, `1h30m`, `45s` or a number of seconds -> seconds. ConfigError (one line) otherwise."""
    raw = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", raw)
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    elif parts and re.fullmatch(r"(\s*\d+(\.\d+)?\s*[smhd])+", raw):
        seconds = sum(float(n) * UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f"--budget {text[:30]!r} is not a duration: write e.g. 2h, 90m, 1h30m or 600 (seconds)")
    if seconds <= 0:
        raise ConfigError(f"--budget {text[:30]!r} is no time at all: give a positive duration, e.g. 30m")
    return seconds


@handles_errors
def tune(
    ctx: typer.Context,
    methods: Annotated[str, typer.Option("--methods", help="comma-separated methods to tune")] = "full,lora,adapters",
    trials: Annotated[Optional[int], typer.Option(
        "--trials", help=f"trials per method (default {DEFAULT_TRIALS} unless --budget)")] = None,
    budget: Annotated[Optional[str], typer.Option(
        "--budget", help="search time instead of --trials, split equally between the methods (2h, 90m, 600)")] = None,
    space: Annotated[Optional[list[str]], typer.Option(
        "--space", help="override a search range: key=lo:hi or key=a,b,c (repeatable; `peft-tui methods` "
        "shows each method's space)")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="seeds of the final runs of each method's best config "
                                       "and of its defaults")] = 3,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="STUDY", help="continue a stopped study (its settings are the stored ones)")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="name of a new study (default tune-N)")] = None,
    pruner: Annotated[str, typer.Option(
        "--pruner", help="ahead (a trial goes on only while it is not behind the defaults trial at the same "
        "step, and among the best third at a quarter and three quarters of its run), halving (the same without "
        "the defaults bar), behind (stop a trial beyond 2 standard errors behind the best), median or none")] = "ahead",
    model: ModelOpt = "minilm",
    data: DataOpt = "synthetic",
    sets: SetOpt = None,
    epochs: EpochsOpt = None,
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
    ray: RayOpt = None,
    force: ForceOpt = False,
    detach: Annotated[bool, typer.Option(
        "--detach", help="create the study, run it in the background (it outlives this shell) and return at once; "
        "its log and final JSON go to the store's logs folder")] = False,
) -> None:
    """Tune each method on an equal budget (Optuna TPE, pruning on validation accuracy), then compare each
    method's best configuration with its defaults over --seeds seeds.

    Selection reads the validation split only; the test split is read by the final runs alone.
    Example: peft-tui tune --methods full,lora,adapters --trials 8 --data reviews.csv"""
    from peft_tui.commands.queueing import method_sets
    from peft_tui.engine import tune as studies
    from peft_tui.engine.launch.local import keep_warm_s
    from peft_tui.engine.methods import validate
    from peft_tui.engine.submit import make_pool, prepare

    warm_s = keep_warm_s()  # a bad PEFT_TUI_KEEP_WARM: one line, before anything is created
    st = open_store(store, writable=True)
    if resume:
        spec = studies.load_study(st, resume)
        bases = [spec.base(m) for m in spec.methods]
        splits = prepare(bases)
    else:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if not names:
            raise ConfigError("--methods is empty: pass e.g. --methods full,lora,adapters")
        budget_s = parse_duration(budget) if budget is not None else None
        if trials is not None and budget_s is not None:
            raise ConfigError("give the budget as --trials N (per method) or --budget TIME, not both")
        if trials is None and budget_s is None:
            trials = DEFAULT_TRIALS
        bases = [run_config(ctx, method_sets(m, sets), method=m, name=None) for m in names]
        for b in bases:
            validate(b)
        from peft_tui.engine.methods.space import parse_overrides

        parse_overrides(space or [], bases)  # a bad range is refused before any data loads
        splits = prepare(bases)
        parallel = workers or (2 if ray else _local_devices(runs_per_gpu))
        spec = studies.new_study(st, bases, trials=trials, budget_s=budget_s, seeds=seeds, pruner=pruner,
                                 space=space or [], parallel=parallel, train_rows=len(splits.train.labels),
                                 val_rows=len(splits.val.labels),
                                 name=study, force=force)
    budget_text = str(spec.trials) if spec.trials is not None else f"{spec.budget_s:.0f} s of"
    say = (lambda line: typer.echo(safe_text(line), err=True)) if as_json else (lambda line: typer.echo(safe_text(line)))
    say(f"study {spec.name}: {', '.join(spec.methods)}; {budget_text} trials per method, pruner {spec.pruner}, "
        f"{spec.parallel} at a time; final: {spec.seeds} seed(s). Stop with Ctrl-C, continue with "
        f"`peft-tui tune --resume {spec.name}`")

    def progress(event: dict) -> None:
        if event["kind"] == "final":
            say(f"final runs queued: {len(event['run_ids'])} (best config and defaults of each method)")
            return
        if event["kind"] != "trial":
            return
        from peft_tui.report.tune import progress_line

        doc = studies.summary(st, spec)
        m = doc["methods"][event["method"]]
        what = event["status"]
        if event.get("val_accuracy") is not None:
            what += f", val {100 * event['val_accuracy']:.1f}%"
        if event["status"] == "pruned":
            what += f" at step {event.get('step')}"
        if event.get("error"):
            what += f": {event['error']}"
        say(f"  trial {event['trial']} ({event['method']}) {what} | "
            + progress_line(event["method"], m, str(spec.trials) if spec.trials is not None else "-"))

    if detach:
        run_in_background(st.root, spec.name, workers, ray, any(b.trust_remote_code for b in bases), as_json,
                          runs_per_gpu)
        return
    pool = make_pool(st, ray=ray, workers=workers, trust_remote_code=any(b.trust_remote_code for b in bases),
                     runs_per_gpu=runs_per_gpu)
    tuner = studies.Tuner(st, spec, pool, data=splits, on_progress=progress)
    from peft_tui.engine.launch.client import interrupts

    signum = 0
    ended = False  # the study ran to its end: local workers may stay warm for the next command (as `run` does)
    with interrupts() as stopped:
        try:
            pool.start()
            doc = tuner.run()
            ended = True
        except KeyboardInterrupt:
            signum = stopped.signum or signal.SIGINT
            try:
                cancelled = tuner.interrupt()
            except KeyboardInterrupt:
                cancelled = []
        finally:
            linger = getattr(pool, "linger", None)  # local workers only (LocalPool), not Ray's
            if ended and linger is not None:
                linger(warm_s)  # 0 (or --trust-remote-code): release
            else:
                pool.release()
    if signum:
        sys.stderr.write(f"stopped by {signal.Signals(signum).name}: study {spec.name} paused, runs cancelled: "
                         f"{', '.join(map(str, cancelled)) or 'none'}; continue with "
                         f"`peft-tui tune --resume {spec.name}`\n")
        raise typer.Exit(128 + signum)
    from peft_tui.report.tune import to_text, verdict

    if as_json:
        v = verdict(doc)
        print_json({**doc, "verdict": {k: val for k, val in v.items() if k != "rows"}, "table": v["rows"]})
    else:
        typer.echo(safe_lines(to_text(doc, color=sys.stdout.isatty())))


def _local_devices(runs_per_gpu: int | str | None = None) -> int:
    """Runs this machine's workers train at once: one per device, or with --runs-per-gpu N (auto: 8) per GPU."""
    from peft_tui.engine.launch.local import default_devices
    from peft_tui.engine.memory import AUTO_RUNS_PER_GPU

    per_gpu = AUTO_RUNS_PER_GPU if runs_per_gpu == "auto" else int(runs_per_gpu or 1)
    return sum(per_gpu if d.startswith("cuda") else 1 for d in default_devices())


def run_in_background(root: Path, study: str, workers: int | None, ray: str | None, trust_remote_code: bool,
                      as_json: bool, runs_per_gpu: int | str | None = None) -> None:
    """`peft-tui tune --resume STUDY --json` in a new session (no terminal hang-up reaches it), its stderr
    (progress, errors) in logs/tune-STUDY.log and its final JSON in logs/tune-STUDY.json. The study is
    already in the store, so a background tune that is stopped resumes like any other."""
    from peft_tui.engine.launch.local import KEEP_WARM_ENV

    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log, result = logs / f"tune-{study}.log", logs / f"tune-{study}.json"
    argv = [sys.executable, "-m", "peft_tui.cli", "tune", "--resume", study, "--store", str(root), "--json",
            *(["--workers", str(workers)] if workers else []), *(["--ray", ray] if ray else []),
            *(["--trust-remote-code"] if trust_remote_code else []),
            *(["--runs-per-gpu", str(runs_per_gpu)] if runs_per_gpu is not None else [])]
    with open(log, "ab") as err, open(result, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", KEEP_WARM_ENV: "0"})  # as run --detach
    if as_json:
        print_json({"study": study, "status": "started", "pid": proc.pid, "log": str(log), "result": str(result)})
    else:
        typer.echo(safe_text(f"study {study} runs in the background (pid {proc.pid}; log: {log}; its final JSON: "
                             f"{result})"))
        typer.echo(safe_text(f"follow it with `peft-tui launch --store {root}` or `peft-tui runs --study {study}`; "
                             f"stopped, it continues with `peft-tui tune --resume {study}`"))

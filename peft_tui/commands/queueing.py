"""How the training commands (train.py, tune.py) queue their runs and see them through: the one submit path
(engine/submit.py) with its warnings, the pool that trains them (local workers or Ray), progress from the
store, and Ctrl-C / SIGTERM cancelling every run the command queued (exit 130 or 143). `--detach` leaves
the workers training in the background and returns at once with the run ids."""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

import typer

from peft_tui.commands.common import print_json
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.store import Store
    from peft_tui.engine.submit import Planned


def no_detached_ray(detach: bool, ray: str | None) -> None:
    if detach and ray:
        raise ConfigError("--detach with --ray: start the Ray driver in the background instead: "
                          "nohup python -m peft_tui.engine.launch.ray --store STORE &")


def fit_check(st: Store, configs: list[RunConfig], data: DataSplits, force: bool, ray: str | None) -> list[Planned]:
    """engine/submit.check, saying the warnings of runs let through without an estimate or by --force."""
    from peft_tui.console import warn
    from peft_tui.engine.submit import check

    planned = check(st, configs, force=force, data=data, devices=[] if ray else None)
    for p in planned:
        if p.warning:
            warn(p.warning)
    return planned


def queue(st: Store, planned: list[Planned], resume_id: int | None, ids: list[int]) -> None:
    """Queue the checked runs (with `resume_id`: queue that stopped run again instead), appending each id to
    `ids` as it is queued (an interrupt in between knows what to cancel)."""
    from peft_tui.engine.submit import create

    if resume_id is not None:
        st.request_resume(resume_id)  # one line when it cannot, or when another resume came first
        ids.append(resume_id)
        return
    create(st, planned, ids)


def train_runs(st: Store, planned: list[Planned], workers: int | None, show_progress: bool,
               resume_id: int | None = None, ray: str | None = None) -> list[int]:
    """Queue the runs, have local worker processes train them, and stream their progress until every
    one has ended (a failure does not stop the rest). Returns the run ids. On Ctrl-C or SIGTERM: every
    run queued here is cancelled, the workers leave, and the command exits 130 or 143 with one line."""
    from peft_tui.console import ProgressSink
    from peft_tui.engine.launch.client import interrupts, watch
    from peft_tui.engine.submit import make_pool

    ids: list[int] = []
    pool = make_pool(st, ray=ray, workers=workers, run_ids=ids)
    with interrupts() as stopped:
        try:
            queue(st, planned, resume_id, ids)
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


def start_detached(st: Store, planned: list[Planned], workers: int | None, as_json: bool,
                   resume_id: int | None = None) -> None:
    """Queue the runs and leave them to workers in their own session (they outlive this shell and leave
    when the queue is empty); print the run ids."""
    from peft_tui.engine.submit import make_pool

    pool = make_pool(st, workers=workers, detach=True)
    ids: list[int] = []
    queue(st, planned, resume_id, ids)
    pool.start()
    pool.stop(cancel=False)
    pids = sorted(pool.pids())
    if as_json:
        print_json({"ids": ids, "status": "queued", "workers": pids, "log": str(pool.log_path)})
    else:
        typer.echo(f"runs {', '.join(map(str, ids))} queued; training in the background "
                   f"(worker pids {', '.join(map(str, pids)) or 'already running'}; log: {pool.log_path})")
        typer.echo(f"follow them with `peft-tui launch --store {st.root}` or `peft-tui show ID`")


def method_sets(method: str, sets: list[str] | None) -> list[str]:
    """In a comparison, a bare --set key that is a method parameter applies only to the methods that
    have it: `--set size=4` sizes the adapters and leaves the others' data alone (data.size is the data)."""
    from peft_tui.engine.methods import REGISTRY, get_method

    own = set(get_method(method).params)
    others = {k for m in REGISTRY.values() for k in m.params} - own - set(RunConfig.__dataclass_fields__)
    return [pair for pair in sets or [] if pair.split("=", 1)[0].strip() not in others]

"""How the training commands (train.py, tune.py) queue their runs and see them through: the one submit path
(engine/submit.py) with its warnings, the pool that trains them (local workers or Ray), progress from the
store, and Ctrl-C / SIGTERM cancelling every run the command queued (exit 130 or 143). `--detach` leaves
the workers training in the background and returns at once with the run ids.

A command makes its pool as soon as its configs are parsed (`command_pool`), and local worker processes
start at once (LocalPool.prewarm): their imports of torch, transformers and peft (seconds) overlap the
command's own data load, summary and estimate instead of following them. Whatever stops the command
before its runs are queued (a refused config or estimate, bad data, Ctrl-C) releases those workers at
once; a worker still importing leaves on the spot.

Workers kept warm (issue 19): when a command's runs have all ended (not on Ctrl-C, SIGTERM or an error),
its local workers stay idle up to PEFT_TUI_KEEP_WARM seconds (default 60; 0: they leave with the
command) for the next command on the same store, whose pool takes such a worker over instead of starting
one that pays the imports again (engine/launch/local.py, LocalPool.linger)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from peft_tui.commands.common import print_json
from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.launch.local import LocalPool
    from peft_tui.engine.launch.ray import RayPool
    from peft_tui.engine.store import Store
    from peft_tui.engine.submit import Planned


@dataclass
class CommandPool:
    """The pool of one command's runs, made before the command checks its inputs (`command_pool`): local
    worker processes are started at once (`prewarmed`); a Ray pool, or the fast tests' in-process one, is
    made when the runs are handed over (`take`). `ids`: the runs the command queued, filled in as each is
    queued (a Ray pool serves those alone). `handed`: train_runs or start_detached owns the pool now."""

    workers: int | None
    ray: str | None
    detach: bool
    trust_remote_code: bool
    runs_per_gpu: int | str | None = None  # --runs-per-gpu: several runs on one GPU (LocalPool)
    keep_warm_s: float = 0.0  # PEFT_TUI_KEEP_WARM: how long its local workers stay after its runs ended
    prewarmed: LocalPool | None = None
    pool: LocalPool | RayPool | None = None
    ids: list[int] = field(default_factory=list)
    handed: bool = False

    def take(self, st: Store) -> LocalPool | RayPool:
        """The pool that trains the runs queued in `st`: the prewarmed one, else one made now."""
        from peft_tui.engine.submit import make_pool

        if self.pool is None:
            self.pool = self.prewarmed or make_pool(st, ray=self.ray, workers=self.workers, detach=self.detach,
                                                    run_ids=self.ids, trust_remote_code=self.trust_remote_code,
                                                    runs_per_gpu=self.runs_per_gpu)
        return self.pool


@contextlib.contextmanager
def command_pool(store: str | None, configs: list[RunConfig], workers: int | None, ray: str | None = None,
                 detach: bool = False, runs_per_gpu: int | str | None = None) -> Iterator[CommandPool]:
    """The pool for a command's runs, made right after its configs are parsed and checked for their own
    values: local worker processes (not Ray, nor the fast tests' in-process pool) start now, before the
    store is opened (`store`: the --store value), so that they import while the command loads its data
    and estimates; they create nothing until the command has created the store (LocalPool.prewarm). The
    command does that work inside the `with`, then hands the pool to `train_runs` or `start_detached`.
    An error or interrupt before that releases the workers at once and goes on (the command's one line,
    its exit code); a refused command leaves no store behind, as before."""
    from peft_tui.config import store_path
    from peft_tui.engine.launch.local import keep_warm_s
    from peft_tui.engine.methods import validate
    from peft_tui.engine.submit import INPROCESS_ENV

    for cfg in configs:  # a config refused for its own values starts no worker
        validate(cfg)
    no_detached_ray(detach, ray)
    if ray and runs_per_gpu is not None:
        raise ConfigError("--runs-per-gpu packs this machine's GPUs: drop it with --ray (Ray places each run itself)")
    launch = CommandPool(workers, ray, detach, any(c.trust_remote_code for c in configs), runs_per_gpu,
                         keep_warm_s=keep_warm_s())  # a bad PEFT_TUI_KEEP_WARM: one line, before any worker starts
    try:
        # the local pool engine/submit.make_pool would make (under its in-process test switch: none)
        if not ray and (detach or os.environ.get(INPROCESS_ENV) != "1"):
            from peft_tui.engine.launch.local import LocalPool

            launch.prewarmed = LocalPool(store_path(store), workers=workers, detach=detach,
                                         trust_remote_code=launch.trust_remote_code, runs_per_gpu=runs_per_gpu)
            if runs_per_gpu is None:
                launch.prewarmed.prewarm()
            else:  # a GPU has many slots: no more importing workers than the command has runs
                launch.prewarmed.prewarm(runs=len(configs))
        yield launch
    except BaseException:
        if not launch.handed and (launch.pool or launch.prewarmed) is not None:
            (launch.pool or launch.prewarmed).release()  # a worker still importing exits at once
        raise


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

    if resume_id is not None:  # one line when it cannot, or when another resume came first
        st.request_resume(resume_id, trusted(planned))
        ids.append(resume_id)
        return
    create(st, planned, ids)


def train_runs(st: Store, planned: list[Planned], launch: CommandPool, show_progress: bool,
               resume_id: int | None = None, describe: Callable[[], None] | None = None) -> list[int]:
    """Queue the runs, have the command's pool (`command_pool`) train them, and stream their progress
    until every one has ended (a failure does not stop the rest). `describe`: what the command prints once
    its runs are queued (the data summary), while the workers claim and load them. Returns the run ids. On Ctrl-C or
    SIGTERM: every run queued here is cancelled, the workers leave, and the command exits 130 or 143
    with one line. When every run ended by itself, local workers stay warm for `launch.keep_warm_s`
    (LocalPool.linger); on an interrupt or an error they leave as before."""
    from peft_tui.console import ProgressSink
    from peft_tui.engine.launch.client import interrupts, watch

    launch.handed = True
    ids, pool = launch.ids, launch.take(st)
    ended = False  # every run ended by itself: the workers may stay warm
    with interrupts() as stopped:
        try:
            queue(st, planned, resume_id, ids)
            pool.start()
            if describe is not None:
                describe()
            with ProgressSink(enabled=None if show_progress else False) as progress:
                signum = watch(st, ids, progress)
            ended = signum is None
        except KeyboardInterrupt:  # before the watching began
            for run_id in ids:
                st.request_cancel(run_id)
            signum = stopped.signum or signal.SIGINT
        finally:
            linger = getattr(pool, "linger", None)  # local workers only (LocalPool), not Ray's
            if ended and linger is not None:
                linger(launch.keep_warm_s)  # 0 (or --trust-remote-code): release, as before
            else:
                pool.release()
    if signum:
        cancelled = ", ".join(str(i) for i in ids if st.get(i)["status"] == "cancelled") or "none"
        sys.stderr.write(f"stopped by {signal.Signals(signum).name}: runs cancelled: {cancelled}\n")
        raise typer.Exit(128 + signum)
    return ids


def start_detached(st: Store, planned: list[Planned], launch: CommandPool, as_json: bool,
                   resume_id: int | None = None) -> None:
    """Queue the runs and leave them to the command's detached pool (`command_pool(detach=True)`: workers
    in their own session, which outlive this shell and leave when the queue is empty); print the run ids."""
    pool, ids = launch.take(st), launch.ids
    queue(st, planned, resume_id, ids)
    launch.handed = True  # queued: from here the workers are theirs, whatever happens to this command
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


def trusted(planned: list[Planned]) -> bool:
    """Whether the user passed --trust-remote-code for these runs (a stored config cannot turn it on: see
    RunConfig.from_stored): what the command's workers are told."""
    return any(p.config.trust_remote_code for p in planned)

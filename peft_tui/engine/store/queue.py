"""The queue: a run is created `queued`; a worker claims the oldest one it can serve in one transaction,
its heartbeat keeps it alive, and cancel, prune, resume, retry, remove, reap and unstick move it on. Each is
one short write transaction, so any process on the store may call it.

Several runs on one GPU (`runs_per_gpu`, the training commands' --runs-per-gpu): a worker on a CUDA device
claims a run only when that run's estimated peak memory (its stored estimate's `peak_mb`, which on CUDA
includes the run's own CUDA context) plus the estimates of the runs this host already trains on that
device fit within the device's total memory less PACK_MARGIN, and within its free memory (NVML, read by
engine/memory.device_memory) less that margin; at most N runs (auto: AUTO_RUNS_PER_GPU) at once. A run
that does not fit stays queued, and runs queued after it wait behind it on that device (first in, first
out: a large run is not starved by smaller ones). A device with none of this host's runs always takes
the next run (nothing waits forever), except a run estimated above the device's whole memory, which is
failed at the claim with the reason. A run without an estimate trains alone on its device. Without
`runs_per_gpu` (a worker started by hand, a pool without the option), claims are as before."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.engine.methods import get_method, validate
from peft_tui.engine.store.database import Database, _now
from peft_tui.errors import ConfigError, first_line

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "diverged", "cancelled", "interrupted", "pruned")  # pruned: a study stopped it
REAPED = "its process (pid {pid}) ended without recording a result"  # what `reap` knows of a death
STALE_AFTER_S = 300.0  # a worker on another host that sent no heartbeat for this long is dead
QUIET_S = 600.0  # a queued run is stuck when nothing trained or was submitted on the store for this long
PACK_MARGIN = 0.05  # packing runs on a GPU leaves this share of its memory free (allocator cache, estimate error)
MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class Claim:
    """A run a worker has claimed: train `config` on `device` (resume from the checkpoint if `resume`)."""

    run_id: int
    config: RunConfig
    resume: bool
    device: str
    queued_at: float


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def death_reason(returncode: int) -> str:
    """Why a process ended, from its exit status (negative: killed by that signal)."""
    if returncode >= 0:
        return f"its process exited with code {returncode} without recording a result"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (out of memory?)" if -returncode == signal.SIGKILL else f"killed by {name}"


def serves(wanted: str, device: str) -> bool:
    """Can a worker on `device` ("cpu", "cuda:N") train a run that asked for `wanted`?"""
    if wanted in ("auto", device):
        return True
    return wanted == "cuda" and device.startswith("cuda")


def estimated_mb(config_json: str | None, estimate_json: str | None) -> float | None:
    """A stored run's estimated peak memory in MB: its estimate's `peak_mb`; 0 for a baseline (it trains
    on the CPU); None when it has no estimate."""
    try:
        est = json.loads(estimate_json) if estimate_json else None
        peak = est.get("peak_mb") if isinstance(est, dict) else None
        if isinstance(peak, (int, float)) and not isinstance(peak, bool) and peak >= 0:
            return float(peak)
        if get_method(json.loads(config_json or "{}").get("method")).is_baseline:
            return 0.0
    except (ValueError, AttributeError, ConfigError):
        pass
    return None


def fit_verdict(need_mb: float | None, running_mb: Sequence[float | None], memory_mb: Sequence[float] | None,
                runs_per_gpu: int | str, device: str) -> tuple[str, str]:
    """May a run estimated at `need_mb` (None: no estimate) start on the GPU `device` now, beside runs
    estimated at `running_mb`, with (free, total) MB `memory_mb` (None: unknown)? ("claim", ""),
    ("wait", why) or ("fail", the one-line reason: it can never fit there)."""
    from peft_tui.engine.memory import AUTO_RUNS_PER_GPU

    if need_mb is not None and memory_mb is not None and need_mb > memory_mb[1]:
        return "fail", (f"it needs about {need_mb:,.0f} MB at peak by its estimate, more than {device} has in all "
                        f"({memory_mb[1]:,.0f} MB): lower --batch-size or --max-length, or use a method that trains "
                        "fewer weights (`peft-tui plan` shows what fits)")
    if not running_mb:
        return "claim", ""  # an empty device takes the next run: nothing waits forever
    limit = AUTO_RUNS_PER_GPU if runs_per_gpu == "auto" else int(runs_per_gpu)
    if len(running_mb) >= limit:
        return "wait", f"{device} trains {len(running_mb)} run(s), the most --runs-per-gpu {runs_per_gpu} allows"
    if memory_mb is None:  # N: the user's word; auto: one at a time, as nothing can be checked
        return ("claim", "") if runs_per_gpu != "auto" else ("wait", f"the memory of {device} cannot be read")
    if need_mb is None or any(r is None for r in running_mb):
        return "wait", "a run without an estimate trains alone"
    free, total = memory_mb
    margin = total * PACK_MARGIN
    if need_mb + sum(r or 0.0 for r in running_mb) > total - margin:
        return "wait", f"the estimates of the runs on {device} would pass its {total:,.0f} MB less the margin"
    if need_mb > free - margin:
        return "wait", f"{device} has {free:,.0f} MB free"
    return "claim", ""


class _Gpus:
    """What each GPU of this host holds now, for the fit check of one claim (or one look at the queue):
    the estimates of the runs on it and its memory, updated as rows are taken in turn."""

    def __init__(self, query: Callable[[str, tuple], Iterable[Any]], host: str, runs_per_gpu: int | str):
        self.query, self.host, self.runs_per_gpu = query, host, runs_per_gpu
        self._held: dict[str, tuple[builtins.list[float | None], builtins.list[float] | None]] = {}

    def verdict(self, row: Any, device: str) -> tuple[str, str]:
        from peft_tui.engine import memory as gpu  # looked up at each claim: tests fake a GPU here

        if device not in self._held:
            running = [estimated_mb(r["config"], r["estimate"]) for r in self.query(
                "SELECT config, estimate FROM runs WHERE status='running' AND host=? AND device=?", (self.host, device))]
            read = gpu.device_memory(device)
            self._held[device] = (running, None if read is None else [read[0] / MB, read[1] / MB])
        running, memory = self._held[device]
        need = estimated_mb(row["config"], row["estimate"])
        verdict = fit_verdict(need, running, memory, self.runs_per_gpu, device)
        if verdict[0] == "claim":  # the rows after this one see it on the device
            running.append(need)
            if memory is not None:
                memory[0] -= need or 0.0
        return verdict


class Queue(Database):
    """The queue's operations on the runs table."""

    def claimable(self, devices: Sequence[str], runs_per_gpu: int | str | None = None,
                  host: str | None = None) -> builtins.list[int]:
        """Queued runs a worker on one of `devices` could claim now, oldest first (with `runs_per_gpu`:
        those the GPU fit check lets through now, see the module's doc; `host`: this machine's name)."""
        rows = self._query(
            "SELECT id, config, estimate FROM runs WHERE status='queued' AND queued_at IS NOT NULL "
            "ORDER BY queued_at, id"
        )
        if runs_per_gpu is None:
            return [r["id"] for r in rows if self._devices_for(r["config"], devices)]
        gpus = _Gpus(self._query, host or socket.gethostname(), runs_per_gpu)
        blocked: set[str] = set()
        return [r["id"] for r in rows if self._place(r, devices, gpus, blocked)[0] is not None]

    @staticmethod
    def _devices_for(config_json: str, devices: Sequence[str]) -> builtins.list[str]:
        """The devices of `devices` that can serve the run, in order."""
        try:
            wanted = str(json.loads(config_json).get("device", "auto"))
        except (ValueError, AttributeError):
            return list(devices[:1])  # claimed, then failed with the reason
        return [d for d in devices if serves(wanted, d)]

    def _place(self, row: Any, devices: Sequence[str], gpus: _Gpus | None,
               blocked: set[str]) -> tuple[str | None, str | None]:
        """(the device that takes `row` now, the reason to fail it there, or None): the first device that
        serves it where it fits (a GPU where it must wait is `blocked` for the rows after it)."""
        for d in self._devices_for(row["config"], devices):
            if gpus is None or not d.startswith("cuda"):
                return d, None
            if d in blocked:
                continue
            verdict, why = gpus.verdict(row, d)
            if verdict == "wait":
                blocked.add(d)
                continue
            return d, why if verdict == "fail" else None
        return None, None

    def claim(self, worker_id: str, pid: int, host: str, devices: Sequence[str],
              runs_per_gpu: int | str | None = None) -> Claim | None:
        """Claim the oldest queued run that a worker on one of `devices` can serve, in one transaction:
        two workers never get the same run. A queued row whose config cannot be read is failed on the
        way. With `runs_per_gpu` ("auto" or N), a run on a GPU is claimed only when it fits beside the
        runs already there (see the module's doc); one that never can is failed on the way with the
        reason. None when there is nothing to claim."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, config, estimate, resume, queued_at FROM runs WHERE status='queued' "
                "AND queued_at IS NOT NULL ORDER BY queued_at, id"
            ).fetchall()
            gpus = None if runs_per_gpu is None else _Gpus(lambda q, a: db.execute(q, a).fetchall(), host, runs_per_gpu)
            blocked: set[str] = set()
            for r in rows:
                device, failure = self._place(r, devices, gpus, blocked)
                if device is None:
                    continue
                t = _now()
                try:
                    config = RunConfig.from_dict(json.loads(r["config"]))
                except Exception as e:  # noqa: BLE001 - a damaged row fails alone
                    db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=?",
                               (f"its stored config cannot be read ({first_line(e)})", t, r["id"]))
                    continue
                if failure is not None:  # it can never fit this GPU: failed now rather than waiting forever
                    db.execute("UPDATE runs SET status='failed', error=?, finished_at=?, worker=?, host=?, device=?, "
                               "claimed_at=?, heartbeat=? WHERE id=? AND status='queued'",
                               (failure, t, worker_id, host, device, t, t, r["id"]))
                    continue
                db.execute(
                    "UPDATE runs SET status='running', worker=?, pid=?, host=?, device=?, claimed_at=?, heartbeat=?, "
                    "startup_s=NULL, cancel_requested=0, error=NULL WHERE id=? AND status='queued'",
                    (worker_id, pid, host, device, t, t, r["id"]),
                )
                return Claim(r["id"], config, bool(r["resume"]), device, r["queued_at"])
        return None

    def busy_workers(self) -> builtins.set[str]:
        """The ids of the workers training a run now."""
        return {r["worker"] for r in self._query("SELECT worker FROM runs WHERE status='running'") if r["worker"]}

    def heartbeat(self, run_id: int, pid: int, startup_s: float | None = None) -> bool:
        """Called about twice a second by the process training a run: records that process and that it
        is alive (and, once, the start-up it paid). Returns True when a cancel was requested."""
        with self._tx() as db:
            db.execute("UPDATE runs SET heartbeat=?, pid=?, startup_s=coalesce(?, startup_s) WHERE id=?",
                       (_now(), pid, startup_s, run_id))
            row = db.execute("SELECT cancel_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    def request_cancel(self, run_id: int) -> bool:
        """A queued run is cancelled at once; a running one is asked to stop (its worker polls the flag and
        stops within one step). False when the run is neither queued nor running."""
        with self._tx() as db:
            t = _now()
            cur = db.execute(
                "UPDATE runs SET status='cancelled', finished_at=?, heartbeat=? WHERE id=? AND status='queued'",
                (t, t, run_id),
            )
            if cur.rowcount:
                return True
            cur = db.execute("UPDATE runs SET cancel_requested=1 WHERE id=? AND status='running'", (run_id,))
            return bool(cur.rowcount)

    def mark_pruned(self, run_id: int, step: int) -> bool:
        """A trial a tuning study stopped (through `request_cancel`) is recorded `pruned` at `step`, once its
        process has ended it `cancelled`. False when the run has not ended cancelled (yet)."""
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status='pruned', error=? WHERE id=? AND status='cancelled'",
                             (f"pruned at step {int(step)} by its study", run_id))
            return bool(cur.rowcount)

    def request_resume(self, run_id: int, trust_remote_code: bool = False) -> None:
        """Queue a stopped run (interrupted, failed, diverged, cancelled) again, to continue from its last
        epoch-end checkpoint under the same id. Of several concurrent requests exactly one succeeds; the
        others raise ConfigError, as does a run that cannot be resumed. A stored config asking for the
        model's own code is refused without `trust_remote_code` (the user's flag; RunConfig.from_stored)."""
        from peft_tui.engine import checkpoint

        row = self.get(run_id)
        RunConfig.from_stored(row["config"], trust_remote_code, f"run {run_id}")
        if row["status"] not in checkpoint.RESUMABLE:
            why = {"done": "it finished", "running": "it is running", "queued": "it is queued"}.get(row["status"])
            raise ConfigError(f"run {run_id} cannot be resumed: {why or row['status']} "
                              "(only interrupted, failed, diverged or cancelled runs)")
        path = checkpoint.find(self.run_dir(run_id))
        if path is None:
            raise ConfigError(
                f"run {run_id} has no checkpoint (it stopped before its first epoch ended): "
                "start it again instead (retry in the dashboard, or `peft-tui run`)"
            )
        validate(RunConfig.from_dict(row["config"]))
        self.reopen(run_id, int(checkpoint.read_meta(path)["step"]))

    def reopen(self, run_id: int, after_step: int) -> None:
        """Queue a stopped run again for resuming, atomically: metrics logged after `after_step` (the
        checkpoint) are dropped so the curve continues without duplicate steps. Raises ConfigError when
        the run is no longer stopped (another resume got there first)."""
        from peft_tui.engine.checkpoint import RESUMABLE

        events = self.events_path(run_id)
        offset = events.stat().st_size if events.exists() else 0
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE runs SET status='queued', resume=1, queued_at=?, error=NULL, finished_at=NULL, step=?, "
                f"heartbeat=?, cancel_requested=0, events_offset=? "
                f"WHERE id=? AND status IN ({','.join('?' * len(RESUMABLE))})",
                (_now(), after_step, _now(), offset, run_id, *RESUMABLE),
            )
            if not cur.rowcount:
                raise ConfigError(f"run {run_id} is already queued or running: another resume claimed it")
            db.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, after_step))

    def retry(self, run_id: int, trust_remote_code: bool = False) -> int:
        """Queue a new run with the config of a run that has ended (its trust_remote_code: the user's flag,
        see RunConfig.from_stored). Returns the new run's id."""
        row = self.get(run_id)
        if row["status"] in ACTIVE:
            raise ConfigError(f"run {run_id} is {row['status']}: only a finished run can be retried")
        if row["damaged"]:
            raise ConfigError(f"run {run_id} cannot be retried: {row['damaged']}")
        config = RunConfig.from_stored(row["config"], trust_remote_code, f"run {run_id}")
        validate(config)  # a stored config is untrusted: it is checked again before it is queued
        return self.create_run(config, estimate=row["estimate"], study=row.get("study"), trial=row.get("trial"))

    def remove(self, run_id: int) -> bool:
        """Delete a run that is still queued (never claimed) with its folder. False when it is not queued."""
        folder = self.run_dir(run_id)
        with self._tx() as db:
            cur = db.execute("DELETE FROM runs WHERE id=? AND status='queued'", (run_id,))
            if not cur.rowcount:
                return False
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def stuck(self, quiet_s: float = QUIET_S) -> builtins.list[dict[str, Any]]:
        """Rows left behind by older versions or by killed commands, each with what `unstick` makes of it
        (`fix`: the status, `reason`: the recorded error):
        - `queued` that no worker will claim: left by a version before the store was the queue (no
          queued_at), or queued while no run has trained and nothing was submitted for `quiet_s`;
        - `interrupted` (an older version's mark for a run whose process ended mid-way), and `running`
          with no process recorded and no heartbeat for `quiet_s` (`reap` fails those with a pid)."""
        now = _now()
        rows = self._query("SELECT id, name, status, queued_at, created_at, heartbeat, pid FROM runs "
                           "WHERE status IN ('queued', 'running', 'interrupted') ORDER BY id")
        live = any(r["status"] == "running" and now - (r["heartbeat"] or 0) < quiet_s for r in rows)
        latest = max((r["queued_at"] for r in rows if r["status"] == "queued" and r["queued_at"]), default=0)
        idle = not live and now - latest >= quiet_s
        out = []
        for r in rows:
            if r["status"] == "queued" and (r["queued_at"] is None or idle):
                out.append({"id": r["id"], "name": r["name"], "status": "queued", "fix": "cancelled",
                            "reason": "left queued with no worker to train it (cleared by `peft-tui doctor --fix`)"})
            elif r["status"] == "interrupted" or (r["status"] == "running" and not r["pid"]
                                                  and now - (r["heartbeat"] or 0) >= quiet_s):
                out.append({"id": r["id"], "name": r["name"], "status": r["status"], "fix": "failed",
                            "reason": "its process ended mid-run (cleared by `peft-tui doctor --fix`)"})
        return out

    def unstick(self, stuck: builtins.list[dict[str, Any]]) -> builtins.list[int]:
        """Apply the `fix` of each row `stuck` returned, where the row has not moved since. Returns the ids
        changed."""
        changed = []
        with self._tx() as db:
            for r in stuck:
                t = _now()
                cur = db.execute("UPDATE runs SET status=?, error=coalesce(error, ?), finished_at=?, heartbeat=? "
                                 "WHERE id=? AND status=?", (r["fix"], r["reason"], t, t, r["id"], r["status"]))
                if cur.rowcount:
                    changed.append(r["id"])
        return changed

    def fail_worker_runs(self, worker_id: str, reason: str) -> builtins.list[int]:
        """The worker `worker_id` died (its pool saw how): its running run becomes failed with `reason`."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE worker=? AND status='running'", (worker_id,))]
            for run_id in ids:
                self._fail(db, run_id, reason)
        return ids

    def fail_run(self, run_id: int, reason: str) -> bool:
        """A running run whose process died (its worker saw how) becomes failed with `reason`, which
        also replaces the vaguer reason `reap` may have written in the moment since it died."""
        with self._tx() as db:
            if self._fail(db, run_id, reason):
                return True
            cur = db.execute("UPDATE runs SET error=? WHERE id=? AND status='failed' AND error LIKE ?",
                             (reason, run_id, REAPED.format(pid="%")))
            return bool(cur.rowcount)

    def fail_queued(self, run_ids: Iterable[int], reason: str) -> builtins.list[int]:
        """Runs still queued that nothing will train (their launcher failed) become failed with `reason`."""
        t, failed = _now(), []
        with self._tx() as db:
            for run_id in run_ids:
                cur = db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=? AND "
                                 "status='queued'", (reason, t, run_id))
                failed += [run_id] if cur.rowcount else []
        return failed

    @staticmethod
    def _fail(db: sqlite3.Connection, run_id: int, reason: str) -> bool:
        t = _now()
        cur = db.execute("UPDATE runs SET status='failed', error=?, finished_at=?, heartbeat=? "
                         "WHERE id=? AND status='running'", (reason, t, t, run_id))
        return bool(cur.rowcount)

    def reap(self, stale_after_s: float = STALE_AFTER_S) -> builtins.list[int]:
        """Running runs whose worker is gone become failed: on this host when the training process no
        longer exists, elsewhere when no heartbeat came for `stale_after_s`. Returns their ids."""
        host, now = socket.gethostname(), _now()
        dead = {}
        for r in self._query("SELECT id, pid, host, heartbeat FROM runs WHERE status='running'"):
            if r["host"] == host and r["pid"] and not _pid_alive(r["pid"]):
                dead[r["id"]] = REAPED.format(pid=r["pid"])
            elif r["host"] != host and now - (r["heartbeat"] or 0) > stale_after_s:
                dead[r["id"]] = f"no heartbeat from its worker on {r['host']} for {stale_after_s:.0f} s"
        if dead:
            with self._tx() as db:
                for run_id, reason in dead.items():
                    self._fail(db, run_id, reason)
        return list(dead)


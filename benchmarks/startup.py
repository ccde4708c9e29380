"""Start-up: `peft-tui --help` wall time and the dashboard's first paint.

  --help       best (and median) of N runs of the installed `peft-tui --help`, process start to exit.
               Target <= 0.3 s. Also prints `python -c pass` (the interpreter's own floor) and
               `import typer` for context, measured in the same run.
  first paint  `peft-tui launch` spawned on a pseudo-terminal (120x36, TERM=xterm-256color); the clock
               runs from just before the spawn until the terminal has received the dashboard's footer
               ("Quit"), i.e. the first full screen has been written. Then `q` quits it. Best and
               median of N. Target <= 1.0 s.
  heavy        whether `launch` pulled torch / transformers / peft in before its first paint.

  run          (`startup.py run`) the time from `peft-tui run` to the first training step, and where it
               goes, from the run's own timestamps: the command until the run is queued (imports, checks
               and data load, estimate; the data summary follows the queueing: replayed in a fresh
               process below on the measured store, caches warm, one timer each, with the heavy
               modules it imported), the worker from
               the queue to its claim (process start, imports), the run process until `RunStarted`
               (its "ready in" log line splits data / tokenizer / model / token ids), then the first
               step. Default: MiniLM, LoRA, AG News with 2,000 training rows (the other 5,600 rows
               split into validation and test, as benchmarks/real_data.py), head_init=random (the
               probe fit excluded), fp32. The command is interrupted once the first step is logged.
               Twice by default: a fresh store (cold token cache) and the same store again (warm).
               The command is `python -m peft_tui.cli` of this interpreter, so PYTHONPATH picks the
               tree measured (its path is printed). Also printed: when the command's worker process
               was spawned, counted from the command's start (a prewarmed pool spawns it at once).
               With workers kept warm (PEFT_TUI_KEEP_WARM unset or > 0, the default 60 s), each command
               is ended by cancelling its run through the store instead (the command then ends normally,
               so its worker stays warm), and the second command on the same store is served by the
               worker the first one kept (no process start, no imports: printed with the worker's pid);
               then the kept worker is told to leave and the same store is timed once more with
               PEFT_TUI_KEEP_WARM=0 (a fresh worker, as before keep-warm) for comparison.

Usage: python benchmarks/startup.py [--repeat 5]
       python benchmarks/startup.py run [--data FILE] [--method lora] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("peft-tui"))
CLI = [sys.executable, "-m", "peft_tui.cli"]  # the `run` benchmark: the tree on PYTHONPATH, else the installed one
NEUTRAL_CWD = tempfile.gettempdir()  # `python -m` puts its cwd first on sys.path: not a checkout's root


def wall(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - t0


def first_paint(store: str, marker: bytes = b"Quit", timeout: float = 30.0) -> float:
    """Seconds from spawning `peft-tui launch` on a pty until `marker` has been written to it."""
    import fcntl
    import termios

    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="36", PEFT_TUI_STORE=store)
    env.pop("TEXTUAL", None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    t0 = time.perf_counter()
    proc = subprocess.Popen([EXE, "launch", "--store", store], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    seen = b""
    elapsed = None
    try:
        while time.perf_counter() - t0 < timeout:
            r, _, _ = select.select([master], [], [], 0.05)
            if not r:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            seen = (seen + chunk)[-200_000:]
            # Textual interleaves escape codes, but a footer key label is written as one text segment
            if marker in seen:
                elapsed = time.perf_counter() - t0
                break
        os.write(master, b"q")
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
    finally:
        # drain so the child never blocks on a full pty, then close
        try:
            while select.select([master], [], [], 0.05)[0]:
                if not os.read(master, 65536):
                    break
        except OSError:
            pass
        os.close(master)
    if elapsed is None:
        tail = seen[-600:].decode("utf-8", "replace")
        raise SystemExit(f"first paint: {marker!r} never appeared within {timeout} s; output tail: {tail!r}")
    return elapsed


def launch_imports(store: str) -> list[str]:
    """Heavy modules in sys.modules after the dashboard has mounted (headless run_test)."""
    code = (
        "import asyncio, sys\n"
        "from peft_tui.ui.app import create_app\n"
        f"app = create_app(store={store!r})\n"
        "async def go():\n"
        "    async with app.run_test(size=(120, 36)) as pilot:\n"
        "        await pilot.pause()\n"
        "        print(' '.join(m for m in ('torch', 'transformers', 'peft', 'sklearn', 'pandas') if m in sys.modules))\n"
        "asyncio.run(go())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return out.stdout.split()


def summary(xs: list[float]) -> str:
    return f"best {min(xs):.3f} s, median {statistics.median(xs):.3f} s"


AG_NEWS = "/work/shared/datasets/ag_news/ag_news_test.csv"
AG_SPLIT = ["--set", f"data.val_fraction={2800 / 7600:.6f}", "--set", f"data.test_fraction={2800 / 7600:.6f}"]


def run_to_first_step(store: str, data: str, method: str, timeout: float = 900.0, keep_warm: str | None = None,
                      previous_worker: str | None = None) -> tuple[dict[str, float], str]:
    """Start `peft-tui run` and follow its run in the store until the first StepLogged; then interrupt it
    (keep-warm on: cancel the run through the store, so that the command ends normally and its worker stays
    warm). Returns the breakdown (seconds) and the id of the worker that claimed the run."""
    import json

    import psutil

    from peft_tui.engine.launch.local import KEEP_WARM_ENV
    from peft_tui.engine.store import Store

    args = [*CLI, "run", "--method", method, "--data", data, "--epochs", "1", "--head-init", "random",
            "--precision", "fp32", "--store", store, *(AG_SPLIT if data == AG_NEWS else [])]
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}  # as a user runs it
    if keep_warm is not None:
        env[KEEP_WARM_ENV] = keep_warm
    warm = keep_warm != "0"
    before = max((r["id"] for r in Store(store).list()), default=0) if (Path(store) / "runs.db").exists() else 0
    t0 = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, cwd=NEUTRAL_CWD)
    born = psutil.Process(proc.pid).create_time()  # the spawn below is timed against this (same clock)
    st, rid, events = None, None, {}
    spawned: float | None = None  # when the command's first worker process was created
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and "first_step" not in events:
            if proc.poll() is not None:
                raise SystemExit(f"peft-tui run ended early: {proc.stderr.read().decode()[-800:]}")
            time.sleep(0.05)
            if spawned is None:
                try:
                    kids = [c for c in psutil.Process(proc.pid).children()
                            if "peft_tui.engine.launch.worker" in c.cmdline()]
                    spawned = min((c.create_time() for c in kids), default=None)
                except psutil.Error:
                    pass
            if st is None:
                if not (Path(store) / "runs.db").exists():
                    continue
                st = Store(store)
            rows = [r for r in st.list() if r["id"] > before]  # this command's run, not an earlier one
            if not rows:
                continue
            rid = max(r["id"] for r in rows)
            path = st.events_path(rid)
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e["event"] == "RunStarted":
                    events["started"] = e["t"]
                elif e["event"] == "LogMessage" and e["text"].startswith("ready in"):
                    events["ready"] = e["text"]
                elif e["event"] == "StepLogged" and e["step"] >= 1:
                    events["first_step"] = e["t"] - e["elapsed_s"]  # the first step began `elapsed_s` before
                    events["first_step_end"] = e["t"]
    finally:
        if proc.poll() is None and warm and st is not None and rid is not None and "first_step" in events:
            st.request_cancel(rid)  # the run ends `cancelled`, the command ends normally: its worker stays warm
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # the command cancels its run and its worker leaves
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if "first_step" not in events or st is None or rid is None:
        raise SystemExit("no first step within the timeout")
    row = st.get(rid)
    out = {
        "command until queued": row["queued_at"] - t0,
        "worker: queue to claim": row["claimed_at"] - row["queued_at"],
        "run process: claim to RunStarted": events["started"] - row["claimed_at"],
        "RunStarted to first step": events["first_step"] - events["started"],
        "TOTAL to first step": events["first_step"] - t0,
    }
    kept = previous_worker is not None and row["worker"] == previous_worker
    print(f"  (run {rid}; {events.get('ready', 'no ready line')}; worker start-up recorded "
          f"{row['startup_s'] or 0:.2f}s; claimed by worker {row['worker']}"
          + (", the one the previous command kept warm" if kept else "") + "; worker process spawned "
          + (f"{spawned - born:.2f}s after the command started)" if spawned else "by the command: none seen)"))
    return out, row["worker"]


def dismiss_kept_workers(store: str, timeout: float = 60.0) -> list[int]:
    """Tell the workers kept warm on `store` to leave (worker.py's leave signal) and wait for them."""
    import json

    import psutil

    from peft_tui.engine.launch.worker import LEAVE_SIGNAL, WARM_DIR

    pids = []
    for path in (Path(store) / WARM_DIR).glob("*.json"):
        try:
            pid = int(json.loads(path.read_text())["pid"])
            os.kill(pid, LEAVE_SIGNAL)
            pids.append(pid)
        except (OSError, ValueError, KeyError):
            pass
    deadline = time.monotonic() + timeout
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return pids


REPLAY = r"""
import sys, time
t = [time.perf_counter()]
from peft_tui.cli import app  # noqa: F401 - what `peft-tui` imports before the command runs
from peft_tui.commands.common import data_summary, open_store
from peft_tui.commands.train import cache_of, fit_check
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.submit import prepare
t.append(time.perf_counter())
data, method, store = sys.argv[1], sys.argv[2], sys.argv[3]
kw = dict(val_fraction=2800 / 7600, test_fraction=2800 / 7600) if data.endswith("ag_news_test.csv") else {}
cfg = RunConfig(method=method, data=DataConfig(source=data, **kw), epochs=1, head_init="random", precision="fp32")
splits = prepare([cfg], cache_dir=cache_of(store))
t.append(time.perf_counter())
st = open_store(store, writable=True)
fit_check(st, [cfg], splits, force=True, ray=None)
t.append(time.perf_counter())
data_summary(cfg, splits, st.cache_dir)
t.append(time.perf_counter())
names = ["imports (cli, commands, engine entry points)", "prepare: checks + data load",
         "estimate (fit check) -> queued", "data summary (after queueing)"]
for n, a, b in zip(names, t, t[1:]):
    print(f"{n}\t{b - a:.3f}")
print("heavy modules imported\t" + (" ".join(m for m in ("torch", "transformers", "peft") if m in sys.modules) or "none"))
"""


def replay(store: str, data: str, method: str) -> list[tuple[str, float]]:
    """The command's own steps before queueing, each timed, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", REPLAY, data, method, store], capture_output=True, text=True,
                         cwd=NEUTRAL_CWD, timeout=600, env={k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"})
    if out.returncode:
        raise SystemExit(f"replay failed: {out.stderr[-800:]}")
    return [(line.split("\t")[0], line.split("\t")[1]) for line in out.stdout.strip().splitlines()]


def run_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="startup.py run")
    ap.add_argument("--data", default=AG_NEWS)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--repeat", type=int, default=2, help="1: fresh store only; 2: then the same store again")
    a = ap.parse_args(argv)
    tree = subprocess.run([sys.executable, "-c", "import peft_tui; print(peft_tui.__file__)"], cwd=NEUTRAL_CWD,
                          capture_output=True, text=True, check=True).stdout.strip()
    from peft_tui.engine.launch.local import KEEP_WARM_ENV, keep_warm_s

    warm = keep_warm_s() > 0
    print(f"load average {os.getloadavg()[0]:.2f} (2-core CPU; wall time); the command runs {Path(tree).parent}; "
          f"workers kept warm: {f'{keep_warm_s():g} s' if warm else 'off'} ({KEEP_WARM_ENV})")
    store = tempfile.mkdtemp(prefix="bench-first-step-")
    worker = None
    for i in range(a.repeat):
        label = ("fresh store (cold caches)" if i == 0 else "same store again (token cache warm"
                 + (", the worker kept warm by the previous command)" if warm else ")"))
        print(f"peft-tui run -> first step, {label}:")
        breakdown, worker = run_to_first_step(store, a.data, a.method, previous_worker=worker)
        for name, secs in breakdown.items():
            print(f"  {name:40} {secs:6.2f} s")
    if warm and a.repeat > 1:  # the same store with a worker started by the command (as before keep-warm)
        dismissed = dismiss_kept_workers(store)
        print(f"peft-tui run -> first step, same store again, {KEEP_WARM_ENV}=0 (kept workers {dismissed} told "
              "to leave first: the command starts its own):")
        breakdown, _ = run_to_first_step(store, a.data, a.method, keep_warm="0", previous_worker=worker)
        for name, secs in breakdown.items():
            print(f"  {name:40} {secs:6.2f} s")
    dismiss_kept_workers(store)
    print("the command's steps, replayed in a fresh process on the same store (its caches warm):")
    for name, value in replay(store, a.data, a.method):
        print(f"  {name:48} {float(value):6.2f} s" if value.replace(".", "").isdigit() else f"  {name:48} {value}")
    shutil.rmtree(store, ignore_errors=True)
    return 0


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        return run_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (2-core CPU; figures are wall time)")
    py = [wall([sys.executable, "-c", "pass"]) for _ in range(a.repeat)]
    ty = [wall([sys.executable, "-c", "import typer"]) for _ in range(a.repeat)]
    helps = [wall([EXE, "--help"]) for _ in range(a.repeat)]
    print(f"python -c pass        {summary(py)}")
    print(f"python -c 'import typer' {summary(ty)}")
    print(f"peft-tui --help       {summary(helps)}   target <= 0.300 s: "
          f"{'PASS' if min(helps) <= 0.3 else 'MISS'}")
    store = tempfile.mkdtemp(prefix="bench-startup-")
    first_paint(store)  # warm the store (schema) and the OS file cache once
    paints = [first_paint(store) for _ in range(a.repeat)]
    print(f"dashboard first paint {summary(paints)}   target <= 1.000 s: "
          f"{'PASS' if min(paints) <= 1.0 else 'MISS'}")
    heavy = launch_imports(store)
    print(f"heavy modules loaded by the dashboard before any run: {', '.join(heavy) or 'none'}")
    shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up: `peft-tui --help` wall time and the dashboard's first paint.

  --help       best (and median) of N runs of the installed `peft-tui --help`, process start to exit.
               Target <= 0.3 s. Also prints `python -c pass` (the interpreter's own floor) and
               `import typer` for context, measured in the same run.
  first paint  `peft-tui launch` spawned on a pseudo-terminal (120x36, TERM=xterm-256color); the clock
               runs from just before the spawn until the terminal has received the dashboard's footer
               ("Quit"), i.e. the first full screen has been written. Then `q` quits it. Best and
               median of N. Target <= 1.0 s.
  heavy        whether `launch` pulled torch / transformers / peft in before its first paint.

Usage: python benchmarks/startup.py [--repeat 5]
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


def main() -> int:
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

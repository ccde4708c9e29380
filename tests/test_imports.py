"""Import hygiene: the engine never pulls in the UI stack (checked in a fresh interpreter)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ENGINE = pathlib.Path(__file__).resolve().parent.parent / "peft_tui" / "engine"


@pytest.mark.slow
def test_engine_modules_do_not_import_ui_in_a_fresh_process():
    code = (
        "import sys, threading\n"
        "import peft_tui.engine.trainer, peft_tui.engine.store, peft_tui.engine.scheduler\n"
        "import peft_tui.engine.launch.worker, peft_tui.engine.launch.local, peft_tui.engine.launch.client\n"
        "import peft_tui.engine.methods, peft_tui.engine.data, peft_tui.engine.models, peft_tui.engine.baseline\n"
        "from peft_tui.config import RunConfig, DataConfig\n"
        "from peft_tui.engine.store import Store\n"
        "from peft_tui.engine.trainer import execute\n"
        "import tempfile\n"
        "cfg = RunConfig(method='lora', model='tiny', epochs=1, device='cpu', data=DataConfig(size=40))\n"
        "st = Store(tempfile.mkdtemp()); rid = st.create_run(cfg); execute(st, rid, cfg, st)\n"
        "assert st.get(rid)['status'] == 'done', st.get(rid)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'textual_plotext') "
        "or m.startswith('peft_tui.ui')]\n"
        "print('BAD', bad) if bad else print('CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("CLEAN"), out.stdout + out.stderr[-2000:]


@pytest.mark.slow
def test_a_scheduler_client_never_trains_in_its_own_process():
    """The dashboard and the CLI are clients: their runs train in worker processes. The client checks and
    estimates a run before queueing it (engine/submit.py), which may import torch, but the run's process,
    the one that records its heartbeat and result, is never the client's."""
    code = (
        "import os, sys, tempfile\n"
        "from peft_tui.config import RunConfig, DataConfig\n"
        "from peft_tui.engine.scheduler import Scheduler\n"
        "from peft_tui.engine.store import Store\n"
        "st = Store(tempfile.mkdtemp()); sched = Scheduler(st, None, ['cpu'])\n"
        "rid = sched.submit(RunConfig(method='head', model='tiny', epochs=1, device='cpu', data=DataConfig(size=40)))\n"
        "assert sched.wait_idle(300); sched.shutdown()\n"
        "row = st.get(rid)\n"
        "assert row['status'] == 'done', row\n"
        "print('CLIENT' if row['pid'] == os.getpid() or not row['worker'] else 'WORKER', row['pid'], os.getpid())\n"
    )
    env = {**os.environ, "PEFT_TUI_INPROCESS_POOL": "0"}  # real worker processes, as a user gets them
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=400,
                         env=env)
    assert out.stdout.strip().startswith("WORKER"), out.stdout + out.stderr[-2000:]


def test_no_ui_import_statement_in_engine_source():
    pattern = re.compile(r"^\s*(import|from)\s+(textual|rich|textual_plotext|peft_tui\.ui)\b", re.MULTILINE)
    offenders = [str(p) for p in ENGINE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_unsafe_loading_in_source():
    src = pathlib.Path(__file__).resolve().parent.parent / "peft_tui"
    for p in src.rglob("*.py"):
        text = p.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{p}: {m.group(0)}"
        assert "trust_remote_code=True" not in text, p
